"""The original post's figures (the seed of this project: one model per
variant, one run each) beside this run's seeds, and the verdict on them in
plain words, computed from reports/statistics.json."""

from __future__ import annotations

import math

from pipeline.report.document import Table
from pipeline.report.figures import LABELS
from pipeline.report.stats import difference_prediction, estimate, pct, show_interval

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
    """A variant's per-seed values, in seed order; for "bn_minus_nobn", the
    paired differences."""
    if variant == "bn_minus_nobn":
        bn, nobn = per_seed(statistics, "bn", key), per_seed(statistics, "nobn", key)
        return [a - b for a, b in zip(bn, nobn, strict=True)]
    by_seed = statistics[variant]["per_seed"]
    return [by_seed[seed][key] for seed in sorted(by_seed, key=int)]


def _inside(value: float, interval: tuple[float, float] | list[float] | None) -> bool:
    return interval is not None and interval[0] <= value <= interval[1]


def reproduction(statistics: dict) -> tuple[Table, list[str]]:
    """The original post's single-run figures beside this run's seeds, and a
    verdict in plain words computed from them (see `verdict`)."""
    post = {v: post_accuracy(v) for v in ("bn", "nobn")}
    post["bn_minus_nobn"] = post["bn"] - post["nobn"]
    predictions = {v: estimate(per_seed(statistics, v)).prediction95 for v in ("bn", "nobn")}
    # The post's gain compares two independently started runs: the interval
    # for it is that of an unpaired difference, not of a seed's paired gain.
    predictions["bn_minus_nobn"] = difference_prediction(
        per_seed(statistics, "bn"), per_seed(statistics, "nobn")
    )
    rows = []
    for variant, label in (("bn", "with BatchNorm"), ("nobn", "without BatchNorm"),
                           ("bn_minus_nobn", "gain (bn - nobn)")):  # fmt: skip
        sign = "+" if variant == "bn_minus_nobn" else ""
        values = per_seed(statistics, variant)
        rows.append([label, f"{100 * post[variant]:{sign}.2f}",
                     f"{100 * statistics[variant]['test_accuracy']:{sign}.2f}",
                     show_interval(statistics[variant]["test_accuracy_ci95"], sign=sign),
                     show_interval(predictions[variant], sign=sign),
                     ", ".join(f"{100 * v:{sign}.2f}" for v in values)])  # fmt: skip
    for variant, label in (("bn", "with BatchNorm"), ("nobn", "without BatchNorm")):
        losses = per_seed(statistics, variant, "test_loss")
        converted, low, high = post_loss_per_image(variant)
        mean = statistics[variant]["test_loss"]
        rows.append([f"test loss per image, {label}",
                     f"{converted:.3f} ({low:.3f} to {high:.3f})", f"{mean:.3f}",
                     show_interval(statistics[variant]["test_loss_ci95"], scale=1, digits=3),
                     show_interval(estimate(losses).prediction95, scale=1, digits=3),
                     ", ".join(f"{v:.3f}" for v in losses)])  # fmt: skip
    table = Table(["", "original post (one run)", "this run: mean", "95% CI of the mean",
                   "95% prediction interval, one run", "per seed"], rows)  # fmt: skip
    return table, verdict(statistics, post, predictions)


def verdict(
    statistics: dict, post: dict[str, float], predictions: dict[str, tuple[float, float] | None]
) -> list[str]:
    """The plain-words verdict: do each of the post's accuracies and
    converted losses fall in the 95% prediction interval of one run here;
    does its gain fall in the 95% CI of the mean gain (is it the average
    effect) and in the prediction interval of one unpaired pair of runs (is
    it a plausible single comparison); and does the mean gain's CI exclude
    zero. The post's figures are consistent when all of them are plausible."""
    seeds = statistics["bn_minus_nobn"]["seeds"]
    if seeds < 2:
        return [
            "With one seed there is no spread to compare the post against: no interval can "
            "say whether its figures are what this setup gives. List several seeds in "
            "train.seeds (the default is five)."
        ]
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
        interval = estimate(per_seed(statistics, variant, "test_loss")).prediction95
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
        f"BatchNorm {'helps' if mean_gain > 0 else 'hurts'} here: with {seeds} seeds the CI "
        "of the mean gain excludes zero"
        if excludes_zero
        else f"with {seeds} seeds the CI of the mean gain includes zero: these seeds cannot "
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
