"""The seed post's explanation of why BatchNorm helps, tested on the training
histories: without it the activation function's inputs drift to one side,
fall into the activation's flat region, and the gradient vanishes toward the
input. Each part is judged from the last epoch over each variant's seeds that
learnt (mean and 95% t-interval over seeds), against the thresholds below,
and every sentence is generated from the numbers.

A part is judged on the whole interval: above a threshold when all of it is
(one seed: when its value is, and the sentence says there is no interval),
below when all of it is, undecided when the interval straddles it. Parts
combine in three-valued logic: "supported" needs every condition true,
"not supported" needs one false, otherwise the seeds do not decide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean

from pipeline.format import LABELS, with_interval
from pipeline.nn.diagnostics import TYPICAL_UNIT, flat_threshold
from pipeline.report.document import Block, Paragraph, Table
from pipeline.report.figures import ACTIVATION_NAMES
from pipeline.report.inputs import drift, finite, gradient_ratio, has_diagnostics, mean_flat, shift
from pipeline.results import History, depth_of, layer_key
from pipeline.stats import Estimate, estimate

# Pushed to one side: the median of the activation's inputs (all units, test
# images) is more than half their half-spread ((p85 - p15) / 2, about one
# standard deviation for a normal distribution) from the activation's centre
# 0. For a normal distribution that puts 69% of the inputs on one side.
OFF_CENTRE = 0.5
# Fallen into the flat region: most of a layer's inputs are there.
FLAT_MAJORITY = 0.5
# Vanished toward the input: the first hidden layer's gradient at the
# activation's input is under a tenth of the last hidden layer's.
VANISHING = 0.1

SUPPORTED, NOT_SUPPORTED, UNDECIDED = "Supported", "Not supported", "Not decided by these seeds"


def arithmetic(values: Sequence[float]) -> Estimate | None:
    """The mean and its t-interval (stats.estimate); None without values."""
    return estimate(values) if values else None


def geometric(values: Sequence[float]) -> Estimate | None:
    """For positive ratios: the geometric mean and the t-interval of the mean
    log, exponentiated (ratios multiply, so their logs are what averages);
    None without values."""
    logs = arithmetic([math.log(v) for v in values])
    if logs is None:
        return None
    ci = None if logs.ci95 is None else (math.exp(logs.ci95[0]), math.exp(logs.ci95[1]))
    return Estimate(logs.n, math.exp(logs.mean), None, ci, None)


def above(summary: Estimate | None, threshold: float) -> bool | None:
    """True when the whole interval (one seed: the value) is above the
    threshold, False when none of it is, None when it straddles it or there
    is nothing to judge."""
    if summary is None:
        return None
    low, high = summary.ci95 or (summary.mean, summary.mean)
    if low > threshold:
        return True
    return False if high <= threshold else None


def off_centre(summary: Estimate | None) -> bool | None:
    """Is the standardised median shift beyond +-OFF_CENTRE (three-valued)?"""
    if summary is None:
        return None
    side = summary if summary.mean >= 0 else _negated(summary)
    return above(side, OFF_CENTRE)


def _negated(s: Estimate) -> Estimate:
    return Estimate(s.n, -s.mean, None, None if s.ci95 is None else (-s.ci95[1], -s.ci95[0]), None)


def both(a: bool | None, b: bool | None) -> bool | None:
    """Three-valued (Kleene) and: False wins, then None."""
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def negation(a: bool | None) -> bool | None:
    return None if a is None else not a


@dataclass(frozen=True)
class VariantWhy:
    """One variant's numbers, over its seeds that learnt, at the last epoch."""

    seeds: int
    median_first: Estimate | None  # input_p50, first hidden layer
    median_last: Estimate | None  # input_p50, last hidden layer
    shift_last: Estimate | None  # see shift(), last hidden layer
    drift: Estimate | None  # see drift(), the fixed unit of the last hidden layer
    flat_mean: Estimate | None  # flat_fraction, mean over layers
    worst_layer: int  # from 1: the layer with the largest mean flat_fraction
    flat_worst: Estimate | None
    mostly_flat_layers: int  # layers whose mean flat_fraction is above FLAT_MAJORITY
    gradient_ratio: Estimate | None  # geometric mean of gradient_ratio()


