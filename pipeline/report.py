"""reports/report.md and its self-contained twin reports/report.html.

The report is a list of blocks built from the numbers (statistics.json, the
training histories, the evaluation) and rendered twice: Markdown with
relative image links, and one HTML file with the images inlined, which a
browser opens as is.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.figures import LABELS, History
from pipeline.stats import difference_prediction, estimate, mean_std, show_interval


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
    metrics: dict  # reports/statistics.json
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


def headline(metrics: dict, epochs: int) -> str:
    """ "BatchNorm adds +X points of test accuracy (95% CI a to b; paired
    t-test p = ...; N seeds)", and the two means."""
    diff, seeds = metrics["bn_minus_nobn"], metrics["bn_minus_nobn"]["seeds"]
    gain = 100 * diff["test_accuracy"]
    verb = "adds" if gain > 0 else "changes test accuracy by"
    what = f"BatchNorm {verb} {gain:+.2f} points{' of test accuracy' if gain > 0 else ''}"
    if seeds > 1 and diff["test_accuracy_ci95"] is not None:
        low, high = (100 * x for x in diff["test_accuracy_ci95"])
        p = diff["test_accuracy_p_value"]
        test = (
            f"paired t-test p = {p:.2g}"
            if p is not None
            else "no t-test: every seed's gain is the same"
        )
        what += f" (95% CI {low:+.2f} to {high:+.2f}; {test}; {seeds} seeds)"
    else:
        what += (" (one seed: a confidence interval and a p-value need at least two; "
                 "list more seeds in train.seeds)")  # fmt: skip
    bn, nobn = metrics["bn"], metrics["nobn"]
    return (
        f"{what}. Test accuracy after {epochs} epochs, mean over seeds: "
        f"{pct(bn['test_accuracy'])}%{_ci(bn['test_accuracy_ci95'])} with BatchNorm, "
        f"{pct(nobn['test_accuracy'])}%{_ci(nobn['test_accuracy_ci95'])} without."
    )


def _ci(interval: list[float] | None) -> str:
    return "" if interval is None else f" (95% CI {pct(interval[0])} to {pct(interval[1])})"


