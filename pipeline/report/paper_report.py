"""The BatchNorm paper's MNIST experiment (`make paper`), judged against its
Figure 1 claim by claim.

Ioffe and Szegedy (2015), section 4.1: 3 fully-connected hidden layers of 100
sigmoid units, small random Gaussian weights, binary 28x28 inputs, 60 images
per mini-batch, 50,000 steps. Figure 1(a): the BatchNorm network's test
accuracy is above the baseline's throughout training, and it "helps the
network train faster and achieve higher accuracy". Figure 1(b, c): the 15th,
50th and 85th percentiles of a typical last-layer sigmoid's input drift in
mean and spread without BatchNorm and stay stable with it.

Each value of params.yaml `paper` is a learning rate, a point of the studies'
machinery (pipeline/study.py) whose results are its statistics.json and both
train summaries; their `per_epoch` holds each seed's test accuracy and layer
diagnostics after every epoch (pipeline/nn/history.py). Every number here is
over the seeds that learnt; a variant is judged at its own best learning
rate, so that BatchNorm cannot win by the baseline's bad tuning.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from pipeline.format import LABELS, failed_cell, gain, show_interval, show_value, with_interval
from pipeline.nn.diagnostics import PERCENTILES, TYPICAL_UNIT
from pipeline.nn.model import VARIANTS
from pipeline.nn.training import batch_starts
from pipeline.report.document import Block, Heading, Image, Paragraph, Table
from pipeline.report.figures import COLORS, dress
from pipeline.report.study_report import code_sentence, held_fixed, listing
from pipeline.results import Outcomes, PointResults, TrainReport
from pipeline.stats import paired

TRAIN_IMAGES = 60_000  # MNIST's training set: steps per epoch = its batches
ACCURACY_FIGURE, PERCENTILE_FIGURE = "{}_accuracy.png", "{}_percentiles.png"
SOURCE = "Ioffe and Szegedy (2015), section 4.1 and Figure 1"


@dataclass(frozen=True)
class Curves:
    """One variant at one learning rate: each learnt seed's numbers per
    evaluation (after every epoch), and how many seeds failed."""

    lr: Any
    variant: str
    steps: list[int]  # training steps at each evaluation
    accuracy: dict[str, list[float]]  # learnt seed -> test accuracy per evaluation
    unit: dict[str, dict[int, list[float]]]  # seed -> percentile -> last layer's unit input
    outcomes: Outcomes  # of all seeds

    def final(self) -> dict[str, float]:
        return {seed: values[-1] for seed, values in self.accuracy.items()}

    def mean_curve(self) -> list[float]:
        return [statistics.fmean(v) for v in zip(*self.accuracy.values(), strict=True)]


def curves(lr: Any, variant: str, summary: TrainReport, batch_size: int) -> Curves:
    """A variant's Curves from its train summary (reports/train/<variant>.json)."""
    per_step = len(batch_starts(TRAIN_IMAGES, batch_size))
    learnt = {seed: summary.per_epoch[seed] for seed in summary.learnt_seeds()}
    epochs = next(iter(learnt.values())).epoch if learnt else []
    unit = {seed: {q: [epoch[-1] for epoch in e.layers[f"unit_p{q}"]] for q in PERCENTILES}
            for seed, e in learnt.items()}  # fmt: skip
    accuracy = {seed: e.test_accuracy for seed, e in learnt.items()}
    return Curves(lr, variant, [per_step * e for e in epochs], accuracy, unit, summary.outcomes)


def best(points: list[Curves]) -> Curves | None:
    """A variant's best learning rate: fewest failed seeds, then the highest
    mean final accuracy over the seeds that learnt; None if none learnt."""
    learnt = [c for c in points if c.accuracy]
    if not learnt:
        return None
    return min(learnt, key=lambda c: (c.outcomes.failed, -statistics.fmean(c.final().values())))


def _common(a: Curves, b: Curves) -> list[str]:
    """Seeds that learnt in both: the pairs (same initial weights and batch order)."""
    return [seed for seed in a.accuracy if seed in b.accuracy]


