"""A study's summary: a table, two figures and a finding, all from each
point's statistics (see pipeline/study.py for how they are gathered).

A point's results (pipeline/results.py, PointResults) are its statistics and
its train summaries, whose "layers" hold each hidden layer's final
flat-region fraction (the activation's inputs where its slope is under a
tenth of its peak; ReLU: below zero) and the norm of the loss gradient at the
activation's inputs, which does not depend on fan-in (pipeline/nn/diagnostics.py).
Accuracies and gains are over the seeds that learnt; the seeds that failed
to learn are counted beside them, with an exact binomial interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean
from typing import Any

from matplotlib.figure import Figure

from pipeline.format import (
    LABELS,
    failed_cell,
    gain,
    number,
    show_interval,
    show_value,
    with_interval,
)
from pipeline.nn.model import VARIANTS
from pipeline.report.comparison import learnt_only
from pipeline.report.document import Block, Heading, Image, Paragraph, Table
from pipeline.report.study_figures import accuracy_figure, diagnostics_figure
from pipeline.results import Mean, Outcomes, PointResults, Statistics
from pipeline.stats import NEAR_CHANCE

ACCURACY_FIGURE, DIAGNOSTICS_FIGURE = "{}_accuracy.png", "{}_diagnostics.png"


@dataclass(frozen=True)
class Row:
    """One point: its statistics and, per variant, the mean flat-region
    fraction over the hidden layers and the first hidden layer's gradient
    norm at the activation's input over the last's (None where no seed learnt)."""

    value: Any  # the varied param's value
    name: str  # the DVC experiment, or "workspace"
    statistics: Statistics
    flat: dict[str, float | None]
    grad_ratio: dict[str, float | None]

    @property
    def gain(self) -> Mean:
        """BatchNorm's paired gain in test accuracy, over the seeds where both learnt."""
        return self.statistics.bn_minus_nobn.test_accuracy

    def accuracy(self, variant: str) -> Mean:
        return self.statistics.of(variant).test_accuracy

    def outcomes(self, variant: str) -> Outcomes:
        return self.statistics.of(variant).outcomes


def row(value: Any, name: str, results: PointResults) -> Row:
    layers = {v: report.layers for v, report in results.train.items()}
    return Row(value, name, results.statistics,
               {v: _mean(x["flat_fraction"]) for v, x in layers.items()},
               {v: _ratio(x["input_grad_norm"]) for v, x in layers.items()})  # fmt: skip


def _mean(values: list[float | None]) -> float | None:
    return None if None in values else fmean(values)


def _ratio(norms: list[float | None]) -> float | None:
    if None in norms:
        return None
    return norms[0] / norms[-1] if norms[-1] > 0 else float("inf")


def _points(r: Row, inner: bool = False) -> str:
    """ "+0.41 points (95% CI +0.15 to +0.67)"; inside parentheses, with a comma."""
    if r.gain.ci95 is None:
        return f"{gain(r.gain.mean)} points"
    interval = show_interval(r.gain.ci95, sign="+")
    return f"{gain(r.gain.mean)} points" + (
        f", 95% CI {interval}" if inner else f" (95% CI {interval})"
    )


def listing(values: list[str]) -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} and {values[-1]}"


def _span(rows: list[Row], chosen: list[Row], key: str) -> str:
    """ "lr 1e-05 to 0.01" when the chosen rows are consecutive; else a list."""
    at = [rows.index(r) for r in chosen]
    values = [show_value(r.value) for r in chosen]
    if len(chosen) > 1 and at == list(range(at[0], at[-1] + 1)):
        return f"{key} from {values[0]} to {values[-1]}"
    return f"{key} {listing(values)}"


def gain_sentences(rows: list[Row], key: str) -> list[str]:
    """How the gain runs from the first to the last point with a gain, and
    where its 95% CI lies above zero, below zero, or includes it."""
    gained = [r for r in rows if r.gain.mean is not None]
    if not gained:
        return ["At no point did any seed learn in both variants, so there is no gain to give."]
    first, last = gained[0], gained[-1]
    parts = [
        f"BatchNorm's gain goes from {_points(first)} at {key} = {show_value(first.value)} to "
        f"{_points(last)} at {key} = {show_value(last.value)}."
        if first is not last
        else f"BatchNorm's gain is {_points(first)} at {key} = {show_value(first.value)}."
    ]
    if any(r.gain.ci95 is None for r in gained):
        parts.append("Where fewer than two seeds learnt in both variants there is no interval.")
    with_ci = [r for r in gained if r.gain.ci95 is not None]
    above = [r for r in with_ci if r.gain.ci95[0] > 0]
    below = [r for r in with_ci if r.gain.ci95[1] < 0]
    unclear = [r for r in with_ci if r not in above and r not in below]
    verdicts = []
    for chosen, where in ((above, "above zero"), (below, "below zero"), (unclear, "includes zero")):
        if chosen:
            verdicts.append(f"{'lies ' if where != 'includes zero' else ''}{where} at "
                            f"{_span(rows, chosen, key)}")  # fmt: skip
    if verdicts:
        parts.append(f"Its 95% CI {'; it '.join(verdicts)}.")
    if above:
        strongest = min(above, key=lambda r: 1.0 if r.gain.p_value is None else r.gain.p_value)
        parts.append(f"The clearest is at {key} = {show_value(strongest.value)} "
                     f"({_points(strongest, inner=True)}; paired t-test p = "
                     f"{number(strongest.gain.p_value, '.2g')}).")  # fmt: skip
    return parts


