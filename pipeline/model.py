"""The experiment's network: a deep, narrow MLP, with or without BatchNorm."""

from __future__ import annotations

import torch
from torch import nn

IMAGE_PIXELS = 28 * 28
CLASSES = 10
VARIANTS = {"bn": True, "nobn": False}  # the experiment's two variants: BatchNorm on/off


class DeepMLP(nn.Module):
    """`depth` hidden blocks Linear(width) -> [BatchNorm1d(width)] -> ReLU, then
    Linear(width -> 10). With depth 10, width 64 this is the seed's network."""

    def __init__(self, depth: int, width: int, batchnorm: bool) -> None:
        super().__init__()
        self.config = {"depth": depth, "width": width, "batchnorm": batchnorm}
        blocks = []
        for index in range(depth):
            # BatchNorm sits between the linear map and the ReLU: it re-centres
            # the pre-activations so that fewer of them fall on ReLU's flat side.
            layers: list[nn.Module] = [nn.Linear(IMAGE_PIXELS if index == 0 else width, width)]
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            blocks.append(nn.Sequential(*layers))
        self.hidden = nn.ModuleList(blocks)
        self.output = nn.Linear(width, CLASSES)

    def forward_with_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, 10) and each hidden block's post-ReLU output, (B, width) each."""
        h = x.flatten(1)  # (B, 784)
        activations = []
        for block in self.hidden:
            h = block(h)
            activations.append(h)
        return self.output(h), activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_activations(x)[0]

    def hidden_weights(self) -> list[nn.Parameter]:
        """The weight matrix of each hidden Linear, first block first."""
        return [block[0].weight for block in self.hidden]
