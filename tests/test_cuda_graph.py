"""The CUDA graph path: same training as the eager loop, on by default only on CUDA."""

from __future__ import annotations

import pytest
import torch

from pipeline.data.mnist import to_device
from pipeline.errors import ParamsError
from pipeline.nn.cuda_graph import _restore, _snapshot
from pipeline.nn.device import use_cuda_graph
from pipeline.nn.model import ACTIVATIONS, StackedMLP
from pipeline.nn.training import fit, initial_model, make_optimizer, training_step

from .test_training import MATHS_TOLERANCE, in_float64, synthetic_mnist, tolerance

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [("auto", "cpu", False), ("auto", "cuda", True), (False, "cuda", False), (True, "cuda", True),
     (False, "cpu", False), ("auto", "mps", False)],
)  # fmt: skip
def test_auto_is_on_exactly_for_cuda(setting: str | bool, device: str, expected: bool) -> None:
    assert use_cuda_graph(setting, torch.device(device)) is expected


def test_forcing_a_graph_without_cuda_is_a_params_error() -> None:
    with pytest.raises(ParamsError, match=r"train\.cuda_graph = true: needs a CUDA device"):
        use_cuda_graph(True, torch.device("cpu"))


# kind -> (lr, momentum) of the optimizer in these tests
OPTIMIZERS = {"adam": (1e-3, 0.0), "sgd": (1e-1, 0.0), "sgd-momentum": (1e-1, 0.9)}


def optimizer_for(model: StackedMLP, setting: str, capturable: bool = False):
    lr, momentum = OPTIMIZERS[setting]
    return make_optimizer(model, lr, [0.9, 0.999], 1e-8, 0.0, capturable=capturable,
                          kind=setting.split("-")[0], momentum=momentum)  # fmt: skip


@pytest.mark.parametrize("setting", list(OPTIMIZERS))
def test_restoring_after_warm_up_equals_a_fresh_start(setting: str) -> None:
    # What CudaGraphStep does around its warm-up, checked on the CPU: after
    # the restore, the next step matches the first step of an untouched copy.
    # One step from equal states (weights, buffers, Adam's moments and step
    # counters all as new; SGD's momentum buffer zero, whose update
    # m * 0 + g is exactly the first step's g) through the same kernels on
    # the same numbers, in the same layouts: bit-identical by construction.
    data = to_device(synthetic_mnist(64, 16), torch.device("cpu"))
    index = torch.stack([torch.arange(32), torch.arange(32, 64), torch.arange(16, 48)])

    def model_and_optimizer():
        model = initial_model(3, 8, True, [0, 1, 2])
        return model, optimizer_for(model, setting)

    warmed, warmed_opt = model_and_optimizer()
    saved = _snapshot(warmed)
    step = training_step(warmed, warmed_opt, data.train_x, data.train_y)
    for _ in range(3):
        step(torch.stack([torch.randperm(64)[:32] for _ in range(3)]))
    _restore(warmed, warmed_opt, saved)
    fresh, fresh_opt = model_and_optimizer()
    loss_a, _ = step(index)
    loss_b, _ = training_step(fresh, fresh_opt, data.train_x, data.train_y)(index)
    assert torch.equal(loss_a, loss_b)
    for (name, a), b in zip(warmed.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # and a second step, where momentum acts: the restored buffer is the fresh one's
    index = index.flip(1)
    step(index)
    training_step(fresh, fresh_opt, data.train_x, data.train_y)(index)
    for (name, a), b in zip(warmed.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@needs_cuda
@pytest.mark.parametrize("setting", list(OPTIMIZERS))
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_graph_and_eager_training_agree_for_three_seeds(
    activation: str, batchnorm: bool, setting: str
) -> None:
    # Eager and graphed steps launch the same kernels, but cuBLAS may pick
    # other algorithms under capture: the same maths in another order, held in
    # float64 to the tolerances of tests/test_training.py over 30 steps
    # (NOISE_TOLERANCE is Adam's drift of the noise-driven tensors over 300
    # steps; SGD drifts them by lr * noise / (1 - momentum) a step, less).
    device = torch.device("cuda")
    data = in_float64(to_device(synthetic_mnist(300, 100), device))  # 300 = 9 * 32 + 12
    seeds = [0, 1, 2]

    def train(graph: bool):
        model = initial_model(4, 32, batchnorm, seeds, activation).to(device, torch.float64)
        optimizer = optimizer_for(model, setting, capturable=graph)
        histories = fit(model, data, epochs=3, batch_size=32, optimizer=optimizer,
                        generators=[torch.Generator().manual_seed(s) for s in seeds],
                        cuda_graph=graph)  # fmt: skip
        return model, histories

    initial = initial_model(4, 32, batchnorm, seeds, activation).state_dict()
    eager, eager_histories = train(graph=False)
    graphed, graph_histories = train(graph=True)
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        bound = tolerance(name, batchnorm)
        torch.testing.assert_close(b, a, rtol=0, atol=bound, msg=name)
    # the graph trained (replayed steps moved the weights), it did not just agree at the start
    weight = "hidden.1.0.weight"
    assert (graphed.state_dict()[weight].cpu() - initial[weight].double()).abs().max() > 1e-6
    for eager_history, graph_history in zip(eager_histories, graph_histories, strict=True):
        for a, b in zip(eager_history, graph_history, strict=True):
            assert a.train_loss == pytest.approx(b.train_loss, rel=MATHS_TOLERANCE)
            assert a.test_accuracy == b.test_accuracy
            for name in ("grad_norm", "input_grad_norm"):
                assert [getattr(x, name) for x in a.layers] == pytest.approx(
                    [getattr(x, name) for x in b.layers], rel=MATHS_TOLERANCE
                ), name
