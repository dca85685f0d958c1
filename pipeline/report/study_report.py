"""The depth study's summary: a table, two figures and a finding, all from
each point's statistics (see pipeline/study.py for how they are gathered).

A point's results are its reports/statistics.json ("statistics") and the
train summaries reports/train/<variant>.json ("bn", "nobn"), whose "layers"
hold each hidden layer's final dead-unit fraction and gradient norm.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from pipeline.nn.model import VARIANTS
from pipeline.report.document import Block, Heading, Image, Paragraph, Table
from pipeline.report.figures import COLORS, LABELS
from pipeline.report.stats import show_interval

ACCURACY_FIGURE, DIAGNOSTICS_FIGURE = "depth_accuracy.png", "depth_diagnostics.png"
NEAR_CHANCE = 0.2  # test accuracy below which a model learnt next to nothing (chance: 0.1)


@dataclass(frozen=True)
class Row:
    """One depth's numbers; accuracies and gains are fractions."""

    depth: int
    name: str  # the DVC experiment
    seeds: int
    accuracy: dict[str, tuple[float, list[float] | None]]  # variant -> mean, 95% CI
    gain: float
    gain_ci: list[float] | None
    p_value: float | None
    dead: dict[str, float]  # variant -> mean dead-unit fraction over the hidden layers
    grad_ratio: dict[str, float]  # variant -> first / last hidden layer's gradient norm
    stalled: dict[str, int]  # variant -> seeds that ended near chance (NEAR_CHANCE)


def row(depth: int, name: str, results: dict) -> Row:
    stats, diff = results["statistics"], results["statistics"]["bn_minus_nobn"]
    layers = {v: results[v]["layers"] for v in VARIANTS}
    return Row(
        depth=depth,
        name=name,
        seeds=diff["seeds"],
        accuracy={v: (stats[v]["test_accuracy"], stats[v]["test_accuracy_ci95"]) for v in VARIANTS},
        gain=diff["test_accuracy"],
        gain_ci=diff["test_accuracy_ci95"],
        p_value=diff["test_accuracy_p_value"],
        dead={v: statistics.fmean(layers[v]["dead_fraction"]) for v in VARIANTS},
        grad_ratio={v: _ratio(layers[v]["grad_norm"]) for v in VARIANTS},
        stalled={
            v: sum(seed["test_accuracy"] < NEAR_CHANCE for seed in stats[v]["per_seed"].values())
            for v in VARIANTS
        },
    )


def _ratio(norms: list[float]) -> float:
    return norms[0] / norms[-1] if norms[-1] > 0 else float("inf")


def _gain(fraction: float) -> str:
    return f"{100 * fraction:+.2f}"


def _cell(value: str, interval: list[float] | None, sign: str = "") -> str:
    """A table cell: "97.58 (97.41 to 97.76)", the value alone without an interval."""
    return value if interval is None else f"{value} ({show_interval(interval, sign=sign)})"


def _points(r: Row, inner: bool = False) -> str:
    """ "+0.41 points (95% CI +0.15 to +0.67)"; inside parentheses, with a comma."""
    if r.gain_ci is None:
        return f"{_gain(r.gain)} points"
    interval = show_interval(r.gain_ci, sign="+")
    return f"{_gain(r.gain)} points" + (
        f", 95% CI {interval}" if inner else f" (95% CI {interval})"
    )


