"""Stage `evaluate`: every checkpoint of both variants on the 10,000 test images.

Writes reports/metrics.json (DVC metrics: per variant, mean and std across
seeds, and bn - nobn), reports/evaluation.json (per-class accuracy and
confusion matrix per checkpoint) and the table reports/accuracy.md, and adds
the numbers and the confusion matrix to each training run in MLflow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from pipeline import paths, tracking
from pipeline.checkpoint import checkpoints_of, load_checkpoint
from pipeline.cli import run_stage, stage_parser
from pipeline.files import atomic_write_json, atomic_write_text
from pipeline.mnist import load_split
from pipeline.model import CLASSES, VARIANTS, DeepMLP
from pipeline.params import Params, load_params
from pipeline.stats import mean_std
from pipeline.training import scale_images

log = logging.getLogger("evaluate")


@dataclass(frozen=True)
class Evaluation:
    test_accuracy: float
    test_loss: float  # mean per test image
    confusion: list[list[int]]  # [true class][predicted class] -> count

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


def summarize(evaluations: dict[str, dict[int, Evaluation]]) -> dict:
    """reports/metrics.json: per variant mean and std across seeds, and bn - nobn."""
    metrics: dict = {}
    for variant, by_seed in evaluations.items():
        entry: dict = {"seeds": len(by_seed)}
        for key in ("test_accuracy", "test_loss"):
            entry[key], entry[f"{key}_std"] = mean_std(getattr(e, key) for e in by_seed.values())
        entry["per_seed"] = {
            str(seed): {"test_accuracy": e.test_accuracy, "test_loss": e.test_loss}
            for seed, e in by_seed.items()
        }
        metrics[variant] = entry
    metrics["bn_minus_nobn"] = {
        key: metrics["bn"][key] - metrics["nobn"][key] for key in ("test_accuracy", "test_loss")
    }
    return metrics


def details(evaluations: dict[str, dict[int, Evaluation]]) -> dict:
    """reports/evaluation.json: per-class accuracy and confusion matrix per checkpoint."""
    return {
        variant: {
            str(seed): {"class_accuracy": e.class_accuracy, "confusion": e.confusion}
            for seed, e in by_seed.items()
        }
        for variant, by_seed in evaluations.items()
    }


def accuracy_table(metrics: dict) -> str:
    """The Markdown table of reports/accuracy.md."""
    lines = [
        "| variant | seeds | test accuracy (%) | std | test loss |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        m = metrics[variant]
        lines.append(
            f"| {variant} | {m['seeds']} | {100 * m['test_accuracy']:.2f} | "
            f"{100 * m['test_accuracy_std']:.2f} | {m['test_loss']:.4f} |"
        )
    diff = metrics["bn_minus_nobn"]
    lines.append(
        f"| bn - nobn | | {100 * diff['test_accuracy']:+.2f} | | {diff['test_loss']:+.4f} |"
    )
    return "\n".join(lines) + "\n"


def log_to_mlflow(evaluations: dict[str, dict[int, Evaluation]], tracker: tracking.Tracker) -> None:
    for variant, by_seed in evaluations.items():
        run_ids = tracking.recorded_runs(paths.MODELS_DIR / variant / paths.RUNS_NAME)
        for seed, e in by_seed.items():
            metrics = {"eval/test_accuracy": e.test_accuracy, "eval/test_loss": e.test_loss}
            metrics |= {f"eval/class_{k}_accuracy": a for k, a in enumerate(e.class_accuracy)}
            tracker.log_to_run(
                run_ids[seed],
                metrics=metrics,
                dicts={"evaluation/confusion_matrix.json": e.confusion},
            )


def evaluate_all(params: Params, tracker: tracking.Tracker) -> None:
    """Evaluate every checkpoint, write the reports, then log to the runs."""
    images, y = load_split(paths.RAW_DIR, train=False)
    x = scale_images(images)
    evaluations: dict[str, dict[int, Evaluation]] = {}
    for variant in VARIANTS:
        evaluations[variant] = {}
        for seed, path in checkpoints_of(paths.MODELS_DIR / variant).items():
            model, _ = load_checkpoint(path)
            e = evaluate_model(model, x, y, params.evaluate.batch_size)
            evaluations[variant][seed] = e
            log.info(
                "%s seed %d: test accuracy %.2f%%, loss %.4f",
                variant,
                seed,
                100 * e.test_accuracy,
                e.test_loss,
            )
    metrics = summarize(evaluations)
    atomic_write_json(paths.METRICS_FILE, metrics)
    atomic_write_json(paths.EVALUATION_FILE, details(evaluations))
    atomic_write_text(paths.ACCURACY_TABLE, accuracy_table(metrics))
    log_to_mlflow(evaluations, tracker)


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__.splitlines()[0]).parse_args(argv)
    params = load_params(args.params)
    uri = tracking.tracking_uri(os.environ, Path.cwd())
    with tracking.Tracker(uri) as tracker:  # MLflow loads while we evaluate
        evaluate_all(params, tracker)


if __name__ == "__main__":
    run_stage(main)
