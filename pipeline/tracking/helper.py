"""The Tracker's helper process (`python -m pipeline.tracking`): every MLflow
call a stage makes, each written once, as a method of Helper.

The stage's Tracker (tracker.py) pickles each call to the helper's stdin:
first (uri, experiment), then (method, args, kwargs). `serve` makes them in
order and answers each on the helper's stdout: (result, failure or None).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import inspect
import logging
import os
import pickle
import signal
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.cli import configure_logging
from pipeline.errors import PipelineError
from pipeline.tracking import access, served_model
from pipeline.tracking.store import prepare_experiment, sqlite_path

if TYPE_CHECKING:
    import numpy as np
    from mlflow.tracking import MlflowClient

log = logging.getLogger("tracking")


class Helper:
    """One MLflow store, and the runs the stage opened in it, by handle (so
    that several are open at once: a variant's parent run and its seeds').
    Each public method is a request the stage makes through its Tracker;
    those that take a `handle` first, through the run's RemoteRun."""

    def __init__(self, uri: str, experiment: str) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        self.uri, self.experiment = uri, experiment  # the stage's experiment
        self.experiments: dict[str, str] = {}  # name -> id, looked up once
        self.runs: dict[int, tuple[str, str]] = {}  # handle -> run and experiment id, oldest first
        mlflow.set_tracking_uri(uri)  # log_model's own client
        db = sqlite_path(uri)
        if db is None or db.exists():  # never created here: prepare_experiment does that
            with contextlib.suppress(MlflowException):
                _ = self.client  # opens the store now, while the stage loads its data

    @functools.cached_property
    def client(self) -> MlflowClient:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def check_access(self) -> None:
        """Fail unless the server lets these credentials write to the stage's
        experiment (access.py); created now if new, so that a server that
        refuses that, too, refuses before the stage reads any data."""
        found = access.check_access(self.uri, self.experiment)
        self.experiments[self.experiment] = found or prepare_experiment(self.uri, self.experiment)

    def prepare_model_logging(self) -> None:
        """Load what log_model needs (about 2 s), so that logging the final
        model does not wait for it."""
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

        from pipeline.nn import checkpoint  # noqa: F401

    def start_run(
        self,
        handle: int,
        experiment: str,
        name: str,
        tags: dict[str, str],
        params: dict[str, Any],
        parent: int | None,
    ) -> tuple[str, str]:
        """Open a run as `handle` in `experiment` (by name, created if needed),
        nested under the run `parent` if given, with tags and params; MLflow's
        own tags (user, source, git commit) are added as its fluent start_run
        adds them. Returns (run id, experiment id)."""
        from mlflow.entities import Param
        from mlflow.tracking.context.registry import resolve_tags
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        if experiment not in self.experiments:
            self.experiments[experiment] = prepare_experiment(self.uri, experiment)
        if parent is not None:
            tags = tags | {MLFLOW_PARENT_RUN_ID: self._run_id(parent)}
        created = self.client.create_run(
            self.experiments[experiment], tags=resolve_tags(tags), run_name=name
        )
        self.runs[handle] = created.info.run_id, self.experiments[experiment]
        params_logged = [Param(key, str(value)) for key, value in params.items()]
        self.client.log_batch(created.info.run_id, params=params_logged)
        return self.runs[handle]

    def log_epoch(self, handle: int, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, epoch) for key, value in metrics.items()]
        self.client.log_batch(self._run_id(handle), metrics=entries)

    def set_tags(self, handle: int, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self._run_id(handle), tags=[RunTag(k, v) for k, v in tags.items()])

    def log_file(self, handle: int, path: Path, folder: str) -> None:
        """Log a file; it must stay where it is until the tracker is closed."""
        self.client.log_artifact(self._run_id(handle), str(path), folder)

    def log_dataset(self, handle: int, source: Path, digests: dict[str, str]) -> None:
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
        inputs = [DatasetInput(dataset._to_mlflow_entity(), [context])]
        self.client.log_inputs(self._run_id(handle), inputs)

    def log_model(
        self, handle: int, checkpoint: Path, example: np.ndarray, name: str, tags: dict[str, str]
    ) -> str:
        """Log the checkpoint's network (CPU, eval mode) as an MLflow model
        named `name` (served_model.py: loads and predicts anywhere) in the
        run's experiment, with `tags` and an input example (N, 784); return
        its URI. The checkpoint must stay where it is until then."""
        import mlflow
        import torch
        from mlflow.models import Model

        from pipeline.nn.checkpoint import load_checkpoint

        network, _ = load_checkpoint(checkpoint)
        mlflow.set_experiment(experiment_id=self.runs[handle][1])  # a model's is the active one
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=served_model,
            run_id=self._run_id(handle),
            tags=tags,
            network=network.eval(),
            input_example=example,
            # Explicit requirements: inferring them loads the model again (seconds).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            # Checking the input example by loading the model again: tests do it.
            validate_serving_input=False,
        ).model_uri

    def end_run(self, handle: int, status: str, reason: str | None = None) -> None:
        """End the run with `status`. With a `reason` (a failure being
        reported, in the tag `failure_reason`), a problem doing so is logged,
        never raised over the failure."""
        run_id = self._run_id(handle)
        del self.runs[handle]
        if reason is None:
            self.client.set_terminated(run_id, status)
            return
        try:
            self.client.set_tag(run_id, "failure_reason", reason[:5000])  # MLflow's limit
            self.client.set_terminated(run_id, status)
        except Exception as err:
            log.warning("could not mark the MLflow run %s: %s", status, err)

    def log_to_run(
        self,
        run_id: str,
        *,
        metrics: dict[str, float] | None = None,
        dicts: dict[str, Any] | None = None,
        files: Sequence[Path] = (),
        folder: str | None = None,
        tags: dict[str, str] | None = None,
        name: str | None = None,
    ) -> bool:
        """Add metrics, JSON artifacts, files and tags to a finished run (one
        the train stage recorded), and rename it if `name` is given, leaving
        it finished. False (and a warning) when
        the store does not have the run, e.g. models pulled from a DVC remote
        that were trained elsewhere; a store is never created to look."""
        from mlflow.entities import Metric, RunTag
        from mlflow.exceptions import MlflowException

        db = sqlite_path(self.uri)
        if db is not None and not db.exists():
            log.warning("no MLflow store at %s: run %s not updated", db, run_id)
            return False
        try:
            self.client.get_run(run_id)
        except MlflowException as err:
            if access.explained(err, self.uri, ""):
                raise  # refused, not missing: the stage fails and says why
            log.warning("MLflow run %s is not in %s: not updated", run_id, self.uri)
            return False
        now = int(time.time() * 1000)
        entries = [Metric(key, value, now, 0) for key, value in (metrics or {}).items()]
        run_tags = [RunTag(key, value) for key, value in (tags or {}).items()]
        if entries or run_tags:
            self.client.log_batch(run_id, metrics=entries, tags=run_tags)
        if name is not None:
            self.client.update_run(run_id, name=name)
        for name, content in (dicts or {}).items():
            self.client.log_dict(run_id, content, name)
        for path in files:
            self.client.log_artifact(run_id, str(path), folder)
        return True

    def caught_up(self) -> None:
        """Nothing: its answer says that every earlier request was made."""

    def _run_id(self, handle: int) -> str:
        if handle not in self.runs:
            raise PipelineError(f"no MLflow run {handle} is open")
        return self.runs[handle][0]


