"""The activations' inputs in a training history's rows, as numbers (the
post's "why", pipeline/report/why.py, judges them): where a layer's inputs
sit, how far the fixed unit's moved, how much of a layer is in the flat
region and how the gradient at the inputs falls toward the input."""

from __future__ import annotations

import math
from statistics import fmean

from pipeline.nn.diagnostics import DIAGNOSTICS
from pipeline.results import History, depth_of, layer_key

# The per-layer keys of history.json this module reads (older code did not write them).
KEYS = (*DIAGNOSTICS, "input_grad_norm")


def has_diagnostics(history: History) -> bool:
    """Did the code that trained every seed log KEYS? (Older code did not.)"""
    return all(
        layer_key(1, key) in rows[-1]
        for runs in history.values()
        for rows in runs.values()
        for key in KEYS
    )


def shift(row: dict, layer: int) -> float | None:
    """How far the median of a layer's activation inputs (all units) sits from
    the centre 0, in half-spreads ((p85 - p15) / 2), signed; None where a
    percentile is missing or the inputs do not spread."""
    p15, p50, p85 = (row[layer_key(layer, f"input_p{q}")] for q in (15, 50, 85))
    if not all(finite(v) for v in (p15, p50, p85)) or p85 <= p15:
        return None
    return p50 / ((p85 - p15) / 2)


def drift(rows: list[dict], layer: int) -> float | None:
    """How far the fixed unit's median moved over training: the range of
    unit_p50 across epochs over the mean half-spread of that unit; None
    without finite values or spread."""
    p15, p50, p85 = (layer_key(layer, f"unit_p{q}") for q in (15, 50, 85))
    medians = [r[p50] for r in rows if finite(r[p50])]
    halves = [(r[p85] - r[p15]) / 2 for r in rows if finite(r[p85]) and finite(r[p15])]
    if not medians or not halves or fmean(halves) <= 0:
        return None
    return (max(medians) - min(medians)) / fmean(halves)


def gradient_ratio(row: dict) -> float | None:
    """First hidden layer's input_grad_norm over the last's; None where one
    is missing or not positive (a ratio of zero has no logarithm)."""
    first, last = (row[layer_key(k, "input_grad_norm")] for k in (1, depth_of(row)))
    if not (finite(first) and finite(last)) or first <= 0 or last <= 0:
        return None
    return first / last


def finite(value: float | None) -> bool:
    """A number, neither null (as JSON writes NaN) nor NaN nor infinite."""
    return value is not None and math.isfinite(value)


def mean_flat(row: dict) -> float | None:
    """The flat-region fraction, mean over the hidden layers; None where one is missing."""
    values = [row[layer_key(k, "flat_fraction")] for k in range(1, depth_of(row) + 1)]
    return fmean(values) if all(finite(v) for v in values) else None
