"""Where runs go, and what every stage asks of a store without a Tracker.

Where runs go: MLFLOW_TRACKING_URI when set (a server, or a temporary store
in tests); otherwise MLflow 3's default layout at the root of the main
repository - SQLite `mlflow.db` with artifacts in `mlruns/` - so that plain
`mlflow ui` started there shows every run. DVC sets DVC_ROOT to the main
repository also when it runs a stage in a temporary copy (`dvc exp run
--temp`, queued experiments), so runs are never lost with the copy.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock

from pipeline.errors import PipelineError
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
