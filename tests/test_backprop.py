"""The hand-written backward pass: autograd's result on the stacked model,
for one seed and for several.

It calls the kernels autograd calls on the same numbers, but batches some
(every hidden weight gradient after the first in one matmul) and writes
results into views where autograd makes new tensors: other memory layouts,
which a BLAS may handle in another order. So the two agree to rounding, not
by construction bit for bit, and these tests hold them to bounds that a
real mistake (a missing term, a wrong seed's batch) exceeds by orders of
magnitude. What the pass
computes over hundreds of steps is held to the maths by tests/test_training.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.nn.backprop import blocks_of, loss_and_gradients, stacked_loss
from pipeline.nn.model import ACTIVATIONS, StackedMLP
from pipeline.nn.training import initial_model, make_optimizer, training_step

from .test_training import adam_noise_bound, noise_driven, synthetic_data

# Relative to a tensor's largest value: one pass is a chain of about 30
# kernels, sums of up to 784 terms among them, each rounding at the unit
# roundoff (6e-8 in float32, 1.1e-16 in float64): a few hundred roundoffs at
# most, so 1e-5 and 1e-10 leave a margin of ten and more. Seen: 1.2e-7 in
# float32 (the head's weight gradient, one matmul with transposed operands
# where autograd makes another layout), 5e-14 in float64 (ten steps included).
RELATIVE = {torch.float32: 1e-5, torch.float64: 1e-10}


def assert_same(
    got: torch.Tensor, expected: torch.Tensor, name: str, batchnorm: bool, steps: int
) -> None:
    """Equal to RELATIVE of the tensor's largest value (a wrong gradient is
    off by its own size); where the tensor follows rounding noise, to that
    noise's bound after `steps` Adam steps (tests/test_training.py)."""
    if not expected.is_floating_point():  # num_batches_tracked
        assert torch.equal(got, expected), name
        return
    floor = adam_noise_bound(steps, expected.dtype) if noise_driven(name, batchnorm) else 0.0
    bound = RELATIVE[expected.dtype] * expected.abs().max().item() + floor
    torch.testing.assert_close(got, expected, rtol=0, atol=bound, msg=name)


def model_with_grads(
    depth: int,
    width: int,
    batchnorm: bool,
    seeds: int,
    dtype: torch.dtype = torch.float32,
    activation: str = "relu",
    inputs: str = "scaled",
) -> StackedMLP:
    model = initial_model(depth, width, batchnorm, list(range(seeds)), activation,
                          inputs=inputs).to(dtype)  # fmt: skip
    make_optimizer(model, 1e-3, [0.9, 0.999], 1e-8, 0.0)  # the flat .grad buffers
    return model