def findings(context: Context) -> list[str]:
    """The headline and the *why*, generated from the numbers."""
    lines = [headline(context.metrics, context.params["train"]["epochs"])]
    dead = {v: final_layer_means(context.history, v, "dead_fraction") for v in LABELS}
    worst = max(range(len(dead["nobn"])), key=lambda k: dead["nobn"][k])
    lines.append(
        f"Dead units (zero for every test image) after the last epoch, mean over seeds: "
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


def per_seed(metrics: dict, variant: str, key: str = "test_accuracy") -> list[float]:
    """A variant's per-seed values, in seed order; for "bn_minus_nobn", the
    paired differences."""
    if variant == "bn_minus_nobn":
        bn, nobn = per_seed(metrics, "bn", key), per_seed(metrics, "nobn", key)
        return [a - b for a, b in zip(bn, nobn, strict=True)]
    by_seed = metrics[variant]["per_seed"]
    return [by_seed[seed][key] for seed in sorted(by_seed, key=int)]


def _inside(value: float, interval: tuple[float, float] | list[float] | None) -> bool:
    return interval is not None and interval[0] <= value <= interval[1]


def reproduction(metrics: dict) -> tuple[Table, list[str]]:
    """The original post's single-run figures beside this run's seeds, and a
    verdict in plain words computed from them (see `verdict`)."""
    post = {v: post_accuracy(v) for v in ("bn", "nobn")}
    post["bn_minus_nobn"] = post["bn"] - post["nobn"]
    predictions = {v: estimate(per_seed(metrics, v)).prediction95 for v in ("bn", "nobn")}
    # The post's gain compares two independently started runs: the interval
    # for it is that of an unpaired difference, not of a seed's paired gain.
    predictions["bn_minus_nobn"] = difference_prediction(
        per_seed(metrics, "bn"), per_seed(metrics, "nobn")
    )
    rows = []
    for variant, label in (("bn", "with BatchNorm"), ("nobn", "without BatchNorm"),
                           ("bn_minus_nobn", "gain (bn - nobn)")):  # fmt: skip
        sign = "+" if variant == "bn_minus_nobn" else ""
        values = per_seed(metrics, variant)
        rows.append([label, f"{100 * post[variant]:{sign}.2f}",
                     f"{100 * metrics[variant]['test_accuracy']:{sign}.2f}",
                     show_interval(metrics[variant]["test_accuracy_ci95"], sign=sign),
                     show_interval(predictions[variant], sign=sign),
                     ", ".join(f"{100 * v:{sign}.2f}" for v in values)])  # fmt: skip
    for variant, label in (("bn", "with BatchNorm"), ("nobn", "without BatchNorm")):
        losses = per_seed(metrics, variant, "test_loss")
        converted, low, high = post_loss_per_image(variant)
        mean = metrics[variant]["test_loss"]
        rows.append([f"test loss per image, {label}",
                     f"{converted:.3f} ({low:.3f} to {high:.3f})", f"{mean:.3f}",
                     show_interval(metrics[variant]["test_loss_ci95"], scale=1, digits=3),
                     show_interval(estimate(losses).prediction95, scale=1, digits=3),
                     ", ".join(f"{v:.3f}" for v in losses)])  # fmt: skip
    table = Table(["", "original post (one run)", "this run: mean", "95% CI of the mean",
                   "95% prediction interval, one run", "per seed"], rows)  # fmt: skip
    return table, verdict(metrics, post, predictions)


def verdict(
    metrics: dict, post: dict[str, float], predictions: dict[str, tuple[float, float] | None]
) -> list[str]:
    """The plain-words verdict: do each of the post's accuracies and
    converted losses fall in the 95% prediction interval of one run here;
    does its gain fall in the 95% CI of the mean gain (is it the average
    effect) and in the prediction interval of one unpaired pair of runs (is
    it a plausible single comparison); and does the mean gain's CI exclude
    zero. The post's figures are consistent when all of them are plausible."""
    seeds = metrics["bn_minus_nobn"]["seeds"]
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
        interval = estimate(per_seed(metrics, variant, "test_loss")).prediction95
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
    gain, ci = post["bn_minus_nobn"], metrics["bn_minus_nobn"]["test_accuracy_ci95"]
    mean_gain = 100 * metrics["bn_minus_nobn"]["test_accuracy"]
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
                show_interval(v["test_accuracy_ci95"]),
                "-" if v["test_accuracy_std"] is None else pct(v["test_accuracy_std"]),
                "",
                pct(best),
                f"{best_epoch:g}",
                f"{v['test_loss']:.4f}",
                f"{_epoch_seconds(context.history, variant):.2f}",
            ]
        )
    diff = m["bn_minus_nobn"]
    p_value = diff["test_accuracy_p_value"]
    accuracy_rows.append(
        [
            "bn - nobn (paired)",
            str(diff["seeds"]),
            f"{100 * diff['test_accuracy']:+.2f}",
            show_interval(diff["test_accuracy_ci95"], sign="+"),
            "-" if diff["test_accuracy_std"] is None else pct(diff["test_accuracy_std"]),
            "-" if p_value is None else f"{p_value:.2g}",
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
    post_table, post_verdict = reproduction(m)
    intervals = (
        "95% CI: t-interval of the mean over seeds; the bn - nobn row pairs each seed's two "
        "models (same initial weights, same batch order) and tests the mean difference with a "
        "two-sided paired t-test."
        if diff["seeds"] > 1
        else "One seed: no interval or test (they need at least two seeds)."
    )
    return [
        Heading("BatchNorm vs no BatchNorm: a deep, narrow MLP on MNIST", 1),
        *(Paragraph(line) for line in findings(context)),
        Heading("Accuracy"),
        Paragraph(
            "Test accuracy (%) on the 10,000 MNIST test images after the last epoch, "
            "mean across seeds with its 95% confidence interval and the seeds' sample std; "
            f"best epoch and time per epoch (all seeds together) from training. {intervals}"
        ),
        Table(
            [
                "variant",
                "seeds",
                "final accuracy",
                "95% CI",
                "std",
                "p (paired t-test)",
                "best accuracy",
                "best epoch",
                "final test loss",
                "s / epoch",
            ],
            accuracy_rows,
        ),
        Image(figures["seed_accuracies"], "Every seed's final test accuracy, paired by seed"),
        Paragraph("Per class, test accuracy (%), mean (and std) across seeds:"),
        Table(class_header, class_rows),
        Heading("Reproducing the original post"),
        Paragraph(
            "The post trained one model per variant, once, and reports "
            f"{pct(post_accuracy('bn'))}% ({POST_CORRECT['bn']}/{TEST_IMAGES}) with BatchNorm "
            f"and {pct(post_accuracy('nobn'))}% ({POST_CORRECT['nobn']}/{TEST_IMAGES}) without. "
            "A single run is one draw from a distribution that this run samples with several "
            "seeds: the prediction interval is where one more run of this setup would fall, "
            "the CI is where the mean lies. For the gain, the prediction interval is that of one "
            "pair of independently started runs, as the post's were. Accuracies in %, the gain "
            "in points."
        ),
        Paragraph(
            f'Its "Average loss" ({POST_AVERAGE_LOSS["bn"]} and {POST_AVERAGE_LOSS["nobn"]}) '
            f"adds up the mean loss of each of its {POST_TEST_BATCHES} test batches of 64 and "
            f"divides by the {TEST_IMAGES:,} images, so it is the mean loss per image divided by "
            f"about {TEST_IMAGES / POST_TEST_BATCHES:.1f}. Below it is converted to a mean per "
            "image (with the range its rounding to 4 decimals allows) beside ours."
        ),
        post_table,
        *(Paragraph(line) for line in post_verdict),
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
