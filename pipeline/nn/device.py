"""Choosing the training device, once, at a stage's edge, and its CPU threads."""

from __future__ import annotations

import torch

from pipeline.errors import ParamsError


def select_device(requested: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must exist."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name, ok in available.items() if ok))
    if not available[requested]:
        raise ParamsError(
            f"params.yaml: train.device = {requested}: no {requested} device on this machine; "
            "use auto or cpu"
        )
    return torch.device(requested)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads > 1 else ''})"
    return device.type


def use_cuda_graph(setting: str | bool, device: torch.device) -> bool:
    """train.cuda_graph: `auto` is on exactly for CUDA; `true` needs CUDA."""
    if setting is True and device.type != "cuda":
        raise ParamsError(
            f"params.yaml: train.cuda_graph = true: needs a CUDA device, training runs on "
            f"{device.type}; use auto or false"
        )
    return device.type == "cuda" and setting in ("auto", True)


def configure_threads(cpu_threads: int) -> None:
    """train.cpu_threads: 0 keeps torch's default (one thread per core)."""
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