def failure_sentences(rows: list[Row], key: str) -> list[str]:
    """Where seeds failed to learn, per variant, with the binomial interval;
    where a variant learnt on every seed; and, point by point, which variant
    failed more often (Fisher's exact test of the two counts)."""
    from scipy import stats

    if not any(r.outcomes(v).failed for r in rows for v in VARIANTS):
        return []
    parts = []
    for variant in VARIANTS:
        failing = [r for r in rows if r.outcomes(variant).failed]
        label = LABELS[variant][0].upper() + LABELS[variant][1:]
        if not failing:
            parts.append(f"{label}, every seed learnt at every point.")
            continue
        listed = "; ".join(f"{key} = {show_value(r.value)}: {failed_cell(r.outcomes(variant))}"
                           for r in failing)  # fmt: skip
        clean = [r for r in rows if not r.outcomes(variant).failed]
        usable = (f"; every seed learnt at {_span(rows, clean, key)}" if clean
                  else "; at no point did every seed learn")  # fmt: skip
        parts.append(f"{label}, seeds failed to learn (diverged, or ended below "
                     f"{100 * NEAR_CHANCE:.0f}% test accuracy where chance is 10%) at "
                     f"{listed}{usable}.")  # fmt: skip
    for r in rows:
        bn, nobn = (r.outcomes(v).failed for v in VARIANTS)
        seeds = r.statistics.seeds
        if bn == nobn:
            continue
        worse = "nobn" if nobn > bn else "bn"
        test = stats.fisher_exact([[bn, seeds - bn], [nobn, seeds - nobn]])
        parts.append(
            f"At {key} = {show_value(r.value)} the variant {LABELS[worse]} failed more often "
            f"({max(bn, nobn)} of {seeds} seeds against {min(bn, nobn)}; Fisher's exact test "
            f"p = {test.pvalue:.2g}), so it is the worse one there"
            + (" whatever its learners' accuracy." if test.pvalue < 0.05 else
               ", though with this many seeds the difference in failures could be chance.")
        )  # fmt: skip
    parts.append(learnt_only())
    return parts


def range_sentences(rows: list[Row], key: str) -> list[str]:
    """Where a variant's t-interval of mean accuracy leaves 0 to 100%: too
    few seeds learnt, or they disagree too much, for a t-interval to say much."""
    parts = []
    for r in rows:
        for variant in VARIANTS:
            interval = r.accuracy(variant).ci95
            if interval is not None and (interval[0] < 0 or interval[1] > 1):
                learnt = r.outcomes(variant).learnt
                parts.append(
                    f"At {key} = {show_value(r.value)} the t-interval of the mean accuracy "
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
                f"{v:.{digits}f}{unit} at {key} = {show_value(r.value)}" for r, v in ends
            ) + f" {LABELS[variant]}")  # fmt: skip
        sentences.append(f"{what}: {spans[0]}; {spans[1]}.")
    return " ".join(sentences)


def table(rows: list[Row], key: str) -> Table:
    header = [key, "experiment", "with BatchNorm (%)", "without BatchNorm (%)",
              "gain (points)", "p (paired t-test)", "failed with BN", "failed without BN",
              "flat-region inputs without BN (%)"]  # fmt: skip
    body = []
    for r in rows:
        cells = [show_value(r.value), r.name]
        cells += [with_interval(r.accuracy(variant), ".2f", 100) for variant in VARIANTS]
        cells += [with_interval(r.gain, "+.2f", 100), number(r.gain.p_value, ".2g")]
        cells += [failed_cell(r.outcomes(variant)) for variant in VARIANTS]
        cells.append(number(r.flat["nobn"], ".1f", 100))
        body.append(cells)
    return Table(header, body)


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
    rows = [row(v, names[v], PointResults.from_json(r)) for v, r in results.items()
            if isinstance(r, dict)]  # fmt: skip
    absent = [
        f"{key} = {show_value(v)}: {why}" for v, why in results.items() if isinstance(why, str)
    ]
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
    return [f"{k} = {show_value(setting[k])}" for k in sorted(setting)
            if k.split(".")[0] in ("model", "train") and k != param]  # fmt: skip


def code_sentence(commits: dict[Any, str], key: str) -> str:
    """ "Computed with the pipeline at commit 29c36b0 (depth = 2, 4) and
    c4be31e (depth = 10)": the commits the points' code comes from (a
    commit's hash, or words such as "uncommitted changes")."""
    by_commit: dict[str, list[str]] = {}
    for value, commit in commits.items():
        short = commit[:7] if all(c in "0123456789abcdef" for c in commit) else commit
        by_commit.setdefault(short, []).append(show_value(value))
    listed = [f"{commit} ({key} = {', '.join(values)})" for commit, values in by_commit.items()]
    return f"Computed with the pipeline at commit {listing(listed)}."
