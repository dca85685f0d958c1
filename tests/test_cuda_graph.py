"""The CUDA graph path: same training as the eager loop, on by default only on CUDA."""

from __future__ import annotations

import pytest
import torch

from pipeline.data.mnist import to_device
from pipeline.errors import ParamsError
from pipeline.nn.cuda_graph import _restore, _snapshot
from pipeline.nn.device import use_cuda_graph
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


def test_restoring_after_warm_up_equals_a_fresh_start() -> None:
    # What CudaGraphStep does around its warm-up, checked on the CPU: after
    # the restore, the next step matches the first step of an untouched copy.
    # One step from equal states (weights, buffers, Adam's moments and step
    # counters all as new) through the same kernels on the same numbers, in
    # the same layouts: bit-identical by construction.
    data = to_device(synthetic_mnist(64, 16), torch.device("cpu"))
    index = torch.stack([torch.arange(32), torch.arange(32, 64), torch.arange(16, 48)])

    def model_and_optimizer():
        model = initial_model(3, 8, True, [0, 1, 2])
        return model, make_optimizer(model, 1e-2, [0.9, 0.999], 1e-8, 0.0)

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


@needs_cuda
@pytest.mark.parametrize("batchnorm", [True, False])
def test_graph_and_eager_training_agree_for_three_seeds(batchnorm: bool) -> None:
    # Eager and graphed steps launch the same kernels, but cuBLAS may pick
    # other algorithms under capture: the same maths in another order, held in
    # float64 to the tolerances of tests/test_training.py over 30 steps.
    device = torch.device("cuda")
    data = in_float64(to_device(synthetic_mnist(300, 100), device))  # 300 = 9 * 32 + 12
    seeds = [0, 1, 2]

    def train(graph: bool):
        model = initial_model(4, 32, batchnorm, seeds).to(device, torch.float64)
        optimizer = make_optimizer(model, 1e-3, [0.9, 0.999], 1e-8, 0.0, capturable=graph)
        histories = fit(model, data, epochs=3, batch_size=32, optimizer=optimizer,
                        generators=[torch.Generator().manual_seed(s) for s in seeds],
                        cuda_graph=graph)  # fmt: skip
        return model, histories

    eager, eager_histories = train(graph=False)
    graphed, graph_histories = train(graph=True)
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        bound = tolerance(name, batchnorm)
        torch.testing.assert_close(b, a, rtol=0, atol=bound, msg=name)
    for eager_history, graph_history in zip(eager_histories, graph_histories, strict=True):
        for a, b in zip(eager_history, graph_history, strict=True):
            assert a.train_loss == pytest.approx(b.train_loss, rel=MATHS_TOLERANCE)
            assert a.test_accuracy == b.test_accuracy
            assert [x.grad_norm for x in a.layers] == pytest.approx(
                [x.grad_norm for x in b.layers], rel=MATHS_TOLERANCE
            )
