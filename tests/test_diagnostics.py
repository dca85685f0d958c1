"""The activation inputs' diagnostics: percentiles as numpy has them, the
flat region where each activation's slope is a tenth of its largest, the
numbers evaluate() reports for a network whose activation inputs are known,
the gradient at the activation inputs as autograd has it, and their record
per epoch in the train summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.nn.diagnostics import (
    DIAGNOSTICS,
    FLAT_SLOPE,
    PERCENTILES,
    TYPICAL_UNIT,
    flat_fraction,
    flat_threshold,
    layer_diagnostics,
    percentiles,
)
from pipeline.nn.history import (
    EPOCH_LAYER_KEYS,
    LAYER_KEYS,
    Divergence,
    EpochRecord,
    LayerStats,
    summarize,
)
from pipeline.nn.model import ACTIVATIONS, DeepMLP, stack
from pipeline.nn.training import (
    evaluate,
    gradient_at_activation_inputs,
    initial_model,
    make_optimizer,
    training_step,
)

from .test_training import synthetic_data

# Percentiles by linear interpolation are a subtraction, a product and a sum
# on float64 values of order 1: a few units of roundoff (1.1e-16) apart
# between implementations; 1e-12 leaves a wide margin, and a wrong rank or
# method is off by the gap between neighbouring values (~1e-2 here).
CLOSE = 1e-12


def derivative(activation: str, z: float) -> float:
    """The activation's slope at z, by autograd in float64."""
    point = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    ACTIVATIONS[activation]()(point).backward()
    return point.grad.item()


