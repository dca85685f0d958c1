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

from pipeline import tracking


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
    assert tracking.sqlite_path("sqlite:////srv/x/mlflow.db") == Path("/srv/x/mlflow.db")
    assert tracking.sqlite_path("http://host:5000") is None


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
    assert tracking.pipeline_run_id({"PIPELINE_RUN_ID": "nightly-42"}) == "nightly-42"


def test_stages_under_one_dvc_process_share_an_execution_id(tmp_path: Path) -> None:
    # A stand-in for `dvc repro`: a program called dvc that runs two "stages".
    child = "import os; from pipeline.tracking import pipeline_run_id as p; print(p(os.environ))"
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
    code = "import os; from pipeline.tracking import pipeline_run_id as p; print(p(os.environ))"
    ids = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environ
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(ids) == 2


def test_run_tags(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    tags = tracking.run_tags(
        "bn", 3, "cpu (1 thread)", "abc", {"DVC_EXP_NAME": "lucky-fox"}, tmp_path
    )
    assert tags == {
        "variant": "bn",
        "seed": "3",
        "device": "cpu (1 thread)",
        "pipeline_run_id": "abc",
        "dvc_exp_name": "lucky-fox",
    }  # no commit yet: no commit tag


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
    assert tracking._is_dvc(cmdline) is expected


def finished_run(uri: str) -> str:
    experiment = tracking.prepare_experiment(uri, "e")
    with tracking.start_run(uri, experiment, "r", {}, {}) as run:
        return run.run_id


def test_log_later_makes_the_queued_calls_in_the_helper(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = finished_run(uri)
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"png")
    with tracking.LogLater(uri) as later:
        later.log_to_run(run_id, metrics={"eval/x": 0.5}, dicts={"d/c.json": [[1, 2]]})
        later.log_to_run("0" * 32, metrics={"eval/x": 1.0})  # not in the store: skipped
        later.log_to_run(run_id, files=[figure], folder="report")
        assert later.finish() == [True, False, True]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.metrics == {"eval/x": 0.5} and run.info.status == "FINISHED"
    assert Path(client.download_artifacts(run_id, "report/figure.png")).read_bytes() == b"png"
    assert json.loads(Path(client.download_artifacts(run_id, "d/c.json")).read_text()) == [[1, 2]]


def test_leaving_log_later_without_finishing_logs_nothing(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = finished_run(uri)
    with pytest.raises(RuntimeError, match="the stage failed"), tracking.LogLater(uri) as later:
        later.log_to_run(run_id, metrics={"eval/x": 0.5})
        raise RuntimeError("the stage failed")
    assert later.process.returncode is not None  # stopped and reaped, not left running
    assert MlflowClient(uri).get_run(run_id).data.metrics == {}


def test_log_later_never_creates_a_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with tracking.LogLater(uri) as later:
        later.log_to_run("0" * 32, metrics={"x": 1.0})
        assert later.finish() == [False]
    assert not (tmp_path / "mlflow.db").exists()


def test_a_failing_helper_is_a_pipeline_error(tmp_path: Path) -> None:
    from pipeline.errors import PipelineError

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = finished_run(uri)
    with tracking.LogLater(uri) as later:
        later.log_to_run(run_id, files=[tmp_path / "gone.png"])
        with pytest.raises(PipelineError, match=r"logging to the MLflow store .* failed"):
            later.finish()