def variant_why(runs: dict[str, list[dict]], seeds: list[str]) -> VariantWhy | None:
    """The numbers of one variant (`runs`: seed -> epoch rows) over `seeds`;
    None without seeds."""
    if not seeds:
        return None
    finals = [runs[s][-1] for s in seeds]
    depth = depth_of(finals[0])

    def final(key: str, layer: int) -> list[float]:
        return [v for r in finals if finite(v := r[layer_key(layer, key)])]

    def defined(values: list[float | None]) -> list[float]:
        return [v for v in values if v is not None]

    flat = {k: final("flat_fraction", k) for k in range(1, depth + 1)}
    means = {k: fmean(v) for k, v in flat.items() if v}
    worst = max(means, key=means.__getitem__, default=1)
    return VariantWhy(
        seeds=len(seeds),
        median_first=arithmetic(final("input_p50", 1)),
        median_last=arithmetic(final("input_p50", depth)),
        shift_last=arithmetic(defined([shift(r, depth) for r in finals])),
        drift=arithmetic(defined([drift(runs[s], depth) for s in seeds])),
        flat_mean=arithmetic(defined([mean_flat(r) for r in finals])),
        worst_layer=worst,
        flat_worst=arithmetic(flat[worst]),
        mostly_flat_layers=sum(m > FLAT_MAJORITY for m in means.values()),
        gradient_ratio=geometric(defined([gradient_ratio(r) for r in finals])),
    )


def flat_difference(history: History, seeds: list[str]) -> Estimate | None:
    """Paired over `seeds` (where both variants learnt): nobn's mean flat
    fraction minus bn's, each over layers at the last epoch."""
    pairs = [(mean_flat(history["nobn"][s][-1]), mean_flat(history["bn"][s][-1])) for s in seeds]
    return arithmetic([a - b for a, b in pairs if a is not None and b is not None])


def verdicts(numbers: dict[str, VariantWhy], difference: Estimate | None) -> dict[str, bool | None]:
    """Each part of the post's explanation: True supported, False not, None
    undecided. Pushed to one side: without BatchNorm the last hidden layer's
    median is off centre, with it not. Flat region: without BatchNorm some
    layer has most inputs there and, paired by seed, more inputs are there
    than with it. Vanishing: without BatchNorm the gradient ratio is below
    VANISHING, with it not."""
    bn, nobn = numbers["bn"], numbers["nobn"]
    return {
        "side": both(off_centre(nobn.shift_last), negation(off_centre(bn.shift_last))),
        "flat": both(above(nobn.flat_worst, FLAT_MAJORITY), above(difference, 0.0)),
        "vanishing": both(
            negation(above(nobn.gradient_ratio, VANISHING)),
            above(bn.gradient_ratio, VANISHING),
        ),
    }


def label(verdict: bool | None) -> str:
    return {True: SUPPORTED, False: NOT_SUPPORTED, None: UNDECIDED}[verdict]


def show(s: Estimate | None, spec: str, scale: float = 1, unit: str = "") -> str:
    """ "61% (95% CI 59 to 63)"; "0.12 (one seed, no interval)"; "-"."""
    if s is None:
        return "-"
    value = f"{scale * s.mean:{spec}}{unit}"
    if s.ci95 is None:
        return f"{value} (one seed, no interval)"
    low, high = (f"{scale * x:{spec}}" for x in s.ci95)
    return f"{value} (95% CI {low} to {high})"


def region(activation: str) -> str:
    """Where the activation is flat, in words."""
    if activation == "relu":
        return "ReLU's flat side, below 0"
    name, edge = ACTIVATION_NAMES[activation], flat_threshold(activation)
    return f"{name}'s flat tails, |z| > {edge:.2f}, where its slope is under a tenth of its maximum"


