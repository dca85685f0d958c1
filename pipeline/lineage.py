"""Where a result came from, as its records name it: the git commit, the
pipeline execution (one `dvc repro`), the process that made it, and the
MLflow runs the train stage recorded (data/models/<variant>/mlflow_runs.json).
No MLflow here: reading these costs a stage nothing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import read_json


def pipeline_run_id(environ: Mapping[str, str]) -> str:
    """One id shared by all runs of one `dvc repro` (or `dvc exp run`).

    The stages of one pipeline execution are children of the same DVC
    process, so its pid and start time identify the execution. Outside DVC,
    each process gets its own id. PIPELINE_RUN_ID overrides both.
    """
    if environ.get("PIPELINE_RUN_ID"):
        return environ["PIPELINE_RUN_ID"]
    import psutil

    for process in psutil.Process().parents():
        with contextlib.suppress(psutil.Error):
            if _is_dvc(process.cmdline()):
                key = f"{process.pid}-{process.create_time()}"
                return hashlib.sha256(key.encode()).hexdigest()[:16]
    return uuid.uuid4().hex[:16]


def _is_dvc(cmdline: list[str]) -> bool:
    words = [Path(word).name for word in cmdline[:3]]
    return "dvc" in words


def git_commit(cwd: Path) -> str | None:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def attempt() -> str:
    """This process, as the tag `attempt` names it: "host pid 123 started 1765.25"."""
    import psutil

    started = psutil.Process().create_time()
    return f"{socket.gethostname()} pid {os.getpid()} started {started}"


def process_gone(attempt_tag: str) -> bool:
    """Whether the process an `attempt` tag names ran on this host and is
    gone (a pid reused since by another process counts as gone)."""
    import psutil

    host, _, pid, _, started = (attempt_tag.split(" ") + [""] * 5)[:5]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        return str(psutil.Process(int(pid)).create_time()) != started
    except psutil.NoSuchProcess:
        return True


def run_tags(
    variant: str,
    seed: int | None,
    device: str,
    execution: str,
    environ: Mapping[str, str],
    cwd: Path,
) -> dict[str, str]:
    """Tags of a (variant, seed) run, or of a variant's parent run (seed
    None); `execution` is the pipeline_run_id."""
    tags = {"variant": variant, "device": device, "pipeline_run_id": execution}
    if seed is not None:
        tags["seed"] = str(seed)
    commit = git_commit(cwd)
    if commit:
        tags["mlflow.source.git.commit"] = commit  # shown by the MLflow UI
    if environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = environ["DVC_EXP_NAME"]
    return tags


def recorded_runs(runs_file: Path) -> dict[int, str]:
    """Seed -> MLflow run id, as the train stage recorded them."""
    runs = read_json(runs_file, "run `dvc repro train_bn train_nobn`")["runs"]
    return {int(seed): entry["run_id"] for seed, entry in runs.items()}


def recorded_parent(runs_file: Path) -> str:
    """The MLflow run id of the variant's parent run, as the train stage recorded it."""
    record = read_json(runs_file, "run `dvc repro train_bn train_nobn`")
    if "parent_run_id" not in record:
        raise PipelineError(
            f"{runs_file}: no parent run recorded (trained by an older version of the "
            "pipeline): run `dvc repro -f train_bn train_nobn`"
        )
    return record["parent_run_id"]
