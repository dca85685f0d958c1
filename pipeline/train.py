"""Stages `train_bn` and `train_nobn`: the same MLP with and without BatchNorm.

`python -m pipeline.train --variant bn|nobn` trains one model per seed in
`train.seeds`, all at once as one stacked model (pipeline/nn/training.py); logs
each seed as an MLflow run nested in one parent run for the variant; and
writes data/models/<variant>/ (final checkpoint per seed, per-epoch history,
MLflow run ids) and the files
reports/train/<variant>.json (summary) and .csv (DVC plots).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import lineage, paths, tracking
from pipeline.cli import raise_if_interrupted, run_stage, stage_parser
from pipeline.data.mnist import DeviceData, load_mnist, to_device, verified_digests
from pipeline.files import (
    atomic_write_json,
    atomic_write_text,
    replace_dir,
    staging_dir,
)
from pipeline.nn.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from pipeline.nn.device import (
    configure_threads,
    describe_device,
    select_device,
    use_cuda_graph,
)
from pipeline.nn.history import (
    SUMMARY_KEYS,
    EpochRecord,
    history_table,
    outcome_of,
    plot_table,
    summarize,
)
from pipeline.nn.model import VARIANTS, DeepMLP
from pipeline.nn.training import batch_starts, fit, initial_model, make_optimizer
from pipeline.params import Params, flatten, load_params
from pipeline.stats import DIVERGED, NEAR_CHANCE, NOT_LEARNING, mean_std

log = logging.getLogger("train")


class Progress:
    """A tqdm bar per epoch with the running loss (shown on a terminal only)."""

    def __init__(self, label: str, batches: int, epochs: int) -> None:
        self.label, self.batches, self.epochs = label, batches, epochs
        self.bar: tqdm | None = None

    def __call__(self, epoch: int, done: int, loss: float) -> None:
        raise_if_interrupted()  # called every PROGRESS_EVERY batches
        if self.bar is None:
            desc = f"{self.label} epoch {epoch}/{self.epochs}"
            self.bar = tqdm(total=self.batches, desc=desc, unit="batch", leave=False, disable=None)
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if done == self.batches:
            self.bar.close()
            self.bar = None


NAMES = {"bn": "BatchNorm", "nobn": "No-BatchNorm"}  # in run descriptions
# The tags that tell this stage's runs (both train stages: with the variant's)
STAGE_TAGS = ("variant", "mlflow.source.name")


def setting(params: Params) -> str:
    """What a run description says of the network and its training:
    "10 x 64 relu, Adam lr 0.001, 9 epochs of batch 64"."""
    m, t = params.model, params.train
    optimizer = (f"SGD lr {t.lr:g}" + (f" momentum {t.momentum:g}" if t.momentum else "")
                 if t.optimizer == "sgd" else f"Adam lr {t.lr:g}")  # fmt: skip
    extras = [f"weights N(0, {m.init_std:g}^2)"] if m.init_std is not None else []
    extras += ["binary inputs"] if m.inputs == "binary" else []
    return ", ".join([f"{m.depth} x {m.width} {m.activation}", *extras, optimizer,
                      f"{t.epochs} epochs of batch {t.batch_size}"])  # fmt: skip


def seed_tags(
    variant: str, seed: int | None, device: str, execution: str, params: Params
) -> dict[str, str]:
    """A seed's run tags, or (seed None) those of the variant's parent run,
    with what the MLflow UI shows as the run's source (this stage's module,
    where MLflow would name the file) and description."""
    tags = lineage.run_tags(variant, seed, device, execution, os.environ, Path.cwd())
    tags |= {"mlflow.source.name": "pipeline.train", "mlflow.source.type": "LOCAL"}
    if seed is not None:
        note = f"{NAMES[variant]} variant, seed {seed}: {setting(params)}"
        return tags | {"mlflow.note.content": note}
    seeds = params.train.seeds
    listed = ", ".join(map(str, seeds))
    note = (
        f"{NAMES[variant]} variant, {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
        f"({listed}) trained together: {setting(params)}; one nested run per seed"
    )
    return tags | {"seeds": listed, "mlflow.note.content": note}


def served_model_tags(run_tags: dict[str, str]) -> dict[str, str]:
    """The tags of a seed's logged model: its run's variant, seed, source and
    description, and what the model takes and gives."""
    kept = ("variant", "seed", "mlflow.source.name", "mlflow.source.type")
    tags = {key: run_tags[key] for key in kept}
    note = f"{run_tags['mlflow.note.content']}. Predicts digits from float32 images (N, 784) in [0, 1]."
    return tags | {"mlflow.note.content": note}


def across_seeds(records: list[EpochRecord]) -> dict[str, float]:
    """What a parent run logs per epoch: the mean (and, with several seeds,
    the sample std) of the headline metrics across the seeds that have not
    diverged (none: left out), how many have, and the epoch's time."""
    training = [r for r in records if r.diverged is None]
    metrics = {"epoch_seconds": records[0].epoch_seconds,
               "diverged_seeds": len(records) - len(training)}  # fmt: skip
    for key in SUMMARY_KEYS if training else ():
        mean, std = mean_std(getattr(r, key) for r in training)
        metrics[f"{key}_mean"] = mean
        if len(training) > 1:
            metrics[f"{key}_std"] = std
    return metrics