def verdict_sentences(
    numbers: dict[str, VariantWhy], difference: Estimate | None, activation: str, failed: bool
) -> list[str]:
    """One sentence per part of the post's explanation, its verdict first;
    `failed`: some seed failed to learn (the pairs are those where both learnt)."""
    bn, nobn = numbers["bn"], numbers["nobn"]
    judged = verdicts(numbers, difference)
    name = ACTIVATION_NAMES[activation]
    if difference is None:
        paired = "no seed learnt with both variants to pair"
    else:
        which = ", those where both learnt" if failed else ""
        paired = (
            f"paired by seed ({difference.n} seed{'s' * (difference.n > 1)}{which}), "
            f"{show(difference, '+.0f', 100, ' points')} without BatchNorm"
        )
    return [
        f"{label(judged['side'])}: that without BatchNorm the activation's inputs are pushed to "
        f"one side of {name}'s centre 0. In the last hidden layer their median sits "
        f"{show(nobn.shift_last, '+.2f')} half-spreads from 0 without BatchNorm and "
        f"{show(bn.shift_last, '+.2f')} with it (beyond {OFF_CENTRE:g} counts as one side).",
        f"{label(judged['flat'])}: that without BatchNorm they fall into {region(activation)}. "
        f"Without BatchNorm {show(nobn.flat_mean, '.0f', 100, '%')} of the inputs are there on "
        f"average over the layers, up to {show(nobn.flat_worst, '.0f', 100, '%')} in layer "
        f"{nobn.worst_layer}, against {show(bn.flat_mean, '.0f', 100, '%')} with it; {paired} "
        f"(most of a layer, over {100 * FLAT_MAJORITY:.0f}%, counts as fallen in).",
        f"{label(judged['vanishing'])}: that without BatchNorm the gradient vanishes toward the "
        "input. The first hidden layer's gradient at the activation's input is "
        f"{show(nobn.gradient_ratio, '.3g')} times the last's without BatchNorm and "
        f"{show(bn.gradient_ratio, '.3g')} with it (geometric mean over seeds; under "
        f"{VANISHING:g} counts as vanished).",
    ]


def drift_sentence(numbers: dict[str, VariantWhy], epochs: int) -> str:
    """How far the fixed unit's median moved, the BatchNorm paper's internal
    covariate shift (described, not judged: the post does not claim it)."""
    clauses = ", ".join(
        f"{show(numbers[v].drift, '.2f')} {'with' if v == 'bn' else 'without'} BatchNorm"
        for v in ("nobn", "bn")
    )
    return (
        f"Over the {epochs} epochs, the median input of unit {TYPICAL_UNIT} of the last hidden "
        f"layer moved over a range of {clauses}, in half-spreads of that unit's inputs (the "
        "BatchNorm paper's internal covariate shift: described, not judged)."
    )


def numbers_table(numbers: dict[str, VariantWhy | None], totals: dict[str, int]) -> Table:
    """Per variant, the numbers the verdict is drawn from, mean (95% CI);
    how many seeds learnt where some did not."""
    failed = any((0 if n is None else n.seeds) < totals[v] for v, n in numbers.items())
    header = ["variant", "seeds learnt" if failed else "seeds", "median input, first layer", "median input, last layer",
              "median shift, last layer (half-spreads)", f"unit {TYPICAL_UNIT} drift (half-spreads)",
              "in flat region, mean over layers (%)", "in flat region, worst layer (%)",
              f"layers over {100 * FLAT_MAJORITY:.0f}% flat", "gradient first / last layer"]  # fmt: skip
    rows = []
    for variant, n in numbers.items():
        counted = f"{0 if n is None else n.seeds} of {totals[variant]}" if failed else str(n.seeds)
        if n is None:
            rows.append([LABELS[variant], counted] + ["-"] * (len(header) - 2))
            continue
        rows.append([
            LABELS[variant], counted, with_interval(n.median_first, ".3g"),
            with_interval(n.median_last, ".3g"), with_interval(n.shift_last, "+.2f"),
            with_interval(n.drift, ".2f"), with_interval(n.flat_mean, ".0f", 100),
            f"{with_interval(n.flat_worst, '.0f', 100)}, layer {n.worst_layer}",
            str(n.mostly_flat_layers), with_interval(n.gradient_ratio, ".3g"),
        ])  # fmt: skip
    return Table(header, rows)