def throughout(bn: Curves, nobn: Curves) -> tuple[str, bool]:
    """Claim 1: BatchNorm's mean test accuracy above the baseline's at every evaluation."""
    ahead = [a > b for a, b in zip(bn.mean_curve(), nobn.mean_curve(), strict=True)]
    pairs = _common(bn, nobn)
    by_seed = sum(bn.accuracy[s][k] > nobn.accuracy[s][k] for s in pairs for k in range(len(ahead)))
    total = len(pairs) * len(ahead)
    behind = [bn.steps[k] for k, above in enumerate(ahead) if not above]
    text = (
        f"BatchNorm's mean test accuracy is above the baseline's at {sum(ahead)} of "
        f"{len(ahead)} evaluations (every {bn.steps[0]:,} steps), and seed by seed at "
        f"{by_seed} of {total}"
    )
    if behind:
        text += (
            f"; it is not above at step{'s' if len(behind) > 1 else ''} "
            + ", ".join(f"{s:,}" for s in behind[:5])
            + (" and later ones" if len(behind) > 5 else "")
        )
        after = bn.steps.index(behind[-1]) + 1  # the first evaluation after the last one behind
        if after < len(ahead):
            text += f", and above at every one from step {bn.steps[after]:,} on"
    return text + ".", not behind


def at_the_end(bn: Curves, nobn: Curves) -> tuple[str, bool | None]:
    """Claim 2: higher at the end, by how much (paired by seed)."""
    pairs = _common(bn, nobn)
    if not pairs:
        return "No seed learnt in both variants: no final difference to give.", None
    diff = paired([bn.final()[s] for s in pairs], [nobn.final()[s] for s in pairs])
    interval = f" (95% CI {show_interval(diff.ci95, sign='+')}" if diff.ci95 else " (one pair"
    p = f", paired t-test p = {diff.p_value:.2g})" if diff.p_value is not None else ")"
    means = {c.variant: statistics.fmean(c.final()[s] for s in pairs) for c in (bn, nobn)}
    text = (
        f"After {bn.steps[-1]:,} steps BatchNorm's test accuracy is "
        f"{100 * means['bn']:.2f}% against the baseline's {100 * means['nobn']:.2f}%, "
        f"a difference of {gain(diff.mean)} points{interval}{p} over {len(pairs)} seeds"
    )
    if diff.ci95 is None:
        return text + ".", None
    if diff.ci95[0] > 0:
        return text + ": higher, as the paper shows.", True
    if diff.ci95[1] < 0:
        return text + ": lower, against the paper.", False
    return text + ": the interval includes zero, so this run cannot tell the two apart.", None


def faster(bn: Curves, nobn: Curves) -> str:
    """The caption's "train faster": the first evaluation at which each mean
    curve reaches the baseline's final mean accuracy."""
    target = nobn.mean_curve()[-1]
    reached = {
        c.variant: next((c.steps[k] for k, a in enumerate(c.mean_curve()) if a >= target), None)
        for c in (bn, nobn)
    }
    if reached["bn"] is None:
        return (f"BatchNorm never reaches the baseline's final {100 * target:.2f}%: "
                "it does not train faster here.")  # fmt: skip
    ratio = reached["nobn"] / reached["bn"]
    return (
        f"BatchNorm reaches the baseline's final mean accuracy ({100 * target:.2f}%) after "
        f"{reached['bn']:,} steps, the baseline after {reached['nobn']:,}: {ratio:.1f} times "
        "as fast, as measured every epoch."
    )


def movement(c: Curves, seed: str) -> tuple[float, float]:
    """How far the fixed unit's input distribution moves over training: the
    range (max - min over evaluations) of its median, and of its 15-85 spread."""
    low, mid, high = (c.unit[seed][q] for q in PERCENTILES)
    spread = [h - lo for lo, h in zip(low, high, strict=True)]
    return max(mid) - min(mid), max(spread) - min(spread)


def stability(bn: Curves, nobn: Curves) -> tuple[str, bool | None]:
    """Claim 3: the input distribution drifts without BatchNorm and stays stable with it,
    judged by the paired difference (baseline minus BatchNorm) of each movement."""
    pairs = _common(bn, nobn)
    if not pairs:
        return "No seed learnt in both variants: no distributions to compare.", None
    moved = {c.variant: [movement(c, s) for s in pairs] for c in (bn, nobn)}
    sentences, verdicts = [], []
    for k, what in enumerate(("median", "15th-to-85th percentile spread")):
        drift = {v: [m[k] for m in moved[v]] for v in moved}
        diff = paired(drift["nobn"], drift["bn"])
        shown = f" (95% CI {show_interval(diff.ci95, scale=1, sign='+')})" if diff.ci95 else ""
        sentences.append(
            f"its {what} moves over a range of {statistics.fmean(drift['bn']):.2f} with "
            f"BatchNorm and {statistics.fmean(drift['nobn']):.2f} without, a difference of "
            f"{diff.mean:+.2f}{shown}"
        )
        verdicts.append(None if diff.ci95 is None else diff.ci95[0] > 0)
    text = (
        f"For unit {TYPICAL_UNIT} of the last hidden layer (its input over the 10,000 test "
        f"images, from step {bn.steps[0]:,} to {bn.steps[-1]:,}), {sentences[0]}; "
        f"{sentences[1]} (mean over {len(pairs)} seeds; ranges in units of the sigmoid's input)."
    )
    if None in verdicts:
        return text, None
    if all(verdicts):
        return text + " Both move more without BatchNorm: stable with it, drifting without, " \
                      "as the paper shows.", True  # fmt: skip
    if not any(verdicts):
        return text + " Neither moves more without BatchNorm than with it: the data do not " \
                      "show the paper's stabilisation.", False  # fmt: skip
    return text + " Only the " + ("median" if verdicts[0] else "spread") + " moves more " \
                  "without BatchNorm: the paper's picture holds in part.", None  # fmt: skip


