"""A stage's MLflow calls, made in the stage's own process.

Importing MLflow and opening its store cost about 2 s of CPU: a Tracker
starts both in a thread, overlapping the stage's reading of its data. The
per-epoch metrics use MLflow's asynchronous logging: a slow server never
stalls an epoch. A run ends FINISHED; KILLED when interrupted (Ctrl-C,
SIGTERM); FAILED otherwise, the reason in the tag `failure_reason`. A stage
killed outright (SIGKILL) cannot end its runs: a later run of the stage
does (`end_abandoned`), by their tag `attempt` (lineage.attempt).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import lineage
from pipeline.errors import PipelineError
from pipeline.tracking import access, served_model
from pipeline.tracking.store import check_reachable, is_server, prepare_experiment, sqlite_path

if TYPE_CHECKING:
    import numpy as np
    import torch
    from mlflow.tracking import MlflowClient

log = logging.getLogger("tracking")
ATTEMPT = "attempt"  # the tag naming the process that opened a run


class Tracker:
    """One stage's MLflow store and experiment. On a tracking server the
    constructor waits for the login check (access.py): a refused login
    fails the stage before it reads any data, and leaves no run. With
    `models`, what logging a model needs loads in the same thread."""

    def __init__(self, uri: str, experiment: str, models: bool = False) -> None:
        check_reachable(uri)  # a dead server fails the stage now
        self.uri, self.experiment = uri, experiment
        self._experiment_id: str | None = None
        self._failure: BaseException | None = None
        self._loading = threading.Thread(target=self._load, args=(models,), daemon=True)
        self._loading.start()
        if is_server(uri):
            self.ready()

    def _load(self, models: bool) -> None:
        # Two threads must not import MLflow at once (its protobuf
        # descriptors fail to build): the stage's methods call ready() first.
        try:
            with self.call("check_access"):
                import mlflow

                mlflow.set_tracking_uri(self.uri)  # Model.log's own client
                if is_server(self.uri):
                    found = access.check_access(self.uri, self.experiment)
                    self._experiment_id = found or prepare_experiment(self.uri, self.experiment)
                elif (db := sqlite_path(self.uri)) is None or db.exists():
                    self._experiment_id = prepare_experiment(self.uri, self.experiment)
            if models:
                prepare_model_logging()
        except BaseException as err:  # raised in the stage's thread, by ready()
            self._failure = err

    def ready(self) -> None:
        """Wait for MLflow's import (and the login check); raise its failure."""
        self._loading.join()
        if self._failure is not None:
            raise self._failure

    @functools.cached_property
    def client(self) -> MlflowClient:
        self.experiment_id()  # a new store is created under prepare_experiment's lock
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def experiment_id(self) -> str:
        """The stage's experiment, created (and the store with it) if new."""
        self.ready()
        if self._experiment_id is None:
            self._experiment_id = prepare_experiment(self.uri, self.experiment)
        return self._experiment_id

    @contextlib.contextmanager
    def call(self, op: str, what: str | None = None) -> Iterator[None]:
        """MLflow's failures in `op` as one line: a refusal as access.py
        words it, naming `what` (default: the experiment); others as
        "MLflow (op): ..."."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as err:
            what = what or f"experiment {self.experiment!r}"
            raise access.explained(err, self.uri, what) or PipelineError(
                f"MLflow ({op}): {err.message}"
            ) from None
        except OSError as err:
            raise PipelineError(f"MLflow ({op}): {err}") from None

    @contextlib.contextmanager
    def run(
        self, name: str, tags: dict[str, str], params: dict[str, Any], parent: Run | None = None
    ) -> Iterator[Run]:
        """A run in the stage's experiment, nested under `parent` if given,
        with tags (and MLflow's own: user, source, git commit) and params."""
        self.ready()  # before any import of MLflow's here (see _load)
        from mlflow.entities import Param
        from mlflow.tracking.context.registry import resolve_tags
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        with self.call("start_run"):
            experiment_id = self.experiment_id()
            tags = tags | {ATTEMPT: lineage.attempt()}
            if parent is not None:
                tags |= {MLFLOW_PARENT_RUN_ID: parent.run_id}
            created = self.client.create_run(experiment_id, tags=resolve_tags(tags), run_name=name)
            run = Run(self, created.info.run_id, experiment_id)
            self.client.log_batch(run.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        try:
            yield run
            with self.call("end_run"):
                run.caught_up()
                self.client.set_terminated(run.run_id, "FINISHED")
        except BaseException as err:
            killed = isinstance(err, KeyboardInterrupt)
            run.end("KILLED" if killed else "FAILED",
                    "interrupted" if killed else str(err) or type(err).__name__)  # fmt: skip
            raise

    def end_abandoned(self, tags: dict[str, str]) -> list[str]:
        """End as KILLED the RUNNING runs with these tags whose process, on
        this host, is gone; their ids. Other hosts' runs are left: whether
        their process lives cannot be told from here."""
        self.ready()
        conditions = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
        query = " and ".join([*conditions, "attributes.status = 'RUNNING'"])
        with self.call("search_runs"):
            found = self.client.search_runs([self.experiment_id()], query)
        ended = [r for r in found if lineage.process_gone(r.data.tags.get(ATTEMPT, ""))]
        for run in ended:
            reason = f"its stage ({run.data.tags[ATTEMPT]}) was killed; a later run ended it"
            Run(self, run.info.run_id, run.info.experiment_id).end("KILLED", reason)
            log.warning("MLflow run %s: %s", run.info.run_id, reason)
        return [run.info.run_id for run in ended]

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
        the train stage recorded), renamed if `name` is given. False (and a
        warning) when the store lacks the run (models pulled from a DVC
        remote, trained elsewhere); a store is never created to look."""
        self.ready()  # before any import of MLflow's here (see _load)
        from mlflow.entities import Metric, RunTag
        from mlflow.exceptions import MlflowException

        db = sqlite_path(self.uri)
        if db is not None and not db.exists():
            log.warning("no MLflow store at %s: run %s not updated", db, run_id)
            return False
        with self.call("log_to_run", f"the experiment of run {run_id}"):
            client = self.client
            try:
                client.get_run(run_id)
            except MlflowException as err:
                if access.explained(err, self.uri, ""):
                    raise  # refused, not missing: the stage fails and says why
                log.warning("MLflow run %s is not in %s: not updated", run_id, self.uri)
                return False
            now = int(time.time() * 1000)
            entries = [Metric(key, value, now, 0) for key, value in (metrics or {}).items()]
            run_tags = [RunTag(key, value) for key, value in (tags or {}).items()]
            if entries or run_tags:
                client.log_batch(run_id, metrics=entries, tags=run_tags)
            if name is not None:
                client.update_run(run_id, name=name)
            for artifact, content in (dicts or {}).items():
                client.log_dict(run_id, content, artifact)
            for path in files:
                client.log_artifact(run_id, str(path), folder)
        return True


class Run:
    """An open run of the stage's."""

    def __init__(self, tracker: Tracker, run_id: str, experiment_id: str) -> None:
        self.tracker, self.run_id, self.experiment_id = tracker, run_id, experiment_id
        self.pending: list[Any] = []  # MLflow's RunOperations of the asynchronous calls

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch's metrics, asynchronously: this returns at once."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, epoch) for key, value in metrics.items()]
        with self.tracker.call("log_epoch"):
            logged = self.tracker.client.log_batch(self.run_id, metrics=entries, synchronous=False)
            self.pending.append(logged)

    def caught_up(self) -> None:
        """Wait until every asynchronous call was made; raise if one failed."""
        with self.tracker.call("log_epoch"):
            while self.pending:
                self.pending.pop(0).wait()

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        with self.tracker.call("set_tags"):
            self.tracker.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_files(self, paths: Sequence[Path], folder: str) -> None:
        with self.tracker.call("log_artifact"):
            for path in paths:
                self.tracker.client.log_artifact(self.run_id, str(path), folder)

    def log_dataset(self, source: Path, digests: dict[str, str]) -> None:
        """The data as an MLflow input: its location and a digest of the four files."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        combined = hashlib.sha256("".join(sorted(digests.values())).encode()).hexdigest()
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": it is local
            warnings.simplefilter("ignore", UserWarning)
            location = resolve_dataset_source(str(source.resolve()))
        # MLflow stores at most 36 characters of a dataset digest.
        dataset = MetaDataset(location, name="mnist", digest=combined[:32])
        context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
        with self.tracker.call("log_inputs"):
            inputs = [DatasetInput(dataset._to_mlflow_entity(), [context])]
            self.tracker.client.log_inputs(self.run_id, inputs)

    def log_model(
        self, network: torch.nn.Module, example: np.ndarray, name: str, tags: dict[str, str]
    ) -> str:
        """Log `network` (CPU, eval mode) as the MLflow model `name`
        (served_model.py), with `tags` and an input example (N, 784); its URI."""
        import mlflow
        import torch
        from mlflow.models import Model

        with self.tracker.call("log_model"):
            mlflow.set_experiment(experiment_id=self.experiment_id)  # a model's is the active one
            return Model.log(
                artifact_path=None,
                name=name,
                flavor=served_model,
                run_id=self.run_id,
                tags=tags,
                network=network,
                input_example=example,
                # Explicit requirements: inferring them loads the model again (seconds).
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                # Checking the input example by loading the model again: tests do it.
                validate_serving_input=False,
            ).model_uri

    def end(self, status: str, reason: str) -> None:
        """End the run with `status`, `reason` in the tag `failure_reason`;
        a problem doing so is logged, never raised over the failure."""
        try:
            client = self.tracker.client
            client.set_tag(self.run_id, "failure_reason", reason[:5000])  # MLflow's limit
            client.set_terminated(self.run_id, status)
        except Exception as err:
            log.warning("could not mark the MLflow run %s %s: %s", self.run_id, status, err)


def prepare_model_logging() -> None:
    """Load what log_model needs (about 2 s). Both private names only save
    time: a change in torch or MLflow makes the first log_model slower."""
    with contextlib.suppress(Exception):
        import torch.export._trace  # noqa: F401 - export's tracer: torch._dynamo, ~1 s
    import mlflow.pytorch  # noqa: F401
    from mlflow.utils import requirements_utils

    # the map of installed packages log_model checks requirements with: ~0.6 s
    with contextlib.suppress(Exception):
        requirements_utils._init_packages_to_modules_map()
