"""Every MLflow call of the pipeline, in one place.

Where runs go: MLFLOW_TRACKING_URI when set (a server, or a temporary store
in tests); otherwise MLflow 3's default layout at the root of the main
repository - SQLite `mlflow.db` with artifacts in `mlruns/` - so that plain
`mlflow ui` started there shows every run. DVC sets DVC_ROOT to the main
repository also when it runs a stage in a temporary copy (`dvc exp run
--temp`, queued experiments), so runs are never lost with the copy.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from pipeline.errors import PipelineError
from pipeline.files import read_json

if TYPE_CHECKING:
    import torch

log = logging.getLogger("tracking")

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


def check_reachable(uri: str, timeout_s: float = 5) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer (the
    MLflow client would retry for minutes before giving up)."""
    if not uri.startswith(("http://", "https://")):
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
        raise PipelineError(f"MLflow store {uri}: {err.message}") from None


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
    variant: str, seed: int, device: str, execution: str, environ: Mapping[str, str], cwd: Path
) -> dict[str, str]:
    """Tags of a (variant, seed) run; `execution` is the pipeline_run_id."""
    tags = {"variant": variant, "seed": str(seed), "device": device, "pipeline_run_id": execution}
    commit = git_commit(cwd)
    if commit:
        tags["mlflow.source.git.commit"] = commit  # shown by the MLflow UI
    if environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = environ["DVC_EXP_NAME"]
    return tags


class Run:
    """One MLflow run: a (variant, seed) training. Use through `start_run`."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics(metrics, step=epoch, run_id=self.run_id)

    def log_file(self, path: Path, folder: str) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=folder, run_id=self.run_id)

    def log_dataset(self, source: Path, digests: dict[str, str]) -> None:
        """The data as an MLflow input: its location and a digest of the four files."""
        import mlflow
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        combined = hashlib.sha256("".join(sorted(digests.values())).encode()).hexdigest()
        # MLflow stores at most 36 characters of a dataset digest.
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": it is local
            warnings.simplefilter("ignore", UserWarning)
            location = resolve_dataset_source(str(source.resolve()))
        dataset = MetaDataset(location, name="mnist", digest=combined[:32])
        mlflow.log_input(dataset, context="training")

    def log_model(self, model: torch.nn.Module, example: torch.Tensor) -> str:
        """Log the model (MLflow 3's pt2 format) with its signature; return its URI."""
        import mlflow
        import torch
        from mlflow.models import infer_signature

        model.eval()
        with torch.no_grad():
            output = model(example).numpy()
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example.numpy(),
            signature=infer_signature(example.numpy(), output),
            # Explicit requirements: inferring them costs seconds per model.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        return info.model_uri


def recorded_runs(runs_file: Path) -> dict[int, str]:
    """Seed -> MLflow run id, as the train stage recorded them."""
    runs = read_json(runs_file, "run `dvc repro train_bn train_nobn`")["runs"]
    return {int(seed): entry["run_id"] for seed, entry in runs.items()}


def log_to_run(
    uri: str,
    run_id: str,
    *,
    metrics: dict[str, float] | None = None,
    dicts: dict[str, Any] | None = None,
    files: Sequence[Path] = (),
    folder: str | None = None,
) -> bool:
    """Add metrics, JSON artifacts and files to a finished run, leaving it
    finished. False (and a warning) when the store does not have the run,
    e.g. models pulled from a DVC remote that were trained elsewhere."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is not None and not db.exists():
        log.warning("no MLflow store at %s: run %s not updated", db, run_id)
        return False
    client = MlflowClient(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        log.warning("MLflow run %s is not in %s: not updated", run_id, uri)
        return False
    now = int(time.time() * 1000)
    if metrics:
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    for name, content in (dicts or {}).items():
        client.log_dict(run_id, content, name)
    for path in files:
        client.log_artifact(run_id, str(path), folder)
    return True


class LogLater:
    """log_to_run calls made by a helper process (`python -m pipeline.tracking`).

    Importing MLflow and opening its SQL store cost about 2 s of CPU.
    evaluate and visualize only log at their end, so they start the helper
    first: it imports MLflow on the second core while the stage works, then
    makes the calls queued with `log_to_run`, in order, when `finish` sends
    them. Its messages go to the stage's stderr. Leaving the `with` block
    without `finish` (an error, Ctrl-C) stops the helper, which until then
    has only read from the store.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.requests: list[dict[str, Any]] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.tracking"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        # The store first, so that the helper opens it while the stage works.
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(uri) + "\n")
        self.process.stdin.flush()

    def __enter__(self) -> LogLater:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()  # reap it and close the pipes

    def log_to_run(
        self,
        run_id: str,
        *,
        metrics: dict[str, float] | None = None,
        dicts: dict[str, Any] | None = None,
        files: Sequence[Path] = (),
        folder: str | None = None,
    ) -> None:
        """Queue `log_to_run(uri, run_id, ...)` for `finish`."""
        paths = [str(Path(f).resolve()) for f in files]
        request = {"run_id": run_id, "metrics": metrics, "dicts": dicts, "files": paths}
        self.requests.append(request | {"folder": folder})

    def finish(self) -> list[bool]:
        """Make the queued calls; their results, or PipelineError if the helper failed."""
        out, _ = self.process.communicate(json.dumps(self.requests))
        if self.process.returncode != 0:
            raise PipelineError(
                f"logging to the MLflow store {self.uri} failed "
                f"(helper exit status {self.process.returncode}); see the messages above"
            )
        return json.loads(out)


