"""Where runs go, the safe first creation of the store, and the execution id."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import lineage, tracking
from pipeline.tracking import store
from pipeline.tracking import tracker as tracker_module


def test_default_store_is_mlflow_db_at_the_repo_root(tmp_path: Path) -> None:
    assert tracking.tracking_uri({}, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_dvc_root_wins_over_the_working_folder(tmp_path: Path) -> None:
    copy = tmp_path / "main" / ".dvc" / "tmp" / "exps" / "tmpabc"
    environ = {"DVC_ROOT": str(tmp_path / "main")}
    uri = tracking.tracking_uri(environ, copy)
    assert uri == f"sqlite:///{(tmp_path / 'main').resolve()}/mlflow.db"
    assert uri.startswith("sqlite:////")  # absolute


def test_mlflow_tracking_uri_overrides_everything(tmp_path: Path) -> None:
    environ = {"DVC_ROOT": str(tmp_path), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert tracking.tracking_uri(environ, tmp_path) == "http://127.0.0.1:5000"


def test_sqlite_path() -> None:
    assert store.sqlite_path("sqlite:////srv/x/mlflow.db") == Path("/srv/x/mlflow.db")
    assert store.sqlite_path("http://host:5000") is None


def test_experiment_artifacts_go_beside_the_database_in_mlruns(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = tracking.prepare_experiment(uri, "batchnorm-mnist")
    assert tracking.prepare_experiment(uri, "batchnorm-mnist") == experiment_id  # idempotent
    experiment = MlflowClient(uri).get_experiment(experiment_id)
    assert experiment.name == "batchnorm-mnist"
    assert experiment.artifact_location == (tmp_path / "mlruns" / experiment_id).as_uri()


def _prepare(uri: str, barrier) -> str:
    barrier.wait()
    return tracking.prepare_experiment(uri, "race")


def test_processes_creating_a_fresh_store_at_once_all_succeed(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(4) as pool:
        barrier = manager.Barrier(4)
        ids = pool.starmap(_prepare, [(uri, barrier)] * 4)
    assert len(set(ids)) == 1
    names = [e.name for e in MlflowClient(uri).search_experiments()]
    assert sorted(names) == ["Default", "race"]


def test_execution_id_from_the_environment_wins() -> None:
    assert lineage.pipeline_run_id({"PIPELINE_RUN_ID": "nightly-42"}) == "nightly-42"


def test_stages_under_one_dvc_process_share_an_execution_id(tmp_path: Path) -> None:
    # A stand-in for `dvc repro`: a program called dvc that runs two "stages".
    child = "import os; from pipeline.lineage import pipeline_run_id as p; print(p(os.environ))"
    fake = tmp_path / "dvc"
    fake.write_text(
        f"#!{sys.executable}\nimport subprocess, sys\n"
        f"for _ in range(2):\n    subprocess.run([sys.executable, '-c', {child!r}], check=True)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    environ = {k: v for k, v in os.environ.items() if k != "PIPELINE_RUN_ID"}

    def execution() -> list[str]:
        done = subprocess.run([str(fake)], capture_output=True, text=True, check=True, env=environ)
        return done.stdout.split()

    first, second = execution(), execution()
    assert len(first) == 2 and first[0] == first[1]
    assert second[0] == second[1] != first[0]


def test_outside_dvc_each_process_gets_its_own_id() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "PIPELINE_RUN_ID"}
    code = "import os; from pipeline.lineage import pipeline_run_id as p; print(p(os.environ))"
    ids = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environ
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(ids) == 2


def test_run_tags(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    tags = lineage.run_tags(
        "bn", 3, "cpu (1 thread)", "abc", {"DVC_EXP_NAME": "lucky-fox"}, tmp_path
    )
    assert tags == {
        "variant": "bn",
        "seed": "3",
        "device": "cpu (1 thread)",
        "pipeline_run_id": "abc",
        "dvc_exp_name": "lucky-fox",
    }  # no commit yet: no commit tag
    parent = lineage.run_tags("bn", None, "cpu (1 thread)", "abc", {}, tmp_path)
    assert "seed" not in parent and parent["pipeline_run_id"] == "abc"


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/venv/bin/python", "/venv/bin/dvc", "repro"], True),
        (["python", "-m", "dvc", "exp", "run"], True),
        (["dvc", "queue", "start"], True),
        (["/bin/sh", "-c", "dvc repro"], False),
        (["python", "-m", "pytest"], False),
    ],
)
def test_which_processes_count_as_dvc(cmdline: list[str], expected: bool) -> None:
    assert lineage._is_dvc(cmdline) is expected


def finished_run(uri: str) -> str:
    with tracking.Tracker(uri, "e").run("r", {}, {}) as run:
        pass
    return run.run_id


def test_log_to_run_adds_to_a_finished_run_and_skips_a_missing_one(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = finished_run(uri)
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"png")
    tracker = tracking.Tracker(uri, "stage-test")
    first = tracker.log_to_run(run_id, metrics={"eval/x": 0.5}, dicts={"d/c.json": [[1, 2]]})
    missing = tracker.log_to_run("0" * 32, metrics={"eval/x": 1.0})  # not in the store
    last = tracker.log_to_run(run_id, files=[figure], folder="report", name="renamed")
    assert [first, missing, last] == [True, False, True]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.metrics == {"eval/x": 0.5} and run.info.status == "FINISHED"
    assert run.info.run_name == "renamed"
    assert Path(client.download_artifacts(run_id, "report/figure.png")).read_bytes() == b"png"
    assert json.loads(Path(client.download_artifacts(run_id, "d/c.json")).read_text()) == [[1, 2]]


def test_a_tracker_run_is_logged_and_ended(tmp_path: Path) -> None:
    import torch
    from mlflow.tracking import MlflowClient

    from pipeline.nn.model import DeepMLP

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    model = DeepMLP(2, 8, batchnorm=True).eval()
    (tmp_path / "final.pt").write_bytes(b"checkpoint")
    example = torch.rand(3, 784)
    tracker = tracking.Tracker(uri, "stage-test", models=True)
    with tracker.run("r", {"variant": "bn"}, {"lr": 0.1}) as run:
        run.log_epoch(1, {"loss": 2.0})
        run.log_epoch(2, {"loss": 1.0})
        run.log_files([tmp_path / "final.pt"], "checkpoints")
        model_uri = run.log_model(model, example.numpy(), "bn-seed0", {"seed": "0"})
    run_id = run.run_id
    client = MlflowClient(uri)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params == {"lr": "0.1"} and logged.data.tags["variant"] == "bn"
    assert logged.data.tags[tracker_module.ATTEMPT] == lineage.attempt()
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [2.0, 1.0]
    assert [f.path for f in client.list_artifacts(run_id, "checkpoints")] == [
        "checkpoints/final.pt"
    ]
    import mlflow.pytorch

    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pytorch.load_model(model_uri)
    assert torch.equal(loaded(example).argmax(1), model(example).argmax(1))


@pytest.mark.parametrize(
    ("error", "status"), [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")]
)
def test_a_tracker_run_left_by_an_error_ends_killed_or_failed(
    tmp_path: Path, error: type[BaseException], status: str
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = tracking.Tracker(uri, "stage-test")
    with (
        pytest.raises(error),
        tracker.run("r", {}, {}) as run,
    ):
        run.log_epoch(1, {"loss": 2.0})
        raise error("the stage failed")
    client = MlflowClient(uri)
    logged = client.get_run(run.run_id)
    assert logged.info.status == status
    expected = "interrupted" if error is KeyboardInterrupt else "the stage failed"
    assert logged.data.tags["failure_reason"] == expected
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [2.0]


def test_epoch_metrics_never_wait_for_the_store(tmp_path: Path, monkeypatch) -> None:
    # A store that holds every write until the test lets it go: log_epoch
    # returns meanwhile (MLflow's asynchronous logging); the run's end waits.
    import threading

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    release, writes = threading.Event(), []
    original = SqlAlchemyStore.log_batch

    def held(self, run_id, metrics, params, tags):
        if metrics:
            assert release.wait(timeout=60)
            writes.append([m.step for m in metrics])
        return original(self, run_id, metrics, params, tags)

    monkeypatch.setattr(SqlAlchemyStore, "log_batch", held)
    with tracking.Tracker(uri, "stage-test").run("r", {}, {}) as run:
        for epoch in (1, 2, 3):
            run.log_epoch(epoch, {"loss": 1.0 / epoch})
        assert writes == []  # none written yet, and the loop went on
        release.set()
    assert sorted(step for batch in writes for step in batch) == [1, 2, 3]
    history = MlflowClient(uri).get_metric_history(run.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]


def test_an_asynchronous_write_that_failed_fails_the_run_by_name(
    tmp_path: Path, monkeypatch
) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient

    from pipeline.errors import PipelineError

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    original = SqlAlchemyStore.log_batch

    def refused(self, run_id, metrics, params, tags):
        if metrics:
            raise MlflowException("the store is full")
        return original(self, run_id, metrics, params, tags)

    monkeypatch.setattr(SqlAlchemyStore, "log_batch", refused)
    tracker = tracking.Tracker(uri, "stage-test")
    with (
        pytest.raises(PipelineError, match=r"^MLflow \(log_epoch\): .*the store is full"),
        tracker.run("r", {}, {}) as run,
    ):
        run.log_epoch(1, {"loss": 1.0})
    logged = MlflowClient(uri).get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert "the store is full" in logged.data.tags["failure_reason"]


def test_the_tracker_never_creates_a_store_to_log_to_a_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = tracking.Tracker(uri, "stage-test")
    assert tracker.log_to_run("0" * 32, metrics={"x": 1.0}) is False
    assert not (tmp_path / "mlflow.db").exists()


def test_a_failed_call_is_a_pipeline_error_naming_it(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from pipeline.errors import PipelineError

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = tracking.Tracker(uri, "stage-test")
    with (
        pytest.raises(PipelineError, match=r"^MLflow \(log_artifact\): .*gone\.png"),
        tracker.run("r", {}, {}) as run,
    ):
        run.log_files([tmp_path / "gone.png"], "x")
    logged = MlflowClient(uri).get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert "gone.png" in logged.data.tags["failure_reason"]


def test_a_parent_run_with_nested_runs_open_at_once(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = tracking.Tracker(uri, "stage-test")
    with (
        tracker.run("bn", {"variant": "bn"}, {"lr": 0.1}) as parent,
        tracker.run("bn-seed0", {"seed": "0"}, {"lr": 0.1}, parent) as first,
        tracker.run("bn-seed1", {"seed": "1"}, {"lr": 0.1}, parent) as second,
    ):
        for epoch in (1, 2):  # interleaved, as stacked training logs them
            first.log_epoch(epoch, {"loss": 1.0 / epoch})
            second.log_epoch(epoch, {"loss": 2.0 / epoch})
            parent.log_epoch(epoch, {"loss_mean": 1.5 / epoch})
    client = MlflowClient(uri)
    for child, expected in ((first, [1.0, 0.5]), (second, [2.0, 1.0])):
        run = client.get_run(child.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.run_id
        history = sorted(client.get_metric_history(child.run_id, "loss"), key=lambda m: m.step)
        assert [m.value for m in history] == expected
    logged = client.get_run(parent.run_id)
    assert logged.info.status == "FINISHED" and "mlflow.parentRunId" not in logged.data.tags
    steps = sorted(m.step for m in client.get_metric_history(parent.run_id, "loss_mean"))
    assert steps == [1, 2]
    assert logged.data.tags["mlflow.source.type"] == "LOCAL"  # MLflow's own tags


KILLED_MID_RUN = """
import sys, time
from pipeline import lineage, tracking
tracker = tracking.Tracker(sys.argv[1], "stage-test")
with (
    tracker.run("bn", {"stage": sys.argv[2]}, {}) as parent,
    tracker.run("bn-seed0", {"stage": sys.argv[2]}, {}, parent) as first,
    tracker.run("bn-seed1", {"stage": sys.argv[2]}, {}, parent) as second,
):
    first.log_epoch(1, {"loss": 1.0})
    print(parent.run_id, first.run_id, second.run_id, flush=True)
    time.sleep(600)
