"""Statistics across seeds, the same way everywhere.

The t-distribution's quantiles, intervals and tests come from scipy.stats;
what is written here is only which of them to take and what to do with one
seed (no spread to estimate: no interval, no test) or with differences that
do not vary at all (a t statistic of 0/0).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95

# A seed fails to learn when its loss became NaN or infinite ("diverged") or
# when its model ends near chance, 10% on ten balanced classes ("not
# learning"): below NEAR_CHANCE test accuracy it learnt next to nothing.
# Either way the seed is counted, not averaged: a mean over learners and
# failures mixes two populations, and its t-interval can leave 0-100%.
NEAR_CHANCE = 0.2
CHANCE = 0.1  # a guess among ten classes
LEARNT, DIVERGED, NOT_LEARNING = "learnt", "diverged", "not_learning"
OUTCOMES = (LEARNT, DIVERGED, NOT_LEARNING)


def outcome(test_accuracy: float, diverged: bool) -> str:
    """What became of one seed (see NEAR_CHANCE)."""
    if diverged:
        return DIVERGED
    return NOT_LEARNING if test_accuracy < NEAR_CHANCE else LEARNT


def failures(outcomes: Sequence[str]) -> dict:
    """How many seeds ended in each outcome, and the fraction that failed
    (diverged or not learning) with its exact (Clopper-Pearson) 95% binomial
    interval: with 0 of 5 failed it still runs to 52%."""
    from scipy import stats

    counts = {name: sum(o == name for o in outcomes) for name in OUTCOMES}
    failed = len(outcomes) - counts[LEARNT]
    interval = stats.binomtest(failed, len(outcomes)).proportion_ci(CONFIDENCE, method="exact")
    return counts | {
        "failed": failed,
        "failed_fraction": failed / len(outcomes),
        "failed_fraction_ci95": [float(interval.low), float(interval.high)],
    }


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a diverged seed's loss is written as null."""
    return value if math.isfinite(value) else None


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value): the
    spread one would expect between independent seeds."""
    values = list(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread


@dataclass(frozen=True)
class Estimate:
    """The mean of per-seed values and what the seeds say about it. With one
    seed, std, the interval and the prediction interval are None."""

    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1)
    ci95: tuple[float, float] | None  # t-interval of the mean
    prediction95: tuple[float, float] | None  # where one more seed's value would fall


def estimate(values: Sequence[float]) -> Estimate:
    """Mean, sample std, the 95% t-interval of the mean, and the 95%
    prediction interval for a single new value: mean +- t * s * sqrt(1 + 1/n),
    the interval a single run elsewhere (the original post's, say) should
    fall in if it came from the same distribution."""
    from scipy import stats

    n = len(values)
    if n == 0:
        raise ValueError("no values to estimate from")
    mean = statistics.fmean(values)
    if n == 1:
        return Estimate(1, mean, None, None, None)
    std = statistics.stdev(values)
    if std == 0:  # every seed agrees: no width to give (scipy would answer nan)
        return Estimate(n, mean, 0.0, (mean, mean), (mean, mean))
    ci = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=std / math.sqrt(n))
    half = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * std * math.sqrt(1 + 1 / n)
    return Estimate(n, mean, std, _pair(ci), (mean - half, mean + half))


@dataclass(frozen=True)
class Paired:
    """The mean of paired differences (a - b, seed by seed) and a two-sided
    paired t-test that it is zero. With one pair, std, interval and p are
    None; with differences that do not vary, p is None too."""

    n: int
    mean: float
    std: float | None
    ci95: tuple[float, float] | None
    p_value: float | None


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """Paired comparison of a and b, equal-length lists in the same seed order."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired samples of different lengths: {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    spread = estimate(differences)
    if spread.n == 1 or spread.std == 0:
        return Paired(spread.n, spread.mean, spread.std, spread.ci95, None)
    result = stats.ttest_rel(a, b)
    return Paired(
        spread.n,
        spread.mean,
        spread.std,
        _pair(result.confidence_interval(CONFIDENCE)),
        float(result.pvalue),
    )


def difference_prediction(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """The 95% prediction interval for one new run of a minus one new,
    independent run of b (not paired: different initial weights and batch
    orders), from each sample's mean and spread. Its variance adds up both
    runs' spread and the uncertainty of both means; the degrees of freedom
    are Welch-Satterthwaite's. None with fewer than two values on a side."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    parts = [statistics.variance(x) * (1 + 1 / len(x)) for x in (a, b)]
    mean = statistics.fmean(a) - statistics.fmean(b)
    if sum(parts) == 0:
        return mean, mean
    freedom = sum(parts) ** 2 / sum(p**2 / (len(x) - 1) for p, x in zip(parts, (a, b), strict=True))
    half = stats.t.ppf((1 + CONFIDENCE) / 2, freedom) * math.sqrt(sum(parts))
    return mean - half, mean + half


def _pair(interval: Iterable[float]) -> tuple[float, float]:
    low, high = (float(x) for x in interval)
    return low, high
