"""All of a model's parameters in one flat buffer, like tensors side by side.

Adam is elementwise, so one fused update of one flat tensor gives each weight
the update it would get alone (up to the rounding of the vector lane it lands
in). The buffer is laid out in groups: tensors of one kind (same module
type, attribute and shape, say every hidden Linear's 64x64 weight) follow
each other in model order. A run of them is then one view (`joined`), so
the hand-written backward writes the weight gradients of every hidden layer
after the first (the first has 784 inputs) with one batched matmul, all
hidden bias gradients with one sum, and the diagnostics take all layers'
gradient norms in two calls, where each would otherwise be a call per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def grouped_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The model's parameters, grouped by (module type, attribute, shape) in
    the order each group first appears, and in model order within a group."""
    groups: dict[tuple, list[nn.Parameter]] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            groups.setdefault((type(module), name, tuple(p.shape)), []).append(p)
    return [p for group in groups.values() for p in group]


def flatten_parameters(model: nn.Module) -> nn.Parameter:
    """Gather all of the model's parameters into one flat tensor, grouped
    (grouped_parameters), and their gradients into another; the model's
    parameters and .grad become views into them. Returns the flat parameter,
    whose .grad is the flat gradient. Call it once the model is on its device."""
    params = grouped_parameters(model)
    flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        size = p.numel()
        p.data = flat.data[offset : offset + size].view_as(p)
        p.grad = flat.grad[offset : offset + size].view_as(p)
        offset += size
    return flat


def joined(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Tensors of one shape that lie one after another in one buffer, as one
    view (len, *shape) of that memory: writing into it writes into them. A
    ValueError where they do not (flatten_parameters lays them out so)."""
    first = tensors[0]
    size = first.numel()
    adjacent = all(
        t.shape == first.shape
        and t.is_contiguous()
        and t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and t.storage_offset() == first.storage_offset() + index * size
        for index, t in enumerate(tensors)
    )
    if not adjacent:
        raise ValueError(
            f"{len(tensors)} tensors of shape {tuple(first.shape)} are not side by side in one "
            "buffer; flatten the model's parameters first (make_optimizer does)"
        )
    return first.as_strided((len(tensors), *first.shape), (size, *first.stride()))