"""


def test_runs_a_killed_stage_left_running_are_ended_by_its_next_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    started = [subprocess.Popen([sys.executable, "-c", KILLED_MID_RUN, uri, stage],
                                stdout=subprocess.PIPE, text=True)
               for stage in ("train", "other")]  # fmt: skip
    killed, other = (process.stdout.readline().split() for process in started)
    started[0].kill()  # SIGKILL: nothing in the stage can end its runs
    started[0].wait(timeout=60)
    client = MlflowClient(uri)
    assert {client.get_run(r).info.status for r in killed + other} == {"RUNNING"}
    # this process's own runs are live: never ended, whatever their tags
    tracker = tracking.Tracker(uri, "stage-test")
    live = tracker.run("live", {"stage": "train"}, {})
    with live as mine:
        assert sorted(tracker.end_abandoned({"stage": "train"})) == sorted(killed)
        assert client.get_run(mine.run_id).info.status == "RUNNING"
    assert tracker.end_abandoned({"stage": "train"}) == []  # a second look finds none
    for run_id in killed:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        assert "was killed; a later run ended it" in run.data.tags["failure_reason"]
    # the other stage's process lives: its runs are left running
    assert {client.get_run(r).info.status for r in other} == {"RUNNING"}
    started[1].kill()
    started[1].wait(timeout=60)


def test_an_attempt_of_another_host_or_a_reused_pid_is_told_apart() -> None:
    import socket

    import psutil

    here = lineage.attempt()
    assert not lineage.process_gone(here)
    assert lineage.process_gone(here.rsplit(" ", 1)[0] + " 1.5")  # pid reused since
    assert not lineage.process_gone(f"elsewhere-{socket.gethostname()} pid 1 started 1.0")
    assert not lineage.process_gone("")
    gone = max(psutil.pids()) + 100_000
    assert lineage.process_gone(f"{socket.gethostname()} pid {gone} started 1.0")


FAILS_MID_RUN = """
import sys
from pathlib import Path
from pipeline import lineage, tracking
from pipeline.cli import run_stage

def main(argv):
    tracker = tracking.Tracker(sys.argv[1], "stage-test")
    with (
        tracker.run("r", {}, {}) as run,
    ):
        run.log_files([Path(sys.argv[2])], "x")

run_stage(main, [])
"""


def test_a_failed_mlflow_call_is_printed_once_without_traceback(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = subprocess.run([sys.executable, "-c", FAILS_MID_RUN, uri, str(tmp_path / "gone.png")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    told = [line for line in lines if "MLflow (log_artifact): " in line and "gone.png" in line]
    assert len(told) == 1, done.stderr
    assert lines[-1] == told[0]  # run_stage's line
    assert "Traceback" not in done.stderr
