"""The original post's figures (the seed of this project: one model per
variant, one run each) beside this run's seeds that learnt, as a table, a
verdict in plain words and a figure, computed from reports/statistics.json."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pipeline.format import LABELS, number, pct, show_interval
from pipeline.report.document import Table
from pipeline.report.figures import COLORS, dress
from pipeline.results import DIFFERENCE, Statistics
from pipeline.stats import LEARNT, difference_prediction, estimate

# The original post (the seed of this project): one model per variant, one
# run each, PyTorch defaults; its printed test results after 9 epochs.
POST_CORRECT = {"bn": 9783, "nobn": 9598}  # "Accuracy: 9783/10000"
POST_AVERAGE_LOSS = {"bn": 0.0012, "nobn": 0.0025}  # "Average loss", printed to 4 decimals
TEST_IMAGES = 10_000
POST_TEST_BATCHES = math.ceil(TEST_IMAGES / 64)  # its test DataLoader: batch 64, 157 batches


def post_accuracy(variant: str) -> float:
    return POST_CORRECT[variant] / TEST_IMAGES


def post_loss_per_image(variant: str) -> tuple[float, float, float]:
    """The post's "Average loss" as a mean loss per image, with the range its
    rounding to 4 decimals allows. It summed each test batch's mean loss and
    divided by the number of images, so it is the per-image mean over
    TEST_IMAGES / POST_TEST_BATCHES (about 64); converted back, that factor
    is exact up to the last, smaller batch (16 images, weighted as 64)."""
    factor = TEST_IMAGES / POST_TEST_BATCHES
    printed = POST_AVERAGE_LOSS[variant]
    return printed * factor, (printed - 0.00005) * factor, (printed + 0.00005) * factor


def _prediction(values: list[float]) -> tuple[float, float] | None:
    """The 95% prediction interval of one more run (None under two values)."""
    return estimate(values).prediction95 if values else None


def _inside(value: float, interval: tuple[float, float] | list[float] | None) -> bool:
    return interval is not None and interval[0] <= value <= interval[1]


def _per_seed_cell(statistics: Statistics, variant: str, key: str, spec: str, scale: float) -> str:
    """Every seed's value, in seed order; a seed that failed to learn shows
    its outcome ("diverged", "not learning"), a pair where one did "-"."""
    seeds = statistics.seed_order()
    if variant == DIFFERENCE:
        pairs = statistics.learnt_seeds(variant)
        gains = dict(zip(pairs, statistics.learnt_values(variant, key), strict=True))
        return ", ".join(number(gains.get(seed), spec, scale) for seed in seeds)
    by_seed = statistics.of(variant).per_seed
    return ", ".join(
        number(getattr(by_seed[s], key), spec, scale)
        if by_seed[s].outcome == LEARNT
        else by_seed[s].outcome.replace("_", " ")
        for s in seeds
    )


def reproduction(statistics: Statistics) -> tuple[Table, list[str]]:
    """The original post's single-run figures beside this run's seeds that
    learnt, and a verdict in plain words computed from them (see `verdict`).
    What cannot be computed (a mean with no learnt seed, an interval with
    fewer than two) shows "-"."""
    post = {v: post_accuracy(v) for v in LABELS}
    post[DIFFERENCE] = post["bn"] - post["nobn"]
    learnt = {v: statistics.learnt_values(v) for v in LABELS}
    predictions = {v: _prediction(learnt[v]) for v in LABELS}
    # The post's gain compares two independently started runs: the interval
    # for it is that of an unpaired difference, not of a seed's paired gain.
    predictions[DIFFERENCE] = difference_prediction(learnt["bn"], learnt["nobn"])
    rows = []
    for variant, label in (*LABELS.items(), (DIFFERENCE, "gain (bn - nobn)")):
        sign, accuracy = "+" if variant == DIFFERENCE else "", statistics.of(variant).test_accuracy
        rows.append([label, f"{100 * post[variant]:{sign}.2f}",
                     number(accuracy.mean, f"{sign}.2f", 100), show_interval(accuracy.ci95, sign=sign),
                     show_interval(predictions[variant], sign=sign),
                     _per_seed_cell(statistics, variant, "test_accuracy", f"{sign}.2f", 100)])  # fmt: skip
    for variant, label in LABELS.items():
        loss = statistics.of(variant).test_loss
        converted, low, high = post_loss_per_image(variant)
        rows.append([f"test loss per image, {label}",
                     f"{converted:.3f} ({low:.3f} to {high:.3f})", number(loss.mean, ".3f"),
                     show_interval(loss.ci95, scale=1, digits=3),
                     show_interval(_prediction(statistics.learnt_values(variant, "test_loss")),
                                   scale=1, digits=3),
                     _per_seed_cell(statistics, variant, "test_loss", ".3f", 1)])  # fmt: skip
    table = Table(["", "original post (one run)", "this run: mean", "95% CI of the mean",
                   "95% prediction interval, one run", "per seed"], rows)  # fmt: skip
    return table, verdict(statistics, post, predictions)


def too_few_learnt(statistics: Statistics) -> str | None:
    """Why the post cannot be compared with this run, or None when it can:
    one seed (no spread at all), or fewer than two seeds that learnt with a
    variant, or with both (a prediction interval and the CI of the mean gain
    need two)."""
    seeds, pairs = statistics.seeds, statistics.bn_minus_nobn.seeds
    if seeds < 2:
        return (
            "With one seed there is no spread to compare the post against: no interval can "
            "say whether its figures are what this setup gives. List several seeds in "
            "train.seeds (the default is five)."
        )
    learnt = {v: statistics.of(v).learnt for v in LABELS}
    if min(learnt.values()) >= 2 and pairs >= 2:
        return None
    return (
        f"Too few learnt seeds to compare with the post: of {seeds} seeds, {learnt['bn']} "
        f"learnt with BatchNorm, {learnt['nobn']} without and {pairs} with both; a prediction "
        "interval for one run, and a CI of the mean gain, need at least two."
    )


def verdict(
    statistics: Statistics,
    post: dict[str, float],
    predictions: dict[str, tuple[float, float] | None],
) -> list[str]:
    """The plain-words verdict: do each of the post's accuracies and
    converted losses fall in the 95% prediction interval of one run here;
    does its gain fall in the 95% CI of the mean gain (is it the average
    effect) and in the prediction interval of one unpaired pair of runs (is
    it a plausible single comparison); and does the mean gain's CI exclude
    zero. The post's figures are consistent when all of them are plausible."""
    reason = too_few_learnt(statistics)
    if reason is not None:
        return [reason]
    seeds = statistics.bn_minus_nobn.seeds
    counted = f"{seeds} seeds" + ("" if seeds == statistics.seeds else " where both learnt")
    lines = []
    plausible = {}
    for variant, label in LABELS.items():
        interval = predictions[variant]
        plausible[variant] = _inside(post[variant], interval)
        lines.append(
            f"The post's {pct(post[variant])}% {label} is "
            f"{'inside' if plausible[variant] else 'outside'} the 95% prediction interval "
            f"for one run here ({show_interval(interval)})"
            + ("." if plausible[variant] else ": a single run of this setup rarely scores that.")
        )
    losses = {v: post_loss_per_image(v)[0] for v in LABELS}
    for variant in losses:
        interval = _prediction(statistics.learnt_values(variant, "test_loss"))
        plausible[f"{variant} loss"] = _inside(losses[variant], interval)
    outside = [v for v in losses if not plausible[f"{v} loss"]]
    lines.append(
        f"Its test losses, converted to a mean per image ({losses['bn']:.3f} with BatchNorm, "
        f"{losses['nobn']:.3f} without), are "
        + (
            "both inside"
            if not outside
            else "both outside"
            if len(outside) == 2
            else f"inside but for the one {LABELS[outside[0]]}, which is outside"
        )
        + " the 95% prediction intervals of one run's test loss here."
    )
    gain, ci = post[DIFFERENCE], statistics.bn_minus_nobn.test_accuracy.ci95
    mean_gain = 100 * statistics.bn_minus_nobn.test_accuracy.mean
    in_ci = _inside(gain, ci)
    plausible["gain"] = _inside(gain, predictions[DIFFERENCE])
    direction = "over" if gain > mean_gain / 100 else "under"
    lines.append(
        f"Its gain of {100 * gain:+.2f} points is {'inside' if in_ci else 'outside'} the 95% CI "
        f"of the mean gain ({show_interval(ci, sign='+')}, mean {mean_gain:+.2f})"
        + ("" if in_ci else f": it {direction}states the average effect")
        + ". The post's two models did not share initial weights or batch order, so its gain "
        "is the difference of two independent runs, which varies more than a seed's paired "
        f"gain: the 95% prediction interval for such a difference here is "
        f"{show_interval(predictions[DIFFERENCE], sign='+')}, and {100 * gain:+.2f} lies "
        f"{'inside' if plausible['gain'] else 'outside'} it."
    )
    excludes_zero = ci is not None and (ci[0] > 0 or ci[1] < 0)
    effect = (
        f"BatchNorm {'helps' if mean_gain > 0 else 'hurts'} here: with {counted} the CI "
        "of the mean gain excludes zero"
        if excludes_zero
        else f"with {counted} the CI of the mean gain includes zero: these seeds cannot "
        "tell BatchNorm's effect from none"
    )
    consistent = all(plausible.values())
    lines.append(
        "Verdict: "
        + (
            "the post's figures are what a single run of this setup can give"
            if consistent
            else "the post's figures are not all what a single run of this setup gives"
        )
        + ("" if in_ci else ", though its gain is not the average one")
        + f"; {effect}."
    )
    return lines


