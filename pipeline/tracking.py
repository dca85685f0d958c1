"""Every MLflow call of the pipeline, in one place.

Where runs go: MLFLOW_TRACKING_URI when set (a server, or a temporary store
in tests); otherwise MLflow 3's default layout at the root of the main
repository - SQLite `mlflow.db` with artifacts in `mlruns/` - so that plain
`mlflow ui` started there shows every run. DVC sets DVC_ROOT to the main
repository also when it runs a stage in a temporary copy (`dvc exp run
--temp`, queued experiments), so runs are never lost with the copy.

The stages make these calls through a Tracker: a helper process (this
module, run as `python -m pipeline.tracking`) that imports MLflow and makes
the calls on the second core while the stage computes on the first.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import json
import logging
import os
import select
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
from typing import TYPE_CHECKING, Any, NoReturn

from filelock import FileLock

from pipeline import access, served_model
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


class Run:
    """One MLflow run, addressed by its id, so that several can be open at
    once (a variant's parent run and its seeds' runs). Open it with
    `begin_run`."""

    def __init__(self, uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri, self.run_id = uri, run_id
        self.client = MlflowClient(uri)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, epoch) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=entries)

    def log_file(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_dataset(self, source: Path, digests: dict[str, str]) -> None:
        """The data as an MLflow input: its location and a digest of the four files."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        combined = hashlib.sha256("".join(sorted(digests.values())).encode()).hexdigest()
        # MLflow stores at most 36 characters of a dataset digest.
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": it is local
            warnings.simplefilter("ignore", UserWarning)
            location = resolve_dataset_source(str(source.resolve()))
        dataset = MetaDataset(location, name="mnist", digest=combined[:32])
        context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
        self.client.log_inputs(self.run_id, [DatasetInput(dataset._to_mlflow_entity(), [context])])

    def log_model(
        self, network: torch.nn.Module, example: torch.Tensor, name: str, tags: dict[str, str]
    ) -> str:
        """Log the network (CPU, eval mode) as an MLflow model named `name`
        (pipeline/served_model.py: loads and predicts anywhere), in the run's
        experiment, with the run's params and `tags`; return its URI."""
        import mlflow
        import torch
        from mlflow.models import Model

        # A logged model belongs to the active experiment, not its run's.
        mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=served_model,
            run_id=self.run_id,
            tags=tags,
            network=network.eval(),
            input_example=example.numpy(),
            # Explicit requirements: inferring them loads the model again (seconds).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            # Checking the input example by loading the model again: tests do it.
            validate_serving_input=False,
        )
        return info.model_uri

    def end(self, status: str, reason: str | None = None) -> None:
        """End the run with `status`. With a `reason` (a failure being
        reported, in the tag `failure_reason`), a problem doing so is logged,
        never raised over the failure."""
        if reason is None:
            self.client.set_terminated(self.run_id, status)
            return
        try:
            self.client.set_tag(self.run_id, "failure_reason", reason[:5000])  # MLflow's limit
            self.client.set_terminated(self.run_id, status)
        except Exception as err:
            log.warning("could not mark the MLflow run %s: %s", status, err)


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
    except MlflowException as err:
        if access.explained(err, uri, ""):
            raise  # refused, not missing: the stage fails and says why
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


