"""StackedMLP's loss and gradients by hand: autograd's kernels without autograd.

For this small network an autograd step is mostly bookkeeping: recording a
graph node per operation on the way forward, walking the graph back one node
at a time, and adding each gradient into `.grad`. Here the backward pass is
written out for the one architecture the project trains (blocks of
StackedLinear -> [StackedBatchNorm] -> ReLU, a StackedLinear head, each
seed's mean cross-entropy, summed over seeds so that each seed's parameters
get exactly the gradient of its own loss). It calls the ATen kernels that
autograd calls for `stacked_loss(model(x), y).sum().backward()`, with the same
arguments and in the same order, and writes each gradient straight into its
`.grad`. So the gradients, running statistics and losses are autograd's up
to rounding: the same kernels on the same numbers, though not always in the
same memory layout (a gradient written into its `.grad` view, where autograd
makes a new tensor), which can take another BLAS path. On the CPUs tried,
float32 results were bit-identical; tests/test_backprop.py holds them to
autograd's within stated rounding bounds, in float32 and float64. A training
step takes about two thirds of autograd's time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.nn.model import CLASSES, StackedBatchNorm, StackedLinear, StackedMLP

aten = torch.ops.aten
NO_REDUCTION = 0  # ATen's reduction enum (0 none, 1 mean, 2 sum)
IGNORE_INDEX = -100  # F.cross_entropy's default

# (images (K, B, 784), labels (K, B)) -> each seed's mean cross-entropy (K,),
# with every .grad written
LossAndGradients = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def stacked_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each seed's mean cross-entropy over its batch: logits (K, B, 10), labels
    (K, B) -> (K,). Training minimises their sum: seeds share no parameter, so
    each seed's gradient is that of its own loss, as if it trained alone."""
    seeds, batch, classes = logits.shape
    losses = F.cross_entropy(logits.reshape(-1, classes), labels.reshape(-1), reduction="none")
    return losses.view(seeds, batch).mean(1)


@dataclass(frozen=True)
class Block:
    linear: StackedLinear
    norm: StackedBatchNorm | None


@dataclass(frozen=True)
class Views:
    """A block's tensors in the shapes the kernels take, made once: views
    of the parameters, buffers and gradients, so they follow in-place updates.
    Making them per step cost about a tenth of a one-seed step."""

    weight: torch.Tensor  # (K, out, in)
    weight_t: torch.Tensor  # (K, in, out)
    bias: torch.Tensor  # (K, out, 1)
    weight_grad: torch.Tensor
    bias_grad: torch.Tensor
    # BatchNorm over (1, K * out, B): weight, bias, running mean and var,
    # weight and bias gradients, all (K * out,); None without BatchNorm
    norm: tuple[torch.Tensor, ...] | None
    norm_eps: float
    norm_momentum: float


def views_of(block: Block) -> Views:
    linear, n = block.linear, block.norm
    norm = None
    if n is not None:
        tensors = (n.weight, n.bias, n.running_mean, n.running_var, n.weight.grad, n.bias.grad)
        norm = tuple(t.view(-1) for t in tensors)
    return Views(
        linear.weight, linear.weight.transpose(1, 2), linear.bias.unsqueeze(2),
        linear.weight.grad, linear.bias.grad, norm,
        n.eps if n is not None else 0.0, n.momentum if n is not None else 0.0,
    )  # fmt: skip


def blocks_of(model: StackedMLP) -> list[Block]:
    """The hidden blocks, checked to be what the hand-written backward pass
    supports; anything else (a changed model) is an error, not a wrong gradient."""
    blocks = []
    for number, block in enumerate(model.hidden, start=1):
        kinds = [type(layer) for layer in block]
        if kinds == [StackedLinear, nn.ReLU]:
            blocks.append(Block(block[0], None))
        elif kinds == [StackedLinear, StackedBatchNorm, nn.ReLU]:
            blocks.append(Block(block[0], block[1]))
        else:
            names = " -> ".join(kind.__name__ for kind in kinds)
            raise TypeError(f"hidden block {number} is {names}; the hand-written backward "
                            "supports StackedLinear -> [StackedBatchNorm] -> ReLU")  # fmt: skip
    if not isinstance(model.output, StackedLinear):
        raise TypeError(f"the output layer is {type(model.output).__name__}, not StackedLinear")
    return blocks


