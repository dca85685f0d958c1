"""reports/report.md and its self-contained twin reports/report.html: the
comparison of the two variants, as a list of blocks (pipeline/report/document.py)
built from the numbers (statistics.json, the training histories, the
evaluation), every sentence generated from them."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean, median
from typing import Any

from pipeline.report.document import Block, Heading, Image, Paragraph, Table
from pipeline.report.figures import LABELS, History
from pipeline.report.original_post import (
    POST_AVERAGE_LOSS,
    POST_CORRECT,
    POST_TEST_BATCHES,
    TEST_IMAGES,
    post_accuracy,
    reproduction,
)
from pipeline.report.stats import mean_std, pct, show_interval


@dataclass(frozen=True)
class Context:
    """Everything the report says, gathered by the visualize stage."""

    params: dict[str, dict[str, Any]]  # the sections training used (checkpoint["params"])
    digests: dict[str, str]
    commit: str
    device: str
    date: str
    statistics: dict  # reports/statistics.json: means, intervals, tests, per seed
    evaluation: dict  # reports/evaluation.json
    history: History
    figures: dict[str, str]  # figure name -> path relative to the report


def final_layer_means(history: History, variant: str, metric: str) -> list[float]:
    """Per hidden layer, `metric` at the last epoch, averaged across seeds."""
    rows = [runs[-1] for runs in history[variant].values()]
    depth = sum(1 for key in rows[0] if key.endswith(f"/{metric}"))
    return [fmean(r[f"layer_{k:02d}/{metric}"] for r in rows) for k in range(1, depth + 1)]


def headline(statistics: dict, epochs: int) -> str:
    """ "BatchNorm adds +X points of test accuracy (95% CI a to b; paired
    t-test p = ...; N seeds)", and the two means."""
    diff, seeds = statistics["bn_minus_nobn"], statistics["bn_minus_nobn"]["seeds"]
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
    bn, nobn = statistics["bn"], statistics["nobn"]
    return (
        f"{what}. Test accuracy after {epochs} epochs, mean over seeds: "
        f"{pct(bn['test_accuracy'])}%{_ci(bn['test_accuracy_ci95'])} with BatchNorm, "
        f"{pct(nobn['test_accuracy'])}%{_ci(nobn['test_accuracy_ci95'])} without."
    )


def _ci(interval: list[float] | None) -> str:
    return "" if interval is None else f" (95% CI {pct(interval[0])} to {pct(interval[1])})"


def findings(context: Context) -> list[str]:
    """The headline and the *why*, generated from the numbers."""
    lines = [headline(context.statistics, context.params["train"]["epochs"])]
    dead = {v: final_layer_means(context.history, v, "dead_fraction") for v in LABELS}
    worst = max(range(len(dead["nobn"])), key=lambda k: dead["nobn"][k])
    lines.append(
        f"Dead units (zero for every test image) after the last epoch, mean over seeds: "
        f"{100 * fmean(dead['nobn']):.1f}% of hidden units without BatchNorm "
        f"(up to {100 * dead['nobn'][worst]:.0f}% in layer {worst + 1}), "
        f"{100 * fmean(dead['bn']):.1f}% with it."
    )
    std = {v: final_layer_means(context.history, v, "act_std") for v in LABELS}
    spread = (
        "Spread of the post-ReLU activations (std on the test set) from the first to the "
        f"last hidden layer: {std['nobn'][0]:.2f} to {std['nobn'][-1]:.2f} without BatchNorm "
        f"(largest {max(std['nobn']):.2f}), {std['bn'][0]:.2f} to {std['bn'][-1]:.2f} with it "
        f"(largest {max(std['bn']):.2f})"
    )
    drifts = max(std["nobn"]) > 2 * max(std["bn"])
    more_dead = fmean(dead["nobn"]) > fmean(dead["bn"])
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
        fmean(r["test_accuracy"] for r in best),
        fmean(r["epoch"] for r in best),
    )


def _epoch_seconds(history: History, variant: str) -> float:
    return median(r["epoch_seconds"] for runs in history[variant].values() for r in runs)


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
    statistics, p = context.statistics, context.params
    accuracy_rows = []
    for variant in LABELS:
        best, best_epoch = _best_epoch(context.history, variant)
        v = statistics[variant]
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
    diff = statistics["bn_minus_nobn"]
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
    post_table, post_verdict = reproduction(statistics)
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
