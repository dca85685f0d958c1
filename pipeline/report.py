"""reports/report.md and its self-contained twin reports/report.html.

The report is a list of blocks built from the numbers (metrics.json, the
training histories, the evaluation) and rendered twice: Markdown with
relative image links, and one HTML file with the images inlined, which a
browser opens as is.
"""

from __future__ import annotations

import base64
import html
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.figures import LABELS, History
from pipeline.stats import mean_std


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    path: str  # relative to the report's folder
    caption: str


Block = Heading | Paragraph | Table | Image


@dataclass(frozen=True)
class Context:
    """Everything the report says, gathered by the visualize stage."""

    params: dict[str, dict[str, Any]]  # the sections training used (checkpoint["params"])
    digests: dict[str, str]
    commit: str
    device: str
    date: str
    metrics: dict  # reports/metrics.json
    evaluation: dict  # reports/evaluation.json
    history: History
    figures: dict[str, str]  # figure name -> path relative to the report


def pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def final_layer_means(history: History, variant: str, metric: str) -> list[float]:
    """Per hidden layer, `metric` at the last epoch, averaged across seeds."""
    rows = [runs[-1] for runs in history[variant].values()]
    depth = sum(1 for key in rows[0] if key.endswith(f"/{metric}"))
    return [
        statistics.fmean(r[f"layer_{k:02d}/{metric}"] for r in rows) for k in range(1, depth + 1)
    ]


def findings(context: Context) -> list[str]:
    """The short finding, generated from the numbers."""
    m, epochs = context.metrics, context.params["train"]["epochs"]
    bn, nobn = m["bn"], m["nobn"]
    diff = 100 * m["bn_minus_nobn"]["test_accuracy"]
    seeds = bn["seeds"]
    spread = (
        (
            f" (mean ± std over {seeds} seeds: ±{pct(bn['test_accuracy_std'])} and "
            f"±{pct(nobn['test_accuracy_std'])})"
        )
        if seeds > 1
        else " (one seed)"
    )
    verdict = "BatchNorm helped" if diff > 0 else "BatchNorm did not help here"
    lines = [
        f"{verdict}: with BatchNorm {pct(bn['test_accuracy'])}% test accuracy vs "
        f"{pct(nobn['test_accuracy'])}% without, {diff:+.2f} points after {epochs} epochs"
        f"{spread}."
    ]
    dead = {v: final_layer_means(context.history, v, "dead_fraction") for v in LABELS}
    worst = max(range(len(dead["nobn"])), key=lambda k: dead["nobn"][k])
    lines.append(
        f"Dead units (zero for every test image) after the last epoch: "
        f"{100 * statistics.fmean(dead['nobn']):.1f}% of hidden units without BatchNorm "
        f"(up to {100 * dead['nobn'][worst]:.0f}% in layer {worst + 1}), "
        f"{100 * statistics.fmean(dead['bn']):.1f}% with it."
    )
    std = {v: final_layer_means(context.history, v, "act_std") for v in LABELS}
    spread = (
        "Spread of the post-ReLU activations (std on the test set) from the first to the "
        f"last hidden layer: {std['nobn'][0]:.2f} to {std['nobn'][-1]:.2f} without BatchNorm "
        f"(largest {max(std['nobn']):.2f}), {std['bn'][0]:.2f} to {std['bn'][-1]:.2f} with it "
        f"(largest {max(std['bn']):.2f})"
    )
    drifts = max(std["nobn"]) > 2 * max(std["bn"])
    more_dead = statistics.fmean(dead["nobn"]) > statistics.fmean(dead["bn"])
    if drifts and more_dead:
        spread += (
            ": without normalisation the layers' inputs drift in scale and skew, and "
            "more of them fall on ReLU's flat side for good"
        )
    lines.append(spread + ".")
    grads = {v: final_layer_means(context.history, v, "grad_norm") for v in LABELS}
    lines.append(
        "Mean weight-gradient norm in the last epoch, first / last hidden layer: "
        f"{grads['bn'][0]:.3f} / {grads['bn'][-1]:.3f} with BatchNorm, "
        f"{grads['nobn'][0]:.3f} / {grads['nobn'][-1]:.3f} without."
    )
    return lines


def _best_epoch(history: History, variant: str) -> tuple[float, float]:
    """Mean over seeds of the best test accuracy, and of the epoch reaching it."""
    best = [max(runs, key=lambda r: r["test_accuracy"]) for runs in history[variant].values()]
    return (
        statistics.fmean(r["test_accuracy"] for r in best),
        statistics.fmean(r["epoch"] for r in best),
    )


