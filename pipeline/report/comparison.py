"""reports/report.md and its self-contained twin reports/report.html: the
comparison of the two variants, as a list of blocks (pipeline/report/document.py)
built from the numbers (statistics.json, the training histories, the
evaluation), every sentence generated from them."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean, median
from typing import Any

from pipeline.format import LABELS, Training, accuracy_table, number, pct, show_interval
from pipeline.report import why
from pipeline.report.document import Block, Heading, Image, Paragraph, Table
from pipeline.report.original_post import (
    POST_AVERAGE_LOSS,
    POST_CORRECT,
    POST_TEST_BATCHES,
    TEST_IMAGES,
    post_accuracy,
    reproduction,
)
from pipeline.results import History, Statistics, VariantStatistics
from pipeline.stats import CHANCE, NEAR_CHANCE, mean_std


@dataclass(frozen=True)
class Context:
    """Everything the report says, gathered by the visualize stage."""

    params: dict[str, dict[str, Any]]  # the sections training used (checkpoint["params"])
    digests: dict[str, str]
    commit: str
    device: str
    date: str
    statistics: Statistics  # reports/statistics.json: means, intervals, tests, per seed
    evaluation: dict  # reports/evaluation.json
    history: History
    figures: dict[str, str]  # figure name -> path relative to the report


def headline(statistics: Statistics, epochs: int) -> str:
    """ "BatchNorm adds +X points of test accuracy (95% CI a to b; paired
    t-test p = ...; N seeds)" over the seeds where both variants learnt, and
    the two means over the seeds that learnt; where there is nothing to
    average, it says so instead of a number."""
    sentences = (_gain_sentence(statistics), _means_sentence(statistics, epochs))
    return " ".join(s for s in sentences if s)


def _gain_sentence(statistics: Statistics) -> str:
    """BatchNorm's paired gain over the seeds where both variants learnt, or
    why there is none."""
    pairs, seeds = statistics.bn_minus_nobn.seeds, statistics.seeds
    gain = statistics.bn_minus_nobn.test_accuracy
    if pairs == 0:
        if not any(statistics.of(v).learnt for v in LABELS):
            return "No seed learnt with either variant: there is no accuracy and no gain to give."
        return "No seed learnt with both variants, so there is no paired gain of BatchNorm to give."
    verb = "adds" if gain.mean > 0 else "changes test accuracy by"
    what = f"BatchNorm {verb} {100 * gain.mean:+.2f} points"
    what += " of test accuracy" if gain.mean > 0 else ""
    if pairs > 1 and gain.ci95 is not None:
        test = (
            f"paired t-test p = {gain.p_value:.2g}"
            if gain.p_value is not None
            else "no t-test: every seed's gain is the same"
        )
        counted = f"{pairs} seeds" + (
            "" if pairs == seeds else f" of {seeds}, those where both learnt"
        )
        what += f" (95% CI {show_interval(gain.ci95, sign='+')}; {test}; {counted})"
    elif seeds == 1:
        what += (" (one seed: a confidence interval and a p-value need at least two; "
                 "list more seeds in train.seeds)")  # fmt: skip
    else:
        what += (f" (one seed of {seeds} learnt with both variants: a confidence interval and "
                 "a p-value need at least two)")  # fmt: skip
    return what + "."


def _means_sentence(statistics: Statistics, epochs: int) -> str:
    """Each variant's mean test accuracy over its seeds that learnt; "" when
    no seed learnt at all."""
    if not any(statistics.of(v).learnt for v in LABELS):
        return ""
    over = "the seeds that learnt" if statistics.any_failed else "seeds"
    means = ", ".join(_mean_clause(statistics.of(v), v) for v in LABELS)
    return f"Test accuracy after {epochs} epochs, mean over {over}: {means}."


def _mean_clause(entry: VariantStatistics, variant: str) -> str:
    """ "97.50% (95% CI 97.00 to 98.00) with BatchNorm (3 of 5 seeds)"; the
    count only when some seed failed; "no seed learnt without BatchNorm"."""
    accuracy = entry.test_accuracy
    if accuracy.mean is None:
        return f"no seed learnt {LABELS[variant]}"
    name = LABELS[variant] if variant == "bn" else "without"
    counted = f" ({entry.learnt} of {entry.seeds} seeds)" if entry.outcomes.failed else ""
    interval = "" if accuracy.ci95 is None else f" (95% CI {show_interval(accuracy.ci95)})"
    return f"{pct(accuracy.mean)}%{interval} {name}{counted}"


def failures_paragraph(statistics: Statistics) -> str | None:
    """How many seeds of each variant failed to learn and how, with the exact
    binomial 95% interval of the failure rate, the variant that failed more
    often first; then why accuracies and gain are over the seeds that learnt.
    None when every seed learnt."""
    if not statistics.any_failed:
        return None
    first, second = sorted(("nobn", "bn"), key=lambda v: -statistics.of(v).outcomes.failed)
    it = "with it" if second == "bn" else "without it"
    counts = (
        f"{_failed_clause(statistics.of(first), f'seeds {LABELS[first]} failed to learn', ' of seeds')}"
        f"; {_failed_clause(statistics.of(second), it, '')}."
    )
    return f"{counts} {learnt_only(statistics.bn_minus_nobn.seeds)}"


def _failed_clause(entry: VariantStatistics, who: str, unit: str) -> str:
    """ "2 of 5 seeds without BatchNorm failed to learn (1 diverged, 1 ended
    below 20% test accuracy; 95% CI 5% to 85% of seeds)"; "none of 5 with it
    (95% CI 0% to 52%)"."""
    outcomes = entry.outcomes
    how = [f"{outcomes.diverged} diverged"] if outcomes.diverged else []
    if outcomes.not_learning:
        how.append(f"{outcomes.not_learning} ended below {100 * NEAR_CHANCE:.0f}% test accuracy")
    low, high = (100 * x for x in outcomes.failed_fraction_ci95)
    details = [", ".join(how)] if how else []
    details.append(f"95% CI {low:.0f}% to {high:.0f}%{unit}")
    return f"{outcomes.failed or 'none'} of {entry.seeds} {who} ({'; '.join(details)})"


