"""StackedMLP's loss and gradients by hand: autograd's kernels without autograd.

For this small network an autograd step is mostly bookkeeping: recording a
graph node per operation on the way forward, walking the graph back one node
at a time, and adding each gradient into `.grad`. Here the backward pass is
written out for the one architecture the project trains (blocks of
StackedLinear -> [StackedBatchNorm] -> ReLU, tanh or sigmoid, a StackedLinear
head, each
seed's mean cross-entropy, summed over seeds so that each seed's parameters
get exactly the gradient of its own loss). It calls the ATen kernels that
autograd calls for `stacked_loss(model(x), y).sum().backward()` on the same
numbers, and writes each gradient straight into its `.grad`.

A step pays a few microseconds per kernel call whatever the call computes,
so calls that do not depend on each other are merged: each hidden layer
writes its output and its delta (the loss gradient at its Linear's output)
into one block for all layers (`Scratch`), and after the backward pass one
batched matmul gives every hidden weight gradient but the first layer's, one
sum every hidden bias gradient, one stack each BatchNorm's weight and bias
gradients, straight into the grouped `.grad` buffers (pipeline/nn/flat.py).
Only what depends on the layer before (the forward matmul, BatchNorm,
ReLU, and the backward's matmul to the layer's input) stays per layer.

The results are autograd's up to rounding: the same kernels, though a
matmul in a larger batch or a result written into a view can take another
BLAS path. tests/test_backprop.py holds them to autograd's within stated
rounding bounds, in float32 and float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.nn.flat import joined
from pipeline.nn.model import CLASSES, StackedBatchNorm, StackedLinear, StackedMLP, prepared

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
    activation: type[nn.Module]


# Each activation: its in-place forward, and the ATen kernel of its backward,
# which autograd calls too; ReLU's, tanh's and sigmoid's backward all need only
# the activation's output, which the step keeps anyway.
FORWARD_INTO: dict[type[nn.Module], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    nn.ReLU: lambda z, out: torch.clamp_min(z, 0, out=out),
    nn.Tanh: lambda z, out: torch.tanh(z, out=out),
    nn.Sigmoid: lambda z, out: torch.sigmoid(z, out=out),
}


def _relu_backward_into(grad: torch.Tensor, out: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    return aten.threshold_backward.grad_input(grad, out, 0, grad_input=into)


def _tanh_backward_into(grad: torch.Tensor, out: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    return aten.tanh_backward.grad_input(grad, out, grad_input=into)  # grad * (1 - out^2)


def _sigmoid_backward_into(
    grad: torch.Tensor, out: torch.Tensor, into: torch.Tensor
) -> torch.Tensor:
    return aten.sigmoid_backward.grad_input(grad, out, grad_input=into)  # grad * out * (1 - out)


BACKWARD_INTO = {nn.ReLU: _relu_backward_into, nn.Tanh: _tanh_backward_into,
                 nn.Sigmoid: _sigmoid_backward_into}  # fmt: skip


def blocks_of(model: StackedMLP) -> list[Block]:
    """The hidden blocks, checked to be what the hand-written backward pass
    supports; anything else (a changed model) is an error, not a wrong gradient."""
    blocks = []
    supported = " | ".join(kind.__name__ for kind in FORWARD_INTO)
    for number, block in enumerate(model.hidden, start=1):
        kinds = [type(layer) for layer in block]
        if len(kinds) == 2 and kinds[0] is StackedLinear and kinds[1] in FORWARD_INTO:
            blocks.append(Block(block[0], None, kinds[1]))
        elif (
            len(kinds) == 3
            and kinds[:2] == [StackedLinear, StackedBatchNorm]
            and (kinds[2] in FORWARD_INTO)
        ):
            blocks.append(Block(block[0], block[1], kinds[2]))
        else:
            names = " -> ".join(kind.__name__ for kind in kinds)
            raise TypeError(f"hidden block {number} is {names}; the hand-written backward "
                            f"supports StackedLinear -> [StackedBatchNorm] -> {supported}")  # fmt: skip
    if not isinstance(model.output, StackedLinear):
        raise TypeError(f"the output layer is {type(model.output).__name__}, not StackedLinear")
    return blocks


class Scratch:
    """What one step at a batch of B images per seed writes besides the
    gradients, made once per B (a training run sees two: its batch size and
    the last, partial batch), with the views each layer takes of it:
      outputs: each hidden block's post-ReLU output, (depth, K, width, B);
      deltas: the loss gradient at each hidden Linear's output, same shape.
    Each layer writes its slice; the weight and bias gradients of all hidden
    layers are then a few calls over these blocks, not a few per layer."""

    def __init__(self, seeds: int, depth: int, width: int, batch: int, like: torch.Tensor) -> None:
        def empty(*shape: int) -> torch.Tensor:
            return torch.empty(shape, dtype=like.dtype, device=like.device)

        self.per_image = torch.ones(seeds * batch, dtype=like.dtype, device=like.device) / batch
        self.outputs = empty(depth, seeds, width, batch)
        self.deltas = empty(depth, seeds, width, batch)
        self.output = list(self.outputs.unbind(0))
        self.delta = list(self.deltas.unbind(0))
        # all hidden layers but the first: (depth - 1) * K matrices each
        self.later_deltas = self.deltas[1:].view(-1, width, batch)
        self.earlier_outputs_t = self.outputs[:-1].view(-1, width, batch).transpose(1, 2)


def loss_and_gradients(model: StackedMLP) -> LossAndGradients:
    """A function that runs one training-mode forward pass of `model` on a
    batch per seed, updates the BatchNorm running statistics and counters as
    the modules do, and overwrites every parameter's `.grad` with the gradient
    of the summed per-seed losses. The parameters must have been flattened
    (make_optimizer does it): their `.grad` tensors exist and lie grouped."""
    blocks = blocks_of(model)
    if any(p.grad is None for p in model.parameters()):
        raise ValueError(
            "the hand-written backward needs .grad tensors (make_optimizer makes them)"
        )
    seeds, depth = model.seeds, len(blocks)
    width = blocks[0].linear.weight.shape[1]
    linears = [b.linear for b in blocks]
    weights = [linear.weight for linear in linears]  # (K, out, in)
    weights_t = [w.transpose(1, 2) for w in weights]
    biases = [linear.bias.unsqueeze(2) for linear in linears]  # (K, out, 1)
    first_weight_grad = weights[0].grad
    # every hidden layer's weight gradient after the first, one (depth - 1) * K batch
    # of (width, width) matrices; every hidden bias gradient, (depth, K, width)
    later_weight_grads = None
    if depth > 1:
        later_weight_grads = joined([w.grad for w in weights[1:]]).view(-1, width, width)
    bias_grads = joined([linear.bias.grad for linear in linears])
    head_weight, head_bias = model.output.weight, model.output.bias
    head_weight_t = head_weight.transpose(1, 2)  # (K, width, 10)
    head_bias_row = head_bias.unsqueeze(1)
    norms = [b.norm for b in blocks if b.norm is not None]
    batchnorm = bool(norms)
    if batchnorm:
        eps, momentum = norms[0].eps, norms[0].momentum
        gammas = [n.weight.view(-1) for n in norms]
        betas = [n.bias.view(-1) for n in norms]
        running_means = [n.running_mean.view(-1) for n in norms]
        running_vars = [n.running_var.view(-1) for n in norms]
        counters = [n.num_batches_tracked for n in norms]
        gamma_grads = joined([n.weight.grad for n in norms]).view(depth, -1)
        beta_grads = joined([n.bias.grad for n in norms]).view(depth, -1)
    # Resolved once: calling an overload directly skips a lookup per call.
    nll_forward = aten.nll_loss_forward.default
    nll_backward = aten.nll_loss_backward.default
    log_softmax_backward = aten._log_softmax_backward_data.default
    activate = [FORWARD_INTO[b.activation] for b in blocks]
    activation_backward = [BACKWARD_INTO[b.activation] for b in blocks]
    inputs = model.inputs
    norm_backward = aten.native_batch_norm_backward.default
    scratches: dict[int, Scratch] = {}

    @torch.no_grad()
    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = x.shape[1]
        if batch not in scratches:
            scratches[batch] = Scratch(seeds, depth, width, batch, x)
        s = scratches[batch]
        x = prepared(x, inputs)
        # Forward. Activations are (K, width, B): each row one (seed, unit)
        # over its seed's batch, so BatchNorm's statistics are sums along rows.
        h = x.transpose(1, 2)
        saved = []  # BatchNorm's input, batch mean and 1/std per layer, for its backward
        for index in range(depth):
            out = s.output[index]
            if not batchnorm:
                z = torch.baddbmm(biases[index], weights[index], h, out=out)
                h = activate[index](z, out)  # in place
                continue
            # BatchNorm in training mode: the batch's statistics, running ones updated
            flat = torch.baddbmm(biases[index], weights[index], h).view(1, -1, batch)
            normed, mean, invstd = torch.native_batch_norm(
                flat, gammas[index], betas[index], running_means[index], running_vars[index],
                True, momentum, eps,
            )  # fmt: skip
            h = activate[index](normed.view(out.shape), out)
            saved.append((flat, mean, invstd))
        if batchnorm:
            torch._foreach_add_(counters, 1)  # what each module's forward adds
        # (K, B, width) @ (K, width, 10): logits per image, as DeepMLP's
        logits = torch.baddbmm(head_bias_row, h.transpose(1, 2), head_weight_t)
        log_probs = torch.log_softmax(logits.view(-1, CLASSES), 1)
        labels = y.view(-1)
        losses, total_weight = nll_forward(log_probs, labels, None, NO_REDUCTION, IGNORE_INDEX)

        # Backward, last layer first. The loss is the sum over seeds of the
        # mean over images: each image's loss gets 1/B, as mean()'s backward has it.
        grad = nll_backward(s.per_image, log_probs, labels, None, NO_REDUCTION,
                            IGNORE_INDEX, total_weight)  # fmt: skip
        grad = log_softmax_backward(grad, log_probs, 1, log_probs.dtype).view(seeds, batch, -1)
        grad_t = grad.transpose(1, 2)  # (K, 10, B)
        torch.bmm(grad_t, h.transpose(1, 2), out=head_weight.grad)
        torch.sum(grad, 1, out=head_bias.grad)
        grad = torch.bmm(head_weight_t, grad_t)  # (K, width, B)
        gamma_grad_list, beta_grad_list = [], []
        for index in range(depth - 1, -1, -1):
            delta = activation_backward[index](grad, s.output[index], s.delta[index])
            if batchnorm:  # the gradient at BatchNorm's output, through it to its input
                flat, mean, invstd = saved[index]
                grad_flat, gamma_grad, beta_grad = norm_backward(
                    delta.view(flat.shape), flat, gammas[index], None, None, mean, invstd,
                    True, eps, [True, True, True],
                )  # fmt: skip
                delta.copy_(grad_flat.view(delta.shape))
                gamma_grad_list.append(gamma_grad)
                beta_grad_list.append(beta_grad)
            if index > 0:  # the images need no gradient
                grad = torch.bmm(weights_t[index], delta)
        # Each Linear's weight gradient is its delta times its input; all hidden
        # layers but the first (whose input is the images) in one batched matmul.
        torch.bmm(s.delta[0], x, out=first_weight_grad)
        if later_weight_grads is not None:
            torch.bmm(s.later_deltas, s.earlier_outputs_t, out=later_weight_grads)
        torch.sum(s.deltas, 3, out=bias_grads)
        if batchnorm:  # collected last layer first
            torch.stack(gamma_grad_list[::-1], out=gamma_grads)
            torch.stack(beta_grad_list[::-1], out=beta_grads)
        return losses.view(seeds, batch).mean(1)

    return run
