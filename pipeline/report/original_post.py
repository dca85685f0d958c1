"""The original post's figures (the seed of this project: one model per
variant, one run each) beside this run's seeds that learnt, and the verdict
on them in plain words, computed from reports/statistics.json."""

from __future__ import annotations

import math

from pipeline.format import pct, show_interval
from pipeline.report.document import Table
from pipeline.report.figures import LABELS
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


def per_seed(statistics: dict, variant: str, key: str = "test_accuracy") -> list[float]:
    """A variant's per-seed values, in seed order, whether or not the seed
    learnt; for "bn_minus_nobn", the paired differences."""
    if variant == "bn_minus_nobn":
        bn, nobn = per_seed(statistics, "bn", key), per_seed(statistics, "nobn", key)
        return [a - b for a, b in zip(bn, nobn, strict=True)]
    by_seed = statistics[variant]["per_seed"]
    return [by_seed[seed][key] for seed in sorted(by_seed, key=int)]


def learnt_seeds(statistics: dict, variant: str) -> list[str]:
    """The seeds (keys of per_seed, in seed order) whose model learnt; for
    "bn_minus_nobn", those where both variants' models learnt."""
    if variant == "bn_minus_nobn":
        nobn = set(learnt_seeds(statistics, "nobn"))
        return [seed for seed in learnt_seeds(statistics, "bn") if seed in nobn]
    by_seed = statistics[variant]["per_seed"]
    return [seed for seed in sorted(by_seed, key=int) if by_seed[seed]["outcome"] == LEARNT]


def learnt_mask(statistics: dict, variant: str) -> list[bool]:
    """Per seed, in seed order: did it learn (for "bn_minus_nobn": did both)."""
    learnt = set(learnt_seeds(statistics, variant))
    return [seed in learnt for seed in sorted(statistics["bn"]["per_seed"], key=int)]


def learnt_values(statistics: dict, variant: str, key: str = "test_accuracy") -> list[float]:
    """per_seed's values over the seeds that learnt, what statistics.json's
    means are over; for "bn_minus_nobn", the differences where both learnt."""
    seeds = learnt_seeds(statistics, variant)
    if variant == "bn_minus_nobn":
        bn, nobn = ([statistics[v]["per_seed"][s][key] for s in seeds] for v in ("bn", "nobn"))
        return [a - b for a, b in zip(bn, nobn, strict=True)]
    return [statistics[variant]["per_seed"][seed][key] for seed in seeds]


def any_failed(statistics: dict) -> bool:
    """Did some seed of either variant fail to learn?"""
    return any(statistics[v]["outcomes"]["failed"] for v in LABELS)


def _prediction(values: list[float]) -> tuple[float, float] | None:
    """The 95% prediction interval of one more run (None under two values)."""
    return estimate(values).prediction95 if values else None


def _inside(value: float, interval: tuple[float, float] | list[float] | None) -> bool:
    return interval is not None and interval[0] <= value <= interval[1]


def _value(value: float | None, spec: str, scale: float = 100) -> str:
    return "-" if value is None else f"{scale * value:{spec}}"


def _per_seed_cell(statistics: dict, variant: str, key: str, spec: str, scale: float) -> str:
    """Every seed's value, in seed order; a seed that failed to learn shows
    its outcome ("diverged", "not learning"), a pair where one did "-"."""
    seeds = sorted(statistics["bn"]["per_seed"], key=int)
    if variant == "bn_minus_nobn":
        pairs = learnt_seeds(statistics, variant)
        gains = dict(zip(pairs, learnt_values(statistics, variant, key), strict=True))
        return ", ".join(_value(gains.get(seed), spec, scale) for seed in seeds)
    by_seed = statistics[variant]["per_seed"]
    return ", ".join(
        _value(by_seed[s][key], spec, scale)
        if by_seed[s]["outcome"] == LEARNT
        else by_seed[s]["outcome"].replace("_", " ")
        for s in seeds
    )


