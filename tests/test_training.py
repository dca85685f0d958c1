"""The training loop: it learns, it is deterministic, its diagnostics mean what
they say, and stacking seeds changes nothing about what each seed learns."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from pipeline.data.mnist import DeviceData, Mnist, to_device
from pipeline.nn.diagnostics import DIAGNOSTICS
from pipeline.nn.model import DeepMLP, StackedMLP, stack
from pipeline.nn.training import (
    batch_starts,
    epoch_orders,
    evaluate,
    fit,
    initial_model,
    make_optimizer,
    train_epoch,
    training_step,
)

from .conftest import synthetic_digits

LR, BETAS, EPS = 1e-2, [0.9, 0.999], 1e-8


def synthetic_mnist(n_train: int, n_test: int) -> Mnist:
    train_images, train_labels = synthetic_digits(n_train, seed=1)
    test_images, test_labels = synthetic_digits(n_test, seed=2)
    return Mnist(
        torch.from_numpy(train_images),
        torch.from_numpy(train_labels).long(),
        torch.from_numpy(test_images),
        torch.from_numpy(test_labels).long(),
    )


def synthetic_data(n_train: int = 300, n_test: int = 100) -> DeviceData:
    return to_device(synthetic_mnist(n_train, n_test), torch.device("cpu"))


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def in_float64(data: DeviceData) -> DeviceData:
    return DeviceData(data.train_x.double(), data.train_y, data.test_x.double(), data.test_y)


def train(
    seeds: list[int],
    batchnorm: bool,
    epochs: int = 3,
    data: DeviceData | None = None,
    depth: int = 4,
    width: int = 16,
) -> tuple[StackedMLP, list]:
    """Train a stacked model; in float64 when `data` is (the seeded float32
    initial weights, widened)."""
    data = data or synthetic_data()
    model = initial_model(depth, width, batchnorm, seeds).to(data.train_x.dtype)
    optimizer = make_optimizer(model, LR, BETAS, EPS, 0.0)
    histories = fit(model, data, epochs=epochs, batch_size=32, optimizer=optimizer,
                    generators=generators(seeds))  # fmt: skip
    return model, histories


def test_scaling_is_bit_identical_to_to_tensor() -> None:
    from torchvision.transforms.functional import to_tensor

    mnist = synthetic_mnist(3, 2)
    data = to_device(mnist, torch.device("cpu"))
    expected = torch.stack([to_tensor(image.numpy()).flatten() for image in mnist.train_images])
    assert data.train_x.dtype == torch.float32
    assert torch.equal(data.train_x, expected)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_training_lowers_the_loss_and_learns(batchnorm: bool) -> None:
    _, histories = train([0, 1], batchnorm, epochs=4)
    assert len(histories) == 2
    for history in histories:
        assert history[-1].train_loss < 0.5 * history[0].train_loss
        assert history[-1].test_accuracy >= 0.9
        assert [r.epoch for r in history] == [1, 2, 3, 4]


def test_same_seeds_give_bit_identical_weights() -> None:
    first, histories_a = train([7, 8], batchnorm=True)
    second, histories_b = train([7, 8], batchnorm=True)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(histories_a, histories_b, strict=True):
        assert [r.train_loss for r in a] == [r.train_loss for r in b]


def test_another_seed_gives_other_weights() -> None:
    model, _ = train([7, 8], batchnorm=True, epochs=1)
    assert not torch.equal(model.output.weight[0], model.output.weight[1])


def test_initial_weights_are_the_seeded_deep_mlps_for_both_variants() -> None:
    stacked = {bn: initial_model(3, 8, bn, [3, 11]) for bn in (True, False)}
    for k, seed in enumerate([3, 11]):
        torch.manual_seed(seed)
        alone = DeepMLP(3, 8, batchnorm=True)
        for variant in stacked.values():
            torch.testing.assert_close(variant.unstack(k).hidden_weights()[2],
                                       alone.hidden_weights()[2], rtol=0, atol=0)  # fmt: skip
            assert torch.equal(variant.unstack(k).output.bias, alone.output.bias)


def reference_training(
    seed: int, batchnorm: bool, data: DeviceData, epochs: int, batch_size: int
) -> tuple[DeepMLP, list[float]]:
    """One seed trained the classic way: a plain DeepMLP, autograd, the
    usual torch.optim.Adam, batches in the order of the seed's generator;
    in the data's float type."""
    torch.manual_seed(seed)
    model = DeepMLP(4, 16, batchnorm).to(data.train_x.dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, betas=tuple(BETAS), eps=EPS)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(data.train_x), generator=generator)
        for start in batch_starts(len(order), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(data.train_x[index]), data.train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return model, losses


# Comparing two computations over hundreds of steps: stacked seeds against a
# seed alone, or one seed in other stacks. Both do the same maths in another
# order of float additions (other kernels, other vector widths: they differ
# between CPUs and between ATEN_CPU_CAPABILITY kernel sets), and training
# grows such rounding differences step by step: in float32 from ~1e-7 to
# past 1e-3 within 300 steps with BatchNorm and Adam, a growth of ~1e4. So
# these tests train in float64 (unit roundoff 1.1e-16), where the same growth
# gives ~1e-12: every weight must agree to MATHS_TOLERANCE, 100 times that.
# Seen after 300 steps on an AMD EPYC under the kernel sets default, avx2 and
# avx512: at most 2e-14. A mistake (a seed given another seed's batch or
# statistics, a wrong gradient) moves weights by 1e-3 or more in a step.
MATHS_TOLERANCE = 1e-10
# Except the tensors that follow rounding rather than the data: BatchNorm
# cancels the bias of the Linear before it, so that bias's true gradient is
# zero and its computed one is rounding noise, at most NOISE_GRADIENT (seen:
# 4.5e-7 in float32, 1e-15 in float64, at the first step of
# tests/test_backprop.py's networks; smaller once training settles). Adam's step divides it by its running
# size plus eps, so it moves that bias by at most lr * noise / eps a step, in
# a random direction; the running mean follows that bias. The network's
# function does not depend on them.
NOISE_GRADIENT = {torch.float32: 1e-6, torch.float64: 1e-14}


def adam_noise_bound(steps: int, dtype: torch.dtype, lr: float = LR, eps: float = EPS) -> float:
    """How far apart two computations can put a noise-driven tensor: both
    gradients' noise, and both runs' drift of lr * noise / eps per step."""
    return 2 * NOISE_GRADIENT[dtype] * (1 + steps * lr / eps)


# 300 float64 steps of lr 1e-2: 2 * 1e-14 * (1 + 300 * 1e6) = 6e-6 (seen: 2e-9).
NOISE_TOLERANCE = adam_noise_bound(300, torch.float64)


def noise_driven(name: str, batchnorm: bool) -> bool:
    """A BatchNorm-cancelled bias (or its gradient), or the running mean that follows it."""
    return batchnorm and (
        (name.startswith("hidden.") and ".0.bias" in name) or name.endswith("running_mean")
    )


def tolerance(name: str, batchnorm: bool) -> float:
    return NOISE_TOLERANCE if noise_driven(name, batchnorm) else MATHS_TOLERANCE


@pytest.mark.parametrize("batchnorm", [True, False])
def test_stacked_seeds_train_as_each_seed_would_alone(batchnorm: bool) -> None:
    # 3 epochs of 100 batches: 300 steps of each seed's own order, in one stacked model.
    data = in_float64(synthetic_data(n_train=3200, n_test=100))
    seeds = [0, 1, 2]
    stacked, histories = train(seeds, batchnorm, epochs=3, data=data)
    for k, seed in enumerate(seeds):
        alone, losses = reference_training(seed, batchnorm, data, epochs=3, batch_size=32)
        last_epoch = sum(losses[-100:]) / 100
        assert histories[k][-1].train_loss == pytest.approx(last_epoch, rel=MATHS_TOLERANCE)
        mine = stacked.unstack(k).state_dict()
        for name, expected in alone.state_dict().items():
            bound = tolerance(name, batchnorm)
            torch.testing.assert_close(mine[name], expected, rtol=0, atol=bound, msg=name)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_a_seed_learns_the_same_whatever_other_seeds_train_beside_it(batchnorm: bool) -> None:
    # Each seed's kernels see the same numbers in any stack; only fused
    # Adam's vector loop may take a seed's element in another lane, and the
    # matmuls another blocking: rounding, in float64 (see MATHS_TOLERANCE).
    data = in_float64(synthetic_data(n_train=640, n_test=100))
    results = {}
    for seeds in ([0, 1, 2], [2, 5], [2]):
        model, histories = train(seeds, batchnorm, epochs=3, data=data)
        k = seeds.index(2)
        results[tuple(seeds)] = (model.unstack(k).state_dict(), histories[k])
    reference_state, reference_history = results[(2,)]
    for seeds in ((0, 1, 2), (2, 5)):
        state, history = results[seeds]
        for name, tensor in reference_state.items():
            bound = tolerance(name, batchnorm)
            torch.testing.assert_close(state[name], tensor, rtol=0, atol=bound, msg=name)
        for mine, alone in zip(history, reference_history, strict=True):
            assert mine.train_loss == pytest.approx(alone.train_loss, rel=MATHS_TOLERANCE)
            assert mine.test_accuracy == alone.test_accuracy


@pytest.mark.parametrize(
    ("count", "batch", "expected"),
    [(10, 4, [0, 4, 8]), (9, 4, [0, 4]), (8, 4, [0, 4]), (60000, 64, list(range(0, 60000, 64)))],
)
def test_batches_keep_a_partial_batch_but_not_a_single_image(
    count: int, batch: int, expected: list[int]
) -> None:
    assert list(batch_starts(count, batch)) == expected


def test_each_seed_gets_its_own_order_every_epoch() -> None:
    seeds = [3, 4]
    orders = epoch_orders(generators(seeds), 50, torch.device("cpu"))
    again = epoch_orders(generators(seeds), 50, torch.device("cpu"))
    assert orders.shape == (2, 50) and torch.equal(orders, again)
    assert torch.equal(orders[0], torch.randperm(50, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(orders[0], orders[1])
    assert sorted(orders[1].tolist()) == list(range(50))


def test_a_batch_size_leaving_one_image_trains_with_batchnorm() -> None:
    data = synthetic_data(n_train=33)  # 33 = 2 * 16 + 1: BatchNorm cannot take the last one
    model = initial_model(2, 8, True, [0, 1])
    optimizer = make_optimizer(model, 1e-3, BETAS, EPS, 0.0)
    seen = []
    step = training_step(model, optimizer, data.train_x, data.train_y)
    train_epoch(model, step, data.train_x, 16, generators([0, 1]),
                on_progress=lambda n, loss: seen.append(n))  # fmt: skip
    assert seen == [2]  # two batches of 16; the single image was left out
    (flat,) = optimizer.param_groups[0]["params"]
    assert optimizer.state[flat]["step"].item() == 2


def test_epoch_records_every_diagnostic_per_layer_and_seed() -> None:
    _, histories = train([0, 1], batchnorm=False, epochs=2)
    for history in histories:
        metrics = history[-1].metrics()
        assert {"train_loss", "test_loss", "test_accuracy", "epoch_seconds"} <= set(metrics)
        for layer in range(1, 5):
            for name in ("act_mean", "act_std", "dead_fraction", "grad_norm", *DIAGNOSTICS,
                         "input_grad_norm"):  # fmt: skip
                assert f"layer_{layer:02d}/{name}" in metrics
        assert len(metrics) == 4 + 4 * 12
        assert all(layer.grad_norm > 0 for layer in history[-1].layers)
        assert all(layer.input_grad_norm > 0 for layer in history[-1].layers)
        assert history[-1].epoch_seconds > 0
    assert histories[0][-1].layers != histories[1][-1].layers  # each seed its own numbers


def known_network() -> DeepMLP:
    model = DeepMLP(1, 3, batchnorm=False)
    with torch.no_grad():
        linear = model.hidden[0][0]
        linear.weight.zero_()
        linear.weight[0, 0] = 1.0  # unit 0 copies pixel 0
        linear.bias.copy_(torch.tensor([0.0, 2.0, -1.0]))  # unit 1 constant 2, unit 2 dead
        model.output.weight.zero_()
        model.output.bias.copy_(torch.arange(10.0))  # always predicts class 9
    return model


def test_evaluate_statistics_on_a_network_with_known_activations() -> None:
    other = DeepMLP(1, 3, batchnorm=False)  # a second seed: its numbers are its own
    stacked = stack([known_network(), other])
    x = torch.zeros(4, 784)
    x[:, 0] = torch.tensor([0.0, 0.5, 1.0, 0.5])
    y = torch.tensor([9, 9, 9, 1])
    (loss, accuracy, layers), second = evaluate(stacked, x, y)
    assert accuracy == pytest.approx(0.75)
    values = torch.tensor([0.0, 0.5, 1.0, 0.5, 2, 2, 2, 2, 0, 0, 0, 0])
    assert layers[0]["act_mean"] == pytest.approx(values.mean().item())
    assert layers[0]["act_std"] == pytest.approx(values.std(correction=0).item())
    assert layers[0]["dead_fraction"] == pytest.approx(1 / 3)
    expected_loss = F.cross_entropy(torch.arange(10.0).repeat(4, 1), y)
    assert loss == pytest.approx(expected_loss.item())
    other_logits = other.eval()(x)
    assert second[0] == pytest.approx(F.cross_entropy(other_logits, y).item())
    assert second[1] == (other_logits.argmax(1) == y).float().mean().item()


def test_progress_reports_the_running_loss() -> None:
    data = synthetic_data(n_train=300)
    model = initial_model(2, 8, True, [0, 1, 2])
    optimizer = make_optimizer(model, 1e-3, BETAS, EPS, 0.0)
    seen = []
    step = training_step(model, optimizer, data.train_x, data.train_y)
    losses, _, _ = train_epoch(
        model, step, data.train_x, 4, generators([0, 1, 2]),
        on_progress=lambda n, running: seen.append((n, running)),
    )  # fmt: skip
    assert [n for n, _ in seen] == [50, 75]  # every 50 batches, and the last one
    assert seen[-1][1] == pytest.approx(sum(losses) / 3)  # the mean over seeds


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_steps_are_the_momentum_formula_on_the_gradients(weight_decay: float) -> None:
    # Two steps, as the first alone does not show momentum: PyTorch's SGD
    # (dampening 0, not Nesterov) keeps b_1 = g_1 + wd p_0, then
    # b_2 = m b_1 + g_2 + wd p_1, and steps p_t = p_{t-1} - lr b_t, with g_t
    # the gradient the step leaves in .grad. In float64 each element is a few
    # operations on values below 1: rounding ~1e-16 (seen 6e-17), held to
    # 1e-13; dropping the momentum term is off by lr m b_1 ~ 5e-2.
    lr, momentum = 0.1, 0.9
    data = in_float64(synthetic_data(n_train=96))
    model = initial_model(3, 8, True, [0, 1], "tanh").double()
    optimizer = make_optimizer(model, lr, BETAS, EPS, weight_decay, kind="sgd",
                               momentum=momentum)  # fmt: skip
    assert isinstance(optimizer, torch.optim.SGD)
    step = training_step(model, optimizer, data.train_x, data.train_y)
    (flat,) = optimizer.param_groups[0]["params"]
    p0 = flat.detach().clone()
    step(torch.stack([torch.arange(16), torch.arange(16, 32)]))
    g1, p1 = flat.grad.clone(), flat.detach().clone()
    step(torch.stack([torch.arange(32, 48), torch.arange(48, 64)]))
    g2, p2 = flat.grad.clone(), flat.detach().clone()
    b1 = g1 + weight_decay * p0
    b2 = momentum * b1 + g2 + weight_decay * p1
    torch.testing.assert_close(p1, p0 - lr * b1, rtol=0, atol=1e-13)
    torch.testing.assert_close(p2, p1 - lr * b2, rtol=0, atol=1e-13)
    assert (momentum * lr * b1).abs().max() > 1e-3  # the momentum term matters here


def test_an_unknown_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match=r"optimizer 'rmsprop': must be adam or sgd"):
        make_optimizer(initial_model(2, 8, True, [0]), LR, BETAS, EPS, 0.0, kind="rmsprop")


def test_adam_is_the_default_optimizer_with_its_settings() -> None:
    optimizer = make_optimizer(initial_model(2, 8, True, [0]), LR, [0.8, 0.99], 1e-7, 0.01)
    assert isinstance(optimizer, torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (LR, (0.8, 0.99), 1e-7)
    assert group["weight_decay"] == 0.01