def report_failure(name: str, history: list[EpochRecord], batches: int, lr: float) -> None:
    """Log, as a warning, that a seed failed to learn and how; a failure is a
    result (the stage goes on), not an error."""
    final, result = history[-1], outcome_of(history)
    if result == DIVERGED:
        where = final.diverged
        log.warning(
            "%s diverged: its loss became %s at epoch %d, batch %d of %d (train.lr = %g); "
            "it counts as a failure to learn",
            name, where.loss, where.epoch, where.batch, batches, lr,
        )  # fmt: skip
    elif result == NOT_LEARNING:
        log.warning(
            "%s did not learn: %.2f%% test accuracy after %d epochs (below %.0f%%, chance 10%%); "
            "it counts as a failure to learn",
            name, 100 * final.test_accuracy, final.epoch, 100 * NEAR_CHANCE,
        )  # fmt: skip


def outcome_tags(history: list[EpochRecord]) -> dict[str, str]:
    """The tags a seed's run gets once trained: `outcome` (learnt, diverged,
    not_learning) and, for a diverged seed, where."""
    tags = {"outcome": outcome_of(history)}
    where = history[-1].diverged
    if where is not None:
        tags["diverged_at"] = f"epoch {where.epoch}, batch {where.batch} (loss {where.loss})"
    return tags


def train_seeds(
    variant: str,
    params: Params,
    data: DeviceData,
    info: dict,
    runs: list[tracking.Run],
    parent: tracking.Run,
    scratch: Path,
) -> tuple[list[DeepMLP], list[list[EpochRecord]]]:
    """Train every seed of train.seeds at once, as one stacked model; log
    each epoch's metrics to the seed's run and the across-seed summary to
    `parent` (asynchronously), and write each epoch's checkpoint (carrying
    `info`, its seed and run id) to scratch/seed<k>/. Returns each seed's
    final model and history."""
    t, seeds = params.train, params.train.seeds
    device = data.train_x.device
    m = params.model
    model = initial_model(m.depth, m.width, VARIANTS[variant], seeds, m.activation, m.init_std,
                          m.inputs)  # fmt: skip
    model.to(device)
    graph = use_cuda_graph(t.cuda_graph, device)
    optimizer = make_optimizer(model, t.lr, t.betas, t.eps, t.weight_decay, capturable=graph,
                               kind=t.optimizer, momentum=t.momentum)  # fmt: skip
    label = f"{variant} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"

    def on_epoch(records: list[EpochRecord]) -> None:
        raise_if_interrupted()
        summary = across_seeds(records)
        accuracies = [100 * r.test_accuracy for r in records]
        nan = float("nan")
        log.info(
            "%s epoch %d/%d: train_loss %.4f test_loss %.4f test_accuracy %.2f%% "
            "(seeds %.2f-%.2f; diverged: %d) (%.1f s)",
            label, records[0].epoch, t.epochs, summary.get("train_loss_mean", nan),
            summary.get("test_loss_mean", nan), summary.get("test_accuracy_mean", nan) * 100,
            min(accuracies), max(accuracies), summary["diverged_seeds"], records[0].epoch_seconds,
        )  # fmt: skip
        for k, (seed, run, record) in enumerate(zip(seeds, runs, records, strict=True)):
            run.log_epoch(record.epoch, record.metrics())
            path = scratch / f"seed{seed}" / f"epoch_{record.epoch:03d}.pt"
            path.parent.mkdir(exist_ok=True)
            checkpoint = make_checkpoint(model.unstack(k), epoch=record.epoch,
                                         metrics=record.metrics(), mlflow_run_id=run.run_id,
                                         **info, seed=seed)  # fmt: skip
            save_checkpoint(path, checkpoint)
        parent.log_epoch(records[0].epoch, summary)

    batches = len(batch_starts(len(data.train_x), t.batch_size))
    histories = fit(
        model,
        data,
        epochs=t.epochs,
        batch_size=t.batch_size,
        optimizer=optimizer,
        generators=[torch.Generator().manual_seed(seed) for seed in seeds],
        on_epoch=on_epoch,
        on_progress=Progress(label, batches, t.epochs),
        cuda_graph=graph,
    )
    for seed, history in zip(seeds, histories, strict=True):
        report_failure(f"{variant}-seed{seed}", history, batches, t.lr)
    return [model.unstack(k) for k in range(len(seeds))], histories


