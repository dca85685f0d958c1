"""The flat parameter buffer and its grouped layout (pipeline/nn/flat.py)."""

from __future__ import annotations

import pytest
import torch

from pipeline.nn.flat import flatten_parameters, grouped_parameters, joined
from pipeline.nn.training import initial_model


def test_like_tensors_lie_side_by_side_in_model_order() -> None:
    model = initial_model(3, 8, True, [0, 1])
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for p in grouped_parameters(model)]
    assert order == [
        "hidden.0.0.weight",  # (2, 8, 784): alone
        "hidden.0.0.bias", "hidden.1.0.bias", "hidden.2.0.bias",  # Linear biases (2, 8)
        "hidden.0.1.weight", "hidden.1.1.weight", "hidden.2.1.weight",  # BatchNorm weights
        "hidden.0.1.bias", "hidden.1.1.bias", "hidden.2.1.bias",
        "hidden.1.0.weight", "hidden.2.0.weight",  # (2, 8, 8)
        "output.weight", "output.bias",
    ]  # fmt: skip


def test_flattening_keeps_every_value_and_makes_views() -> None:
    model = initial_model(3, 8, False, [0, 1])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    flat = flatten_parameters(model)
    assert flat.numel() == sum(t.numel() for t in before.values())
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
        assert p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
        assert p.grad.untyped_storage().data_ptr() == flat.grad.untyped_storage().data_ptr()


def test_joined_is_one_view_of_the_run() -> None:
    model = initial_model(4, 8, True, [0, 1, 2])
    flatten_parameters(model)
    later = [w.grad for w in model.hidden_weights()[1:]]
    block = joined(later)
    assert block.shape == (3, 3, 8, 8)
    block.copy_(torch.arange(block.numel(), dtype=block.dtype).view(block.shape))
    for index, grad in enumerate(later):  # writing the block wrote each tensor
        assert torch.equal(grad, block[index])
    assert grad[2, 7, 7] == block.numel() - 1


def test_joined_refuses_tensors_that_are_not_side_by_side() -> None:
    model = initial_model(3, 8, True, [0])
    with pytest.raises(ValueError, match="not side by side in one buffer; flatten"):
        joined([w for w in model.hidden_weights()[1:]])  # not flattened: own tensors
    flatten_parameters(model)
    weights = model.hidden_weights()
    with pytest.raises(ValueError, match="not side by side"):
        joined([weights[2], weights[1]])  # the wrong order
    with pytest.raises(ValueError, match="not side by side"):
        joined([weights[0], weights[1]])  # different shapes
