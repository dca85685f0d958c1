"""A study summary's two figures, against the studied param: test accuracy,
BatchNorm's gain and the failures per point; and the diagnostics of the why
(flat-region inputs, gradient ratio). See pipeline/report/study_report.py."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from pipeline.format import LABELS, show_value
from pipeline.nn.model import VARIANTS
from pipeline.report.figures import COLORS, dress

if TYPE_CHECKING:
    from pipeline.report.study_report import Row


def _axis(rows: list[Row]) -> tuple[list[float], bool]:
    """x positions of the points, and whether to draw them on a log scale
    (numbers spanning a factor of 8 or more: learning rates, batch sizes)."""
    xs = [float(r.value) if isinstance(r.value, int | float) else k for k, r in enumerate(rows)]
    numeric = all(isinstance(r.value, int | float) and not isinstance(r.value, bool) for r in rows)
    logarithmic = numeric and min(xs) > 0 and max(xs) / min(xs) >= 8
    return xs, logarithmic


def _set_x(ax: Any, rows: list[Row], xs: list[float], logarithmic: bool) -> None:
    if logarithmic:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(xs)
    ax.set_xticklabels([show_value(r.value) for r in rows], fontsize=8)


def _nan(value: float | None, scale: float = 1) -> float:
    return math.nan if value is None else scale * value


def _errors(means: list[float], intervals: list[tuple[float, float] | None]) -> list[list[float]]:
    """Error bar lengths below and above each mean (0 without an interval)."""
    below = [m - 100 * i[0] if i else 0.0 for m, i in zip(means, intervals, strict=True)]
    above = [100 * i[1] - m if i else 0.0 for m, i in zip(means, intervals, strict=True)]
    return [below, above]


def accuracy_figure(rows: list[Row], key: str) -> Figure:
    """Test accuracy per variant (over the seeds that learnt), the paired
    gain, each with its 95% CI, and the fraction of seeds that failed."""
    fig = Figure(figsize=(14, 4))
    fig.subplots_adjust(left=0.06, right=0.99, top=0.86, bottom=0.14, wspace=0.28)
    accuracy, gain, failed = fig.subplots(1, 3)
    xs, logarithmic = _axis(rows)
    for variant in VARIANTS:
        means = [_nan(r.accuracy(variant).mean, 100) for r in rows]
        accuracy.errorbar(xs, means, yerr=_errors(means, [r.accuracy(variant).ci95 for r in rows]),
                          fmt="o-", capsize=4, color=COLORS[variant], label=LABELS[variant])  # fmt: skip
        failed.plot(xs, [100 * r.outcomes(variant).failed_fraction for r in rows], "o-",
                    color=COLORS[variant], label=LABELS[variant])  # fmt: skip
    low, _ = accuracy.get_ylim()  # a t-interval may run outside 0-100%: accuracy cannot
    accuracy.set_ylim(max(low, -0.5), 100.5)
    dress(accuracy, "Mean over the seeds that learnt, 95% CI", key,
          "test accuracy (%), seeds that learnt", legend=8)  # fmt: skip
    gains = [_nan(r.gain.mean, 100) for r in rows]
    gain.axhline(0, color="0.4", lw=1, ls="--")
    gain.errorbar(xs, gains, yerr=_errors(gains, [r.gain.ci95 for r in rows]), fmt="D-",
                  capsize=4, color="tab:green")  # fmt: skip
    gain.set_yscale("symlog", linthresh=2)  # small gains stay readable beside a collapse
    dress(gain, "BatchNorm's paired gain, 95% CI", key, "gain (points; linear to 2, log beyond)")
    failed.set_ylim(-5, 105)
    dress(failed, "Diverged, or below 20% test accuracy", key, "seeds that failed to learn (%)", 8)
    for ax in (accuracy, gain, failed):
        _set_x(ax, rows, xs, logarithmic)
    fig.suptitle(f"Test accuracy and failures against {key}")
    return fig


def diagnostics_figure(rows: list[Row], key: str) -> Figure:
    """The why: flat-region inputs and the first-to-last ratio of the gradient at the activations' inputs,
    per point, both variants (final epoch, mean over the seeds that learnt)."""
    fig = Figure(figsize=(10, 4))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.86, bottom=0.14, wspace=0.28)
    flat, ratio = fig.subplots(1, 2)
    xs, logarithmic = _axis(rows)
    for variant in VARIANTS:
        style = {"color": COLORS[variant], "label": LABELS[variant], "marker": "o"}
        flat.plot(xs, [_nan(r.flat[variant], 100) for r in rows], **style)
        ratio.plot(xs, [_nan(r.grad_ratio[variant]) for r in rows], **style)
    dress(flat, "Activation inputs where the slope is < 1/10 of its peak", key,
          "inputs in the flat region (%)", legend=8)  # fmt: skip
    ratio.axhline(1, color="0.4", lw=1, ls="--")
    ratio.set_yscale("log")
    dress(ratio, "Gradient at the activation inputs, first layer over last", key,
          "first / last layer", legend=8)  # fmt: skip
    for ax in (flat, ratio):
        _set_x(ax, rows, xs, logarithmic)
    fig.suptitle(f"Why: flat-region inputs and gradient flow against {key} "
                 "(final epoch, mean over the seeds that learnt)")  # fmt: skip
    return fig
