"""DeepMLP's loss and gradients by hand: autograd's kernels without autograd.

For this small network an autograd step is mostly bookkeeping: recording a
graph node per operation on the way forward, walking the graph back one node
at a time, and adding each gradient into `.grad`. Here the backward pass is
written out for the one architecture the project trains (blocks of Linear ->
[BatchNorm1d] -> ReLU, a Linear head, mean cross-entropy). It calls the ATen
kernels that autograd calls for `F.cross_entropy(model(x), y).backward()`,
with the same arguments and in the same order, and writes each gradient
straight into its `.grad`. On the CPU the gradients, running statistics and
loss are bit-identical to autograd's (tests/test_backprop.py holds it to
that), and a training step takes about two thirds of the time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.model import DeepMLP

aten = torch.ops.aten
MEAN = 1  # ATen's reduction enum (0 none, 1 mean, 2 sum), as F.cross_entropy's default
IGNORE_INDEX = -100  # F.cross_entropy's default

# (images, labels) -> the batch's mean cross-entropy, with every .grad written
LossAndGradients = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Block:
    linear: nn.Linear
    norm: nn.BatchNorm1d | None


def blocks_of(model: DeepMLP) -> list[Block]:
    """The hidden blocks, checked to be what the hand-written backward pass
    supports; anything else (a changed model) is an error, not a wrong gradient."""
    blocks = []
    for number, block in enumerate(model.hidden, start=1):
        kinds = [type(layer) for layer in block]
        if kinds == [nn.Linear, nn.ReLU]:
            blocks.append(Block(block[0], None))
        elif kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU]:
            norm = block[1]
            if not (norm.affine and norm.track_running_stats and norm.momentum is not None):
                raise TypeError(f"hidden block {number}: BatchNorm1d needs affine, running "
                                "statistics and a momentum for the hand-written backward")  # fmt: skip
            blocks.append(Block(block[0], norm))
        else:
            names = " -> ".join(kind.__name__ for kind in kinds)
            raise TypeError(f"hidden block {number} is {names}; the hand-written backward "
                            "supports Linear -> [BatchNorm1d] -> ReLU")  # fmt: skip
    if any(b.linear.bias is None for b in blocks) or model.output.bias is None:
        raise TypeError("the hand-written backward needs every Linear to have a bias")
    return blocks


def loss_and_gradients(model: DeepMLP) -> LossAndGradients:
    """A function that runs one training-mode forward pass of `model` on a
    batch, updates the BatchNorm running statistics and counters as the
    modules do, and overwrites every parameter's `.grad` with the gradient of
    the mean cross-entropy. The `.grad` tensors must exist (make_optimizer
    creates them); their old contents do not matter."""
    blocks = blocks_of(model)
    head = model.output
    counters = [b.norm.num_batches_tracked for b in blocks if b.norm is not None]
    # Resolved once: calling an overload directly skips a lookup per call.
    nll_forward = aten.nll_loss_forward.default
    nll_backward = aten.nll_loss_backward.default
    log_softmax_backward = aten._log_softmax_backward_data.default
    relu_backward = aten.threshold_backward.default
    norm_backward = aten.native_batch_norm_backward.default
    seed = torch.ones((), device=head.weight.device)  # d loss / d loss, as backward() starts

    @torch.no_grad()
    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Forward, keeping what the backward pass reads. BatchNorm1d's forward
        # in training mode is native_batch_norm with the running buffers.
        saved = []
        h = x
        for block in blocks:
            z = torch.addmm(block.linear.bias, h, block.linear.weight.t())
            stats = None
            if block.norm is not None:
                n = block.norm
                normed, mean, invstd = torch.native_batch_norm(
                    z, n.weight, n.bias, n.running_mean, n.running_var, True, n.momentum, n.eps
                )
                stats = (z, mean, invstd)
                z = normed
            out = torch.relu(z)
            saved.append((h, stats, out))
            h = out
        log_probs = torch.log_softmax(torch.addmm(head.bias, h, head.weight.t()), 1)
        loss, total_weight = nll_forward(log_probs, y, None, MEAN, IGNORE_INDEX)
        if counters:
            torch._foreach_add_(counters, 1)  # what each module's forward adds

        # Backward, last layer first, each gradient written into its .grad.
        grad = nll_backward(seed, log_probs, y, None, MEAN, IGNORE_INDEX, total_weight)
        grad = log_softmax_backward(grad, log_probs, 1, log_probs.dtype)
        torch.mm(grad.t(), h, out=head.weight.grad)
        torch.sum(grad, 0, out=head.bias.grad)
        grad = grad.mm(head.weight)
        for index in range(len(blocks) - 1, -1, -1):
            block = blocks[index]
            block_input, stats, out = saved[index]
            grad = relu_backward(grad, out, 0)
            if stats is not None:
                n = block.norm
                z, mean, invstd = stats
                grad, weight_grad, bias_grad = norm_backward(
                    grad, z, n.weight, n.running_mean, n.running_var, mean, invstd,
                    True, n.eps, [True, True, True],
                )  # fmt: skip
                n.weight.grad.copy_(weight_grad)
                n.bias.grad.copy_(bias_grad)
            torch.mm(grad.t(), block_input, out=block.linear.weight.grad)
            torch.sum(grad, 0, out=block.linear.bias.grad)
            if index > 0:  # the images need no gradient
                grad = grad.mm(block.linear.weight)
        return loss

    return run
