"""Per-epoch training records turned into the summary, plots and history files."""

from __future__ import annotations

import csv
import io
import statistics

from pipeline.stats import mean_std
from pipeline.training import EpochRecord

SUMMARY_KEYS = ("test_accuracy", "test_loss", "train_loss")
LAYER_KEYS = ("dead_fraction", "grad_norm")  # the depth study's diagnostics


def summarize(histories: dict[int, list[EpochRecord]]) -> dict:
    """reports/train/<variant>.json: final-epoch values per seed, their mean
    and std across seeds, and each hidden layer's dead-unit fraction and
    gradient norm (mean across seeds)."""
    finals = {seed: history[-1] for seed, history in histories.items()}
    summary: dict = {}
    for key in SUMMARY_KEYS:
        summary[key], summary[f"{key}_std"] = mean_std(getattr(r, key) for r in finals.values())
    summary["best_test_accuracy"] = statistics.fmean(
        max(r.test_accuracy for r in history) for history in histories.values()
    )
    summary["epoch_seconds"] = statistics.median(
        r.epoch_seconds for history in histories.values() for r in history
    )
    summary["per_seed"] = {
        str(seed): {key: getattr(record, key) for key in SUMMARY_KEYS}
        for seed, record in finals.items()
    }
    # per hidden layer (the first one first), at the last epoch, mean across seeds
    summary["layers"] = {
        key: [statistics.fmean(getattr(layer, key) for layer in per_seed)
              for per_seed in zip(*(r.layers for r in finals.values()), strict=True)]
        for key in LAYER_KEYS
    }  # fmt: skip
    return summary


def plot_table(histories: dict[int, list[EpochRecord]]) -> str:
    """Per-epoch metrics as CSV, averaged across seeds: the DVC plots file."""
    per_epoch = zip(*histories.values(), strict=True)
    rows = []
    for records in per_epoch:
        columns = records[0].metrics().keys()
        rows.append(
            {"epoch": records[0].epoch}
            | {c: statistics.fmean(r.metrics()[c] for r in records) for c in columns}
        )
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def history_table(histories: dict[int, list[EpochRecord]]) -> dict[str, list[dict]]:
    """Every seed's every epoch, all metrics: data/models/<variant>/history.json."""
    return {
        str(seed): [{"epoch": r.epoch} | r.metrics() for r in history]
        for seed, history in histories.items()
    }
