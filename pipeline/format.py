"""How numbers look in tables and text, written once: a fraction as points,
an interval, a failure count. No sentences here: the stages that compute
numbers (evaluate's accuracy table) depend on this module, and a prose edit
must not make them stale."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.stats import DIVERGED, NOT_LEARNING


def failed_cell(outcomes: dict) -> str:
    """A table cell for `failures(...)`: how many seeds failed to learn, how,
    and the 95% interval of the failure rate: "0 (0 to 52%)"; "2: 1 diverged,
    1 not learning (5 to 85%)"."""
    low, high = (100 * x for x in outcomes["failed_fraction_ci95"])
    how = [f"{outcomes[k]} {k.replace('_', ' ')}" for k in (DIVERGED, NOT_LEARNING) if outcomes[k]]
    return f"{outcomes['failed']}{': ' + ', '.join(how) if how else ''} ({low:.0f} to {high:.0f}%)"


def show_interval(
    interval: Sequence[float] | None, scale: float = 100, digits: int = 2, sign: str = ""
) -> str:
    """ "low to high" for tables (scaled: 100 shows fractions as percent), "-"
    when there is no interval (one seed)."""
    if interval is None:
        return "-"
    low, high = (scale * x for x in interval)
    return f"{low:{sign}.{digits}f} to {high:{sign}.{digits}f}"


def pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}"
