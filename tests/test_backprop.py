"""The hand-written backward pass: on the CPU, exactly autograd's result on the
stacked model, for one seed and for several.

In float32, the type the project trains in, exactly, bit for bit, by
construction: it calls the ATen kernels autograd calls, with the same
arguments in the same order, so on one machine and kernel set
(ATEN_CPU_CAPABILITY) both get the same rounding. A kernel set changes the
bits of both, never their agreement. In float64 the first layer's weight
gradient, a bmm over the transposed view of the images, takes another BLAS
path in one of the two (seen on an AMD EPYC, every kernel set), so there the
two agree to float64 rounding: FLOAT64_TOLERANCE. (What the pass computes is
held to the maths over hundreds of steps by tests/test_training.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.nn.backprop import blocks_of, loss_and_gradients, stacked_loss
from pipeline.nn.model import StackedMLP
from pipeline.nn.training import initial_model, make_optimizer, training_step

from .test_training import noise_driven, synthetic_data


def assert_same(got: torch.Tensor, expected: torch.Tensor, name: str, batchnorm: bool) -> None:
    """Bit for bit in float32; in float64 to FLOAT64_TOLERANCE relative to the
    tensor's largest value (a wrong gradient is off by its own size), or to
    NOISE_FLOOR where the tensor follows rounding noise."""
    if got.dtype != torch.float64:
        assert torch.equal(got, expected), name
        return
    floor = NOISE_FLOOR if noise_driven(name, batchnorm) else 0.0
    bound = FLOAT64_TOLERANCE * expected.abs().max().item() + floor
    torch.testing.assert_close(got, expected, rtol=0, atol=bound, msg=name)


# Ten steps of the same maths in two summation orders: relative rounding of
# about 1e-16 per operation, grown by a few hundred operations and ten Adam
# steps, stays far below 1e-10 (seen: 5e-14).
FLOAT64_TOLERANCE = 1e-10
# The gradient of a bias that BatchNorm cancels is zero, computed as a sum of
# terms that cancel: rounding noise of up to ~1e-16 in float64. Adam turns it
# into steps of up to lr * noise / eps = 1e-2 * 1e-16 / 1e-8 = 1e-10, ten of
# them here (seen: 6e-10 apart); the running mean follows that bias.
NOISE_FLOOR = 1e-8


def model_with_grads(
    depth: int, width: int, batchnorm: bool, seeds: int, dtype: torch.dtype = torch.float32
) -> StackedMLP:
    model = initial_model(depth, width, batchnorm, list(range(seeds))).to(dtype)
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
    [(1, 10, 64, 64), (5, 10, 64, 64), (1, 1, 8, 5), (3, 3, 16, 37)],
)
def test_one_pass_is_bit_identical_to_autograd(
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
    assert_same(losses, expected_losses, "losses", batchnorm)
    got, expected = state(manual), state(reference)
    assert got.keys() == expected.keys()
    for name in expected:
        assert_same(got[name], expected[name], name, batchnorm)
    if batchnorm:  # the pass moved the running statistics, as the module does
        assert int(manual.hidden[0][1].num_batches_tracked) == 1
        assert not torch.equal(manual.hidden[0][1].running_mean, torch.zeros(seeds, width))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batchnorm", [True, False])
def test_training_steps_match_autograd_steps_exactly(batchnorm: bool, dtype: torch.dtype) -> None:
    # Ten steps: in float32 bit for bit, the same kernels on the same numbers
    # at every step, so no rounding difference can start (module docstring).
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
        results = [step(orders[:, start : start + 32]) for start in range(0, 300, 32)]
        losses[use_autograd] = torch.stack([loss for loss, _ in results])
        states[use_autograd] = (model.state_dict(), torch.stack([n for _, n in results]))
    assert_same(losses[False], losses[True], "losses", batchnorm)
    (manual, manual_norms), (reference, reference_norms) = states[False], states[True]
    assert manual_norms.shape == (10, 4, 3)  # steps, layers, seeds
    assert_same(manual_norms, reference_norms, "gradient norms", batchnorm)
    for name, tensor in reference.items():
        assert_same(manual[name], tensor, name, batchnorm)
    assert (losses[False][-1] < losses[False][0]).all()  # and every seed trains


def test_a_changed_model_is_refused_by_name() -> None:
    model = initial_model(3, 8, False, [0, 1])
    model.hidden[1] = nn.Sequential(model.hidden[1][0], nn.Dropout(0.1), nn.ReLU())
    with pytest.raises(TypeError, match=r"hidden block 2 is StackedLinear -> Dropout -> ReLU"):
        blocks_of(model)


def test_gradients_must_exist_first() -> None:
    with pytest.raises(ValueError, match=r"needs \.grad tensors"):
        loss_and_gradients(initial_model(2, 8, True, [0]))
