"""The network: shapes, the BatchNorm switch, the activation, the initial
weights and the inputs it reads, one forward for logits and activations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.nn.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from pipeline.nn.model import ACTIVATIONS, DeepMLP, prepared, stack


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


def seeded_models(
    seeds: list[int],
    depth: int = 3,
    width: int = 8,
    bn: bool = True,
    activation: str = "relu",
    inputs: str = "scaled",
):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(DeepMLP(depth, width, bn, activation, inputs=inputs))
    return models


@pytest.mark.parametrize("batchnorm", [True, False])
def test_stack_then_unstack_gives_back_each_model(batchnorm: bool) -> None:
    models = seeded_models([4, 7, 9], bn=batchnorm)
    stacked = stack(models)
    assert stacked.seeds == 3 and stacked.config == models[0].config
    assert stacked.state_dict().keys() == models[0].state_dict().keys()
    for k, model in enumerate(models):
        plain = stacked.unstack(k)
        assert isinstance(plain, DeepMLP)
        for (name, a), b in zip(plain.state_dict().items(), model.state_dict().values(),
                                strict=True):  # fmt: skip
            assert torch.equal(a, b), name


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_stacked_forward_is_each_models_forward(
    batchnorm: bool, training: bool, activation: str
) -> None:
    # One forward pass each, in float64: the stacked and the plain model add
    # in other orders (batched against plain matmuls), which float32 would
    # show at ~1e-7; float64 keeps that to ~1e-15 on values of order 1.
    models = [m.double() for m in seeded_models([0, 1, 2], depth=4, width=16, bn=batchnorm,
                                                 activation=activation)]  # fmt: skip
    stacked = stack(models).double().train(training)
    for m in models:
        m.train(training)
    x = torch.rand(3, 10, 784, dtype=torch.float64)  # a batch per seed
    logits, activations = stacked.forward_with_activations(x)
    assert logits.shape == (3, 10, 10)
    assert [tuple(a.shape) for a in activations] == [(3, 16, 10)] * 4  # (K, width, B)
    for k, model in enumerate(models):
        expected, expected_activations = model.forward_with_activations(x[k])
        torch.testing.assert_close(logits[k], expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(
            activations[-1][k].t(), expected_activations[-1], rtol=0, atol=1e-12
        )
    if batchnorm and training:  # each seed's running statistics moved as its own module's did
        for k, model in enumerate(models):
            torch.testing.assert_close(stacked.hidden[2][1].running_mean[k],
                                       model.hidden[2][1].running_mean, rtol=0, atol=1e-12)  # fmt: skip
        assert int(stacked.hidden[0][1].num_batches_tracked) == 1


def test_shared_images_give_every_seed_its_own_logits() -> None:
    models = [m.double() for m in seeded_models([0, 5], depth=2, width=8)]  # as above
    stacked = stack(models).double().eval()
    x = torch.rand(6, 784, dtype=torch.float64)  # the same images for all seeds (evaluation)
    logits = stacked(x)
    assert logits.shape == (2, 6, 10)
    for k, model in enumerate(models):
        torch.testing.assert_close(logits[k], model.eval()(x), rtol=0, atol=1e-12)


def test_stacking_models_of_different_shapes_is_refused() -> None:
    with pytest.raises(ValueError, match="different configs"):
        stack([DeepMLP(2, 8, True), DeepMLP(3, 8, True)])


def test_unstacking_leaves_the_random_number_generator_alone() -> None:
    stacked = stack(seeded_models([0, 1]))
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    stacked.unstack(1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("batchnorm", [True, False])
def test_stacked_activation_inputs_are_each_models(activation: str, batchnorm: bool) -> None:
    # forward_with_activation_inputs: per block, the activation's input (the
    # BatchNorm output, or the Linear's) and output, as the plain model's
    # block computes them, in float64 as above.
    models = [m.double() for m in seeded_models([0, 1], depth=3, width=8, bn=batchnorm,
                                                 activation=activation)]  # fmt: skip
    stacked = stack(models).double().train()
    for m in models:
        m.train()
    x = torch.rand(2, 6, 784, dtype=torch.float64)
    logits, inputs, outputs = stacked.forward_with_activation_inputs(x)
    assert [type(block[-1]) for block in stacked.hidden] == [ACTIVATIONS[activation]] * 3
    for k, model in enumerate(models):
        h = x[k]
        for index, block in enumerate(model.hidden):
            z = block[:-1](h)  # (B, width)
            h = block[-1](z)
            torch.testing.assert_close(inputs[index][k].t(), z, rtol=0, atol=1e-12)
            torch.testing.assert_close(outputs[index][k].t(), h, rtol=0, atol=1e-12)
        torch.testing.assert_close(logits[k], model.output(h), rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("batchnorm", [True, False])
def test_default_init_is_pytorchs_linear_init(activation: str, batchnorm: bool) -> None:
    # init_std None: the weights nn.Linear draws after the same seed, in the
    # same order, whatever the activation (BatchNorm draws nothing).
    torch.manual_seed(5)
    model = DeepMLP(3, 16, batchnorm, activation, None, "scaled")
    torch.manual_seed(5)
    linears = [nn.Linear(784, 16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 10)]
    mine = [block[0] for block in model.hidden] + [model.output]
    for got, expected in zip(mine, linears, strict=True):
        assert torch.equal(got.weight, expected.weight)
        assert torch.equal(got.bias, expected.bias)
    assert model.config == {"depth": 3, "width": 16, "batchnorm": batchnorm,
                            "activation": activation, "init_std": None, "inputs": "scaled"}  # fmt: skip


@pytest.mark.parametrize("std", [0.1, 1.0])
def test_init_std_draws_gaussian_weights_of_that_std_and_zero_biases(std: float) -> None:
    # Over n i.i.d. N(0, std^2) draws the sample mean has std std / sqrt(n),
    # the sample std std / sqrt(2 n), the sample kurtosis (3 for a Gaussian)
    # sqrt(24 / n). With n = 100 * 784 + 2 * 100 * 100 + 100 * 10 = 99,400 five
    # of these (a miss once in 1.7 million draws) are 0.016 std, 0.011 std and
    # 0.078; PyTorch's default (uniform, std 1 / sqrt(3 fan_in), at most
    # 0.058) or a uniform of this std (kurtosis 1.8) are far outside.
    torch.manual_seed(0)
    model = DeepMLP(3, 100, True, "sigmoid", std, "binary")
    linears = [block[0] for block in model.hidden] + [model.output]
    weights = torch.cat([linear.weight.flatten() for linear in linears]).double()
    n = weights.numel()
    assert n == 99_400
    assert abs(weights.mean().item()) < 5 * std / n**0.5
    sample_std = weights.std().item()
    assert abs(sample_std - std) < 5 * std / (2 * n) ** 0.5
    kurtosis = ((weights / sample_std) ** 4).mean().item()
    assert abs(kurtosis - 3) < 5 * (24 / n) ** 0.5
    for linear in linears:
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
        # each layer its own draws of that std (4.5 sample-std deviations: n >= 1000)
        assert linear.weight.std().item() == pytest.approx(std, rel=5 / (2 * 1000) ** 0.5)
    norm = model.hidden[0][1]  # BatchNorm keeps its own init: gamma 1, beta 0
    assert torch.equal(norm.weight, torch.ones(100)) and torch.equal(norm.bias, torch.zeros(100))


def test_binary_inputs_are_pixels_above_half_intensity() -> None:
    x = torch.tensor([0.0, 127 / 255, 0.5, 128 / 255, 1.0])
    assert prepared(x, "binary").tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert prepared(x, "scaled") is x


@pytest.mark.parametrize("batchnorm", [True, False])
def test_a_binary_network_reads_the_thresholded_images(batchnorm: bool) -> None:
    (binary,) = seeded_models([3], depth=2, width=8, bn=batchnorm, inputs="binary")
    (scaled,) = seeded_models([3], depth=2, width=8, bn=batchnorm)
    binary.eval(), scaled.eval()
    x = torch.randint(0, 256, (6, 1, 28, 28)) / 255  # (B, 1, 28, 28), as the stages give them
    thresholded = (x > 0.5).float()
    assert torch.equal(binary(x), scaled(thresholded))
    assert not torch.allclose(binary(x), scaled(x), atol=1e-3)  # the thresholding matters
    # and the stacked model reads them the same way, for both kinds of batch
    stacked = stack([binary]).eval()
    flat = x.flatten(1)
    torch.testing.assert_close(stacked(flat)[0], scaled(thresholded), rtol=0, atol=1e-5)
    torch.testing.assert_close(stacked(flat[None])[0], scaled(thresholded), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("activation", "init_std", "inputs"),
                         [("tanh", 0.1, "binary"), ("sigmoid", None, "scaled")])  # fmt: skip
def test_checkpoint_round_trip_keeps_activation_init_and_inputs(
    tmp_path: Path, activation: str, init_std: float | None, inputs: str
) -> None:
    torch.manual_seed(1)
    model = DeepMLP(2, 8, True, activation, init_std, inputs).eval()
    path = tmp_path / "seed0.pt"
    save_checkpoint(path, make_checkpoint(model, seed=0))
    loaded, checkpoint = load_checkpoint(path)
    assert checkpoint["model_config"] == model.config
    assert (loaded.config["activation"], loaded.config["init_std"]) == (activation, init_std)
    assert loaded.inputs == inputs
    assert [type(block[-1]) for block in loaded.hidden] == [ACTIVATIONS[activation]] * 2
    x = torch.rand(5, 784)
    assert torch.equal(loaded(x), model(x))