def learnt_only(pairs: int | None = None) -> str:
    """Why accuracies and the gain are over the seeds that learnt (the
    report's and the study summaries'); with `pairs`, how many pairs the gain
    is over."""
    here = "" if pairs is None else f": {pairs or 'none'} here"
    return (
        "Accuracies and the gain are over the seeds that learnt (the gain over the seeds where "
        f"both variants learnt{here}), because a mean over learners and failures (near the "
        f"{100 * CHANCE:.0f}% of chance, or diverged) mixes two populations and its t-interval "
        "can run outside 0-100%; a variant that fails more often is worse even when its "
        "learners are as good."
    )


def findings(context: Context) -> list[str]:
    """The headline and how many seeds failed to learn (when some did),
    generated from the numbers; the *why* has its own section (why_section)."""
    failures = failures_paragraph(context.statistics)
    return [
        headline(context.statistics, context.params["train"]["epochs"]),
        *([failures] if failures else []),
    ]


def why_section(context: Context) -> list[Block]:
    """The post's explanation of BatchNorm's gain, tested (pipeline/report/why.py),
    then the figures from inside the network; the figures of the activations'
    inputs only where the histories have them."""
    # checkpoints from before the activation was a parameter trained ReLU networks
    activation = context.params["model"].get("activation", "relu")
    seeds = {v: context.statistics.learnt_seeds(v) for v in LABELS}
    captions = {
        "input_percentiles": "The fixed unit's activation input over training, every seed "
        "(the BatchNorm paper's Figure 1(b, c))",
        "input_gradients": "Gradient at each layer's activation input, last epoch",
        "activations": "Each hidden layer's activations for one test image",
        "activation_distributions": "Activation distributions per layer",
        "layer_diagnostics": "Gradient norms and dead units per layer",
    }
    return [
        Heading("Why does BatchNorm help? The post's explanation, tested"),
        *why.blocks(context.history, seeds, activation),
        *(Image(context.figures[n], c) for n, c in captions.items() if n in context.figures),
    ]


def training(history: History, statistics: Statistics) -> dict[str, Training]:
    """Per variant, from the training histories: the mean over the seeds that
    learnt of each one's best test accuracy and of the epoch reaching it
    (None without such seeds), and the median time per epoch of all seeds."""
    columns = {}
    for variant in LABELS:
        best = [max(history[variant][s], key=lambda r: r["test_accuracy"])
                for s in statistics.learnt_seeds(variant)]  # fmt: skip
        columns[variant] = Training(
            fmean(r["test_accuracy"] for r in best) if best else None,
            fmean(r["epoch"] for r in best) if best else None,
            median(r["epoch_seconds"] for runs in history[variant].values() for r in runs),
        )
    return columns