def seed_accuracies(statistics: Statistics) -> Figure:
    """Every seed's final test accuracy per variant (dots), their mean and 95%
    CI, a line joining each seed's two models; beside it each seed's gain
    (bn - nobn) with its mean and CI; the post's single-run figures as stars.
    The seeds that failed to learn (for the gain, pairs where one did) are
    crosses, left out of the mean as they are of the intervals."""
    names = (*LABELS, DIFFERENCE)
    values = {v: statistics.per_seed(v) for v in names}
    intervals = {v: statistics.of(v).test_accuracy.ci95 for v in names}
    learnt = {v: statistics.learnt_mask(v) for v in names}
    post = {v: post_accuracy(v) for v in LABELS}
    post[DIFFERENCE] = post["bn"] - post["nobn"]
    fig = Figure(figsize=(10, 4.4))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.84, bottom=0.14, wspace=0.35)
    accuracy, gain = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    positions = {"bn": 0.0, "nobn": 1.0}
    for a, b in zip(values["bn"], values["nobn"], strict=True):
        accuracy.plot([0, 1], [100 * a, 100 * b], color="0.6", lw=1, zorder=1)
    for variant, x in positions.items():
        kept, failed = _split(values[variant], learnt[variant])
        dots = [100 * v for v in kept]
        if dots:
            accuracy.scatter([x] * len(dots), dots, color=COLORS[variant], zorder=2,
                             label=f"{variant}: one dot per seed")  # fmt: skip
        _crosses(accuracy, x, failed, COLORS[variant], f"{variant}: failed to learn")
        _mean_and_interval(accuracy, x + 0.12, kept, intervals[variant])
        accuracy.scatter([x - 0.12], [100 * post[variant]], marker="*", s=160, color="black",
                         zorder=3, label="original post (one run)" if variant == "bn" else None,
                         gid="post")  # fmt: skip
    accuracy.set_xticks(list(positions.values()), [LABELS[v] for v in positions])
    accuracy.set_xlim(-0.5, 1.5)
    dress(accuracy, "Per seed, joined by seed", ylabel="final test accuracy (%)", axis="y")
    accuracy.legend(fontsize=7, loc="lower left")
    differences, failed = _split(values["bn_minus_nobn"], learnt["bn_minus_nobn"])
    gain.axhline(0, color="0.4", lw=1, ls="--")
    gain.scatter([0.0] * len(differences), [100 * d for d in differences], color="tab:green",
                 zorder=2)  # fmt: skip
    _crosses(gain, 0.0, failed, "tab:green", None)
    _mean_and_interval(gain, 0.12, differences, intervals["bn_minus_nobn"])
    gain.scatter([-0.12], [100 * post["bn_minus_nobn"]], marker="*", s=160, color="black",
                 zorder=3, gid="post")  # fmt: skip
    gain.set_xticks([0.0], ["bn - nobn"])
    gain.set_xlim(-0.5, 0.5)
    dress(gain, "BatchNorm's gain per seed", ylabel="gain (points)", axis="y")
    seeds = len(values["bn_minus_nobn"])
    crosses = ", failed to learn (crosses)" if not all(all(x) for x in learnt.values()) else ""
    fig.suptitle(
        f"Final test accuracy of {seeds} seed{'s' if seeds > 1 else ''}: "
        f"mean with 95% CI (bars), original post (stars){crosses}"
    )
    return fig


def _split(values: list[float], learnt: list[bool]) -> tuple[list[float], list[float]]:
    """(values of the seeds that learnt, values of those that did not)."""
    return (
        [v for v, ok in zip(values, learnt, strict=True) if ok],
        [v for v, ok in zip(values, learnt, strict=True) if not ok],
    )


def _crosses(ax: Axes, x: float, values: list[float], color: str, label: str | None) -> None:
    """The seeds that failed to learn, as crosses; nothing when none did."""
    if values:
        ax.scatter([x] * len(values), [100 * v for v in values], marker="x", color=color,
                   zorder=2, label=label, gid="failed")  # fmt: skip


def _mean_and_interval(
    ax: Axes, x: float, values: list[float], interval: Sequence[float] | None
) -> None:
    """A diamond at the mean, with the interval as an error bar (none with one
    seed); nothing without values (no seed learnt)."""
    if not values:
        return
    mean = 100 * float(np.mean(values))
    errors = None
    if interval is not None:
        errors = [[mean - 100 * interval[0]], [100 * interval[1] - mean]]
    ax.errorbar([x], [mean], yerr=errors, fmt="D", color="black", capsize=4, zorder=3)
