"""Stage `evaluate`: every checkpoint of both variants on the 10,000 test images.

Writes reports/statistics.json (per variant the mean across seeds with its
std and 95% confidence interval, and each seed's numbers; bn - nobn paired by
seed, with its interval and p-value), the few of them that experiments are
compared by as DVC metrics, reports/metrics.json (`dvc exp show`),
reports/evaluation.json (per-class accuracy and confusion matrix per
checkpoint) and the table reports/accuracy.md; adds the
numbers and the confusion matrix to each seed's MLflow run, and the
across-seed statistics to each variant's parent run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn import functional as F

from pipeline import lineage, paths, tracking
from pipeline.cli import run_stage, stage_parser
from pipeline.data.mnist import load_split, scale_images
from pipeline.errors import PipelineError
from pipeline.files import atomic_write_json, atomic_write_text
from pipeline.format import accuracy_table, markdown_table
from pipeline.nn.checkpoint import checkpoints_of, load_checkpoint
from pipeline.nn.model import CLASSES, VARIANTS, DeepMLP
from pipeline.params import Params, load_params
from pipeline.results import Difference, Mean, Outcomes, SeedResult, Statistics, VariantStatistics
from pipeline.stats import (
    DIVERGED,
    LEARNT,
    NOT_LEARNING,
    estimate,
    failures,
    finite_or_none,
    outcome,
    paired,
)

log = logging.getLogger("evaluate")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    test_accuracy: float
    test_loss: float  # mean per test image; NaN for a diverged network
    confusion: list[list[int]]  # [true class][predicted class] -> count
    diverged: bool = False  # its training loss became NaN or infinite (the checkpoint says)

    @property
    def outcome(self) -> str:
        return outcome(self.test_accuracy, self.diverged)

    @property
    def class_accuracy(self) -> list[float]:
        return [row[k] / sum(row) if sum(row) else 0.0 for k, row in enumerate(self.confusion)]


@torch.no_grad()
def evaluate_model(model: DeepMLP, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Evaluation:
    """Accuracy, mean loss and confusion matrix of `model` on (x, y)."""
    model.eval()
    confusion = torch.zeros(CLASSES * CLASSES, dtype=torch.int64)
    loss_sum = 0.0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        labels = y[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        confusion += torch.bincount(labels * CLASSES + logits.argmax(1), minlength=CLASSES**2)
    matrix = confusion.view(CLASSES, CLASSES)
    return Evaluation(
        test_accuracy=matrix.trace().item() / len(x),
        test_loss=loss_sum / len(x),
        confusion=matrix.tolist(),
    )


KEYS = ("test_accuracy", "test_loss")


def check_paired(evaluations: dict[str, dict[int, Evaluation]]) -> list[int]:
    """The seeds, which must be the same for both variants: bn - nobn is
    compared seed by seed (a seed's two models share initial weights and
    batch order)."""
    seeds = {variant: sorted(by_seed) for variant, by_seed in evaluations.items()}
    if seeds["bn"] != seeds["nobn"]:
        raise PipelineError(
            f"{paths.MODELS_DIR}: the variants hold different seeds (bn: {seeds['bn']}, "
            f"nobn: {seeds['nobn']}); they are compared seed by seed: "
            "run `dvc repro train_bn train_nobn`"
        )
    return seeds["bn"]


def summarize(evaluations: dict[str, dict[int, Evaluation]]) -> Statistics:
    """reports/statistics.json. Per variant: how many seeds failed to learn
    and how (stats.failures, with an exact binomial interval); over the seeds
    that learnt, the mean, the sample std and the 95% t-interval of the mean.
    bn - nobn paired by seed, over the seeds where both variants learnt: the
    interval of the mean difference and a two-sided paired t-test. Where no
    seed failed this is today's t-statistics over every seed. With one seed
    (or pair) stds, intervals and p-values are null (None); with none, the
    means too. Every seed stays in "per_seed", with its outcome."""
    seeds = check_paired(evaluations)
    variants = {}
    for variant, by_seed in evaluations.items():
        learnt = [seed for seed in seeds if by_seed[seed].outcome == LEARNT]
        means = {}
        for key in KEYS:
            values = [getattr(by_seed[seed], key) for seed in learnt]
            e = estimate(values) if values else None
            means[key] = Mean(e.mean, e.std, e.ci95) if e else Mean(None, None, None)
        variants[variant] = VariantStatistics(
            seeds=len(seeds),
            learnt=len(learnt),
            **means,
            outcomes=Outcomes.from_json(failures([by_seed[seed].outcome for seed in seeds])),
            per_seed={str(seed): SeedResult(e.test_accuracy, finite_or_none(e.test_loss), e.outcome)
                      for seed, e in sorted(by_seed.items())},
        )  # fmt: skip
    both = [s for s in seeds if all(evaluations[v][s].outcome == LEARNT for v in VARIANTS)]
    differences = {}
    for key in KEYS:
        bn, nobn = ([getattr(evaluations[v][seed], key) for seed in both] for v in ("bn", "nobn"))
        p = paired(bn, nobn) if both else None
        differences[key] = Mean(p.mean, p.std, p.ci95, p.p_value) if p else Mean(None, None, None)
    return Statistics(**variants, bn_minus_nobn=Difference(len(both), **differences))


def compared(statistics: Statistics) -> dict:
    """reports/metrics.json, DVC's metrics: what `dvc exp show` compares
    experiments by, in one 120-column table beside two changed params. Mean
    test accuracy per variant over the seeds that learnt, and how many seeds
    failed to learn; BatchNorm's paired gain and its p-value (null with one
    seed); the intervals, losses and outcomes are in statistics.json."""
    gain = statistics.bn_minus_nobn.test_accuracy
    return {
        variant: {"acc": statistics.of(variant).test_accuracy.mean,
                  "failed": statistics.of(variant).outcomes.failed}
        for variant in VARIANTS
    } | {"gain": {"acc": gain.mean, "p": gain.p_value}}  # fmt: skip


def details(evaluations: dict[str, dict[int, Evaluation]]) -> dict:
    """reports/evaluation.json: per-class accuracy and confusion matrix per checkpoint."""
    return {
        variant: {
            str(seed): {"class_accuracy": e.class_accuracy, "confusion": e.confusion}
            for seed, e in by_seed.items()
        }
        for variant, by_seed in evaluations.items()
    }


def parent_metrics(statistics: dict, variant: str) -> dict[str, float]:
    """What evaluate adds to a variant's parent run: its mean, std and 95%
    interval across the seeds that learnt, how many failed to learn, and the
    paired bn - nobn comparison (on both parents). MLflow metrics are numbers: what is null is left out."""
    flat: dict[str, float | None] = {}
    for prefix, entry in ((f"eval/{variant}", statistics[variant]),
                          ("eval/bn_minus_nobn", statistics["bn_minus_nobn"])):  # fmt: skip
        for key in KEYS:
            flat[f"{prefix}/{key}"] = entry[key]
            flat[f"{prefix}/{key}_std"] = entry[f"{key}_std"]
            interval = entry[f"{key}_ci95"] or [None, None]
            flat[f"{prefix}/{key}_ci95_low"], flat[f"{prefix}/{key}_ci95_high"] = interval
            if f"{key}_p_value" in entry:
                flat[f"{prefix}/{key}_p_value"] = entry[f"{key}_p_value"]
    outcomes = statistics[variant]["outcomes"]
    for key in ("failed", DIVERGED, NOT_LEARNING):
        flat[f"eval/{variant}/{key}"] = outcomes[key]
    return {name: value for name, value in flat.items() if value is not None}


def log_to_mlflow(
    evaluations: dict[str, dict[int, Evaluation]], statistics: dict, tracker: tracking.Tracker
) -> None:
    for variant, by_seed in evaluations.items():
        runs_file = paths.MODELS_DIR / variant / paths.RUNS_NAME
        run_ids = lineage.recorded_runs(runs_file)
        for seed, e in by_seed.items():
            flat = {"eval/test_accuracy": e.test_accuracy, "eval/test_loss": e.test_loss}
            flat |= {f"eval/class_{k}_accuracy": a for k, a in enumerate(e.class_accuracy)}
            tracker.log_to_run(
                run_ids[seed],
                metrics=flat,
                dicts={"evaluation/confusion_matrix.json": e.confusion},
            )
        tracker.log_to_run(lineage.recorded_parent(runs_file),
                           metrics=parent_metrics(statistics, variant))  # fmt: skip


def evaluate_all(params: Params, tracker: tracking.Tracker) -> None:
    """Evaluate every checkpoint, write the reports, then log to the runs."""
    images, y = load_split(paths.RAW_DIR, train=False)
    x = scale_images(images)
    evaluations: dict[str, dict[int, Evaluation]] = {}
    for variant in VARIANTS:
        evaluations[variant] = {}
        for seed, path in checkpoints_of(paths.MODELS_DIR / variant).items():
            model, checkpoint = load_checkpoint(path)
            e = evaluate_model(model, x, y, params.evaluate.batch_size)
            diverged = checkpoint.get("diverged") is not None or not math.isfinite(e.test_loss)
            e = dataclasses.replace(e, diverged=diverged)
            evaluations[variant][seed] = e
            log.info(
                "%s seed %d: test accuracy %.2f%%, loss %.4f",
                variant,
                seed,
                100 * e.test_accuracy,
                e.test_loss,
            )
    statistics = summarize(evaluations)
    atomic_write_json(paths.STATISTICS_FILE, statistics.to_json())
    atomic_write_json(paths.METRICS_FILE, compared(statistics), sort_keys=False)  # bn, nobn, gain
    atomic_write_json(paths.EVALUATION_FILE, details(evaluations))
    atomic_write_text(paths.ACCURACY_TABLE, markdown_table(*accuracy_table(statistics)) + "\n")
    log_to_mlflow(evaluations, statistics.to_json(), tracker)


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__.splitlines()[0]).parse_args(argv)
    params = load_params(args.params)
    uri = tracking.tracking_uri(os.environ, Path.cwd())
    # MLflow loads while we evaluate; a refused login fails here, before any reading.
    tracker = tracking.Tracker(uri, params.tracking.experiment)
    evaluate_all(params, tracker)


if __name__ == "__main__":
    run_stage(main)