def train_variant(
    variant: str,
    params: Params,
    data: DeviceData,
    digests: dict[str, str],
    out_dir: Path,
    tracker: tracking.Tracker,
) -> dict[int, list[EpochRecord]]:
    """Train every seed, logged as one MLflow run per seed nested in one
    parent run for the variant (after ending the runs a killed earlier
    attempt left RUNNING); build out_dir in a staging folder and swap it in
    at the end, so a failure leaves no partial set of models."""
    execution = lineage.pipeline_run_id(os.environ)
    device = describe_device(data.train_x.device)
    seeds = params.train.seeds
    logged_params = (
        flatten(params.model, "model.")
        | flatten(params.train, "train.")
        | flatten(params.tracking, "tracking.")
        | {"data.verify": params.data.verify}
    )
    info = {  # what each checkpoint says about how it was made
        "variant": variant,
        "data_sha256": digests,
        "git_commit": lineage.git_commit(Path.cwd()),
        "device": device,
        "params": {
            "model": params.model.model_dump(),
            "train": params.train.model_dump(),
            "data": {"verify": params.data.verify},
        },
    }
    parent_tags = seed_tags(variant, None, device, execution, params)
    tracker.end_abandoned({key: parent_tags[key] for key in STAGE_TAGS})
    staging = staging_dir(out_dir)
    try:
        with (
            tempfile.TemporaryDirectory() as scratch,
            tracker.run(variant, parent_tags, logged_params) as parent,
            contextlib.ExitStack() as seed_runs,
        ):
            parent.log_dataset(paths.MNIST_RAW_DIR, digests)
            runs, model_tags = [], []
            for seed in seeds:
                tags = seed_tags(variant, seed, device, execution, params)
                run = tracker.run(f"{variant}-seed{seed}", tags, logged_params, parent)
                runs.append(seed_runs.enter_context(run))
                model_tags.append(served_model_tags(tags))
            for run in runs:
                run.log_dataset(paths.MNIST_RAW_DIR, digests)
                run.log_files([paths.DIGESTS_FILE], "data")
            models, histories = train_seeds(variant, params, data, info, runs, parent,
                                            Path(scratch))  # fmt: skip
            uris = []
            for seed, run, model, history, model_tag in zip(seeds, runs, models, histories,
                                                            model_tags, strict=True):  # fmt: skip
                run.set_tags(outcome_tags(history))
                run.log_files(sorted((Path(scratch) / f"seed{seed}").iterdir()), "checkpoints")
                where = history[-1].diverged
                final = make_checkpoint(model, epoch=history[-1].epoch,
                                        metrics=history[-1].metrics(),
                                        diverged=where.as_json() if where else None,
                                        mlflow_run_id=run.run_id, **info, seed=seed)  # fmt: skip
                save_checkpoint(checkpoint_path(staging, seed), final)
                if params.tracking.log_model:  # the network as the checkpoint holds it
                    network = load_checkpoint(checkpoint_path(staging, seed))[0].eval()
                    uris.append(run.log_model(network, data.test_x[:5].cpu().numpy(),
                                              f"{variant}-seed{seed}", model_tag))  # fmt: skip
            uris = uris or [None] * len(seeds)
            record = {
                "tracking_uri": tracker.uri,
                "experiment_id": parent.experiment_id,
                "pipeline_run_id": execution,
                "parent_run_id": parent.run_id,
                "runs": {
                    str(seed): {"run_id": run.run_id, "model_uri": uri}
                    for seed, run, uri in zip(seeds, runs, uris, strict=True)
                },
            }
        by_seed = dict(zip(seeds, histories, strict=True))
        atomic_write_json(staging / paths.HISTORY_NAME, history_table(by_seed))
        atomic_write_json(staging / paths.RUNS_NAME, record)
        replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already unless something failed
    return by_seed


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    device = select_device(params.train.device)
    use_cuda_graph(params.train.cuda_graph, device)  # a bad setting fails here, not later
    configure_threads(params.train.cpu_threads)
    uri = tracking.tracking_uri(os.environ, Path.cwd())
    # MLflow (and torch.export, for log_model) load in a thread while this one
    # reads the data. A dead server, or one that refuses these credentials,
    # fails here: before any data is read.
    models = params.tracking.log_model
    tracker = tracking.Tracker(uri, params.tracking.experiment, models=models)
    digests = verified_digests(paths.RAW_DIR, params.data.verify)
    data = to_device(load_mnist(paths.RAW_DIR), device)
    out_dir = paths.MODELS_DIR / args.variant
    histories = train_variant(args.variant, params, data, digests, out_dir, tracker)
    atomic_write_json(paths.TRAIN_REPORTS_DIR / f"{args.variant}.json", summarize(histories))
    atomic_write_text(paths.TRAIN_REPORTS_DIR / f"{args.variant}.csv", plot_table(histories))


if __name__ == "__main__":
    run_stage(main)