@pytest.mark.parametrize("rows", [1, 2, 7, 100])
def test_percentiles_are_numpys(rows: int) -> None:
    values = torch.randn(3, rows, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = percentiles(values)
    assert got.shape == (3, 3)  # (len(PERCENTILES), K)
    expected = np.percentile(values.numpy(), PERCENTILES, axis=1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=CLOSE)
    assert PERCENTILES == (15, 50, 85)


def test_percentiles_interpolate_between_ranks() -> None:
    # numpy's linear method: rank q/100 * (M - 1); of 0, 10, 20, 30, 40 the
    # 15th percentile sits at rank 0.6 (6), the 85th at 3.4 (34)
    values = torch.tensor([[40.0, 0.0, 30.0, 10.0, 20.0]], dtype=torch.float64)
    torch.testing.assert_close(
        percentiles(values), torch.tensor([[6.0], [20.0], [34.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(percentiles(values, (0, 100)).flatten(), values[0, [1, 0]])


@pytest.mark.parametrize(("activation", "slope_max"), [("tanh", 1.0), ("sigmoid", 0.25)])
def test_flat_threshold_is_where_the_slope_is_a_tenth_of_its_largest(
    activation: str, slope_max: float
) -> None:
    threshold = flat_threshold(activation)
    assert derivative(activation, 0.0) == pytest.approx(slope_max, rel=1e-15)  # the largest
    for side in (1, -1):
        # the slope at the threshold: 1 - tanh^2 or s (1 - s), each a few
        # roundoffs of its value, 0.1 or 0.025
        assert derivative(activation, side * threshold) == pytest.approx(
            FLAT_SLOPE * slope_max, rel=1e-12
        )
        # and the slope falls through it: steeper inside, flatter outside
        assert derivative(activation, side * threshold * 0.99) > FLAT_SLOPE * slope_max
        assert derivative(activation, side * threshold * 1.01) < FLAT_SLOPE * slope_max
    assert FLAT_SLOPE == 0.1
    assert threshold == pytest.approx({"tanh": 1.8184464592320668,
                                       "sigmoid": 3.6368929184641337}[activation], rel=1e-15)  # fmt: skip


def test_relus_flat_side_is_below_zero() -> None:
    assert flat_threshold("relu") == 0.0
    assert derivative("relu", -1e-9) == 0.0
    assert derivative("relu", 1e-9) == 1.0


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_flat_fraction_counts_the_inputs_past_the_threshold(activation: str) -> None:
    t = {"relu": 1.0, "tanh": flat_threshold("tanh"), "sigmoid": flat_threshold("sigmoid")}
    t = t[activation]
    below, above = 1 - 1e-9, 1 + 1e-9  # just inside and just outside |z| = threshold
    if activation == "relu":
        # seed 0: two of six below zero; seed 1: five of six
        z = torch.tensor([[[-1e-12, 1e-12, 3.0], [-5.0, 0.5, 1e-3]],
                          [[-1e-12, -1.0, -2.0], [-5.0, -0.5, 1e-3]]],
                         dtype=torch.float64)  # fmt: skip
        expected = [2 / 6, 5 / 6]
    else:
        # seed 0: t above, -t above and 50 past; seed 1: only -50 past
        z = torch.tensor([[[t * above, t * below, -t * above], [-t * below, 0.0, 50.0]],
                          [[t * below, -t * below, 0.1], [-50.0, 1.0, -1.0]]],
                         dtype=torch.float64)  # fmt: skip
        expected = [3 / 6, 1 / 6]
    got = flat_fraction(z, activation)
    assert got.shape == (2,)
    assert got.tolist() == expected


def test_layer_diagnostics_follow_unit_zero() -> None:
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 9, dtype=torch.float64, generator=generator) * 3  # (K, width, N)
    got = layer_diagnostics(z, "tanh")
    assert got.shape == (len(DIAGNOSTICS), 2)
    assert DIAGNOSTICS == ("input_p15", "input_p50", "input_p85", "unit_p15", "unit_p50",
                           "unit_p85", "flat_fraction")  # fmt: skip
    assert TYPICAL_UNIT == 0
    values = z.numpy()
    expected = np.concatenate([
        np.percentile(values.reshape(2, -1), PERCENTILES, axis=1),
        np.percentile(values[:, 0], PERCENTILES, axis=1),
        (np.abs(values) > 1.8184464592320668).mean(axis=(1, 2))[None],
    ])  # fmt: skip
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=CLOSE)
    # the unit's rows are unit 0's: other units do not move them, unit 0 does
    others = z.clone()
    others[:, 1:] += 100
    torch.testing.assert_close(layer_diagnostics(others, "tanh")[3:6], got[3:6], rtol=0, atol=0)
    first = z.clone()
    first[:, 0] += 100
    assert (layer_diagnostics(first, "tanh")[3:6] - got[3:6] > 99).all()


# evaluate() on a network whose activation inputs are known: one hidden
# block of three units, images whose pixel 0 takes five values. Unit 0's
# input is 4 p - 2, unit 1's is 3 and unit 2's -5, for every image; with
# BatchNorm, its evaluation-mode map turns the Linear's outputs p, 3 and 0
# into those same inputs (so a diagnostic of the Linear's output is wrong).
PIXEL = [0.0, 0.2, 0.45, 0.8, 1.0]
UNIT_0 = [4 * p - 2 for p in PIXEL]  # -2, -1.2, -0.2, 1.2, 2
INPUTS = UNIT_0 + [3.0] * 5 + [-5.0] * 5
# relu: 3 of unit 0's and unit 2's 5 are below zero; tanh (|z| > 1.818):
# -2 and 2, and units 1 and 2; sigmoid (|z| > 3.637): unit 2 only
FLAT = {"relu": 8 / 15, "tanh": 12 / 15, "sigmoid": 5 / 15}


def known_network(activation: str, batchnorm: bool) -> DeepMLP:
    model = DeepMLP(1, 3, batchnorm, activation).double().eval()

    def values(numbers: list[float]) -> torch.Tensor:
        return torch.tensor(numbers, dtype=torch.float64)

    with torch.no_grad():
        linear = model.hidden[0][0]
        linear.weight.zero_()
        if batchnorm:
            linear.weight[0, 0] = 1.0
            linear.bias.copy_(values([0.0, 3.0, 0.0]))
            norm = model.hidden[0][1]  # (z - mean) / sqrt(var + eps) * gamma + beta
            norm.running_mean.copy_(values([0.5, 0.0, 0.0]))
            norm.running_var.copy_(values([1 / 64, 1.0, 1.0]) - norm.eps)
            norm.weight.copy_(values([0.5, 1.0, 1.0]))
            norm.bias.copy_(values([0.0, 0.0, -5.0]))
        else:
            linear.weight[0, 0] = 4.0
            linear.bias.copy_(values([-2.0, 3.0, -5.0]))
    return model


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_evaluate_reports_the_known_activation_inputs(activation: str, batchnorm: bool) -> None:
    torch.manual_seed(0)
    other = DeepMLP(1, 3, batchnorm, activation).double().eval()  # a second seed
    known = known_network(activation, batchnorm)
    stacked = stack([known, other]).double().eval()  # stack makes float32 tensors: widened,
    with torch.no_grad():  # then seed 0's float64 values written in
        slots = stacked.state_dict()
        for name, tensor in known.state_dict().items():
            if tensor.dim() > 0:
                slots[name][0] = tensor
    x = torch.zeros(5, 784, dtype=torch.float64)
    x[:, 0] = torch.tensor(PIXEL, dtype=torch.float64)
    y = torch.arange(5)
    (_, _, layers), (_, _, other_layers) = evaluate(stacked, x, y)
    (layer,) = layers
    every = np.percentile(INPUTS, PERCENTILES)
    unit = np.percentile(UNIT_0, PERCENTILES)
    # BatchNorm's map: a division by sqrt(1/64) and products, a few roundoffs
    for name, value in zip(DIAGNOSTICS[:6], [*every, *unit], strict=True):
        assert layer[name] == pytest.approx(value, rel=0, abs=CLOSE), name
    assert layer["flat_fraction"] == pytest.approx(FLAT[activation], rel=0, abs=CLOSE)
    # the other seed's numbers are its own network's
    with torch.no_grad():
        z = other.hidden[0][:-1](x).t().unsqueeze(0)  # (1, width, N)
    expected = layer_diagnostics(z, activation)[:, 0].tolist()
    got = [other_layers[0][name] for name in DIAGNOSTICS]
    assert got == pytest.approx(expected, rel=0, abs=CLOSE)


def summed_input_gradients(model: DeepMLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Autograd's gradient of the mean cross-entropy with respect to each
    activation module's input tensor (kept by a hook), summed over the
    batch: (depth, width)."""
    inputs: list[torch.Tensor] = []

    def keep(_module: nn.Module, args: tuple[torch.Tensor]) -> None:
        args[0].retain_grad()
        inputs.append(args[0])

    for block in model.hidden:
        block[-1].register_forward_pre_hook(keep)
    F.cross_entropy(model(x), y).backward()
    return torch.stack([z.grad.sum(0) for z in inputs])


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_gradient_at_activation_inputs_is_autograds(activation: str, batchnorm: bool) -> None:
    # The step's [1] norms and gradient_at_activation_inputs against autograd's
    # gradient with respect to each activation's input tensor, summed over
    # the batch, per seed, in float64: the same sums in another order, a few
    # hundred roundoffs (1.1e-16) of the largest value at most; 1e-10 of it.
    seeds, batch = [0, 1], 24
    data = synthetic_data(n_train=len(seeds) * batch)
    x = data.train_x.double()
    model = initial_model(3, 8, batchnorm, seeds, activation).double()
    plain = [model.unstack(k).train() for k in range(len(seeds))]  # before the step
    optimizer = make_optimizer(model, 0.0, [0.9, 0.999], 1e-8, 0.0)
    index = torch.arange(len(seeds) * batch).view(len(seeds), batch)
    _, norms = training_step(model, optimizer, x, data.train_y)(index)
    got = torch.stack(gradient_at_activation_inputs(model))  # (depth, K, width)

    per_seed = [summed_input_gradients(alone, x[index[k]], data.train_y[index[k]])
                for k, alone in enumerate(plain)]  # fmt: skip
    expected = torch.stack(per_seed, 1)  # (depth, K, width)
    bound = 1e-10 * expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=bound)
    torch.testing.assert_close(norms[1], expected.norm(dim=2), rtol=0, atol=bound)
    assert (expected.norm(dim=2) > 1e3 * bound).all()  # no layer's is ~0
    linear_bias_grads = torch.stack([block[0].bias.grad for block in model.hidden])
    if batchnorm:  # BatchNorm subtracts the batch mean: the Linear bias's true gradient is 0
        assert linear_bias_grads.abs().max() <= bound
    else:
        torch.testing.assert_close(got, linear_bias_grads, rtol=0, atol=0)


FIELDS = list(LayerStats.__dataclass_fields__)


def layer_stats(seed: int, epoch: int, layer: int) -> LayerStats:
    """Distinct values: seed in the thousands, epoch the hundreds, layer the tens."""
    return LayerStats(**{name: 1000 * seed + 100 * epoch + 10 * layer + k / 2
                         for k, name in enumerate(FIELDS)})  # fmt: skip


def test_summary_records_each_seeds_diagnostics_per_epoch_and_layer() -> None:
    def record(seed: int, epoch: int, accuracy: float, **changes: float) -> EpochRecord:
        layers = [layer_stats(seed, epoch, layer) for layer in (1, 2)]
        layers[0] = LayerStats(**(vars(layers[0]) | changes))
        diverged = Divergence(2, 3, math.nan) if math.isnan(accuracy) else None
        return EpochRecord(epoch, 0.5, 0.4, accuracy, 1.0, layers, diverged)

    histories = {
        0: [record(0, 1, 0.5), record(0, 2, 0.9)],
        # seed 1 diverged in epoch 2: its non-finite numbers become null
        5: [record(5, 1, 0.6), record(5, 2, math.nan, flat_fraction=math.nan,
                                      input_grad_norm=math.inf)],
    }  # fmt: skip
    summary = summarize(histories)
    json.dumps(summary, allow_nan=False)  # valid JSON: no NaN or infinity left
    assert (*DIAGNOSTICS, "input_grad_norm") == EPOCH_LAYER_KEYS
    per_epoch = summary["per_epoch"]
    assert per_epoch.keys() == {"0", "5"}
    assert per_epoch["0"]["epoch"] == [1, 2]
    assert per_epoch["0"]["test_accuracy"] == [0.5, 0.9]
    assert per_epoch["5"]["test_accuracy"] == [0.6, None]
    for seed, history in (("0", 0), ("5", 5)):
        layers = per_epoch[seed]["layers"]
        assert layers.keys() == set(EPOCH_LAYER_KEYS)
        for key in EPOCH_LAYER_KEYS:
            k = FIELDS.index(key) / 2  # [epoch][layer]
            expected = [[1000 * history + 100 * e + 10 * n + k for n in (1, 2)] for e in (1, 2)]
            if seed == "5" and key in ("flat_fraction", "input_grad_norm"):
                expected[1][0] = None
            assert layers[key] == expected, (seed, key)
    assert per_epoch["0"]["layers"]["input_p50"] == [[110.0 + 2.5, 120.0 + 2.5],
                                                     [210.0 + 2.5, 220.0 + 2.5]]  # fmt: skip
    # the last epoch's layer means are over the seeds that learnt: seed 0 alone
    assert LAYER_KEYS == ("dead_fraction", "grad_norm", "flat_fraction", "input_grad_norm")
    assert summary["layers"]["flat_fraction"] == [vars(layer_stats(0, 2, n))["flat_fraction"]
                                                  for n in (1, 2)]  # fmt: skip
    assert summary["layers"]["input_grad_norm"] == [215.5, 225.5]
