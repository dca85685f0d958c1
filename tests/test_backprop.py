"""The hand-written backward pass: on the CPU, exactly autograd's result."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.backprop import blocks_of, loss_and_gradients
from pipeline.model import DeepMLP
from pipeline.training import make_optimizer, training_step

from .test_training import synthetic_data


def model_with_grads(depth: int, width: int, batchnorm: bool) -> DeepMLP:
    torch.manual_seed(0)
    model = DeepMLP(depth, width, batchnorm)
    make_optimizer(model, 1e-3, [0.9, 0.999], 1e-8, 0.0)  # the flat .grad buffers
    return model


def autograd_reference(model: DeepMLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.train()
    for p in model.parameters():
        p.grad = None
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach()


def state(model: DeepMLP) -> dict[str, torch.Tensor]:
    """Parameters, their gradients and the BatchNorm buffers, as copies."""
    tensors = {name: t.detach().clone() for name, t in model.state_dict().items()}
    grads = {f"{name}.grad": p.grad.clone() for name, p in model.named_parameters()}
    return tensors | grads


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize(("depth", "width", "batch"), [(10, 64, 64), (1, 8, 5), (3, 16, 37)])
def test_one_pass_is_bit_identical_to_autograd(
    batchnorm: bool, depth: int, width: int, batch: int
) -> None:
    data = synthetic_data(n_train=batch)
    x, y = data.train_x, data.train_y
    manual = model_with_grads(depth, width, batchnorm)
    for p in manual.parameters():
        p.grad.fill_(123.0)  # stale contents must be overwritten, not added to
    reference = model_with_grads(depth, width, batchnorm)

    loss = loss_and_gradients(manual)(x, y)
    expected_loss = autograd_reference(reference, x, y)

    assert torch.equal(loss, expected_loss)
    got, expected = state(manual), state(reference)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    if batchnorm:  # the pass moved the running statistics, as the module does
        assert int(manual.hidden[0][1].num_batches_tracked) == 1
        assert not torch.equal(manual.hidden[0][1].running_mean, torch.zeros(width))


@pytest.mark.parametrize("batchnorm", [True, False])
def test_training_steps_match_autograd_steps_exactly(batchnorm: bool) -> None:
    data = synthetic_data(n_train=300)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    losses, states = {}, {}
    for use_autograd in (False, True):
        torch.manual_seed(0)
        model = DeepMLP(4, 16, batchnorm)
        optimizer = make_optimizer(model, 1e-2, [0.9, 0.999], 1e-8, 0.0)
        step = training_step(model, optimizer, data.train_x, data.train_y,
                             use_autograd=use_autograd)  # fmt: skip
        results = [step(order[start : start + 32]) for start in range(0, 300, 32)]
        losses[use_autograd] = torch.stack([loss for loss, _ in results])
        states[use_autograd] = (model.state_dict(), torch.stack([n for _, n in results]))
    assert torch.equal(losses[False], losses[True])
    (manual, manual_norms), (reference, reference_norms) = states[False], states[True]
    assert torch.equal(manual_norms, reference_norms)
    for name, tensor in reference.items():
        assert torch.equal(manual[name], tensor), name
    assert losses[False][-1] < losses[False][0]  # and it trains


def test_a_changed_model_is_refused_by_name() -> None:
    model = DeepMLP(3, 8, batchnorm=False)
    model.hidden[1] = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1), nn.ReLU())
    with pytest.raises(TypeError, match=r"hidden block 2 is Linear -> Dropout -> ReLU"):
        blocks_of(model)


def test_batchnorm_without_momentum_is_refused() -> None:
    model = DeepMLP(2, 8, batchnorm=True)
    model.hidden[0][1].momentum = None  # a cumulative average: not what the step computes
    with pytest.raises(TypeError, match=r"hidden block 1: BatchNorm1d needs"):
        blocks_of(model)
