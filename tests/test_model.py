"""The network: shapes, the BatchNorm switch, one forward for logits and activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.model import DeepMLP


@pytest.mark.parametrize(("depth", "width"), [(1, 8), (3, 16), (10, 64)])
@pytest.mark.parametrize("batchnorm", [True, False])
def test_shapes_and_layers(depth: int, width: int, batchnorm: bool) -> None:
    model = DeepMLP(depth, width, batchnorm)
    images = torch.rand(5, 1, 28, 28)
    logits, activations = model.forward_with_activations(images)
    assert logits.shape == (5, 10)
    assert [tuple(a.shape) for a in activations] == [(5, width)] * depth
    assert all((a >= 0).all() for a in activations)  # post-ReLU
    assert len(model.hidden_weights()) == depth
    assert model.hidden_weights()[0].shape == (width, 28 * 28)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == (depth if batchnorm else 0)


def test_the_seed_network_has_the_expected_size() -> None:
    def count(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    linear = 784 * 64 + 64 + 9 * (64 * 64 + 64) + 64 * 10 + 10
    assert count(DeepMLP(10, 64, batchnorm=False)) == linear
    assert count(DeepMLP(10, 64, batchnorm=True)) == linear + 10 * 2 * 64


def test_batchnorm_sits_between_linear_and_relu() -> None:
    block = DeepMLP(2, 8, batchnorm=True).hidden[0]
    assert [type(layer) for layer in block] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]


def test_forward_is_the_logits_of_forward_with_activations() -> None:
    model = DeepMLP(4, 16, batchnorm=True).eval()
    x = torch.rand(7, 784)
    logits, activations = model.forward_with_activations(x)
    assert torch.equal(model(x), logits)
    assert torch.equal(model.output(activations[-1]), logits)


def test_same_seed_same_initial_weights_for_both_variants() -> None:
    torch.manual_seed(3)
    with_bn = DeepMLP(3, 8, batchnorm=True)
    torch.manual_seed(3)
    without = DeepMLP(3, 8, batchnorm=False)
    assert all(
        torch.equal(a, b)
        for a, b in zip(with_bn.hidden_weights(), without.hidden_weights(), strict=True)
    )
    assert torch.equal(with_bn.output.weight, without.output.weight)