def finding(rows: list[Row]) -> str:
    """Where the gain's 95% CI first lies above zero, with its uncertainty;
    how the gain runs from the shallowest to the deepest point; and where
    seeds did not learn at all."""
    if not rows:
        return "No point of the study has results yet: run `make study`."
    first, last = rows[0], rows[-1]
    parts = [
        f"BatchNorm's gain goes from {_points(first)} at depth {first.depth} to "
        f"{_points(last)} at depth {last.depth}."
    ]
    if any(r.gain_ci is None for r in rows):
        parts.append("With one seed per point there are no intervals, so no depth can be called.")
    else:
        above = [r for r in rows if r.gain_ci[0] > 0]
        if not above:
            parts.append("At no depth does the gain's 95% CI exclude zero.")
        else:
            start = above[0]
            holds = all(r.gain_ci[0] > 0 for r in rows if r.depth >= start.depth)
            where = (
                f"already at the shallowest depth studied, {start.depth}"
                if start is first
                else f"from depth {start.depth} on"
            )
            shallower = [str(r.depth) for r in rows if r.depth < start.depth]
            p_value = "-" if start.p_value is None else f"{start.p_value:.2g}"  # equal gains
            parts.append(
                f"Its 95% CI excludes zero {where} ({_points(start, inner=True)}; p = "
                f"{p_value}), "
                + ("and at every deeper point" if holds else "though not at every deeper point")
                + (f"; at {', '.join(shallower)} layers it does not." if shallower else ".")
            )
    for r in rows:
        for variant in VARIANTS:
            if r.stalled[variant]:
                parts.append(
                    f"At depth {r.depth}, {r.stalled[variant]} of {r.seeds} seeds "
                    f"{LABELS[variant]} ended below {100 * NEAR_CHANCE:.0f}% test accuracy "
                    "(chance is 10%): they learnt next to nothing, and the t-interval of that "
                    "mean, which assumes a roughly normal spread, is only a rough guide."
                )
    return " ".join(parts)


def why(rows: list[Row]) -> str:
    """The diagnostics at the shallowest and the deepest point, in words."""
    first, last = rows[0], rows[-1]

    def span(values: dict[int, float], unit: str) -> str:
        return f"{values[first.depth]:.{1 if unit else 2}f}{unit} at depth {first.depth} to " \
               f"{values[last.depth]:.{1 if unit else 2}f}{unit} at depth {last.depth}"  # fmt: skip

    dead = {v: {r.depth: 100 * r.dead[v] for r in rows} for v in VARIANTS}
    ratio = {v: {r.depth: r.grad_ratio[v] for r in rows} for v in VARIANTS}
    return (
        f"Dead hidden units (zero for every test image, final epoch, mean over seeds) go from "
        f"{span(dead['nobn'], '%')} without BatchNorm, and from {span(dead['bn'], '%')} with it. "
        f"The first hidden layer's gradient norm over the last one's goes from "
        f"{span(ratio['nobn'], '')} without BatchNorm, and from {span(ratio['bn'], '')} with it."
    )


def table(rows: list[Row]) -> Table:
    header = ["depth", "experiment", "seeds", "with BatchNorm (%)", "without BatchNorm (%)",
              "gain (points)", "p (paired t-test)", "dead units without BN (%)"]  # fmt: skip
    body = []
    for r in rows:
        cells = [str(r.depth), r.name, str(r.seeds)]
        for variant in VARIANTS:
            mean, interval = r.accuracy[variant]
            cells.append(_cell(f"{100 * mean:.2f}", interval))
        cells.append(_cell(_gain(r.gain), r.gain_ci, "+"))
        cells.append("-" if r.p_value is None else f"{r.p_value:.2g}")
        cells.append(f"{100 * r.dead['nobn']:.1f}")
        body.append(cells)
    return Table(header, body)


def accuracy_figure(rows: list[Row]) -> Figure:
    """Test accuracy per variant against depth, and the paired gain, each
    with its 95% CI as error bars."""
    fig = Figure(figsize=(10, 4))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.86, bottom=0.14, wspace=0.28)
    accuracy, gain = fig.subplots(1, 2)
    depths = [r.depth for r in rows]
    for variant in VARIANTS:
        means = [100 * r.accuracy[variant][0] for r in rows]
        accuracy.errorbar(depths, means, yerr=_errors(means, [r.accuracy[variant][1] for r in rows]),
                          fmt="o-", capsize=4, color=COLORS[variant], label=LABELS[variant])  # fmt: skip
    accuracy.set_ylim(top=100.5)  # a t-interval may run past 100%: accuracy cannot
    accuracy.set_xlabel("hidden layers (model.depth)")
    accuracy.set_ylabel("test accuracy (%)")
    accuracy.set_title("Mean over seeds, 95% CI")
    accuracy.legend(fontsize=8)
    gains = [100 * r.gain for r in rows]
    gain.axhline(0, color="0.4", lw=1, ls="--")
    gain.errorbar(depths, gains, yerr=_errors(gains, [r.gain_ci for r in rows]), fmt="D-",
                  capsize=4, color="tab:green")  # fmt: skip
    gain.set_yscale("symlog", linthresh=2)  # small gains stay readable beside a collapse
    gain.set_xlabel("hidden layers (model.depth)")
    gain.set_ylabel("gain (points; linear to 2, log beyond)")
    gain.set_title("BatchNorm's paired gain, 95% CI")
    for ax in (accuracy, gain):
        ax.set_xticks(depths)
        ax.grid(alpha=0.3)
    fig.suptitle("Test accuracy against depth")
    return fig