def choices(setting: dict[str, Any], rates: list[Any]) -> str:
    """What the paper leaves open, and what this run chose."""
    momentum = setting["train.momentum"]
    if setting["train.optimizer"] == "sgd":
        optimiser = "plain SGD" if not momentum else f"SGD with momentum {show_value(momentum)}"
    else:
        optimiser = "Adam"
    return (
        f"The paper names neither optimiser nor learning rate. This run uses {optimiser}, "
        "as in the paper's time, at learning rates "
        f"{listing([show_value(r) for r in rates])}, and weights drawn from N(0, {show_value(setting['model.init_std'])}^2) "
        'with zero biases for the paper\'s "small random Gaussian values"; a binary input '
        "is a pixel above half intensity. Each variant is compared at its own best rate, "
        "so the baseline is tuned as much as BatchNorm is."
    )


def _verdict(supported: bool | None) -> str:
    return {True: "supported", False: "contradicted", None: "not settled"}[supported]


def lr_table(points: dict[Any, dict[str, Curves]], results: dict[Any, PointResults]) -> Table:
    """Per learning rate: each variant's final accuracy and failures, and the gain at that rate."""
    rows = []
    for lr, pair in points.items():
        statistics = results[lr].statistics
        cells = [show_value(lr)]
        for variant in VARIANTS:
            cells += [with_interval(statistics.of(variant).test_accuracy, ".2f", 100),
                      failed_cell(pair[variant].outcomes)]  # fmt: skip
        rows.append([*cells, with_interval(statistics.bn_minus_nobn.test_accuracy, "+.2f", 100)])
    header = ["lr", "with BatchNorm (%, 95% CI)", "failed", "without (%, 95% CI)", "failed",
              "gain at this lr (points, 95% CI)"]  # fmt: skip
    return Table(header, rows)


def accuracy_figure(points: dict[Any, dict[str, Curves]]) -> Figure:
    """Figure 1(a) per learning rate: test accuracy against steps, every seed thin, mean bold."""
    fig = Figure(figsize=(4 * len(points), 3.6))
    fig.subplots_adjust(left=0.07, right=0.98, top=0.84, bottom=0.15, wspace=0.15)
    axes = fig.subplots(1, len(points), sharey=True, squeeze=False)[0]
    for ax, (lr, pair) in zip(axes, points.items(), strict=True):
        for variant, c in pair.items():
            thousands = [s / 1000 for s in c.steps]
            for values in c.accuracy.values():
                ax.plot(thousands, values, color=COLORS[variant], lw=0.6, alpha=0.5)
            if c.accuracy:
                ax.plot(thousands, c.mean_curve(), color=COLORS[variant], lw=2,
                        label=f"{LABELS[variant]} ({len(c.accuracy)} of {c.outcomes.seeds} learnt)")  # fmt: skip
        dress(ax, f"lr {show_value(lr)}", "training steps (thousands)")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("test accuracy")
    means = [a for pair in points.values() for c in pair.values() if c.accuracy
             for a in c.mean_curve()]  # fmt: skip
    # the paper's panel spans 0.7 to 1; start just below the lowest mean, at most 0.9
    axes[0].set_ylim(min([0.9, *(math.floor(100 * a) / 100 for a in means)]), 1.0)
    fig.suptitle("Test accuracy over training (each seed thin, the mean bold): Figure 1(a)")
    return fig


