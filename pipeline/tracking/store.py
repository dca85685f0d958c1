"""Where runs go, and what every stage asks of a store without a Tracker.

Where runs go: MLFLOW_TRACKING_URI when set (a server, or a temporary store
in tests); otherwise MLflow 3's default layout at the root of the main
repository - SQLite `mlflow.db` with artifacts in `mlruns/` - so that plain
`mlflow ui` started there shows every run. DVC sets DVC_ROOT to the main
repository also when it runs a stage in a temporary copy (`dvc exp run
--temp`, queued experiments), so runs are never lost with the copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock

from pipeline.errors import PipelineError
from pipeline.files import read_json
from pipeline.tracking import access

STORE_NAME = "mlflow.db"
ARTIFACTS_NAME = "mlruns"
SQLITE_PREFIX = "sqlite:///"


def tracking_uri(environ: Mapping[str, str], cwd: Path) -> str:
    if environ.get("MLFLOW_TRACKING_URI"):
        return environ["MLFLOW_TRACKING_URI"]
    root = Path(environ.get("DVC_ROOT") or cwd).resolve()
    return f"{SQLITE_PREFIX}{root / STORE_NAME}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, None for any other store."""
    return Path(uri.removeprefix(SQLITE_PREFIX)) if uri.startswith(SQLITE_PREFIX) else None


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_reachable(uri: str, timeout_s: float = 5) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer (the
    MLflow client would retry for minutes before giving up)."""
    if not is_server(uri):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # it answered (a proxy asking for credentials, say): reachable
    except OSError as err:
        reason = getattr(err, "reason", err)
        raise PipelineError(
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable: {reason}; "
            "start it, or unset MLFLOW_TRACKING_URI to log to ./mlflow.db"
        ) from None


def prepare_experiment(uri: str, name: str) -> str:
    """Create the store's schema and the experiment if needed; return its id.

    A SQLite store keeps its artifacts beside it, in mlruns/<experiment id>/
    (MLflow's own layout), as absolute paths: a run started in a temporary
    copy of the repository still writes them into the main one. Two
    processes creating a new SQLite store at once break each other's schema
    set-up, so that happens under a file lock.
    """
    from mlflow.exceptions import MlflowException

    check_reachable(uri)
    try:
        db = sqlite_path(uri)
        if db is None:
            return _server_experiment(uri, name)
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{db}.lock"):
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
            from mlflow.tracking import MlflowClient

            artifacts = (db.parent / ARTIFACTS_NAME).as_uri()
            if not db.exists():  # schema, and a Default experiment with absolute artifacts
                SqlAlchemyStore(uri, artifacts)
            # The client's store is the one later calls reuse: no second set-up.
            experiment = MlflowClient(uri).get_experiment_by_name(name)
            if experiment is not None:
                return experiment.experiment_id
            return SqlAlchemyStore(uri, artifacts).create_experiment(name)
    except MlflowException as err:
        raise access.explained(err, uri, f"experiment {name!r}") or PipelineError(
            f"MLflow store {uri}: {err.message}"
        ) from None


def _server_experiment(uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)  # the server decides where artifacts go
    except MlflowException:  # created meanwhile by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


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
