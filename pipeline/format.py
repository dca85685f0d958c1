"""How numbers look in tables and text, written once: a value or a dash, a
fraction as points, a gain, an interval, a failure count, and the accuracy
table (reports/accuracy.md and the report's). No sentences here: evaluate
depends on this module, and a prose edit must not make its outputs stale."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from pipeline.results import Mean, Outcomes, Statistics
from pipeline.stats import DIVERGED, NOT_LEARNING, Estimate

LABELS = {"bn": "with BatchNorm", "nobn": "without BatchNorm"}  # the variants, in tables


def show_value(value: Any) -> str:
    """A param's value as params.yaml writes it: 1e-05, true, [0.9, 0.999]; a string as is."""
    return value if isinstance(value, str) else json.dumps(value)


def number(value: float | None, spec: str, scale: float = 1) -> str:
    """`scale * value` as `spec` says, "-" when there is no value."""
    return "-" if value is None else f"{scale * value:{spec}}"


def pct(fraction: float | None) -> str:
    """A fraction in percent (or points): "97.78"."""
    return number(fraction, ".2f", 100)


def gain(fraction: float | None) -> str:
    """A difference of fractions in points, signed: "+1.23"."""
    return number(fraction, "+.2f", 100)


def show_interval(
    interval: Sequence[float] | None, scale: float = 100, digits: int = 2, sign: str = ""
) -> str:
    """ "low to high" for tables (scaled: 100 shows fractions as percent), "-"
    when there is no interval (one seed)."""
    if interval is None:
        return "-"
    low, high = (scale * x for x in interval)
    return f"{low:{sign}.{digits}f} to {high:{sign}.{digits}f}"


def with_interval(mean: Mean | Estimate | None, spec: str, scale: float = 1) -> str:
    """A mean and its 95% interval, scaled and as `spec` says: "97.58 (97.41
    to 97.76)"; the value alone without an interval; "-" without a value."""
    if mean is None or mean.mean is None:
        return "-"
    value = number(mean.mean, spec, scale)
    if mean.ci95 is None:
        return value
    low, high = (number(x, spec, scale) for x in mean.ci95)
    return f"{value} ({low} to {high})"


def failed_cell(outcomes: Outcomes) -> str:
    """How many seeds failed to learn, how, and the exact 95% interval of the
    failure rate: "0 of 5 (95% CI 0 to 52%)", "2 of 5 (1 diverged, 1 not
    learning; 95% CI 5 to 85%)"."""
    counts = {k: getattr(outcomes, k) for k in (DIVERGED, NOT_LEARNING)}
    how = [f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if n]
    low, high = (100 * x for x in outcomes.failed_fraction_ci95)
    details = [", ".join(how)] if how else []
    details.append(f"95% CI {low:.0f} to {high:.0f}%")
    return f"{outcomes.failed} of {outcomes.seeds} ({'; '.join(details)})"


class Training(NamedTuple):
    """What the training histories add to a variant's row of the report's table."""

    best_accuracy: float | None  # mean over the seeds that learnt of each one's best
    best_epoch: float | None  # mean over the same seeds of the epoch reaching it
    epoch_seconds: float  # median time per epoch, all seeds


def accuracy_table(
    statistics: Statistics, training: dict[str, Training] | None = None
) -> tuple[list[str], list[list[str]]]:
    """The header and rows of reports/accuracy.md and of the report's
    accuracy table: per variant the final test accuracy, its interval and
    std, and the test loss over the seeds that learnt (with `training`, the
    report's, also best accuracy and epoch and time per epoch); then the
    paired gain over the seeds where both learnt. When some seed failed, the
    seeds column says how many learnt and a column counts the failures
    (failed_cell). "-": nothing to compute."""
    failed = statistics.any_failed
    header = ["variant", "seeds learnt" if failed else "seeds",
              *(["failed to learn (95% CI)"] if failed else []), "final accuracy", "95% CI",
              "std", "p (paired t-test)", *(["best accuracy", "best epoch"] if training else []),
              "final test loss", *(["s / epoch"] if training else [])]  # fmt: skip
    rows = []
    for variant, label in LABELS.items():
        v, t = statistics.of(variant), training[variant] if training else None
        rows.append([label, f"{v.learnt} of {v.seeds}" if failed else str(v.seeds),
                     *([failed_cell(v.outcomes)] if failed else []), pct(v.test_accuracy.mean),
                     show_interval(v.test_accuracy.ci95), pct(v.test_accuracy.std), "",
                     *([pct(t.best_accuracy), number(t.best_epoch, "g")] if t else []),
                     number(v.test_loss.mean, ".4f"), *([f"{t.epoch_seconds:.2f}"] if t else [])])  # fmt: skip
    d = statistics.bn_minus_nobn
    rows.append(["bn - nobn (paired)", f"{d.seeds} of {statistics.seeds}" if failed else str(d.seeds),
                 *([""] if failed else []), gain(d.test_accuracy.mean),
                 show_interval(d.test_accuracy.ci95, sign="+"), pct(d.test_accuracy.std),
                 number(d.test_accuracy.p_value, ".2g"), *(["", ""] if training else []),
                 number(d.test_loss.mean, "+.4f"), *([""] if training else [])])  # fmt: skip
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, without a final newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