def percentile_figure(bn: Curves, nobn: Curves) -> Figure:
    """Figure 1(b, c): the fixed unit's input percentiles over training, each variant
    at its best learning rate, every seed."""
    fig = Figure(figsize=(10, 3.8))
    fig.subplots_adjust(left=0.07, right=0.98, top=0.84, bottom=0.15, wspace=0.1)
    axes = fig.subplots(1, 2, sharey=True)
    styles = dict(zip(PERCENTILES, ("--", "-", "--"), strict=True))
    for ax, c in zip(axes, (bn, nobn), strict=True):
        thousands = [s / 1000 for s in c.steps]
        for seed, by_q in c.unit.items():
            for q, values in by_q.items():
                ax.plot(thousands, values, color=COLORS[c.variant], ls=styles[q], lw=0.9,
                        label=f"{q}th percentile" if seed == next(iter(c.unit)) else None)  # fmt: skip
        ax.axhline(0, color="0.5", lw=0.8)
        dress(
            ax,
            f"{LABELS[c.variant]} (lr {show_value(c.lr)})",
            "training steps (thousands)",
            legend=7,
        )
    axes[0].set_ylabel(f"input of last-layer sigmoid {TYPICAL_UNIT}")
    fig.suptitle("The input distribution of a typical sigmoid over training, every seed: "
                 "Figure 1(b, c)")  # fmt: skip
    return fig


def build(
    study: str,
    param: str,
    results: dict[Any, dict | str],
    names: dict[Any, str],
    setting: dict[str, Any],
    commits: dict[Any, str] | None = None,
) -> tuple[list[Block], dict[str, Figure]]:
    """The paper summary's blocks and figures (the signature of study_report.build)."""
    batch = setting["train.batch_size"]
    done = {lr: PointResults.from_json(r) for lr, r in results.items() if isinstance(r, dict)}
    points = {lr: {v: curves(lr, v, r.train[v], batch) for v in VARIANTS} for lr, r in done.items()}
    blocks: list[Block] = [Heading("The BatchNorm paper's MNIST experiment, reproduced", 1)]
    absent = [
        f"lr = {show_value(lr)}: {why}" for lr, why in results.items() if isinstance(why, str)
    ]
    chosen = {v: best([pair[v] for pair in points.values()]) for v in VARIANTS}
    figures: dict[str, Figure] = {}
    if chosen["bn"] is None or chosen["nobn"] is None:
        blocks.append(Paragraph("No learning rate has seeds that learnt in both variants: "
                                "nothing to compare with the paper."))  # fmt: skip
    else:
        bn, nobn = chosen["bn"], chosen["nobn"]
        claims = [
            ("BatchNorm's test accuracy is higher throughout training (Figure 1(a))",
             *throughout(bn, nobn)),
            ("It ends higher (Figure 1(a)); by how much", *at_the_end(bn, nobn)),
            ("The inputs of a typical last-layer sigmoid are stable with BatchNorm and drift "
             "without it (Figure 1(b, c))", *stability(bn, nobn)),
        ]  # fmt: skip
        blocks += [
            Paragraph(
                f"{SOURCE}, with {bn.outcomes.seeds} seeds per variant and learning rate. Each variant "
                f"is judged at its own best learning rate of {listing([show_value(lr) for lr in points])} "
                f"(BatchNorm {show_value(bn.lr)}, the baseline {show_value(nobn.lr)}): fewest failed seeds, "
                "then the highest mean final test accuracy."
            ),
            Table(
                ["the paper's claim", "here", "verdict"],
                [[claim, text, _verdict(ok)] for claim, text, ok in claims],
            ),
            Paragraph(faster(bn, nobn)),
            Paragraph(choices(setting, list(points))),
        ]
        accuracy_name, percentile_name = (f.format(study) for f in (ACCURACY_FIGURE,
                                                                      PERCENTILE_FIGURE))  # fmt: skip
        figures = {accuracy_name: accuracy_figure(points),
                   percentile_name: percentile_figure(bn, nobn)}  # fmt: skip
        blocks += [
            Heading("Every learning rate"),
            lr_table(points, done),
            Image(accuracy_name, "Test accuracy against training steps, per learning rate"),
            Heading("The input distribution of a typical sigmoid"),
            Image(
                percentile_name,
                "15th, 50th and 85th percentiles of a last-layer sigmoid's "
                "input, each variant at its best learning rate",
            ),
        ]
    if absent:
        blocks += [Heading("Points without results"), Paragraph("; ".join(absent) + ".")]
    blocks += [Heading("Setting"), Paragraph(", ".join(held_fixed(setting, param)) + ".")]
    if commits:
        blocks += [Heading("Code"), Paragraph(code_sentence(commits, "lr"))]
    return blocks, figures