def _serve(stdin: Any = sys.stdin, stdout: Any = sys.stdout) -> int:
    """The LogLater helper. Reads the store's URI, imports MLflow and opens
    the store if it exists, then reads the calls (none: the stage gave up),
    makes them and prints their results."""
    # Ctrl-C in a terminal reaches the whole process group: the stage decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    uri = json.loads(stdin.readline() or "null")
    if not uri:
        return 0
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is None or db.exists():  # never create a store here; log_to_run warns
        with contextlib.suppress(MlflowException):
            _ = MlflowClient(uri)._tracking_client.store  # later clients reuse it
    text = stdin.read()
    if not text:
        return 0
    try:
        results = [
            log_to_run(
                uri,
                r["run_id"],
                metrics=r["metrics"],
                dicts=r["dicts"],
                files=[Path(f) for f in r["files"]],
                folder=r["folder"],
            )
            for r in json.loads(text)
        ]
    except (MlflowException, OSError) as err:
        print(f"MLflow store {uri}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(results), file=stdout, flush=True)
    return 0


@contextlib.contextmanager
def start_run(
    uri: str, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, Any]
) -> Iterator[Run]:
    """Open a run. It ends FINISHED; KILLED when interrupted (Ctrl-C, SIGTERM);
    FAILED otherwise, with the reason in the tag `failure_reason`. No run is
    left RUNNING."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    active = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags)
    try:
        mlflow.log_params({key: str(value) for key, value in params.items()})
        yield Run(active.info.run_id)
    except KeyboardInterrupt:
        _end(mlflow, "KILLED", "interrupted")
        raise
    except BaseException as err:
        _end(mlflow, "FAILED", str(err) or type(err).__name__)
        raise
    mlflow.end_run("FINISHED")


def _end(mlflow: Any, status: str, reason: str) -> None:
    """Close the active run with `status`; a problem doing so is logged, never
    raised over the failure being reported."""
    try:
        mlflow.set_tag("failure_reason", reason[:5000])  # MLflow's limit for a tag value
        mlflow.end_run(status)
    except Exception as err:
        log.warning("could not mark the MLflow run %s: %s", status, err)


if __name__ == "__main__":
    from pipeline.cli import configure_logging

    configure_logging()
    status = _serve()
    gc.freeze()  # as run_stage does: no last collection at exit
    sys.exit(status)
