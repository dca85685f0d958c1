"""The experiment's network, a deep, narrow MLP with or without BatchNorm, and
the same network for several seeds at once, as one stacked model."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

IMAGE_PIXELS = 28 * 28
CLASSES = 10
VARIANTS = {"bn": True, "nobn": False}  # the experiment's two variants: BatchNorm on/off
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
INPUTS = ("scaled", "binary")  # x/255 as ToTensor gives it, or each pixel 0 or 1
BINARY_THRESHOLD = 0.5  # binary inputs: a pixel is 1 above half intensity (x/255 > 0.5)


def prepared(x: torch.Tensor, inputs: str) -> torch.Tensor:
    """The images as the network reads them: x/255 as given, or binarised
    (the BatchNorm paper's MNIST network reads binary 28x28 images)."""
    return (x > BINARY_THRESHOLD).to(x.dtype) if inputs == "binary" else x


def init_gaussian(linears: list[nn.Module], std: float | None) -> None:
    """With `std`, every Linear's weights drawn from N(0, std^2) and its bias
    zero (the paper's "small random Gaussian values"); None keeps PyTorch's
    default (uniform, scaled by fan-in)."""
    if std is None:
        return
    with torch.no_grad():
        for linear in linears:
            linear.weight.normal_(0.0, std)
            linear.bias.zero_()


class DeepMLP(nn.Module):
    """`depth` hidden blocks Linear(width) -> [BatchNorm1d(width)] -> activation
    (ReLU, tanh or sigmoid), then Linear(width -> 10). With depth 10, width 64
    and ReLU this is the seed's network; with depth 3, width 100, sigmoid,
    Gaussian weights (init_std) and binary inputs, the BatchNorm paper's."""

    def __init__(
        self,
        depth: int,
        width: int,
        batchnorm: bool,
        activation: str = "relu",
        init_std: float | None = None,
        inputs: str = "scaled",
    ) -> None:
        super().__init__()
        self.config = {"depth": depth, "width": width, "batchnorm": batchnorm,
                       "activation": activation, "init_std": init_std, "inputs": inputs}  # fmt: skip
        self.inputs = inputs
        blocks = []
        for index in range(depth):
            # BatchNorm sits between the linear map and the activation: it
            # re-centres and rescales the activation's inputs, so that fewer
            # fall on its flat side (ReLU) or in its saturated tails (tanh, sigmoid).
            layers: list[nn.Module] = [nn.Linear(IMAGE_PIXELS if index == 0 else width, width)]
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(ACTIVATIONS[activation]())
            blocks.append(nn.Sequential(*layers))
        self.hidden = nn.ModuleList(blocks)
        self.output = nn.Linear(width, CLASSES)
        init_gaussian([block[0] for block in self.hidden] + [self.output], init_std)

    def forward_with_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, 10) and each hidden block's output (after its activation), (B, width) each."""
        h = prepared(x.flatten(1), self.inputs)  # (B, 784)
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


# Stacked models: K networks of one shape, one per seed, trained side by side.
# Every parameter and buffer gets a leading seed dimension, so a Linear
# becomes a batched matmul and one optimizer step updates all K networks.
# Inside, activations are kept as (K, width, B): each seed's pre-activations
# transposed, which makes (1, K * width, B) a free view in which BatchNorm's
# channels are exactly the (seed, unit) pairs and each is normalised over its
# own seed's batch. State dict keys are DeepMLP's, with the seed dimension in
# front; `unstack` gives back seed k's plain DeepMLP.