def method(activation: str, depth: int, failed: bool) -> str:
    """What the numbers are and the thresholds that judge them; `failed`:
    some seed failed to learn (its numbers are left out)."""
    over = "each variant's seeds that learnt" if failed else "seeds"
    return (
        f"The post explains BatchNorm's gain so: without it, the inputs of the activation "
        f"({ACTIVATION_NAMES[activation]} here) drift to one side, fall into its flat region and the gradient "
        "vanishes toward the input. Each part is tested on the last epoch, mean over "
        f"{over} with its 95% t-interval (one seed: no interval). The "
        "activation's input is the BatchNorm output with BatchNorm and the linear map's output "
        "without. Median shift: the median over all units and test images divided by the "
        "half-spread (85th minus 15th percentile, halved); beyond "
        f"{OFF_CENTRE:g} counts as pushed to one side. Flat region: {region(activation)}; over "
        f"{100 * FLAT_MAJORITY:.0f}% of a layer's inputs counts as fallen in. Gradient first / "
        "last layer: the norm of the loss gradient at the activation's input of hidden layer 1 "
        f"over that of hidden layer {depth}, per seed, then the geometric mean over seeds (ratios "
        f"multiply); under {VANISHING:g} counts as vanished. A part is supported when every interval "
        "it is judged on lies on the post's side of its threshold (for the flat region also the "
        "paired difference without minus with BatchNorm above 0), not supported when one lies "
        "wholly on the other side, and not decided when one straddles its threshold."
    )


MISSING = (
    "The training histories lack the diagnostics of the activations' inputs (percentiles, flat "
    "region, gradient at the activation's input): the models were trained by older code, so the "
    "post's explanation is not tested here; `dvc repro train_bn train_nobn` writes them."
)


def blocks(history: History, seeds: dict[str, list[str]], activation: str) -> list[Block]:
    """The section's paragraphs and table, `seeds` the seeds that learnt per
    variant. Histories without the diagnostics, or no variant with a learnt
    seed, give one paragraph that says why there is nothing to test."""
    if not has_diagnostics(history):
        return [Paragraph(MISSING)]
    numbers = {v: variant_why(history[v], seeds[v]) for v in LABELS}
    missing = [v for v in LABELS if numbers[v] is None]
    if len(missing) == len(LABELS):
        return [Paragraph("No seed learnt with either variant, so the post's explanation is not "
                          "tested: a network that failed to learn shows its failure, not how "
                          "the variant learns.")]  # fmt: skip
    shown = next(v for v in LABELS if numbers[v])
    row = history[shown][seeds[shown][0]][-1]
    totals = {v: len(history[v]) for v in LABELS}
    failed = any(len(seeds[v]) < totals[v] for v in LABELS)
    head = [Paragraph(method(activation, depth_of(row), failed)), numbers_table(numbers, totals)]
    if missing:
        return [*head, Paragraph(
            f"No seed learnt {LABELS[missing[0]]}, so the post's explanation, a comparison of the "
            "two variants, is not tested: a network that failed to learn shows its failure, not "
            "how the variant learns."
        )]  # fmt: skip
    judged = {v: n for v, n in numbers.items() if n is not None}
    pairs = [s for s in seeds["bn"] if s in seeds["nobn"]]
    sentences = verdict_sentences(judged, flat_difference(history, pairs), activation, failed)
    return [*head, Paragraph(" ".join(sentences)),
            Paragraph(drift_sentence(judged, int(row["epoch"])))]  # fmt: skip
