"""Self-describing checkpoints: a later stage rebuilds the model from the file alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.errors import PipelineError
from pipeline.files import atomic_write
from pipeline.nn.model import DeepMLP

FORMAT = "batchnorm-mnist/checkpoint/1"


def checkpoint_path(models_dir: Path, seed: int) -> Path:
    return models_dir / f"seed{seed}.pt"


def checkpoints_of(models_dir: Path) -> dict[int, Path]:
    """The final checkpoint of each seed, `seed<k>.pt`, by seed."""
    found = {int(p.stem.removeprefix("seed")): p for p in models_dir.glob("seed*.pt")}
    if not found:
        raise PipelineError(f"{models_dir}: no checkpoints; run `dvc repro train_bn train_nobn`")
    return dict(sorted(found.items()))


def make_checkpoint(model: DeepMLP, **metadata: Any) -> dict[str, Any]:
    """The model's config and CPU weights, plus whatever describes the run
    (variant, seed, epoch, params, data digests, metrics)."""
    # clone: the weights are views into one flat training buffer; save them alone
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    return {"format": FORMAT, "model_config": dict(model.config), "state_dict": state, **metadata}


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: Path) -> tuple[DeepMLP, dict[str, Any]]:
    """The model, in eval mode on the CPU, and the whole checkpoint dict."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise PipelineError(f"{path}: cannot read the checkpoint ({err}); retrain it") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise PipelineError(f"{path}: not a checkpoint of this pipeline (format {FORMAT})")
    try:
        model = model_from_checkpoint(checkpoint)
    except (KeyError, TypeError, RuntimeError) as err:
        raise PipelineError(f"{path}: inconsistent checkpoint ({err}); retrain it") from None
    return model, checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any]) -> DeepMLP:
    """A fresh model (own tensors, eval mode, CPU) with the checkpoint's weights."""
    model = DeepMLP(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