class StackedLinear(nn.Module):
    """K Linear(in_features -> out_features) maps: weight (K, out, in), bias (K, out)."""

    def __init__(self, seeds: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(seeds, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(seeds, out_features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(K, in, B) -> (K, out, B); or the same images for every seed, (N, in) -> (K, out, N)."""
        if h.dim() == 2:  # one matmul for all seeds: (K * out, in) @ (in, N)
            seeds, out, inputs = self.weight.shape
            flat = torch.addmm(self.bias.reshape(-1, 1), self.weight.view(-1, inputs), h.t())
            return flat.view(seeds, out, -1)
        return torch.baddbmm(self.bias.unsqueeze(2), self.weight, h)


class StackedBatchNorm(nn.Module):
    """K BatchNorm1d(width), each over its own seed's batch: weight, bias and
    running statistics (K, width); one batch counter, as all seeds step together."""

    def __init__(self, seeds: int, width: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(seeds, width))
        self.bias = nn.Parameter(torch.zeros(seeds, width))
        self.register_buffer("running_mean", torch.zeros(seeds, width))
        self.register_buffer("running_var", torch.ones(seeds, width))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        seeds, width, batch = z.shape  # (K, width, B), contiguous
        if self.training:
            self.num_batches_tracked.add_(1)
        normed = F.batch_norm(
            z.view(1, seeds * width, batch),
            self.running_mean.view(-1),
            self.running_var.view(-1),
            self.weight.view(-1),
            self.bias.view(-1),
            self.training,
            self.momentum,
            self.eps,
        )
        return normed.view(seeds, width, batch)


class StackedMLP(nn.Module):
    """DeepMLP for K seeds at once (see above). Build it with `stack`."""

    def __init__(
        self,
        depth: int,
        width: int,
        batchnorm: bool,
        seeds: int,
        activation: str = "relu",
        init_std: float | None = None,
        inputs: str = "scaled",
    ) -> None:
        super().__init__()
        self.config = {"depth": depth, "width": width, "batchnorm": batchnorm,
                       "activation": activation, "init_std": init_std, "inputs": inputs}  # fmt: skip
        self.seeds, self.inputs = seeds, inputs
        blocks = []
        for index in range(depth):
            fan_in = IMAGE_PIXELS if index == 0 else width
            layers: list[nn.Module] = [StackedLinear(seeds, fan_in, width)]
            if batchnorm:
                layers.append(StackedBatchNorm(seeds, width))
            layers.append(ACTIVATIONS[activation]())
            blocks.append(nn.Sequential(*layers))
        self.hidden = nn.ModuleList(blocks)
        self.output = StackedLinear(seeds, width, CLASSES)

    def forward_with_activation_inputs(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Logits (K, B, 10), and per hidden block its activation function's
        input (the BatchNorm output, or the Linear's without) and output, each
        (K, width, B). x is (K, B, 784), a batch per seed, or (N, 784), the
        same images for all."""
        h = prepared(
            x.transpose(1, 2) if x.dim() == 3 else x, self.inputs
        )  # (K, 784, B), or (N, 784)
        inputs, outputs = [], []
        for block in self.hidden:
            *before, activation = block
            for layer in before:
                h = layer(h)
            inputs.append(h)
            h = activation(h)
            outputs.append(h)
        # (K, B, width) @ (K, width, 10): the logits come out per image, as DeepMLP's
        logits = torch.baddbmm(
            self.output.bias.unsqueeze(1), h.transpose(1, 2), self.output.weight.transpose(1, 2)
        )
        return logits, inputs, outputs

    def forward_with_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (K, B, 10) and each hidden block's output (after its activation), (K, width, B)."""
        logits, _, outputs = self.forward_with_activation_inputs(x)
        return logits, outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_activations(x)[0]

    def hidden_weights(self) -> list[nn.Parameter]:
        """The stacked weight of each hidden block, (K, out, in), first block first."""
        return [block[0].weight for block in self.hidden]

    @torch.no_grad()
    def unstack(self, k: int) -> DeepMLP:
        """Seed k's network as a plain DeepMLP with its own tensors, of this
        model's float type (where a new module's tensors are made: the CPU
        unless a default device is set)."""
        with torch.random.fork_rng(devices=[]):  # the throwaway init leaves the RNG as it was
            model = DeepMLP(**self.config).to(self.output.weight.dtype)
        model.load_state_dict(
            {name: t if t.dim() == 0 else t[k] for name, t in self.state_dict().items()}
        )  # copies
        return model


def stack(models: list[DeepMLP]) -> StackedMLP:
    """One StackedMLP holding `models` (same config), seed k's weights from
    models[k]; in training mode, where a new module's tensors are made."""
    configs = {tuple(m.config.items()) for m in models}
    if len(configs) != 1:
        raise ValueError(f"cannot stack models of different configs: {sorted(configs)}")
    stacked = StackedMLP(**models[0].config, seeds=len(models))
    states = [m.state_dict() for m in models]
    with torch.no_grad():
        for name, tensor in stacked.state_dict().items():
            parts = [state[name] for state in states]
            tensor.copy_(parts[0] if tensor.dim() == 0 else torch.stack(parts))
    return stacked