def loss_and_gradients(model: StackedMLP) -> LossAndGradients:
    """A function that runs one training-mode forward pass of `model` on a
    batch per seed, updates the BatchNorm running statistics and counters as
    the modules do, and overwrites every parameter's `.grad` with the gradient
    of the summed per-seed losses. The `.grad` tensors must exist
    (make_optimizer creates them); their old contents do not matter."""
    blocks = blocks_of(model)
    if any(p.grad is None for p in model.parameters()):
        raise ValueError(
            "the hand-written backward needs .grad tensors (make_optimizer makes them)"
        )
    layers = [views_of(block) for block in blocks]
    head = views_of(Block(model.output, None))
    counters = [b.norm.num_batches_tracked for b in blocks if b.norm is not None]
    # Resolved once: calling an overload directly skips a lookup per call.
    nll_forward = aten.nll_loss_forward.default
    nll_backward = aten.nll_loss_backward.default
    log_softmax_backward = aten._log_softmax_backward_data.default
    relu_backward = aten.threshold_backward.default
    norm_backward = aten.native_batch_norm_backward.default
    per_image: dict[int, torch.Tensor] = {}  # K * B -> d(sum of seed means) / d(an image's loss)

    @torch.no_grad()
    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seeds, batch, _ = x.shape
        # Forward, keeping what the backward pass reads. Activations are
        # (K, width, B); BatchNorm runs on the (1, K * width, B) view, and its
        # forward in training mode is native_batch_norm with the running buffers.
        saved = []
        h = x.transpose(1, 2)
        for layer in layers:
            z = torch.baddbmm(layer.bias, layer.weight, h)
            stats = None
            if layer.norm is not None:
                weight, bias, running_mean, running_var, _, _ = layer.norm
                flat = z.view(1, -1, batch)
                normed, mean, invstd = torch.native_batch_norm(
                    flat, weight, bias, running_mean, running_var, True,
                    layer.norm_momentum, layer.norm_eps,
                )  # fmt: skip
                stats = (flat, mean, invstd)
                z = normed.view(z.shape)
            out = torch.relu(z)
            saved.append((h, stats, out))
            h = out
        # (K, B, width) @ (K, width, 10): logits per image, as DeepMLP's
        logits = torch.baddbmm(head.bias.transpose(1, 2), h.transpose(1, 2), head.weight_t)
        log_probs = torch.log_softmax(logits.view(-1, CLASSES), 1)
        labels = y.view(-1)
        losses, total_weight = nll_forward(log_probs, labels, None, NO_REDUCTION, IGNORE_INDEX)
        if counters:
            torch._foreach_add_(counters, 1)  # what each module's forward adds

        # Backward, last layer first, each gradient written into its .grad.
        # The loss is the sum over seeds of the mean over images: each image's
        # loss gets 1/B, computed as mean()'s backward computes it.
        count = seeds * batch
        if count not in per_image:
            per_image[count] = torch.ones(count, dtype=x.dtype, device=x.device) / batch
        grad = nll_backward(per_image[count], log_probs, labels, None, NO_REDUCTION,
                            IGNORE_INDEX, total_weight)  # fmt: skip
        grad = log_softmax_backward(grad, log_probs, 1, log_probs.dtype).view(seeds, batch, -1)
        # The head's weight enters transposed, (K, width, 10): so does its gradient.
        head.weight_grad.copy_(torch.bmm(h, grad).transpose(1, 2))
        torch.sum(grad, 1, out=head.bias_grad)
        grad = torch.bmm(head.weight_t, grad.transpose(1, 2))  # (K, width, B)
        for index in range(len(layers) - 1, -1, -1):
            layer = layers[index]
            block_input, stats, out = saved[index]
            grad = relu_backward(grad, out, 0)
            if stats is not None:
                weight, _, running_mean, running_var, weight_grad, bias_grad = layer.norm
                flat, mean, invstd = stats
                grad_flat, weight_grad_, bias_grad_ = norm_backward(
                    grad.view(flat.shape), flat, weight, running_mean, running_var, mean, invstd,
                    True, layer.norm_eps, [True, True, True],
                )  # fmt: skip
                weight_grad.copy_(weight_grad_)
                bias_grad.copy_(bias_grad_)
                grad = grad_flat.view(grad.shape)
            torch.bmm(grad, block_input.transpose(1, 2), out=layer.weight_grad)
            torch.sum(grad, 2, out=layer.bias_grad)
            if index > 0:  # the images need no gradient
                grad = torch.bmm(layer.weight_t, grad)
        return losses.view(seeds, batch).mean(1)

    return run
