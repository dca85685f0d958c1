"""The training loop: it learns, it is deterministic, its diagnostics mean what they say."""

from __future__ import annotations

import pytest
import torch

from pipeline.mnist import Mnist
from pipeline.model import DeepMLP
from pipeline.training import (
    DeviceData,
    batch_starts,
    evaluate,
    fit,
    make_optimizer,
    to_device,
    train_epoch,
    training_step,
)

from .conftest import synthetic_digits


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


def train(seed: int, batchnorm: bool, epochs: int = 3, data: DeviceData | None = None):
    data = data or synthetic_data()
    torch.manual_seed(seed)
    model = DeepMLP(4, 16, batchnorm)
    optimizer = make_optimizer(model, 1e-2, [0.9, 0.999], 1e-8, 0.0)
    history = fit(
        model,
        data,
        epochs=epochs,
        batch_size=32,
        optimizer=optimizer,
        generator=torch.Generator().manual_seed(seed),
    )
    return model, history


def test_scaling_is_bit_identical_to_to_tensor() -> None:
    from torchvision.transforms.functional import to_tensor

    mnist = synthetic_mnist(3, 2)
    data = to_device(mnist, torch.device("cpu"))
    expected = torch.stack([to_tensor(image.numpy()).flatten() for image in mnist.train_images])
    assert data.train_x.dtype == torch.float32
    assert torch.equal(data.train_x, expected)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_training_lowers_the_loss_and_learns(batchnorm: bool) -> None:
    _, history = train(0, batchnorm, epochs=4)
    assert history[-1].train_loss < 0.5 * history[0].train_loss
    assert history[-1].test_accuracy >= 0.9
    assert [r.epoch for r in history] == [1, 2, 3, 4]


def test_same_seed_gives_bit_identical_weights() -> None:
    first, history_a = train(7, batchnorm=True)
    second, history_b = train(7, batchnorm=True)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [r.train_loss for r in history_a] == [r.train_loss for r in history_b]


def test_another_seed_gives_other_weights() -> None:
    first, _ = train(7, batchnorm=True, epochs=1)
    other, _ = train(8, batchnorm=True, epochs=1)
    assert not torch.equal(first.output.weight, other.output.weight)


@pytest.mark.parametrize(
    ("count", "batch", "expected"),
    [(10, 4, [0, 4, 8]), (9, 4, [0, 4]), (8, 4, [0, 4]), (60000, 64, list(range(0, 60000, 64)))],
)
def test_batches_keep_a_partial_batch_but_not_a_single_image(
    count: int, batch: int, expected: list[int]
) -> None:
    assert list(batch_starts(count, batch)) == expected


def test_a_batch_size_leaving_one_image_trains_with_batchnorm() -> None:
    data = synthetic_data(n_train=33)  # 33 = 2 * 16 + 1: BatchNorm cannot take the last one
    model = DeepMLP(2, 8, batchnorm=True)
    optimizer = make_optimizer(model, 1e-3, [0.9, 0.999], 1e-8, 0.0)
    seen = []
    step = training_step(model, optimizer, data.train_x, data.train_y)
    train_epoch(model, step, data.train_x, 16, torch.Generator(),
                on_progress=lambda n, loss: seen.append(n))  # fmt: skip
    assert seen == [2]  # two batches of 16; the single image was left out
    (flat,) = optimizer.param_groups[0]["params"]
    assert optimizer.state[flat]["step"].item() == 2


def test_epoch_records_every_diagnostic_per_layer() -> None:
    _, history = train(0, batchnorm=False, epochs=2)
    metrics = history[-1].metrics()
    assert {"train_loss", "test_loss", "test_accuracy", "epoch_seconds"} <= set(metrics)
    for layer in range(1, 5):
        for name in ("act_mean", "act_std", "dead_fraction", "grad_norm"):
            assert f"layer_{layer:02d}/{name}" in metrics
    assert len(metrics) == 4 + 4 * 4
    assert all(layer.grad_norm > 0 for layer in history[-1].layers)
    assert history[-1].epoch_seconds > 0


def test_evaluate_statistics_on_a_network_with_known_activations() -> None:
    model = DeepMLP(1, 3, batchnorm=False)
    with torch.no_grad():
        linear = model.hidden[0][0]
        linear.weight.zero_()
        linear.weight[0, 0] = 1.0  # unit 0 copies pixel 0
        linear.bias.copy_(torch.tensor([0.0, 2.0, -1.0]))  # unit 1 constant 2, unit 2 dead
        model.output.weight.zero_()
        model.output.bias.copy_(torch.arange(10.0))  # always predicts class 9
    x = torch.zeros(4, 784)
    x[:, 0] = torch.tensor([0.0, 0.5, 1.0, 0.5])
    y = torch.tensor([9, 9, 9, 1])
    loss, accuracy, layers = evaluate(model, x, y)
    assert accuracy == pytest.approx(0.75)
    values = torch.tensor([0.0, 0.5, 1.0, 0.5, 2, 2, 2, 2, 0, 0, 0, 0])
    assert layers[0]["act_mean"] == pytest.approx(values.mean().item())
    assert layers[0]["act_std"] == pytest.approx(values.std(correction=0).item())
    assert layers[0]["dead_fraction"] == pytest.approx(1 / 3)
    expected_loss = torch.nn.functional.cross_entropy(torch.arange(10.0).repeat(4, 1), y)
    assert loss == pytest.approx(expected_loss.item())


def test_progress_reports_the_running_loss() -> None:
    data = synthetic_data(n_train=300)
    model = DeepMLP(2, 8, batchnorm=True)
    optimizer = make_optimizer(model, 1e-3, [0.9, 0.999], 1e-8, 0.0)
    seen = []
    step = training_step(model, optimizer, data.train_x, data.train_y)
    loss, _ = train_epoch(
        model, step, data.train_x, 4, torch.Generator(),
        on_progress=lambda n, running: seen.append((n, running)),
    )  # fmt: skip
    assert [n for n, _ in seen] == [50, 75]  # every 50 batches, and the last one
    assert seen[-1][1] == pytest.approx(loss)