def _errors(means: list[float], intervals: list[list[float] | None]) -> list[list[float]] | None:
    """Error bar lengths below and above each mean (none without intervals)."""
    if any(i is None for i in intervals):
        return None
    return [[m - 100 * i[0] for m, i in zip(means, intervals, strict=True)],
            [100 * i[1] - m for m, i in zip(means, intervals, strict=True)]]  # fmt: skip


def diagnostics_figure(rows: list[Row]) -> Figure:
    """The why: dead hidden units and the first-to-last gradient norm ratio,
    per depth, both variants (final epoch, mean over seeds)."""
    fig = Figure(figsize=(10, 4))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.86, bottom=0.14, wspace=0.28)
    dead, ratio = fig.subplots(1, 2)
    depths = [r.depth for r in rows]
    for variant in VARIANTS:
        style = {"color": COLORS[variant], "label": LABELS[variant], "marker": "o"}
        dead.plot(depths, [100 * r.dead[variant] for r in rows], **style)
        ratio.plot(depths, [r.grad_ratio[variant] for r in rows], **style)
    dead.set_ylabel("dead hidden units (%)")
    dead.set_title("Units that are zero for every test image")
    ratio.axhline(1, color="0.4", lw=1, ls="--")
    ratio.set_yscale("log")
    ratio.set_ylabel("first / last layer gradient norm")
    ratio.set_title("Gradient norm, first hidden layer over last")
    for ax in (dead, ratio):
        ax.set_xlabel("hidden layers (model.depth)")
        ax.set_xticks(depths)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Why: dead units and gradient flow against depth (final epoch, mean over seeds)")
    return fig


def build(results: dict[int, dict | str], names: dict[int, str],
          params: dict[str, Any]) -> tuple[list[Block], dict[str, Figure]]:  # fmt: skip
    """The summary's blocks and figures. `results`: per depth, a point's
    results or why it has none ("missing", "failed: ...", "partial: ...")."""
    rows = [row(d, names[d], r) for d, r in sorted(results.items()) if isinstance(r, dict)]
    absent = [f"depth {d}: {why}" for d, why in sorted(results.items()) if isinstance(why, str)]
    blocks: list[Block] = [Heading("Depth study: when does BatchNorm start to matter?", 1)]
    blocks.append(Paragraph(finding(rows)))
    if absent:
        blocks += [Heading("Points without results"), Paragraph("; ".join(absent) + ".")]
    figures: dict[str, Figure] = {}
    if rows:
        figures = {
            ACCURACY_FIGURE: accuracy_figure(rows),
            DIAGNOSTICS_FIGURE: diagnostics_figure(rows),
        }
        blocks += [
            Heading("Accuracy and gain"),
            table(rows),
            Image(ACCURACY_FIGURE, "Test accuracy and BatchNorm's gain against depth"),
            Heading("Why"),
            Paragraph(why(rows)),
            Image(DIAGNOSTICS_FIGURE, "Dead units and gradient norm ratio against depth"),
        ]
    setting = [f"{k} = {params[k]}" for k in sorted(params)
               if k.split(".")[0] in ("model", "train") and k != "model.depth"]  # fmt: skip
    if setting:
        blocks += [Heading("Held fixed"), Paragraph(", ".join(setting) + ".")]
    return blocks, figures