def describe(err: Exception, op: str, request: Mapping[str, Any], uri: str, experiment: str) -> str:
    """The one line that reports a failed request (`op`, its arguments by
    name): for a refusal (401, or the auth app's 403), access.py's, naming
    the experiment."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, PipelineError):
        return str(err)
    if isinstance(err, OSError):
        return f"MLflow ({op}): {err}"
    if not isinstance(err, MlflowException):  # a bug, or a library's: say which
        return f"MLflow ({op}): {type(err).__name__}: {err}"
    if op == "log_to_run":  # a recorded run, perhaps of another experiment
        what = f"the experiment of run {request['run_id']}"
    else:  # the stage's runs are all in its experiment
        what = f"experiment {request.get('experiment') or experiment!r}"
    return str(access.explained(err, uri, what) or f"MLflow ({op}): {err.message}")


def arguments(helper: Helper, method: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A request's arguments by name (none for a method the helper lacks)."""
    with contextlib.suppress(AttributeError, TypeError):
        return dict(inspect.signature(getattr(helper, method)).bind(*args, **kwargs).arguments)
    return {}


def next_request(requests: Connection) -> tuple[str, tuple, dict] | None:
    """The next (method, args, kwargs); None at the end of the requests: the
    stage closed them, or died, perhaps in the middle of one."""
    try:
        return pickle.loads(requests.recv_bytes())
    except (EOFError, OSError, pickle.UnpicklingError, ValueError):
        return None


def serve(requests: Connection, replies: Connection) -> int:
    """Make each request read from `requests`, in order, and answer it on
    `replies`. After a failed request the rest are skipped and answered with
    its line. At the end of the requests (the stage closed them, or died),
    runs left open end FAILED after such a failure, KILLED otherwise (nested
    ones first), and a last answer repeats the failure; exit status 1 then."""
    start = next_request(requests)
    if start is None:
        return 0
    helper = Helper(*start)
    failure: str | None = None
    try:
        while (request := next_request(requests)) is not None:
            method, args, kwargs = request
            result = None
            if failure is None:
                try:
                    result = getattr(helper, method)(*args, **kwargs)
                except Exception as err:  # every failure ends the stage's tracking, named
                    named = arguments(helper, method, args, kwargs)
                    failure = describe(err, method, named, helper.uri, helper.experiment)
            replies.send_bytes(pickle.dumps((result, failure)))
    except OSError:  # the stage is gone and reads no answer
        pass
    finally:
        for handle in reversed(list(helper.runs)):
            helper.end_run(handle, "FAILED" if failure else "KILLED",
                           failure or "the stage stopped before ending its run")  # fmt: skip
    with contextlib.suppress(OSError):
        replies.send_bytes(pickle.dumps((None, failure)))
    return 1 if failure else 0


def main() -> None:
    """`python -m pipeline.tracking`, as a Tracker starts it (in a process
    group of its own, so that Ctrl-C in a terminal reaches only the stage)."""
    # Ignored also when sent to this process alone: the stage decides, and
    # ends the runs through its requests.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging()
    requests = Connection(sys.stdin.fileno(), writable=False)
    # Answers get stdout to themselves: whatever else prints there (MLflow
    # announces each run it ends) goes to stderr with the other messages.
    replies = Connection(os.dup(sys.stdout.fileno()), readable=False)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    status = serve(requests, replies)
    gc.freeze()  # as run_stage does: no last collection at exit
    sys.exit(status)
