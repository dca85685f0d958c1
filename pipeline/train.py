"""Stages `train_bn` and `train_nobn`: the same MLP with and without BatchNorm.

`python -m pipeline.train --variant bn|nobn` trains one model per seed in
`train.seeds`, logs each as an MLflow run, and writes data/models/<variant>/
(final checkpoint per seed, per-epoch history, MLflow run ids) and the DVC
metrics and plots files reports/train/<variant>.json and .csv.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import paths, tracking
from pipeline.checkpoint import (
    checkpoint_path,
    make_checkpoint,
    save_checkpoint,
)
from pipeline.cli import raise_if_interrupted, run_stage, stage_parser
from pipeline.device import configure_threads, describe_device, select_device, use_cuda_graph
from pipeline.errors import PipelineError
from pipeline.files import (
    atomic_write_json,
    atomic_write_text,
    read_json,
    replace_dir,
    staging_dir,
)
from pipeline.history import history_table, plot_table, summarize
from pipeline.mnist import digest_mismatches, file_digests, load_mnist
from pipeline.model import VARIANTS, DeepMLP
from pipeline.params import Params, flatten, load_params
from pipeline.training import (
    DeviceData,
    Diverged,
    EpochRecord,
    batch_starts,
    fit,
    make_optimizer,
    to_device,
)

log = logging.getLogger("train")


def verified_digests(raw_dir: Path, verify: bool) -> dict[str, str]:
    """Digests of the files about to be trained on. Refuses files that differ
    from what download recorded (truncated, edited, swapped), and, with
    data.verify, anything that is not MNIST as published."""
    mnist_dir = raw_dir / paths.MNIST_SUBDIR
    recorded = read_json(raw_dir / paths.DIGESTS_NAME, "run `dvc repro download`")["sha256"]
    try:
        digests = file_digests(mnist_dir)
    except FileNotFoundError as err:
        raise PipelineError(f"{err.filename}: missing; run `dvc repro download`") from None
    problems = [
        f"{mnist_dir / name}: SHA-256 {digest} differs from {recorded.get(name)} recorded at "
        "download (the file was changed or truncated)"
        for name, digest in digests.items()
        if digest != recorded.get(name)
    ]
    if verify and not problems:
        problems = [f"{mnist_dir}/{problem}" for problem in digest_mismatches(digests)]
    if problems:
        raise PipelineError(
            *problems,
            "training refuses this data: restore it with `dvc checkout data/raw` "
            "or `dvc repro -f download`",
        )
    return digests


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


def train_seed(
    variant: str,
    seed: int,
    params: Params,
    data: DeviceData,
    info: dict,
    run: tracking.RemoteRun,
    scratch: Path,
) -> tuple[DeepMLP, list[EpochRecord]]:
    """Train one model; log each epoch's metrics and checkpoint (carrying
    `info` and the run id) to the run. The checkpoints are written to
    `scratch`, which must outlive the run (the tracker logs them later).
    Returns the model and its history."""
    torch.manual_seed(seed)  # the same initial weights for both variants
    model = DeepMLP(params.model.depth, params.model.width, VARIANTS[variant])
    model.to(data.train_x.device)
    t = params.train
    graph = use_cuda_graph(t.cuda_graph, data.train_x.device)
    optimizer = make_optimizer(model, t.lr, t.betas, t.eps, t.weight_decay, capturable=graph)
    label = f"{variant}-seed{seed}"

    def on_epoch(record: EpochRecord) -> None:
        raise_if_interrupted()
        log.info(
            "%s epoch %d/%d: train_loss %.4f test_loss %.4f test_accuracy %.2f%% (%.1f s)",
            label,
            record.epoch,
            t.epochs,
            record.train_loss,
            record.test_loss,
            100 * record.test_accuracy,
            record.epoch_seconds,
        )
        run.log_epoch(record.epoch, record.metrics())
        path = scratch / f"epoch_{record.epoch:03d}.pt"
        save_checkpoint(path, make_checkpoint(model, epoch=record.epoch, metrics=record.metrics(),
                                              mlflow_run_id=run.run_id, **info))  # fmt: skip
        run.log_file(path, "checkpoints")

    batches = len(batch_starts(len(data.train_x), t.batch_size))
    try:
        history = fit(
            model,
            data,
            epochs=t.epochs,
            batch_size=t.batch_size,
            optimizer=optimizer,
            generator=torch.Generator().manual_seed(seed),
            on_epoch=on_epoch,
            on_progress=Progress(label, batches, t.epochs),
            cuda_graph=graph,
        )
    except Diverged as err:
        raise PipelineError(
            f"{label}: training diverged: the loss became {err.value} at epoch {err.epoch}, "
            f"batch {err.batch} of {batches}; lower train.lr (now {t.lr:g}; the seed "
            "experiment uses 0.001) and run again"
        ) from None
    return model, history


def train_variant(
    variant: str,
    params: Params,
    data: DeviceData,
    digests: dict[str, str],
    out_dir: Path,
    tracker: tracking.Tracker,
) -> dict[int, list[EpochRecord]]:
    """Train every seed, one MLflow run each (through `tracker`); build
    out_dir in a staging folder and swap it in at the end, so a failure
    leaves no partial set of models."""
    execution = tracking.pipeline_run_id(os.environ)
    device = describe_device(data.train_x.device)
    logged_params = (
        flatten(params.model, "model.")
        | flatten(params.train, "train.")
        | flatten(params.tracking, "tracking.")
        | {"data.verify": params.data.verify}
    )
    info = {  # what each checkpoint says about how it was made
        "variant": variant,
        "data_sha256": digests,
        "git_commit": tracking.git_commit(Path.cwd()),
        "device": device,
        "params": {
            "model": params.model.model_dump(),
            "train": params.train.model_dump(),
            "data": {"verify": params.data.verify},
        },
    }
    staging = staging_dir(out_dir)
    histories: dict[int, list[EpochRecord]] = {}
    runs = {}
    experiment_id = None
    try:
        for seed in params.train.seeds:
            tags = tracking.run_tags(variant, seed, device, execution, os.environ, Path.cwd())
            name = f"{variant}-seed{seed}"
            # The epoch checkpoints stay until the run has ended: the
            # tracker's helper logs them after we moved on.
            with (
                tempfile.TemporaryDirectory() as scratch,
                tracker.run(params.tracking.experiment, name, tags, logged_params) as run,
            ):
                if params.tracking.log_model and seed == params.train.seeds[0]:
                    tracker.prepare_model_logging()
                run.log_dataset(paths.MNIST_RAW_DIR, digests)
                run.log_file(paths.DIGESTS_FILE, "data")
                seed_info = info | {"seed": seed}
                model, history = train_seed(
                    variant, seed, params, data, seed_info, run, Path(scratch)
                )
                final = make_checkpoint(model, epoch=history[-1].epoch,
                                        metrics=history[-1].metrics(),
                                        mlflow_run_id=run.run_id, **seed_info)  # fmt: skip
                save_checkpoint(checkpoint_path(staging, seed), final)
                logged = None
                if params.tracking.log_model:  # from the file: read before staging moves
                    logged = run.log_model(checkpoint_path(staging, seed), data.test_x[:5].cpu())
                histories[seed] = history
                model_uri = logged.result() if logged else None
                runs[str(seed)] = {"run_id": run.run_id, "model_uri": model_uri}
                experiment_id = run.experiment_id
        atomic_write_json(staging / paths.HISTORY_NAME, history_table(histories))
        record = {"tracking_uri": tracker.uri, "experiment_id": experiment_id,
                  "pipeline_run_id": execution, "runs": runs}  # fmt: skip
        atomic_write_json(staging / paths.RUNS_NAME, record)
        replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already unless something failed
    return histories


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    device = select_device(params.train.device)
    use_cuda_graph(params.train.cuda_graph, device)  # a bad setting fails here, not later
    configure_threads(params.train.cpu_threads)
    uri = tracking.tracking_uri(os.environ, Path.cwd())
    # MLflow (and torch.export, for log_model) load in the tracker's helper
    # process while this one reads the data and trains. A dead server fails here.
    with tracking.Tracker(uri) as tracker:
        digests = verified_digests(paths.RAW_DIR, params.data.verify)
        data = to_device(load_mnist(paths.RAW_DIR), device)
        out_dir = paths.MODELS_DIR / args.variant
        histories = train_variant(args.variant, params, data, digests, out_dir, tracker)
    atomic_write_json(paths.TRAIN_REPORTS_DIR / f"{args.variant}.json", summarize(histories))
    atomic_write_text(paths.TRAIN_REPORTS_DIR / f"{args.variant}.csv", plot_table(histories))


if __name__ == "__main__":
    run_stage(main)
