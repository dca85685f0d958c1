"""The whole training step in one CUDA graph, replayed per batch.

On a GPU this small network is bound by kernel launches, not arithmetic:
an eager step launches about a hundred tiny kernels from Python (see
docs/benchmarks.md). Captured once,
the step (forward, loss, backward, gradient norms, fused Adam update) is
replayed with a single launch. The batch enters through a static index
buffer into the device-resident dataset, so nothing but K x batch_size
indices move.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.nn.model import StackedMLP

# A training step, as training.training_step makes it: batch indices per seed
# (K, B) -> (loss per seed, grad norms per layer and seed)
Step = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]

WARMUP_STEPS = 3  # eager steps before capture: lazy optimizer state, library handles


class CudaGraphStep:
    """`step` (from training.training_step, with a capturable optimizer)
    captured for batches of `batch_size` per seed. Calling it with the
    batches' indices (K, batch_size) replays the graph; the returned losses
    and gradient norms are the graph's static outputs, overwritten by the
    next replay (the norms' tensor is the step's own: by an eager step too)."""

    def __init__(
        self,
        step: Step,
        model: StackedMLP,
        optimizer: torch.optim.Optimizer,
        batch_size: int,
        device: torch.device,
    ) -> None:
        self.index = torch.zeros(model.seeds, batch_size, dtype=torch.long, device=device)
        saved = _snapshot(model)
        # Warm up on a side stream, as capture requires; these steps change
        # weights, BatchNorm statistics and Adam's moments, so all of it is
        # put back afterwards: the graph trains from the state the eager loop
        # would, and the same batches give the same updates.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step(self.index)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss, self.norms = step(self.index)
        _restore(model, optimizer, saved)

    def __call__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.index.copy_(index)
        self.graph.replay()
        return self.loss, self.norms


def _snapshot(model: StackedMLP) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}


@torch.no_grad()
def _restore(model: StackedMLP, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Undo the warm-up in place (the graph holds these very tensors): the
    weights and BatchNorm buffers as they were, Adam's moments and step
    counters at zero, which is exactly a fresh optimizer's first step."""
    for name, tensor in model.state_dict(keep_vars=True).items():
        tensor.copy_(saved[name])
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                value.zero_()