def _epoch_seconds(history: History, variant: str) -> float:
    return statistics.median(r["epoch_seconds"] for runs in history[variant].values() for r in runs)


def per_class_table(evaluation: dict) -> tuple[list[str], list[list[str]]]:
    """Per digit: each variant's accuracy, mean (and std with several seeds)
    across seeds, and the difference of the means."""
    several = len(evaluation["bn"]) > 1
    header = ["digit"]
    for variant in LABELS:
        header += [LABELS[variant]] + (["std"] if several else [])
    stats = {  # variant -> per digit (mean, std)
        v: [mean_std(c) for c in zip(*(s["class_accuracy"] for s in evaluation[v].values()),
                                     strict=True)]
        for v in LABELS
    }  # fmt: skip
    rows = []
    for digit in range(len(stats["bn"])):
        row = [str(digit)]
        for variant in LABELS:
            mean, std = stats[variant][digit]
            row += [pct(mean)] + ([pct(std)] if several else [])
        difference = stats["bn"][digit][0] - stats["nobn"][digit][0]
        rows.append([*row, f"{100 * difference:+.2f}"])
    return [*header, "bn - nobn"], rows


def build(context: Context) -> list[Block]:
    m, p = context.metrics, context.params
    accuracy_rows = []
    for variant in LABELS:
        best, best_epoch = _best_epoch(context.history, variant)
        v = m[variant]
        accuracy_rows.append(
            [
                LABELS[variant],
                str(v["seeds"]),
                pct(v["test_accuracy"]),
                pct(v["test_accuracy_std"]),
                pct(best),
                f"{best_epoch:g}",
                f"{v['test_loss']:.4f}",
                f"{_epoch_seconds(context.history, variant):.2f}",
            ]
        )
    diff = m["bn_minus_nobn"]
    accuracy_rows.append(
        [
            "bn - nobn",
            "",
            f"{100 * diff['test_accuracy']:+.2f}",
            "",
            "",
            "",
            f"{diff['test_loss']:+.4f}",
            "",
        ]
    )
    class_header, class_rows = per_class_table(context.evaluation)
    run_rows = [
        [f"{section}.{key}", str(value)]
        for section, values in p.items()  # the params the models were trained with
        for key, value in values.items()
    ]
    run_rows += [
        ["device", context.device],
        ["git commit", context.commit],
        ["generated", context.date],
    ]
    run_rows += [[f"SHA-256 {name}", digest] for name, digest in sorted(context.digests.items())]
    figures = context.figures
    return [
        Heading("BatchNorm vs no BatchNorm: a deep, narrow MLP on MNIST", 1),
        *(Paragraph(line) for line in findings(context)),
        Heading("Accuracy"),
        Paragraph(
            "Test accuracy (%) on the 10,000 MNIST test images after the last epoch, "
            "mean and std across seeds; best epoch and time per epoch from training."
        ),
        Table(
            [
                "variant",
                "seeds",
                "final accuracy",
                "std",
                "best accuracy",
                "best epoch",
                "final test loss",
                "s / epoch",
            ],
            accuracy_rows,
        ),
        Paragraph("Per class, test accuracy (%), mean (and std) across seeds:"),
        Table(class_header, class_rows),
        Heading("Training curves"),
        Image(figures["training_curves"], "Train loss, test loss and test accuracy per epoch"),
        Heading("Why: inside the network"),
        Image(figures["activations"], "Each hidden layer's activations for one test image"),
        Image(figures["activation_distributions"], "Activation distributions per layer"),
        Image(figures["layer_diagnostics"], "Gradient norms and dead units per layer"),
        Heading("Confusion matrices"),
        Image(figures["confusion_matrices"], "Confusion matrices"),
        Heading("What was run"),
        Table(["item", "value"], run_rows),
    ]


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Table):
            out.append(
                "\n".join(
                    ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
                    + ["| " + " | ".join(row) + " |" for row in block.rows]
                )
            )
        else:
            out.append(f"![{block.caption}]({block.path})")
    return "\n\n".join(out) + "\n"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;
padding:.3em .6em;text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}
img{max-width:100%}figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}"""


def render_html(blocks: list[Block], folder: Path) -> str:
    """One self-contained page: images inlined as data URIs, styles inline."""
    title = next(b.text for b in blocks if isinstance(b, Heading))
    out = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
    ]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode((folder / block.path).read_bytes()).decode("ascii")
            out.append(
                f'<figure><img alt="{html.escape(block.caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>'
                f"{html.escape(block.caption)}</figcaption></figure>"
            )
    out.append("</body></html>\n")
    return "\n".join(out)