def reproduction(statistics: dict) -> tuple[Table, list[str]]:
    """The original post's single-run figures beside this run's seeds that
    learnt, and a verdict in plain words computed from them (see `verdict`).
    What cannot be computed (a mean with no learnt seed, an interval with
    fewer than two) shows "-"."""
    post = {v: post_accuracy(v) for v in ("bn", "nobn")}
    post["bn_minus_nobn"] = post["bn"] - post["nobn"]
    learnt = {v: learnt_values(statistics, v) for v in ("bn", "nobn")}
    predictions = {v: _prediction(learnt[v]) for v in ("bn", "nobn")}
    # The post's gain compares two independently started runs: the interval
    # for it is that of an unpaired difference, not of a seed's paired gain.
    predictions["bn_minus_nobn"] = difference_prediction(learnt["bn"], learnt["nobn"])
    rows = []
    for variant, label in (("bn", "with BatchNorm"), ("nobn", "without BatchNorm"),
                           ("bn_minus_nobn", "gain (bn - nobn)")):  # fmt: skip
        sign = "+" if variant == "bn_minus_nobn" else ""
        rows.append([label, f"{100 * post[variant]:{sign}.2f}",
                     _value(statistics[variant]["test_accuracy"], f"{sign}.2f"),
                     show_interval(statistics[variant]["test_accuracy_ci95"], sign=sign),
                     show_interval(predictions[variant], sign=sign),
                     _per_seed_cell(statistics, variant, "test_accuracy", f"{sign}.2f", 100)])  # fmt: skip
    for variant, label in (("bn", "with BatchNorm"), ("nobn", "without BatchNorm")):
        losses = learnt_values(statistics, variant, "test_loss")
        converted, low, high = post_loss_per_image(variant)
        rows.append([f"test loss per image, {label}",
                     f"{converted:.3f} ({low:.3f} to {high:.3f})",
                     _value(statistics[variant]["test_loss"], ".3f", scale=1),
                     show_interval(statistics[variant]["test_loss_ci95"], scale=1, digits=3),
                     show_interval(_prediction(losses), scale=1, digits=3),
                     _per_seed_cell(statistics, variant, "test_loss", ".3f", 1)])  # fmt: skip
    table = Table(["", "original post (one run)", "this run: mean", "95% CI of the mean",
                   "95% prediction interval, one run", "per seed"], rows)  # fmt: skip
    return table, verdict(statistics, post, predictions)


def too_few_learnt(statistics: dict) -> str | None:
    """Why the post cannot be compared with this run, or None when it can:
    one seed (no spread at all), or fewer than two seeds that learnt with a
    variant, or with both (a prediction interval and the CI of the mean gain
    need two)."""
    seeds, pairs = statistics["bn"]["seeds"], statistics["bn_minus_nobn"]["seeds"]
    if seeds < 2:
        return (
            "With one seed there is no spread to compare the post against: no interval can "
            "say whether its figures are what this setup gives. List several seeds in "
            "train.seeds (the default is five)."
        )
    learnt = {v: statistics[v]["learnt"] for v in ("bn", "nobn")}
    if min(learnt.values()) >= 2 and pairs >= 2:
        return None
    return (
        f"Too few learnt seeds to compare with the post: of {seeds} seeds, {learnt['bn']} "
        f"learnt with BatchNorm, {learnt['nobn']} without and {pairs} with both; a prediction "
        "interval for one run, and a CI of the mean gain, need at least two."
    )


def verdict(
    statistics: dict, post: dict[str, float], predictions: dict[str, tuple[float, float] | None]
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
    seeds = statistics["bn_minus_nobn"]["seeds"]
    counted = f"{seeds} seeds" + (
        "" if seeds == statistics["bn"]["seeds"] else " where both learnt"
    )
    lines = []
    plausible = {}
    for variant, label in (("bn", "with BatchNorm"), ("nobn", "without BatchNorm")):
        interval = predictions[variant]
        plausible[variant] = _inside(post[variant], interval)
        lines.append(
            f"The post's {pct(post[variant])}% {label} is "
            f"{'inside' if plausible[variant] else 'outside'} the 95% prediction interval "
            f"for one run here ({show_interval(interval)})"
            + ("." if plausible[variant] else ": a single run of this setup rarely scores that.")
        )
    losses = {v: post_loss_per_image(v)[0] for v in ("bn", "nobn")}
    for variant in losses:
        interval = _prediction(learnt_values(statistics, variant, "test_loss"))
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
    gain, ci = post["bn_minus_nobn"], statistics["bn_minus_nobn"]["test_accuracy_ci95"]
    mean_gain = 100 * statistics["bn_minus_nobn"]["test_accuracy"]
    in_ci = _inside(gain, ci)
    plausible["gain"] = _inside(gain, predictions["bn_minus_nobn"])
    direction = "over" if gain > mean_gain / 100 else "under"
    lines.append(
        f"Its gain of {100 * gain:+.2f} points is {'inside' if in_ci else 'outside'} the 95% CI "
        f"of the mean gain ({show_interval(ci, sign='+')}, mean {mean_gain:+.2f})"
        + ("" if in_ci else f": it {direction}states the average effect")
        + ". The post's two models did not share initial weights or batch order, so its gain "
        "is the difference of two independent runs, which varies more than a seed's paired "
        f"gain: the 95% prediction interval for such a difference here is "
        f"{show_interval(predictions['bn_minus_nobn'], sign='+')}, and {100 * gain:+.2f} lies "
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
