"""A study's summary: a table, two figures and a finding, all from each
point's statistics (see pipeline/study.py for how they are gathered).

A point's results are its reports/statistics.json ("statistics") and the
train summaries reports/train/<variant>.json ("bn", "nobn"), whose "layers"
hold each hidden layer's final flat-region fraction (the activation's inputs
where its slope is under a tenth of its peak; ReLU: below zero) and the norm
of the loss gradient at the activation's inputs, which does not depend on
fan-in (over the seeds that learnt; pipeline/nn/diagnostics.py). Accuracies and gains are over the seeds that learnt
(pipeline/evaluate.py); the seeds that failed to learn are counted beside
them, with an exact binomial interval.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from pipeline.format import show_interval
from pipeline.nn.model import VARIANTS
from pipeline.report.document import Block, Heading, Image, Paragraph, Table
from pipeline.report.figures import COLORS, LABELS
from pipeline.stats import DIVERGED, NEAR_CHANCE, NOT_LEARNING

ACCURACY_FIGURE, DIAGNOSTICS_FIGURE = "{}_accuracy.png", "{}_diagnostics.png"
WHY_SEPARATE = (
    "Where seeds failed, accuracies and the gain are over the seeds that learnt (the gain over "
    "the seeds where both variants learnt), and the failures are counted beside them with an "
    "exact binomial 95% interval: a mean over learners and failures mixes two populations, and "
    "its t-interval can run outside 0 to 100%. A variant that fails more often is the worse "
    "one at that point even where its learners are as good."
)


@dataclass(frozen=True)
class Row:
    """One point's numbers; accuracies and gains are fractions, None where
    no seed (or no pair of seeds) learnt."""

    value: Any  # the varied param's value
    name: str  # the DVC experiment, or "workspace"
    seeds: int
    accuracy: dict[str, tuple[float | None, list[float] | None]]  # variant -> mean, 95% CI
    pairs: int  # seeds where both variants learnt: the gain's
    gain: float | None
    gain_ci: list[float] | None
    p_value: float | None
    outcomes: dict[str, dict]  # variant -> stats.failures(...)
    flat: dict[str, float | None]  # variant -> mean flat-region fraction over the hidden layers
    # variant -> first / last hidden layer's gradient norm at the activation's input
    grad_ratio: dict[str, float | None]

    def failed(self, variant: str) -> int:
        return self.outcomes[variant]["failed"]


def row(value: Any, name: str, results: dict) -> Row:
    stats, diff = results["statistics"], results["statistics"]["bn_minus_nobn"]
    layers = {v: results[v]["layers"] for v in VARIANTS}
    return Row(
        value=value,
        name=name,
        seeds=stats["bn"]["seeds"],
        accuracy={v: (stats[v]["test_accuracy"], stats[v]["test_accuracy_ci95"]) for v in VARIANTS},
        pairs=diff["seeds"],
        gain=diff["test_accuracy"],
        gain_ci=diff["test_accuracy_ci95"],
        p_value=diff["test_accuracy_p_value"],
        outcomes={v: stats[v]["outcomes"] for v in VARIANTS},
        flat={v: _mean(layers[v]["flat_fraction"]) for v in VARIANTS},
        grad_ratio={v: _ratio(layers[v]["input_grad_norm"]) for v in VARIANTS},
    )


def _mean(values: list[float | None]) -> float | None:
    return None if None in values else statistics.fmean(values)


def _ratio(norms: list[float | None]) -> float | None:
    if None in norms:
        return None
    return norms[0] / norms[-1] if norms[-1] > 0 else float("inf")


def show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _gain(fraction: float) -> str:
    return f"{100 * fraction:+.2f}"


def _points(r: Row, inner: bool = False) -> str:
    """ "+0.41 points (95% CI +0.15 to +0.67)"; inside parentheses, with a comma."""
    if r.gain_ci is None:
        return f"{_gain(r.gain)} points"
    interval = show_interval(r.gain_ci, sign="+")
    return f"{_gain(r.gain)} points" + (
        f", 95% CI {interval}" if inner else f" (95% CI {interval})"
    )


def failed_cell(outcomes: dict, seeds: int) -> str:
    """ "0 of 5", "3 of 5 (2 diverged, 1 not learning; 95% CI 15 to 95%)"."""
    if not outcomes["failed"]:
        return f"0 of {seeds}"
    how = [f"{outcomes[k]} {k.replace('_', ' ')}" for k in (DIVERGED, NOT_LEARNING) if outcomes[k]]
    low, high = (100 * x for x in outcomes["failed_fraction_ci95"])
    return f"{outcomes['failed']} of {seeds} ({', '.join(how)}; 95% CI {low:.0f} to {high:.0f}%)"


def listing(values: list[str]) -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} and {values[-1]}"


def _span(rows: list[Row], chosen: list[Row], key: str) -> str:
    """ "lr 1e-05 to 0.01" when the chosen rows are consecutive; else a list."""
    at = [rows.index(r) for r in chosen]
    values = [show(r.value) for r in chosen]
    if len(chosen) > 1 and at == list(range(at[0], at[-1] + 1)):
        return f"{key} from {values[0]} to {values[-1]}"
    return f"{key} {listing(values)}"


def gain_sentences(rows: list[Row], key: str) -> list[str]:
    """How the gain runs from the first to the last point with a gain, and
    where its 95% CI lies above zero, below zero, or includes it."""
    gained = [r for r in rows if r.gain is not None]
    if not gained:
        return ["At no point did any seed learn in both variants, so there is no gain to give."]
    first, last = gained[0], gained[-1]
    parts = [
        f"BatchNorm's gain goes from {_points(first)} at {key} = {show(first.value)} to "
        f"{_points(last)} at {key} = {show(last.value)}."
        if first is not last
        else f"BatchNorm's gain is {_points(first)} at {key} = {show(first.value)}."
    ]
    if any(r.gain_ci is None for r in gained):
        parts.append("Where fewer than two seeds learnt in both variants there is no interval.")
    with_ci = [r for r in gained if r.gain_ci is not None]
    above = [r for r in with_ci if r.gain_ci[0] > 0]
    below = [r for r in with_ci if r.gain_ci[1] < 0]
    unclear = [r for r in with_ci if r not in above and r not in below]
    verdicts = []
    for chosen, where in ((above, "above zero"), (below, "below zero"), (unclear, "includes zero")):
        if chosen:
            verdicts.append(f"{'lies ' if where != 'includes zero' else ''}{where} at "
                            f"{_span(rows, chosen, key)}")  # fmt: skip
    if verdicts:
        parts.append(f"Its 95% CI {'; it '.join(verdicts)}.")
    if above:
        strongest = min(above, key=lambda r: r.p_value if r.p_value is not None else 1.0)
        p_value = "-" if strongest.p_value is None else f"{strongest.p_value:.2g}"
        parts.append(f"The clearest is at {key} = {show(strongest.value)} "
                     f"({_points(strongest, inner=True)}; paired t-test p = {p_value}).")  # fmt: skip
    return parts


def failure_sentences(rows: list[Row], key: str) -> list[str]:
    """Where seeds failed to learn, per variant, with the binomial interval;
    where a variant learnt on every seed; and, point by point, which variant
    failed more often (Fisher's exact test of the two counts)."""
    from scipy import stats

    if not any(r.failed(v) for r in rows for v in VARIANTS):
        return []
    parts = []
    for variant in VARIANTS:
        failing = [r for r in rows if r.failed(variant)]
        label = LABELS[variant][0].upper() + LABELS[variant][1:]
        if not failing:
            parts.append(f"{label}, every seed learnt at every point.")
            continue
        listed = "; ".join(f"{key} = {show(r.value)}: {failed_cell(r.outcomes[variant], r.seeds)}"
                           for r in failing)  # fmt: skip
        clean = [r for r in rows if not r.failed(variant)]
        usable = (f"; every seed learnt at {_span(rows, clean, key)}" if clean
                  else "; at no point did every seed learn")  # fmt: skip
        parts.append(f"{label}, seeds failed to learn (diverged, or ended below "
                     f"{100 * NEAR_CHANCE:.0f}% test accuracy where chance is 10%) at "
                     f"{listed}{usable}.")  # fmt: skip
    for r in rows:
        bn, nobn = r.failed("bn"), r.failed("nobn")
        if bn == nobn:
            continue
        worse = "nobn" if nobn > bn else "bn"
        test = stats.fisher_exact([[bn, r.seeds - bn], [nobn, r.seeds - nobn]])
        parts.append(
            f"At {key} = {show(r.value)} the variant {LABELS[worse]} failed more often "
            f"({max(bn, nobn)} of {r.seeds} seeds against {min(bn, nobn)}; Fisher's exact test "
            f"p = {test.pvalue:.2g}), so it is the worse one there"
            + (" whatever its learners' accuracy." if test.pvalue < 0.05 else
               ", though with this many seeds the difference in failures could be chance.")
        )  # fmt: skip
    parts.append(WHY_SEPARATE)
    return parts


def range_sentences(rows: list[Row], key: str) -> list[str]:
    """Where a variant's t-interval of mean accuracy leaves 0 to 100%: too
    few seeds learnt, or they disagree too much, for a t-interval to say much."""
    parts = []
    for r in rows:
        for variant in VARIANTS:
            interval = r.accuracy[variant][1]
            if interval is not None and (interval[0] < 0 or interval[1] > 1):
                learnt = r.outcomes[variant]["learnt"]
                parts.append(
                    f"At {key} = {show(r.value)} the t-interval of the mean accuracy "
                    f"{LABELS[variant]} runs outside 0 to 100%: {learnt} seeds learnt "
                    f"({learnt - 1} degree{'s' if learnt != 2 else ''} of freedom), too few or "
                    "too far apart for it to say more than that their accuracies differ widely."
                )
    return parts


def finding_paragraphs(rows: list[Row], key: str) -> list[str]:
    """The gain, where it is clear; where seeds failed to learn; where an
    interval does not fit the data: one paragraph each (those with something to say)."""
    if not rows:
        return ["No point of the study has results yet: run `make study`."]
    parts = (gain_sentences(rows, key), failure_sentences(rows, key), range_sentences(rows, key))
    return [" ".join(part) for part in parts if part]


def finding(rows: list[Row], key: str) -> str:
    """The study's finding as one text (finding_paragraphs, joined)."""
    return " ".join(finding_paragraphs(rows, key))


def why(rows: list[Row], key: str) -> str:
    """The diagnostics at the first and last point where a variant's seeds
    learnt, in words."""
    sentences = []
    for measure, unit, scale, what in (
        ("flat", "%", 100, "Activation inputs in the flat region (final epoch, mean "
                           "over the seeds that learnt)"),
        ("grad_ratio", "", 1, "The gradient at the first hidden layer's activation inputs over "
                              "the last one's"),
    ):  # fmt: skip
        spans = []
        for variant in ("nobn", "bn"):
            known = [r for r in rows if getattr(r, measure)[variant] is not None]
            if not known:
                spans.append(f"not known {LABELS[variant]} (no seed learnt)")
                continue
            ends = [(r, scale * getattr(r, measure)[variant])
                    for r in ([known[0]] if len(known) == 1 else [known[0], known[-1]])]  # fmt: skip
            digits = 1 if unit else 2
            spans.append(("from " if len(ends) > 1 else "") + " to ".join(
                f"{v:.{digits}f}{unit} at {key} = {show(r.value)}" for r, v in ends
            ) + f" {LABELS[variant]}")  # fmt: skip
        sentences.append(f"{what}: {spans[0]}; {spans[1]}.")
    return " ".join(sentences)


def _accuracy_cell(mean: float | None, interval: list[float] | None, sign: str = "") -> str:
    """ "97.58 (97.41 to 97.76)"; the value alone without an interval; "-" without a value."""
    if mean is None:
        return "-"
    value = f"{100 * mean:{sign}.2f}"
    return value if interval is None else f"{value} ({show_interval(interval, sign=sign)})"


def table(rows: list[Row], key: str) -> Table:
    header = [key, "experiment", "with BatchNorm (%)", "without BatchNorm (%)",
              "gain (points)", "p (paired t-test)", "failed with BN", "failed without BN",
              "flat-region inputs without BN (%)"]  # fmt: skip
    body = []
    for r in rows:
        cells = [show(r.value), r.name]
        cells += [_accuracy_cell(*r.accuracy[variant]) for variant in VARIANTS]
        cells.append(_accuracy_cell(r.gain, r.gain_ci, "+"))
        cells.append("-" if r.p_value is None else f"{r.p_value:.2g}")
        cells += [failed_cell(r.outcomes[variant], r.seeds) for variant in VARIANTS]
        cells.append("-" if r.flat["nobn"] is None else f"{100 * r.flat['nobn']:.1f}")
        body.append(cells)
    return Table(header, body)


def _axis(rows: list[Row]) -> tuple[list[float], bool]:
    """x positions of the points, and whether to draw them on a log scale
    (numbers spanning a factor of 8 or more: learning rates, batch sizes)."""
    xs = [float(r.value) if isinstance(r.value, int | float) else k for k, r in enumerate(rows)]
    numeric = all(isinstance(r.value, int | float) and not isinstance(r.value, bool) for r in rows)
    logarithmic = numeric and min(xs) > 0 and max(xs) / min(xs) >= 8
    return xs, logarithmic


def _set_x(ax: Any, rows: list[Row], xs: list[float], logarithmic: bool, key: str) -> None:
    if logarithmic:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(xs)
    ax.set_xticklabels([show(r.value) for r in rows], fontsize=8)
    ax.set_xlabel(key)
    ax.grid(alpha=0.3)


def _nan(value: float | None, scale: float = 1) -> float:
    return math.nan if value is None else scale * value


def _errors(means: list[float], intervals: list[list[float] | None]) -> list[list[float]]:
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
        means = [_nan(r.accuracy[variant][0], 100) for r in rows]
        accuracy.errorbar(xs, means, yerr=_errors(means, [r.accuracy[variant][1] for r in rows]),
                          fmt="o-", capsize=4, color=COLORS[variant], label=LABELS[variant])  # fmt: skip
        failed.plot(xs, [100 * r.outcomes[variant]["failed_fraction"] for r in rows], "o-",
                    color=COLORS[variant], label=LABELS[variant])  # fmt: skip
    low, _ = accuracy.get_ylim()  # a t-interval may run outside 0-100%: accuracy cannot
    accuracy.set_ylim(max(low, -0.5), 100.5)
    accuracy.set_ylabel("test accuracy (%), seeds that learnt")
    accuracy.set_title("Mean over the seeds that learnt, 95% CI")
    accuracy.legend(fontsize=8)
    gains = [_nan(r.gain, 100) for r in rows]
    gain.axhline(0, color="0.4", lw=1, ls="--")
    gain.errorbar(xs, gains, yerr=_errors(gains, [r.gain_ci for r in rows]), fmt="D-",
                  capsize=4, color="tab:green")  # fmt: skip
    gain.set_yscale("symlog", linthresh=2)  # small gains stay readable beside a collapse
    gain.set_ylabel("gain (points; linear to 2, log beyond)")
    gain.set_title("BatchNorm's paired gain, 95% CI")
    failed.set_ylim(-5, 105)
    failed.set_ylabel("seeds that failed to learn (%)")
    failed.set_title("Diverged, or below 20% test accuracy")
    failed.legend(fontsize=8)
    for ax in (accuracy, gain, failed):
        _set_x(ax, rows, xs, logarithmic, key)
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
    flat.set_ylabel("inputs in the flat region (%)")
    flat.set_title("Activation inputs where the slope is < 1/10 of its peak")
    ratio.axhline(1, color="0.4", lw=1, ls="--")
    ratio.set_yscale("log")
    ratio.set_ylabel("first / last layer")
    ratio.set_title("Gradient at the activation inputs, first layer over last")
    for ax in (flat, ratio):
        _set_x(ax, rows, xs, logarithmic, key)
        ax.legend(fontsize=8)
    fig.suptitle(f"Why: flat-region inputs and gradient flow against {key} "
                 "(final epoch, mean over the seeds that learnt)")  # fmt: skip
    return fig


def build(
    study: str,
    param: str,
    results: dict[Any, dict | str],
    names: dict[Any, str],
    setting: dict[str, Any],
    commits: dict[Any, str] | None = None,
) -> tuple[list[Block], dict[str, Figure]]:
    """The summary's blocks and figures. `results`: per value (in the
    study's order), a point's results or why it has none ("missing",
    "failed: ...", "partial: ..."); `setting`: the params every point
    shares; `commits`: per point with results, the commit it was run from."""
    key = param.rsplit(".", 1)[-1]
    rows = [row(v, names[v], r) for v, r in results.items() if isinstance(r, dict)]
    absent = [f"{key} = {show(v)}: {why}" for v, why in results.items() if isinstance(why, str)]
    blocks: list[Block] = [Heading(f"Study `{study}`: BatchNorm's gain against {param}", 1)]
    blocks += [Paragraph(text) for text in finding_paragraphs(rows, key)]
    if absent:
        blocks += [Heading("Points without results"), Paragraph("; ".join(absent) + ".")]
    figures: dict[str, Figure] = {}
    if rows:
        accuracy_name, diagnostics_name = (
            ACCURACY_FIGURE.format(study),
            DIAGNOSTICS_FIGURE.format(study),
        )
        figures = {
            accuracy_name: accuracy_figure(rows, key),
            diagnostics_name: diagnostics_figure(rows, key),
        }
        blocks += [
            Heading("Accuracy, gain and failures"),
            table(rows, key),
            Image(accuracy_name, f"Test accuracy, BatchNorm's gain and failures against {key}"),
            Heading("Why"),
            Paragraph(why(rows, key)),
            Image(diagnostics_name, f"Flat-region inputs and gradient ratio against {key}"),
        ]
    held = held_fixed(setting, param)
    if held:
        blocks += [Heading("Held fixed"), Paragraph(", ".join(held) + ".")]
    if commits:
        blocks += [Heading("Code"), Paragraph(code_sentence(commits, key))]
    return blocks, figures


def held_fixed(setting: dict[str, Any], param: str) -> list[str]:
    """ "model.depth = 3", ...: the model and train params every point shares."""
    return [f"{k} = {show(setting[k])}" for k in sorted(setting)
            if k.split(".")[0] in ("model", "train") and k != param]  # fmt: skip


def code_sentence(commits: dict[Any, str], key: str) -> str:
    """ "Computed with the pipeline at commit 29c36b0 (depth = 2, 4) and
    c4be31e (depth = 10)": the commits the points' code comes from (a
    commit's hash, or words such as "uncommitted changes")."""
    by_commit: dict[str, list[str]] = {}
    for value, commit in commits.items():
        short = commit[:7] if all(c in "0123456789abcdef" for c in commit) else commit
        by_commit.setdefault(short, []).append(show(value))
    listed = [f"{commit} ({key} = {', '.join(values)})" for commit, values in by_commit.items()]
    return f"Computed with the pipeline at commit {listing(listed)}."