def autograd_reference(model: StackedMLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.train()
    for p in model.parameters():
        p.grad = None
    losses = stacked_loss(model(x), y)
    losses.sum().backward()
    return losses.detach()


def state(model: StackedMLP) -> dict[str, torch.Tensor]:
    """Parameters, their gradients and the BatchNorm buffers, as copies."""
    tensors = {name: t.detach().clone() for name, t in model.state_dict().items()}
    grads = {f"{name}.grad": p.grad.clone() for name, p in model.named_parameters()}
    return tensors | grads


def batches(
    seeds: int, batch: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """A different batch per seed, (K, B, 784) and (K, B)."""
    data = synthetic_data(n_train=seeds * batch)
    return data.train_x.view(seeds, batch, -1).to(dtype), data.train_y.view(seeds, batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize(
    ("seeds", "depth", "width", "batch"),
    [
        (1, 10, 64, 64),
        (5, 10, 64, 64),
        (1, 1, 8, 5),
        (3, 3, 16, 37),
        (2, 3, 10, 8),  # width = the classes: the head's tensors group with the hidden ones
        (2, 2, 784, 5),  # width = the pixels: the first layer's weight groups with the rest
    ],
)
def test_one_pass_matches_autograd(
    batchnorm: bool, seeds: int, depth: int, width: int, batch: int, dtype: torch.dtype
) -> None:
    x, y = batches(seeds, batch, dtype)
    manual = model_with_grads(depth, width, batchnorm, seeds, dtype)
    for p in manual.parameters():
        p.grad.fill_(123.0)  # stale contents must be overwritten, not added to
    reference = model_with_grads(depth, width, batchnorm, seeds, dtype)

    losses = loss_and_gradients(manual)(x, y)
    expected_losses = autograd_reference(reference, x, y)

    assert losses.shape == (seeds,)
    assert_same(losses, expected_losses, "losses", batchnorm, steps=0)
    got, expected = state(manual), state(reference)
    assert got.keys() == expected.keys()
    for name in expected:
        assert_same(got[name], expected[name], name, batchnorm, steps=0)
    if batchnorm:  # the pass moved the running statistics, as the module does
        assert int(manual.hidden[0][1].num_batches_tracked) == 1
        assert not torch.equal(manual.hidden[0][1].running_mean, torch.zeros(seeds, width))


@pytest.mark.parametrize("batchnorm", [True, False])
def test_training_steps_match_autograd_steps(batchnorm: bool) -> None:
    # In float64: ten float32 steps would let the noise-driven biases drift
    # apart by up to adam_noise_bound(10, float32) = 20, no bound at all.
    dtype = torch.float64
    data = synthetic_data(n_train=300)
    x = data.train_x.to(dtype)
    generator = torch.Generator().manual_seed(0)
    orders = torch.stack([torch.randperm(300, generator=generator) for _ in range(3)])
    losses, states = {}, {}
    for use_autograd in (False, True):
        model = initial_model(4, 16, batchnorm, [0, 1, 2]).to(dtype)
        optimizer = make_optimizer(model, 1e-2, [0.9, 0.999], 1e-8, 0.0)
        step = training_step(model, optimizer, x, data.train_y,
                             use_autograd=use_autograd)  # fmt: skip
        results = []
        for start in range(0, 300, 32):  # the last batch is partial (12 images)
            loss, norms = step(orders[:, start : start + 32])
            # the norms' tensor is the step's own: copied before the next step
            results.append((loss, norms.clone()))
        losses[use_autograd] = torch.stack([loss for loss, _ in results])
        states[use_autograd] = (model.state_dict(), torch.stack([n for _, n in results]))
    assert_same(losses[False], losses[True], "losses", batchnorm, steps=10)
    (manual, manual_norms), (reference, reference_norms) = states[False], states[True]
    assert manual_norms.shape == (10, 2, 4, 3)  # steps, [weight, activation input], layers, seeds
    assert_same(manual_norms, reference_norms, "gradient norms", batchnorm, steps=10)
    for name, tensor in reference.items():
        assert_same(manual[name], tensor, name, batchnorm, steps=10)
    assert (losses[False][-1] < losses[False][0]).all()  # and every seed trains


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("inputs", ["scaled", "binary"])
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_each_activation_and_input_matches_autograd(
    activation: str, batchnorm: bool, inputs: str, dtype: torch.dtype
) -> None:
    # Each activation's backward kernel (threshold, tanh, sigmoid backward)
    # and the binarised images in the first layer's weight gradient: autograd
    # differentiates the module's own forward, so a wrong derivative, or
    # the raw images where the network reads binary ones, is off by the
    # gradient's own size.
    x, y = batches(3, 37, dtype)
    manual = model_with_grads(3, 16, batchnorm, 3, dtype, activation, inputs)
    for p in manual.parameters():
        p.grad.fill_(123.0)
    reference = model_with_grads(3, 16, batchnorm, 3, dtype, activation, inputs)
    assert {b.activation for b in blocks_of(manual)} == {ACTIVATIONS[activation]}

    losses = loss_and_gradients(manual)(x, y)
    assert_same(losses, autograd_reference(reference, x, y), "losses", batchnorm, steps=0)
    got, expected = state(manual), state(reference)
    assert got.keys() == expected.keys()
    for name in expected:
        assert_same(got[name], expected[name], name, batchnorm, steps=0)


OPTIMIZERS = {  # kind -> (lr, momentum)
    "adam": (1e-2, 0.0),
    "sgd": (1e-1, 0.9),
}


@pytest.mark.parametrize("inputs", ["scaled", "binary"])
@pytest.mark.parametrize("optimizer_kind", list(OPTIMIZERS))
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_training_steps_match_autograd_steps_for_each_setting(
    activation: str, batchnorm: bool, optimizer_kind: str, inputs: str
) -> None:
    # As test_training_steps_match_autograd_steps, for every activation, both
    # optimizers and both inputs. assert_same's floor for the noise-driven
    # tensors is Adam's drift, lr * noise / eps a step; SGD moves them by at
    # most lr * noise / (1 - momentum) a step, 1e6 times less: the floor holds.
    dtype = torch.float64
    data = synthetic_data(n_train=300)
    x = data.train_x.to(dtype)
    generator = torch.Generator().manual_seed(0)
    orders = torch.stack([torch.randperm(300, generator=generator) for _ in range(3)])
    lr, momentum = OPTIMIZERS[optimizer_kind]
    losses, states = {}, {}
    for use_autograd in (False, True):
        model = initial_model(4, 16, batchnorm, [0, 1, 2], activation, inputs=inputs).to(dtype)
        initial = {name: t.clone() for name, t in model.state_dict().items()}
        optimizer = make_optimizer(model, lr, [0.9, 0.999], 1e-8, 0.0, kind=optimizer_kind,
                                   momentum=momentum)  # fmt: skip
        step = training_step(model, optimizer, x, data.train_y, use_autograd=use_autograd)
        results = []
        for start in range(0, 300, 32):
            loss, norms = step(orders[:, start : start + 32])
            results.append((loss, norms.clone()))
        losses[use_autograd] = torch.stack([loss for loss, _ in results])
        states[use_autograd] = (model.state_dict(), torch.stack([n for _, n in results]))
    assert_same(losses[False], losses[True], "losses", batchnorm, steps=10)
    (manual, manual_norms), (reference, reference_norms) = states[False], states[True]
    assert manual_norms.shape == (10, 2, 4, 3)
    assert_same(manual_norms, reference_norms, "gradient norms", batchnorm, steps=10)
    for name, tensor in reference.items():
        assert_same(manual[name], tensor, name, batchnorm, steps=10)
    # the steps moved the weights, by 1e5 times the bound above (~1e-11) and
    # more: sigmoid without BatchNorm under SGD moves them least (seen: 4e-4)
    moved = (manual["hidden.1.0.weight"] - initial["hidden.1.0.weight"]).abs().max()
    assert moved > 1e-6


@pytest.mark.parametrize("width", [8, 10, 784])
def test_gradient_norms_are_each_layers_and_seeds(width: int) -> None:
    # Held to a direct formula on the gradients the step leaves (lr 0: the
    # weights stay), not to the other backward pass.
    data = synthetic_data(n_train=64)
    model = initial_model(3, width, True, [0, 1])
    optimizer = make_optimizer(model, 0.0, [0.9, 0.999], 1e-8, 0.0)
    step = training_step(model, optimizer, data.train_x, data.train_y)
    _, norms = step(torch.stack([torch.arange(16), torch.arange(16, 32)]))
    expected = torch.stack([
        torch.stack([w.grad.flatten(1).norm(dim=1) for w in model.hidden_weights()]),
        # with BatchNorm, the gradient at the activation's input summed over the batch is beta's
        torch.stack([block[1].bias.grad.norm(dim=1) for block in model.hidden]),
    ])  # fmt: skip
    assert norms.shape == (2, 3, 2)  # [weight, activation input], layers, seeds
    torch.testing.assert_close(norms, expected, rtol=1e-6, atol=0)
    assert (norms > 0).all()


@pytest.mark.parametrize("batchnorm", [True, False])
def test_a_batch_of_another_size_in_between_changes_nothing(batchnorm: bool) -> None:
    # Each batch size has its own scratch blocks; going back to the first
    # size after a partial batch must give what a fresh pass gives.
    dtype = torch.float64
    x, y = batches(3, 16, dtype)
    short_x, short_y = batches(3, 5, dtype)
    manual = model_with_grads(3, 8, batchnorm, 3, dtype)
    run = loss_and_gradients(manual)
    first = run(x, y)
    run(short_x, short_y)
    # the reference starts where the running statistics are now (moved twice)
    reference = model_with_grads(3, 8, batchnorm, 3, dtype)
    reference.load_state_dict(manual.state_dict())
    assert_same(run(x, y), autograd_reference(reference, x, y), "losses", batchnorm, steps=0)
    got, expected = state(manual), state(reference)
    for name in expected:
        assert_same(got[name], expected[name], name, batchnorm, steps=0)
    assert first.shape == (3,)


def test_a_changed_model_is_refused_by_name() -> None:
    model = initial_model(3, 8, False, [0, 1])
    model.hidden[1] = nn.Sequential(model.hidden[1][0], nn.Dropout(0.1), nn.ReLU())
    with pytest.raises(TypeError, match=r"hidden block 2 is StackedLinear -> Dropout -> ReLU"):
        blocks_of(model)


def test_gradients_must_exist_first() -> None:
    with pytest.raises(ValueError, match=r"needs \.grad tensors"):
        loss_and_gradients(initial_model(2, 8, True, [0]))
