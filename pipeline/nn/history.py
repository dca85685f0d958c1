"""Per-epoch training records, and what they become: the summary, the
plots table and the history file."""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field

from pipeline.nn.diagnostics import DIAGNOSTICS
from pipeline.stats import LEARNT, failures, finite_or_none, mean_std, outcome


@dataclass(frozen=True)
class LayerStats:
    """One hidden layer of one seed after an epoch (pipeline/nn/diagnostics.py)."""

    act_mean: float  # mean activation output over the test set
    act_std: float
    dead_fraction: float  # units that are zero for every test image
    grad_norm: float  # mean L2 norm of the layer's weight gradient over the epoch's batches
    # the activation function's input over the test set: percentiles over all
    # units and images, and over the images for the fixed unit
    input_p15: float
    input_p50: float
    input_p85: float
    unit_p15: float
    unit_p50: float
    unit_p85: float
    flat_fraction: float  # inputs in the activation's flat region
    # mean L2 norm over the epoch's batches of the loss gradient with respect
    # to the activation's inputs, summed over the batch (fan-in free)
    input_grad_norm: float


@dataclass(frozen=True)
class Divergence:
    """Where a seed's training loss first became NaN or infinite."""

    epoch: int
    batch: int  # from 1, in the epoch
    loss: float  # nan, inf or -inf

    def as_json(self) -> dict:
        """JSON has no NaN or infinity: the loss as its name, "nan" or "inf"."""
        return {"epoch": self.epoch, "batch": self.batch, "loss": str(self.loss)}


@dataclass(frozen=True)
class EpochRecord:
    """One seed's epoch."""

    epoch: int
    train_loss: float  # mean over the epoch's batches
    test_loss: float  # mean per test image
    test_accuracy: float
    epoch_seconds: float  # wall time of the epoch, all seeds together
    layers: list[LayerStats] = field(default_factory=list)
    diverged: Divergence | None = None  # in this epoch or before

    def metrics(self) -> dict[str, float]:
        """Flat metric names, as logged to MLflow and written to DVC plots."""
        flat = {
            "train_loss": self.train_loss,
            "test_loss": self.test_loss,
            "test_accuracy": self.test_accuracy,
            "epoch_seconds": self.epoch_seconds,
        }
        for number, layer in enumerate(self.layers, start=1):
            for name, value in vars(layer).items():
                flat[f"layer_{number:02d}/{name}"] = value
        return flat


SUMMARY_KEYS = ("test_accuracy", "test_loss", "train_loss")
# per hidden layer at the last epoch, mean over learnt seeds: the studies' diagnostics
LAYER_KEYS = ("dead_fraction", "grad_norm", "flat_fraction", "input_grad_norm")
# per seed, epoch and hidden layer: what judges the post's "why" and draws
# the BatchNorm paper's Figure 1 (pipeline/nn/diagnostics.py)
EPOCH_LAYER_KEYS = (*DIAGNOSTICS, "input_grad_norm")


def outcome_of(history: list[EpochRecord]) -> str:
    """What became of a seed: learnt, diverged or not learning (stats.outcome)."""
    final = history[-1]
    return outcome(final.test_accuracy, final.diverged is not None)


def summarize(histories: dict[int, list[EpochRecord]]) -> dict:
    """reports/train/<variant>.json: each seed's final values and outcome;
    how many seeds failed to learn, and how; over the seeds that learnt, the
    mean and std of the final values, and each hidden layer's diagnostics
    at the last epoch (null where no seed learnt); and per seed, its test
    accuracy and layer diagnostics at every epoch (`per_epoch`)."""
    finals = {seed: history[-1] for seed, history in histories.items()}
    outcomes = {seed: outcome_of(history) for seed, history in histories.items()}
    learnt = [seed for seed in finals if outcomes[seed] == LEARNT]
    summary: dict = {}
    for key in SUMMARY_KEYS:
        values = [getattr(finals[seed], key) for seed in learnt]
        summary[key], summary[f"{key}_std"] = mean_std(values) if values else (None, None)
    summary["best_test_accuracy"] = (
        statistics.fmean(max(r.test_accuracy for r in histories[seed]) for seed in learnt)
        if learnt
        else None
    )
    summary["epoch_seconds"] = statistics.median(
        r.epoch_seconds for history in histories.values() for r in history
    )
    summary["outcomes"] = failures(list(outcomes.values()))
    summary["per_seed"] = {
        str(seed): {key: finite_or_none(getattr(record, key)) for key in SUMMARY_KEYS}
        | {"outcome": outcomes[seed], "epochs": record.epoch}
        | ({"diverged": record.diverged.as_json()} if record.diverged else {})
        for seed, record in finals.items()
    }
    # per hidden layer (the first one first), at the last epoch, mean across learnt seeds
    depth = len(next(iter(finals.values())).layers)
    summary["layers"] = {
        key: [statistics.fmean(getattr(finals[seed].layers[k], key) for seed in learnt)
              if learnt else None for k in range(depth)]
        for key in LAYER_KEYS
    }  # fmt: skip
    summary["per_epoch"] = {str(seed): per_epoch(history) for seed, history in histories.items()}
    return summary


def per_epoch(history: list[EpochRecord]) -> dict:
    """One seed's test accuracy per epoch, and per EPOCH_LAYER_KEYS key its
    values per epoch and hidden layer, [epoch][layer] (null where not finite)."""
    return {
        "epoch": [r.epoch for r in history],
        "test_accuracy": [finite_or_none(r.test_accuracy) for r in history],
        "layers": {key: [[finite_or_none(getattr(layer, key)) for layer in r.layers]
                         for r in history]
                   for key in EPOCH_LAYER_KEYS},
    }  # fmt: skip


def plot_table(histories: dict[int, list[EpochRecord]]) -> str:
    """Per-epoch metrics as CSV, averaged across the seeds that have not
    diverged by that epoch (an empty cell where all have): the DVC plots file."""
    per_epoch = zip(*histories.values(), strict=True)
    rows = []
    for records in per_epoch:
        columns = records[0].metrics().keys()
        training = [r for r in records if r.diverged is None]
        rows.append(
            {"epoch": records[0].epoch}
            | {
                c: statistics.fmean(r.metrics()[c] for r in training) if training else None
                for c in columns
            }
        )
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def history_table(histories: dict[int, list[EpochRecord]]) -> dict[str, list[dict]]:
    """Every seed's every epoch, all metrics (null where not finite), and
    whether the seed had diverged by then: data/models/<variant>/history.json."""
    return {
        str(seed): [{"epoch": r.epoch, "diverged": r.diverged is not None}
                    | {k: finite_or_none(v) for k, v in r.metrics().items()}
                    for r in history]
        for seed, history in histories.items()
    }  # fmt: skip
