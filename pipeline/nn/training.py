"""The fast training loop and the per-epoch diagnostics, free of I/O.

Every seed of `train.seeds` trains at once, as one StackedMLP: the seeds'
networks side by side, a batch of each seed's own order per step, one
optimizer step for all of them. One seed is the case K = 1 of the same loop.

The whole dataset lives on the training device as one float tensor; an epoch
is, per seed, a seeded permutation sliced into batches. Same maths as the
classic DataLoader loop (x/255 as ToTensor does, reshuffled every epoch, last
partial batch kept), without its per-sample Python work.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pipeline.data.mnist import DeviceData
from pipeline.nn.backprop import loss_and_gradients, stacked_loss
from pipeline.nn.cuda_graph import CudaGraphStep, Step
from pipeline.nn.diagnostics import DIAGNOSTICS, layer_diagnostics
from pipeline.nn.flat import flatten_parameters, joined
from pipeline.nn.history import Divergence, EpochRecord, LayerStats
from pipeline.nn.model import DeepMLP, StackedMLP, stack

# Batches between updates of the progress bar's loss: each update reads the
# loss back from the device, which would otherwise stall a GPU every batch.
PROGRESS_EVERY = 50


def initial_model(
    depth: int,
    width: int,
    batchnorm: bool,
    seeds: Sequence[int],
    activation: str = "relu",
    init_std: float | None = None,
    inputs: str = "scaled",
) -> StackedMLP:
    """The StackedMLP whose network k starts as `DeepMLP(depth, width,
    batchnorm, ...)` made after `torch.manual_seed(seeds[k])`: the same initial
    weights for both variants, and for a seed whatever else is in the list."""
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(DeepMLP(depth, width, batchnorm, activation, init_std, inputs))
    return stack(models)


def batch_starts(count: int, batch_size: int) -> range:
    """Start index of each batch. A last batch of a single image is dropped:
    BatchNorm cannot normalise one sample, and both variants must see the same data."""
    usable = count - 1 if count % batch_size == 1 else count
    return range(0, usable, batch_size)


def training_step(
    model: StackedMLP,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    track_gradients: bool = True,
    use_autograd: bool = False,
) -> Step:
    """The step on one batch per seed, given by its indices into (x, y), (K, B):
    forward, each seed's cross-entropy, backward, optimizer update. Returns
    each seed's batch loss (K,) and the gradient norms (2, depth, K) (None
    without track_gradients), as tensors on the device: per hidden layer and
    seed, [0] the L2 norm of its weight gradient, [1] that of the loss
    gradient with respect to its activation function's input, summed over
    the batch (gradient_at_activation_inputs). The norms' tensor is the step's
    own, overwritten by the next step. The CUDA graph path captures this
    same function.

    The backward pass is pipeline.nn.backprop's, written out by hand; with
    use_autograd it is `loss.backward()`, the reference it equals (the
    benchmark times both). Either way the gradients are written in place:
    they are views into one flat buffer (see make_optimizer), and a captured
    graph holds pointers to them."""
    weights = model.hidden_weights()
    seeds = model.seeds
    if use_autograd:

        def backward(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            losses = stacked_loss(model(images), labels)
            optimizer.zero_grad(set_to_none=False)
            losses.sum().backward()
            return losses.detach()
    else:
        backward = loss_and_gradients(model)

    norms = torch.empty(2, len(weights), seeds, dtype=x.dtype, device=x.device)
    runs = []
    if track_gradients:
        # one call for the first layer's norms, one for all later layers' (of one
        # shape, side by side in the flat gradient): (layers, K, weights per seed)
        runs.append((norms[0, :1], weights[0].grad.view(1, seeds, -1)))
        if len(weights) > 1:
            runs.append((norms[0, 1:], joined([w.grad for w in weights[1:]]).flatten(2)))
        runs.append((norms[1], joined(gradient_at_activation_inputs(model))))

    def step(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        flat = index.reshape(-1)  # (K * B,): seed 0's batch, then seed 1's, ...
        images = x.index_select(0, flat).view(seeds, -1, x.shape[1])
        loss = backward(images, y.index_select(0, flat).view(seeds, -1))
        for out, grads in runs:  # each layer's and seed's L2 norm, (depth, K)
            torch.linalg.vector_norm(grads, dim=2, out=out)
        optimizer.step()
        return loss, norms if track_gradients else None

    return step


def gradient_at_activation_inputs(model: StackedMLP) -> list[torch.Tensor]:
    """Per hidden layer, the .grad (K, width) that is the loss gradient with
    respect to the activation function's input summed over the batch: the
    BatchNorm bias's (beta's) with BatchNorm, else the Linear bias's (with
    BatchNorm the Linear bias's gradient is zero: BatchNorm subtracts the
    batch mean). Unlike a weight gradient, it does not grow with fan-in, so
    layers compare: the first hidden layer's 784 inputs against the others' width."""
    return [block[1].bias.grad if model.config["batchnorm"] else block[0].bias.grad
            for block in model.hidden]  # fmt: skip


def epoch_orders(
    generators: Sequence[torch.Generator], count: int, device: torch.device
) -> torch.Tensor:
    """Each seed's order of the `count` images for one epoch, (K, count). The
    permutations are drawn on the CPU so a seed gives the same order on every device."""
    return torch.stack([torch.randperm(count, generator=g) for g in generators]).to(device)


def train_epoch(
    model: StackedMLP,
    step: Step,
    x: torch.Tensor,
    batch_size: int,
    generators: Sequence[torch.Generator],
    on_progress: Callable[[int, float], None] | None = None,
    full_batch_step: Step | None = None,
) -> tuple[list[float], list[list[float]], list[tuple[int, float] | None]]:
    """One pass over x, each seed in a fresh order from its own generator,
    `step` on each batch (or `full_batch_step`, a captured CUDA graph, on
    every batch of full size).

    Returns per seed the mean batch loss; the mean over the batches of the
    gradient norms, [weight norms per hidden layer, activation-input norms
    per hidden layer] (training_step; zeros when the step does not track
    them, which the benchmark uses to measure their cost); and the first batch (from 1)
    whose loss was NaN or infinite with that loss, or None. A seed whose loss
    is not finite does not stop the others: each seed's arithmetic is its own
    (its matmuls, its BatchNorm statistics, its elements of Adam's update).
    Losses and norms are summed on the device and read back every
    PROGRESS_EVERY batches.
    """
    model.train()
    orders = epoch_orders(generators, len(x), x.device)
    starts = batch_starts(len(x), batch_size)
    seeds = len(generators)
    # kept on the device, in the data's float type (float64 in the tests of the maths)
    losses = torch.empty(len(starts), seeds, dtype=x.dtype, device=x.device)
    grad_sums = torch.zeros(2, len(model.hidden), seeds, dtype=x.dtype, device=x.device)
    for number, start in enumerate(starts, start=1):
        index = orders[:, start : start + batch_size]
        full = full_batch_step is not None and index.shape[1] == batch_size
        loss, norms = (full_batch_step if full else step)(index)
        if norms is not None:
            grad_sums += norms
        losses[number - 1] = loss  # a copy: a graph's output is overwritten by the next replay
        if on_progress is not None and (number % PROGRESS_EVERY == 0 or number == len(starts)):
            on_progress(number, finite_mean(losses[:number]))
    # per seed over its own contiguous row: the same sum whatever the other seeds
    return (
        losses.t().contiguous().mean(1).tolist(),
        (grad_sums / len(starts)).permute(2, 0, 1).tolist(),  # (K, 2, depth)
        first_non_finite(losses),
    )


def finite_mean(losses: torch.Tensor) -> float:
    """The mean of the finite batch losses so far, (batches, K): what the
    progress bar shows while some seeds diverged (NaN when all did)."""
    finite = torch.isfinite(losses)
    return (losses.where(finite, 0).sum() / finite.sum()).item()


def first_non_finite(losses: torch.Tensor) -> list[tuple[int, float] | None]:
    """Per seed, the first batch (from 1) whose loss, (batches, K), is NaN or
    infinite, with that loss; None for a seed whose every loss is finite."""
    bad = ~torch.isfinite(losses)
    found = bad.any(0).tolist()
    first = bad.to(torch.uint8).argmax(0).tolist()  # the first True (argmax takes the first)
    return [
        (first[k] + 1, losses[first[k], k].item()) if found[k] else None
        for k in range(losses.shape[1])
    ]


@torch.no_grad()
def evaluate(
    model: StackedMLP, x: torch.Tensor, y: torch.Tensor
) -> list[tuple[float, float, list[dict]]]:
    """Per seed: mean loss and accuracy on (x, y), and per hidden layer the
    statistics of its activations' outputs (mean, std, the fraction of dead
    units: zero for every image) and inputs (percentiles over all units and
    for one unit, the flat-region fraction: pipeline/nn/diagnostics.py).
    Read back from the device once."""
    model.eval()
    logits, inputs, outputs = model.forward_with_activation_inputs(x)  # (K, N, 10); (K, width, N)
    loss = stacked_loss(logits, y.expand(model.seeds, -1))
    correct = (logits.argmax(2) == y).sum(1)
    activation = model.config["activation"]
    per_layer = []
    for z, a in zip(inputs, outputs, strict=True):
        # Two passes over each seed's contiguous row: a quarter of the time
        # of torch.std_mean's one-pass (Welford) reduction over these sizes.
        rows = a.view(model.seeds, -1)
        mean = rows.mean(1)
        std = torch.linalg.vector_norm(rows - mean[:, None], dim=1) / math.sqrt(rows.shape[1])
        dead = (a.amax(2) == 0).sum(1)
        per_layer.append(torch.cat([torch.stack([mean, std, dead.to(mean.dtype)]),
                                    layer_diagnostics(z, activation)]))  # fmt: skip
    numbers = torch.stack([loss, correct.to(loss.dtype)]).tolist()
    layers = torch.stack(per_layer).tolist()  # (depth, 3 + len(DIAGNOSTICS), K)
    width = outputs[0].shape[1]
    return [
        (
            numbers[0][k],
            int(numbers[1][k]) / len(y),  # exact, as evaluate counts
            [
                {"act_mean": m[k], "act_std": s[k], "dead_fraction": d[k] / width}
                | {name: values[k] for name, values in zip(DIAGNOSTICS, rest, strict=True)}
                for m, s, d, *rest in layers
            ],
        )
        for k in range(model.seeds)
    ]


def make_optimizer(
    model: nn.Module,
    lr: float,
    betas: list[float],
    eps: float,
    weight_decay: float,
    capturable: bool = False,
    *,
    kind: str = "adam",
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    """Adam (kind "adam": lr, betas, eps) or SGD (kind "sgd": lr, momentum)
    over the model's parameters, flattened (pipeline/nn/flat.py) into one
    tensor: one fused kernel call on one tensor replaces the bookkeeping for
    every parameter tensor, about a fifth of a CPU step for this network."""
    params = [flatten_parameters(model)]
    if kind == "sgd":  # fused SGD has no step counter: a CUDA graph captures it as it is
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               fused=True)  # fmt: skip
    if kind != "adam":
        raise ValueError(f"optimizer {kind!r}: must be adam or sgd")
    # fused=True: the update in one kernel (CPU and CUDA); capturable=True keeps
    # its step counter on the device, as a CUDA graph needs.
    return torch.optim.Adam(
        params,
        lr=lr,
        betas=(betas[0], betas[1]),
        eps=eps,
        weight_decay=weight_decay,
        fused=True,
        capturable=capturable,
    )


def fit(
    model: StackedMLP,
    data: DeviceData,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    generators: Sequence[torch.Generator],
    on_epoch: Callable[[list[EpochRecord]], None] | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
    cuda_graph: bool = False,
) -> list[list[EpochRecord]]:
    """Train every seed of `model` for `epochs` epochs, seed k's batches in
    the order of generators[k]; evaluate on the test set after each epoch.
    Returns each seed's history; `on_epoch` gets each epoch's records, one
    per seed. With cuda_graph (CUDA only, optimizer made capturable), every
    full batch replays one captured graph of the training step.

    A seed whose loss becomes NaN or infinite has diverged: its records say
    where from then on (its parameters are NaN, and stay so), the other
    seeds train on, and training ends early once every seed has diverged."""
    if len(generators) != model.seeds:
        raise ValueError(f"{len(generators)} generators for {model.seeds} seeds")
    step = training_step(model, optimizer, data.train_x, data.train_y)
    graphed = None
    if cuda_graph:
        graphed = CudaGraphStep(step, model, optimizer, batch_size, data.train_x.device)
    histories: list[list[EpochRecord]] = [[] for _ in generators]
    diverged: list[Divergence | None] = [None] * len(generators)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        progress = functools.partial(on_progress, epoch) if on_progress else None
        train_losses, grad_norms, non_finite = train_epoch(
            model, step, data.train_x, batch_size, generators, progress, graphed
        )
        for k, found in enumerate(non_finite):
            if diverged[k] is None and found is not None:
                diverged[k] = Divergence(epoch=epoch, batch=found[0], loss=found[1])
        evaluations = evaluate(model, data.test_x, data.test_y)
        for k, (test_loss, _, _) in enumerate(evaluations):
            if diverged[k] is None and not math.isfinite(test_loss):
                # every batch loss was finite, but the last update was not
                last = len(batch_starts(len(data.train_x), batch_size))
                diverged[k] = Divergence(epoch=epoch, batch=last, loss=test_loss)
        seconds = time.perf_counter() - started
        records = [
            EpochRecord(
                epoch=epoch,
                train_loss=train_loss,
                test_loss=test_loss,
                test_accuracy=test_accuracy,
                epoch_seconds=seconds,
                layers=[
                    LayerStats(**s, grad_norm=g, input_grad_norm=i)
                    for s, g, i in zip(layers, *norms, strict=True)
                ],
                diverged=divergence,
            )
            for train_loss, norms, (test_loss, test_accuracy, layers), divergence in zip(
                train_losses, grad_norms, evaluations, diverged, strict=True
            )
        ]
        for history, record in zip(histories, records, strict=True):
            history.append(record)
        if on_epoch is not None:
            on_epoch(records)
        if all(diverged):
            break
    return histories
