"""Stages `train_bn` and `train_nobn`: the same MLP with and without BatchNorm.

`python -m pipeline.train --variant bn|nobn` trains one model per seed in
`train.seeds`, logs each as an MLflow run, and writes data/models/<variant>/
(final checkpoint per seed, per-epoch history, MLflow run ids) and the DVC
metrics and plots files reports/train/<variant>.json and .csv.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import paths, tracking
from pipeline.checkpoint import checkpoint_path, make_checkpoint, save_checkpoint
from pipeline.cli import run_stage, stage_parser
from pipeline.device import configure_threads, describe_device, select_device
from pipeline.errors import PipelineError
from pipeline.files import atomic_write_json, atomic_write_text
from pipeline.history import history_table, plot_table, summarize
from pipeline.mnist import digest_mismatches, file_digests, load_mnist
from pipeline.model import VARIANTS, DeepMLP
from pipeline.params import Params, flatten, load_params
from pipeline.training import (
    DeviceData,
    EpochRecord,
    batch_starts,
    fit,
    make_optimizer,
    to_device,
)

log = logging.getLogger("train")


def verified_digests(mnist_dir: Path, verify: bool) -> dict[str, str]:
    """Digests of the files about to be trained on; refuse files that changed."""
    try:
        digests = file_digests(mnist_dir)
    except FileNotFoundError as err:
        raise PipelineError(f"{err.filename}: missing; run `dvc repro download`") from None
    problems = digest_mismatches(digests) if verify else []
    if problems:
        raise PipelineError(
            *(f"{mnist_dir}/{problem}" for problem in problems),
            "the data changed since download: restore it with `dvc checkout data/raw` "
            "or `dvc repro -f download`",
        )
    return digests


class Progress:
    """A tqdm bar per epoch with the running loss (shown on a terminal only)."""

    def __init__(self, label: str, batches: int, epochs: int) -> None:
        self.label, self.batches, self.epochs = label, batches, epochs
        self.bar: tqdm | None = None

    def __call__(self, epoch: int, done: int, loss: float) -> None:
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
    digests: dict[str, str],
    run: tracking.Run,
) -> tuple[DeepMLP, list[EpochRecord], dict]:
    """Train one model; log each epoch's metrics and checkpoint to the run.
    Returns the model, its history and its final checkpoint."""
    torch.manual_seed(seed)  # the same initial weights for both variants
    model = DeepMLP(params.model.depth, params.model.width, VARIANTS[variant])
    model.to(data.train_x.device)
    t = params.train
    optimizer = make_optimizer(model, t.lr, t.betas, t.eps, t.weight_decay)
    label = f"{variant}-seed{seed}"
    describe = {
        "variant": variant,
        "seed": seed,
        "data_sha256": digests,
        "mlflow_run_id": run.run_id,
        "device": describe_device(data.train_x.device),
        "params": {"model": params.model.model_dump(), "train": params.train.model_dump()},
    }
    checkpoints: list[dict] = []

    def on_epoch(record: EpochRecord) -> None:
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
        checkpoint = make_checkpoint(
            model, epoch=record.epoch, metrics=record.metrics(), **describe
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, f"epoch_{record.epoch:03d}.pt")
            save_checkpoint(path, checkpoint)
            run.log_file(path, "checkpoints")
        checkpoints[:] = [checkpoint]

    batches = len(batch_starts(len(data.train_x), t.batch_size))
    history = fit(
        model,
        data,
        epochs=t.epochs,
        batch_size=t.batch_size,
        optimizer=optimizer,
        generator=torch.Generator().manual_seed(seed),
        on_epoch=on_epoch,
        on_progress=Progress(label, batches, t.epochs),
    )
    return model, history, checkpoints[-1]


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    variant, out_dir = args.variant, paths.MODELS_DIR / args.variant
    device = select_device(params.train.device)
    configure_threads(params.train.cpu_threads)
    digests = verified_digests(paths.MNIST_RAW_DIR, params.data.verify)
    uri = tracking.tracking_uri(os.environ, Path.cwd())
    experiment_id = tracking.prepare_experiment(uri, params.tracking.experiment)
    execution = tracking.pipeline_run_id(os.environ)
    mnist = load_mnist(paths.RAW_DIR)
    data = to_device(
        mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels, device
    )
    logged_params = (
        flatten(params.model, "model.")
        | flatten(params.train, "train.")
        | flatten(params.tracking, "tracking.")
        | {"data.verify": params.data.verify}
    )
    histories: dict[int, list[EpochRecord]] = {}
    runs = {}
    for seed in params.train.seeds:
        name = f"{variant}-seed{seed}"
        tags = tracking.run_tags(
            variant, seed, describe_device(device), execution, os.environ, Path.cwd()
        )
        with tracking.start_run(uri, experiment_id, name, tags, logged_params) as run:
            run.log_dataset(paths.MNIST_RAW_DIR, digests)
            run.log_file(paths.DIGESTS_FILE, "data")
            model, histories[seed], checkpoint = train_seed(
                variant, seed, params, data, digests, run
            )
            save_checkpoint(checkpoint_path(out_dir, seed), checkpoint)
            model_uri = None
            if params.tracking.log_model:
                model_uri = run.log_model(model.cpu(), data.test_x[:5].cpu())
            runs[str(seed)] = {"run_id": run.run_id, "model_uri": model_uri}
    atomic_write_json(out_dir / paths.HISTORY_NAME, history_table(histories))
    atomic_write_json(
        out_dir / paths.RUNS_NAME,
        {
            "tracking_uri": uri,
            "experiment_id": experiment_id,
            "pipeline_run_id": execution,
            "runs": runs,
        },
    )
    atomic_write_json(paths.TRAIN_REPORTS_DIR / f"{variant}.json", summarize(histories))
    atomic_write_text(paths.TRAIN_REPORTS_DIR / f"{variant}.csv", plot_table(histories))


if __name__ == "__main__":
    run_stage(main)