class Reply:
    """A helper's answer to one request, read when first needed."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.done = False
        self.value: Any = None
        self.error: str | None = None

    def result(self) -> Any:
        while not self.done:
            self.tracker._read_reply(wait=True)
        if self.error is not None:
            raise PipelineError(self.error)
        return self.value

    def arrived(self) -> bool:
        """Whether the answer is in, without waiting for it."""
        while not self.done and self.tracker._read_reply(wait=False):
            pass
        return self.done


class Tracker:
    """The stage's MLflow calls, made in order by a helper process
    (`python -m pipeline.tracking`).

    Importing MLflow and opening its SQL store cost about 2 s of CPU, and
    logging a model in the pt2 format another second for torch.export. On
    two cores that need not delay the stage: the helper does it on the
    second core while the stage loads data and trains on the first. Requests
    are sent as JSON lines and made in order; the few that return something
    (a run id, a model URI) give a Reply, read when its value is needed.
    The helper's messages go to the stage's stderr. If a request fails, the
    helper skips the rest and the next Reply, or `close`, raises
    PipelineError. Leaving the `with` block on an error stops the helper
    after it ended any open run (KILLED when the stage did not end it).

    On a tracking server, the constructor waits until the helper has checked
    that the server lets these credentials write to `experiment`
    (pipeline/access.py): a refused login fails the stage before it reads
    any data, and leaves no run. That wait (MLflow's import, ~2 s) is only
    paid with a server; a local store has no logins.
    """

    def __init__(self, uri: str, experiment: str) -> None:
        check_reachable(uri)  # a dead server fails the stage now, not the helper later
        self.uri = uri
        self.pending: list[Reply] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.tracking"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.closed = False
        self.opened_run = False  # whether the helper may have a run to end
        self.handles = itertools.count()
        # The replies are read from the pipe's descriptor into this buffer,
        # never through the text wrapper, whose own buffer select() cannot see.
        self.received = b""
        self._send("open", uri=uri)
        if is_server(uri):
            try:
                self._ask("check_access", experiment=experiment).result()
            except BaseException:
                self._stop()
                raise

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type | None, *rest: object) -> None:
        if kind is None:
            self.close()
            return
        self._stop()

    def _stop(self) -> None:
        """Stop the helper after an error, once it ended any open run."""
        if not self.opened_run:  # nothing to end: do not wait for its imports
            self.process.kill()
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # the helper ends an open run, then exits
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _send(self, op: str, **request: Any) -> None:
        """A request whose only answer is success (checked by a later Reply)."""
        try:
            self.process.stdin.write(json.dumps({"op": op, **request}) + "\n")
            self.process.stdin.flush()
        except OSError:  # the helper is gone
            self._failed()

    def _ask(self, op: str, **request: Any) -> Reply:
        """A request the helper answers (REPLIES)."""
        self._send(op, **request)
        answer = Reply(self)
        self.pending.append(answer)
        return answer

    def _read_reply(self, wait: bool) -> bool:
        """Read the oldest pending Reply's answer; without `wait`, only if it
        is already there. Whether one was read."""
        line = self._read_line(wait)
        if line is None:
            return False
        answer = json.loads(line)
        oldest = self.pending.pop(0)
        oldest.value, oldest.error = answer.get("result"), answer.get("error")
        oldest.done = True
        return True

    def _read_line(self, wait: bool) -> bytes | None:
        fd = self.process.stdout.fileno()
        while b"\n" not in self.received:
            if not wait and not select.select([fd], [], [], 0)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self._failed()
            self.received += chunk
        line, _, self.received = self.received.partition(b"\n")
        return line

    def _read_rest(self) -> bytes:
        fd, rest = self.process.stdout.fileno(), self.received
        while chunk := os.read(fd, 1 << 16):
            rest += chunk
        self.received = b""
        return rest

    def _failed(self) -> NoReturn:
        status = self.process.wait()
        raise PipelineError(
            f"the MLflow helper for {self.uri} stopped (exit status {status}); see above"
        )

    def close(self) -> None:
        """Wait until every request was made; PipelineError if one failed."""
        if self.closed:
            return
        self.closed = True
        for answer in list(self.pending):
            answer.result()
        self.process.stdin.close()
        rest = self._read_rest()
        if self.process.wait() != 0 or rest.strip():
            message = json.loads(rest).get("error") if rest.strip() else None
            raise PipelineError(message or f"the MLflow helper for {self.uri} failed")

    def caught_up(self) -> Reply:
        """A Reply that arrives once the helper has made every request sent
        so far: `arrived()` tells, without waiting, whether it is idle."""
        return self._ask("sync")

    def prepare_model_logging(self) -> None:
        """Have the helper load what RemoteRun.log_model needs (about 2 s),
        so that logging the final model does not wait for it. Send it after
        the first run started: the stage waits for that run's id."""
        self._send("prepare_model_logging")

    def log_to_run(
        self,
        run_id: str,
        *,
        metrics: dict[str, float] | None = None,
        dicts: dict[str, Any] | None = None,
        files: Sequence[Path] = (),
        folder: str | None = None,
    ) -> Reply:
        """`log_to_run(uri, run_id, ...)`; the Reply says whether the run was there."""
        paths = [str(Path(f).resolve()) for f in files]
        return self._ask("log_to_run", run_id=run_id, metrics=metrics,
                          dicts=dicts, files=paths, folder=folder)  # fmt: skip

    @contextlib.contextmanager
    def run(
        self,
        experiment: str,
        name: str,
        tags: dict[str, str],
        params: dict[str, Any],
        parent: RemoteRun | None = None,
    ) -> Iterator[RemoteRun]:
        """A run in `experiment` (by name, created if needed), nested under
        `parent` if given, opened and ended as start_run does: FINISHED,
        KILLED when interrupted, FAILED with the tag `failure_reason`
        otherwise. Several can be open at once."""
        logged = {key: str(value) for key, value in params.items()}
        self.opened_run = True
        handle = f"run{next(self.handles)}"  # how requests name the run before its id is known
        started = self._ask("start_run", run=handle, experiment=experiment, name=name, tags=tags,
                            params=logged, parent=parent.handle if parent else None)  # fmt: skip
        run = RemoteRun(self, handle, started)
        try:
            yield run
        except KeyboardInterrupt:
            run.end("KILLED", "interrupted")
            raise
        except BaseException as err:
            run.end("FAILED", str(err) or type(err).__name__)
            raise
        run.end("FINISHED")


class RemoteRun:
    """A run opened through a Tracker; the same methods as Run."""

    def __init__(self, tracker: Tracker, handle: str, started: Reply) -> None:
        self.tracker, self.handle, self.started = tracker, handle, started

    @property
    def run_id(self) -> str:
        return self.started.result()["run_id"]

    @property
    def experiment_id(self) -> str:
        return self.started.result()["experiment_id"]

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker._send("log_epoch", run=self.handle, epoch=epoch, metrics=metrics)

    def log_file(self, path: Path, folder: str) -> None:
        """Log a file; it must stay where it is until the tracker is closed."""
        self.tracker._send("log_file", run=self.handle, path=str(path.resolve()), folder=folder)

    def log_dataset(self, source: Path, digests: dict[str, str]) -> None:
        self.tracker._send("log_dataset", run=self.handle, source=str(source.resolve()),
                           digests=digests)  # fmt: skip

    def log_model(
        self, checkpoint: Path, example: torch.Tensor, name: str, tags: dict[str, str]
    ) -> Reply:
        """Log the checkpoint's model (see Run.log_model); the Reply is its URI.
        The checkpoint must stay where it is until the Reply is read."""
        return self.tracker._ask("log_model", run=self.handle,
                                  checkpoint=str(checkpoint.resolve()),
                                  example=example.tolist(), name=name, tags=tags)  # fmt: skip

    def end(self, status: str, reason: str | None = None) -> None:
        """End the run (and wait for every request made before); when
        reporting a failure, never raise over it."""
        request = {"run": self.handle, "status": status, "reason": reason}
        if status == "FINISHED":
            self.tracker._ask("end_run", **request).result()
            return
        try:
            self.tracker._ask("end_run", **request).result()
        except PipelineError as err:
            log.warning("could not mark the MLflow run %s: %s", status, err)


class _Helper:
    """The Tracker's helper: one MLflow store, the runs the stage opened."""

    def __init__(self) -> None:
        self.uri = ""
        self.experiment: str | None = None  # the stage's, once checked
        self.runs: dict[str, Run] = {}  # open runs by the stage's handle, oldest first
        self.experiments: dict[str, str] = {}  # name -> id, looked up once
        self.failure: str | None = None  # after one, requests are skipped

    def open(self, uri: str) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.uri = uri
        mlflow.set_tracking_uri(uri)  # log_model's own client
        db = sqlite_path(uri)
        if db is None or db.exists():  # never created here: prepare_experiment does that
            with contextlib.suppress(MlflowException):
                _ = MlflowClient(uri)._tracking_client.store  # later clients reuse it

    def check_access(self, experiment: str) -> None:
        found = access.check_access(self.uri, experiment)
        # Created now if new: a server that refuses that, too, refuses before any data is read.
        self.experiments[experiment] = found or prepare_experiment(self.uri, experiment)
        self.experiment = experiment

    def prepare_model_logging(self) -> None:
        # Both are private and only save time: a change in torch or MLflow
        # makes the first log_model slower, not wrong.
        with contextlib.suppress(Exception):
            import torch.export._trace  # noqa: F401 - export's tracer: torch._dynamo, ~1 s
        import mlflow.pytorch  # noqa: F401
        from mlflow.utils import requirements_utils

        # log_model checks the pinned requirements against the installed
        # packages; the map of those it builds on first use takes ~0.6 s.
        with contextlib.suppress(Exception):
            requirements_utils._init_packages_to_modules_map()

        from pipeline import checkpoint  # noqa: F401

    def start_run(
        self, run: str, experiment: str, name: str, tags: dict, params: dict, parent: str | None
    ) -> dict:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        if experiment not in self.experiments:
            self.experiments[experiment] = prepare_experiment(self.uri, experiment)
        experiment_id = self.experiments[experiment]
        if parent is not None:
            tags = tags | {MLFLOW_PARENT_RUN_ID: self._open_run(parent).run_id}
        self.runs[run] = begin_run(self.uri, experiment_id, name, tags, params)
        return {"run_id": self.runs[run].run_id, "experiment_id": experiment_id}

    def log_epoch(self, run: str, epoch: int, metrics: dict[str, float]) -> None:
        self._open_run(run).log_epoch(epoch, metrics)

    def log_file(self, run: str, path: str, folder: str) -> None:
        self._open_run(run).log_file(Path(path), folder)

    def log_dataset(self, run: str, source: str, digests: dict[str, str]) -> None:
        self._open_run(run).log_dataset(Path(source), digests)

    def log_model(self, run: str, checkpoint: str, example: list, name: str, tags: dict) -> str:
        import torch

        from pipeline.checkpoint import load_checkpoint

        model, _ = load_checkpoint(Path(checkpoint))
        example_tensor = torch.tensor(example, dtype=torch.float32)
        return self._open_run(run).log_model(model, example_tensor, name, tags)

    def end_run(self, run: str, status: str, reason: str | None) -> None:
        self._open_run(run)
        self.runs.pop(run).end(status, reason)

    def sync(self) -> None:
        """Nothing: its answer says that every earlier request was made."""

    def end_open_runs(self) -> None:
        """At the end of stdin: end the runs left open, nested ones first,
        FAILED after an error of ours, KILLED otherwise (the stage died)."""
        reason = self.failure or "the stage stopped before ending its run"
        for run in reversed(list(self.runs.values())):
            with contextlib.suppress(Exception):
                run.end("FAILED" if self.failure else "KILLED", reason)
        self.runs.clear()

    def log_to_run(self, run_id: str, metrics, dicts, files: list[str], folder) -> bool:
        return log_to_run(self.uri, run_id, metrics=metrics, dicts=dicts,
                          files=[Path(f) for f in files], folder=folder)  # fmt: skip

    def describe(self, op: str, err: Exception, request: dict[str, Any]) -> str:
        """The one line that reports a failed request."""
        from mlflow.exceptions import MlflowException

        if isinstance(err, PipelineError):
            return str(err)
        if isinstance(err, MlflowException):
            if op == "log_to_run":  # a recorded run, perhaps of another experiment
                what = f"the experiment of run {request['run_id']}"
            else:  # the stage's runs are all in its experiment
                what = f"experiment {request.get('experiment') or self.experiment!r}"
            refusal = access.explained(err, self.uri, what)
            return str(refusal) if refusal else f"MLflow ({op}): {err.message}"
        return f"MLflow ({op}): {err}"

    def _open_run(self, run: str) -> Run:
        if run not in self.runs:
            raise PipelineError(f"no MLflow run {run} is open")
        return self.runs[run]


REPLIES = {"check_access", "start_run", "log_model", "end_run", "log_to_run", "sync"}


def _serve(stdin: Any = sys.stdin, stdout: Any = sys.stdout) -> int:
    """The Tracker's helper: make each request read from stdin, in order;
    answer those in REPLIES on stdout. After a failed request the rest are
    skipped and answered with its error. At the end of stdin, runs left open
    end FAILED (after such an error) or KILLED (the stage died)."""
    # Ctrl-C in a terminal reaches the whole process group: the stage decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from mlflow.exceptions import MlflowException

    helper = _Helper()

    def answer(message: dict) -> None:
        print(json.dumps(message), file=stdout, flush=True)

    for line in iter(stdin.readline, ""):
        request = json.loads(line)
        op = request.pop("op")
        if helper.failure is None:
            try:
                result = getattr(helper, op)(**request)
            except (MlflowException, PipelineError, OSError) as err:
                helper.failure = helper.describe(op, err, request)
                if op != "check_access":  # the stage reports that one itself, at once
                    print(helper.failure, file=sys.stderr)
        if op in REPLIES:
            answer({"error": helper.failure} if helper.failure else {"result": result})
    helper.end_open_runs()
    if helper.failure:
        answer({"error": helper.failure})
        return 1
    return 0


def begin_run(
    uri: str, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, Any]
) -> Run:
    """Open a run with tags and params; MLflow's own tags (user, source,
    git commit) are added as its fluent start_run adds them."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.context.registry import resolve_tags

    created = MlflowClient(uri).create_run(experiment_id, tags=resolve_tags(tags), run_name=name)
    run = Run(uri, created.info.run_id)
    try:
        run.client.log_batch(run.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    except BaseException as err:
        run.end("FAILED", str(err) or type(err).__name__)
        raise
    return run


@contextlib.contextmanager
def start_run(
    uri: str, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, Any]
) -> Iterator[Run]:
    """Open a run in this process. It ends FINISHED; KILLED when interrupted
    (Ctrl-C, SIGTERM); FAILED otherwise, with the reason in the tag
    `failure_reason`. No run is left RUNNING. (Stages use Tracker.run, the
    same in a helper process.)"""
    run = begin_run(uri, experiment_id, name, tags, params)
    try:
        yield run
    except KeyboardInterrupt:
        run.end("KILLED", "interrupted")
        raise
    except BaseException as err:
        run.end("FAILED", str(err) or type(err).__name__)
        raise
    run.end("FINISHED")


if __name__ == "__main__":
    from pipeline.cli import configure_logging

    configure_logging()
    # Replies get stdout to themselves: whatever else prints there (MLflow
    # announces each run it ends) goes to stderr with the other messages.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    status = _serve(sys.stdin, replies)
    gc.freeze()  # as run_stage does: no last collection at exit
    sys.exit(status)