def accuracy_note(statistics: Statistics) -> str:
    """What the accuracy table's numbers are over, and which intervals and
    test it gives."""
    failed = statistics.any_failed
    pairs, seeds = statistics.bn_minus_nobn.seeds, statistics.seeds
    if pairs > 1:
        intervals = (
            "95% CI: t-interval of the mean over seeds; the bn - nobn row pairs each seed's two "
            "models (same initial weights, same batch order) and tests the mean difference with "
            "a two-sided paired t-test."
        ) + (" It counts only the seeds where both variants learnt." if pairs < seeds else "")
    elif seeds == 1:
        intervals = "One seed: no interval or test (they need at least two seeds)."
    else:
        intervals = (
            f"{'One seed' if pairs else 'No seed'} of {seeds} learnt with both variants: the "
            "bn - nobn row has no interval or test (they need at least two)."
        )
    failures = (
        f" A seed failed to learn when its loss became NaN or infinite (diverged) or it ended "
        f"below {100 * NEAR_CHANCE:.0f}% test accuracy (not learning); the failed column "
        "gives the exact binomial 95% CI of the failure rate."
        if failed
        else ""
    )
    return (
        "Test accuracy (%) on the 10,000 MNIST test images after the last epoch, mean across "
        f"{'the seeds that learnt' if failed else 'seeds'} with its 95% confidence interval and "
        "the seeds' sample std; best epoch and time per epoch (all seeds together) from "
        f"training. {intervals}{failures}"
    )


def per_class_table(evaluation: dict, statistics: Statistics) -> tuple[list[str], list[list[str]]]:
    """Per digit: each variant's accuracy, mean (and std with several seeds)
    across its seeds that learnt, and the difference of the means; "-" where
    no seed (for the std: fewer than two) learnt."""
    several = len(evaluation["bn"]) > 1
    header = ["digit"]
    for variant in LABELS:
        header += [LABELS[variant]] + (["std"] if several else [])
    means = {v: _class_means(evaluation[v], statistics.learnt_seeds(v)) for v in LABELS}
    rows = []
    for digit in range(len(next(iter(evaluation["bn"].values()))["class_accuracy"])):
        row = [str(digit)]
        for variant in LABELS:
            mean, std = means[variant][digit] if means[variant] else (None, None)
            row += [pct(mean)] + ([pct(std)] if several else [])
        bn, nobn = (means[v][digit][0] if means[v] else None for v in ("bn", "nobn"))
        rows.append([*row, number(None if None in (bn, nobn) else bn - nobn, "+.2f", 100)])
    return [*header, "bn - nobn"], rows


def _class_means(by_seed: dict, seeds: list[str]) -> list[tuple[float, float | None]] | None:
    """Per class, the mean accuracy over `seeds` and its sample std (None
    with one seed); None without seeds."""
    if not seeds:
        return None
    columns = zip(*(by_seed[s]["class_accuracy"] for s in seeds), strict=True)
    return [(m, s if len(seeds) > 1 else None) for m, s in (mean_std(c) for c in columns)]


def build(context: Context) -> list[Block]:
    """The report's blocks, in order."""
    statistics, p = context.statistics, context.params
    class_header, class_rows = per_class_table(context.evaluation, statistics)
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
    over = "the seeds that learnt" if statistics.any_failed else "seeds"
    return [
        Heading("BatchNorm vs no BatchNorm: a deep, narrow MLP on MNIST", 1),
        *(Paragraph(line) for line in findings(context)),
        Heading("Accuracy"),
        Paragraph(accuracy_note(statistics)),
        Table(*accuracy_table(statistics, training(context.history, statistics))),
        Image(figures["seed_accuracies"], "Every seed's final test accuracy, paired by seed"),
        Paragraph(f"Per class, test accuracy (%), mean (and std) across {over}:"),
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
        *why_section(context),
        Heading("Confusion matrices"),
        Image(figures["confusion_matrices"], "Confusion matrices"),
        Heading("What was run"),
        Table(["item", "value"], run_rows),
    ]
