"""The network: shapes, the BatchNorm switch, one forward for logits and activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.nn.model import DeepMLP, stack


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


def seeded_models(seeds: list[int], depth: int = 3, width: int = 8, bn: bool = True):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(DeepMLP(depth, width, bn))
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


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_stacked_forward_is_each_models_forward(batchnorm: bool, training: bool) -> None:
    # One forward pass each, in float64: the stacked and the plain model add
    # in other orders (batched against plain matmuls), which float32 would
    # show at ~1e-7; float64 keeps that to ~1e-15 on values of order 1.
    models = [m.double() for m in seeded_models([0, 1, 2], depth=4, width=16, bn=batchnorm)]
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
