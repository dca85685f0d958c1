"""What the activation functions' inputs look like, per hidden layer and seed:
the numbers that test the post's "why" (inputs pushed to one side, into the
activation's flat region) and that draw the BatchNorm paper's Figure 1(b, c)."""

from __future__ import annotations

import math

import torch

PERCENTILES = (15, 50, 85)  # the paper's Figure 1(b, c)
# The fixed unit whose input distribution is followed over training, in every
# hidden layer. Units are exchangeable: their weights are drawn i.i.d. and they
# see the same inputs, so a fixed index is a draw, not a choice; unit 0 is
# as typical as the paper's "typical sigmoid", and the percentiles over all
# units (logged beside it) show whether it is.
TYPICAL_UNIT = 0
FLAT_SLOPE = 0.1  # the flat region: where the derivative is below a tenth of its maximum


def flat_threshold(activation: str) -> float:
    """|z| beyond which tanh or sigmoid has a derivative below FLAT_SLOPE of
    its maximum; ReLU's flat side is z < 0 (returned as 0).
    tanh'(z) = 1 - tanh(z)^2 < 0.1  <=>  |z| > atanh(sqrt(0.9)) = 1.818;
    sigmoid(z) = (1 + tanh(z / 2)) / 2, so sigmoid'(z) = tanh'(z / 2) / 4 and
    its threshold is twice tanh's: 3.636."""
    if activation == "relu":
        return 0.0
    tanh_threshold = math.atanh(math.sqrt(1 - FLAT_SLOPE))
    return {"tanh": tanh_threshold, "sigmoid": 2 * tanh_threshold}[activation]


def flat_fraction(z: torch.Tensor, activation: str) -> torch.Tensor:
    """Per seed, the fraction of the inputs z (K, width, N) in the
    activation's flat region -> (K,)."""
    rows = z.reshape(z.shape[0], -1)
    flat = rows < 0 if activation == "relu" else rows.abs() > flat_threshold(activation)
    return flat.sum(1).to(z.dtype) / rows.shape[1]


def percentiles(rows: torch.Tensor, qs: tuple[int, ...] = PERCENTILES) -> torch.Tensor:
    """The q-th percentiles of each row of (K, M) -> (len(qs), K), by linear
    interpolation between the closest ranks (numpy's default method)."""
    levels = torch.tensor(qs, dtype=rows.dtype, device=rows.device) / 100
    return torch.quantile(rows, levels, dim=1, interpolation="linear")


DIAGNOSTICS = ("input_p15", "input_p50", "input_p85", "unit_p15", "unit_p50", "unit_p85",
               "flat_fraction")  # fmt: skip


def layer_diagnostics(z: torch.Tensor, activation: str) -> torch.Tensor:
    """Per seed, for one hidden layer's activation inputs z (K, width, N):
    the 15th, 50th and 85th percentiles over all units and images, the same
    for TYPICAL_UNIT over the images, and the flat-region fraction ->
    (len(DIAGNOSTICS), K), in DIAGNOSTICS' order."""
    seeds = z.shape[0]
    return torch.cat([
        percentiles(z.reshape(seeds, -1)),
        percentiles(z[:, TYPICAL_UNIT]),
        flat_fraction(z, activation).unsqueeze(0),
    ])  # fmt: skip
