"""Where runs go, the safe first creation of the store, and the execution id."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.tracking import store


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
    parent = tracking.run_tags("bn", None, "cpu (1 thread)", "abc", {}, tmp_path)
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
    assert store._is_dvc(cmdline) is expected


def finished_run(uri: str) -> str:
    with tracking.Tracker(uri, "e") as tracker, tracker.run("e", "r", {}, {}) as run:
        pass
    return run.run_id


def test_the_tracker_makes_the_requests_in_its_helper(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = finished_run(uri)
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"png")
    with tracking.Tracker(uri, "stage-test") as tracker:
        first = tracker.log_to_run(run_id, metrics={"eval/x": 0.5}, dicts={"d/c.json": [[1, 2]]})
        missing = tracker.log_to_run("0" * 32, metrics={"eval/x": 1.0})  # not in the store
        last = tracker.log_to_run(run_id, files=[figure], folder="report")
    assert [first.result(), missing.result(), last.result()] == [True, False, True]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.metrics == {"eval/x": 0.5} and run.info.status == "FINISHED"
    assert Path(client.download_artifacts(run_id, "report/figure.png")).read_bytes() == b"png"
    assert json.loads(Path(client.download_artifacts(run_id, "d/c.json")).read_text()) == [[1, 2]]


def test_a_tracker_run_is_logged_and_ended(tmp_path: Path) -> None:
    import torch
    from mlflow.tracking import MlflowClient

    from pipeline.nn.checkpoint import make_checkpoint, save_checkpoint
    from pipeline.nn.model import DeepMLP

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    model = DeepMLP(2, 8, batchnorm=True).eval()
    save_checkpoint(tmp_path / "final.pt", make_checkpoint(model))
    example = torch.rand(3, 784)
    with tracking.Tracker(uri, "stage-test") as tracker:
        with tracker.run("e", "r", {"variant": "bn"}, {"lr": 0.1}) as run:
            tracker.prepare_model_logging()
            run.log_epoch(1, {"loss": 2.0})
            run.log_epoch(2, {"loss": 1.0})
            run.log_file(tmp_path / "final.pt", "checkpoints")
            model_uri = run.log_model(
                tmp_path / "final.pt", example.numpy(), "bn-seed0", {"seed": "0"}
            )
        run_id = run.run_id
    client = MlflowClient(uri)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params == {"lr": "0.1"} and logged.data.tags["variant"] == "bn"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [2.0, 1.0]
    assert [f.path for f in client.list_artifacts(run_id, "checkpoints")] == [
        "checkpoints/final.pt"
    ]
    import mlflow.pytorch

    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pytorch.load_model(model_uri.result())
    assert torch.equal(loaded(example).argmax(1), model(example).argmax(1))


@pytest.mark.parametrize(
    ("error", "status"), [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")]
)
def test_a_tracker_run_left_by_an_error_ends_killed_or_failed(
    tmp_path: Path, error: type[BaseException], status: str
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with (
        pytest.raises(error),
        tracking.Tracker(uri, "stage-test") as tracker,
        tracker.run("e", "r", {}, {}) as run,
    ):
        run.log_epoch(1, {"loss": 2.0})
        raise error("the stage failed")
    assert tracker.process.returncode == 0  # stopped and reaped, not left running
    logged = MlflowClient(uri).get_run(run.run_id)
    assert logged.info.status == status
    expected = "interrupted" if error is KeyboardInterrupt else "the stage failed"
    assert logged.data.tags["failure_reason"] == expected


def test_a_run_the_stage_never_ended_is_killed_by_the_helper(tmp_path: Path) -> None:
    # The helper's input closes, as when the stage dies: it ends the run and exits.
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = tracking.Tracker(uri, "stage-test")
    run = tracking.RemoteRun(tracker, 0, tracker.start_run(0, "e", "r", {}, {}, None))
    run_id = run.run_id
    tracker.requests.close()
    assert tracker.process.wait(timeout=60) == 0
    logged = MlflowClient(uri).get_run(run_id)
    assert logged.info.status == "KILLED"
    assert logged.data.tags["failure_reason"] == "the stage stopped before ending its run"


def test_a_stage_killed_in_the_middle_of_a_request_leaves_no_run_running(tmp_path: Path) -> None:
    # SIGKILL while sending (a model's request can outgrow the pipe): the
    # helper reads half a message, then the end of its input.
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = tracking.Tracker(uri, "stage-test")
    run = tracking.RemoteRun(tracker, 0, tracker.start_run(0, "e", "r", {}, {}, None))
    run_id = run.run_id
    os.write(tracker.requests.fileno(), (1000).to_bytes(4, "big") + b"\x80\x05cut")
    tracker.requests.close()
    assert tracker.process.wait(timeout=60) == 0
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"


def test_ctrl_c_reaches_the_stage_not_its_helper(tmp_path: Path) -> None:
    # A terminal's Ctrl-C goes to the foreground process group: the helper
    # has its own, and ignores SIGINT besides, from its start (MLflow's import).
    import signal

    tracker = tracking.Tracker(f"sqlite:///{tmp_path}/mlflow.db", "stage-test")
    assert os.getpgid(tracker.process.pid) != os.getpgid(0)
    time.sleep(0.3)  # started, still importing MLflow
    tracker.process.send_signal(signal.SIGINT)
    with tracker:
        assert tracker.caught_up().result() is None
    assert tracker.process.returncode == 0


def test_an_unexpected_error_in_the_helper_fails_the_run_by_name(tmp_path: Path) -> None:
    # Neither MLflow's nor ours (a metric that is no number): named, never a
    # crash of the helper that would leave the run RUNNING.
    from mlflow.tracking import MlflowClient

    from pipeline.errors import PipelineError

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with (
        pytest.raises(PipelineError, match=r"^MLflow \(log_epoch\): ValueError: could not convert"),
        tracking.Tracker(uri, "stage-test") as tracker,
        tracker.run("e", "r", {}, {}) as run,
    ):
        run.log_epoch(1, {"loss": "not a number"})
        tracker.caught_up().result()
    logged = MlflowClient(uri).get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags["failure_reason"].startswith("MLflow (log_epoch): ValueError")


def test_the_tracker_never_creates_a_store_to_log_to_a_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with tracking.Tracker(uri, "stage-test") as tracker:
        answer = tracker.log_to_run("0" * 32, metrics={"x": 1.0})
    assert answer.result() is False
    assert not (tmp_path / "mlflow.db").exists()


def test_a_failed_request_is_a_pipeline_error_naming_it(tmp_path: Path) -> None:
    from pipeline.errors import PipelineError

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with (
        pytest.raises(PipelineError, match=r"MLflow \(log_file\): .*gone\.png"),
        tracking.Tracker(uri, "stage-test") as tracker,
        tracker.run("e", "r", {}, {}) as run,
    ):
        run.log_file(tmp_path / "gone.png", "x")
        run.log_epoch(1, {"loss": 1.0})  # skipped: the helper stopped at the error
    from mlflow.tracking import MlflowClient

    logged = MlflowClient(uri).get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert "gone.png" in logged.data.tags["failure_reason"]


def test_a_parent_run_with_nested_runs_open_at_once(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with (
        tracking.Tracker(uri, "stage-test") as tracker,
        tracker.run("e", "bn", {"variant": "bn"}, {"lr": 0.1}) as parent,
        tracker.run("e", "bn-seed0", {"seed": "0"}, {"lr": 0.1}, parent) as first,
        tracker.run("e", "bn-seed1", {"seed": "1"}, {"lr": 0.1}, parent) as second,
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
        assert [m.value for m in client.get_metric_history(child.run_id, "loss")] == expected
    logged = client.get_run(parent.run_id)
    assert logged.info.status == "FINISHED" and "mlflow.parentRunId" not in logged.data.tags
    assert [m.step for m in client.get_metric_history(parent.run_id, "loss_mean")] == [1, 2]
    assert logged.data.tags["mlflow.source.type"] == "LOCAL"  # MLflow's own tags, as before


KILLED_MID_RUN = """
import sys, time
from pipeline import tracking
with (
    tracking.Tracker(sys.argv[1], "stage-test") as tracker,
    tracker.run("e", "bn", {}, {}) as parent,
    tracker.run("e", "bn-seed0", {}, {}, parent) as first,
    tracker.run("e", "bn-seed1", {}, {}, parent) as second,
):
    first.log_epoch(1, {"loss": 1.0})
    print(parent.run_id, first.run_id, second.run_id, flush=True)
    time.sleep(600)
"""


def test_nested_runs_left_open_are_all_killed_when_the_stage_is_killed(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    stage = subprocess.Popen([sys.executable, "-c", KILLED_MID_RUN, uri], stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    run_ids = stage.stdout.readline().split()
    stage.kill()  # SIGKILL: nothing in the stage cleans up; its helper sees its input close
    stage.wait(timeout=60)
    client = MlflowClient(uri)
    deadline = time.monotonic() + 60
    while [client.get_run(r).info.status for r in run_ids] != ["KILLED"] * 3:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    reasons = {client.get_run(r).data.tags["failure_reason"] for r in run_ids}
    assert reasons == {"the stage stopped before ending its run"}


FAILS_MID_RUN = """
import sys, time
from pathlib import Path
from pipeline import tracking
from pipeline.cli import run_stage
from pipeline.errors import PipelineError

def main(argv):
    with (
        tracking.Tracker(sys.argv[1], "stage-test") as tracker,
        tracker.run("e", "r", {}, {}) as run,
    ):
        run.log_file(Path(sys.argv[2]), "x")
        if sys.argv[3] == "stage":  # the stage fails too, once the helper's failure is in
            ready = tracker.caught_up()
            while not ready.arrived():
                time.sleep(0.05)
            raise PipelineError("the stage's own failure")

run_stage(main, [])
"""


@pytest.mark.parametrize("also", ["helper", "stage"])
def test_a_failure_of_the_helper_is_printed_once(tmp_path: Path, also: str) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = subprocess.run([sys.executable, "-c", FAILS_MID_RUN, uri, str(tmp_path / "gone.png"),
                           also], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    told = [line for line in lines if "MLflow (log_file): " in line and "gone.png" in line]
    assert len(told) == 1, done.stderr
    if also == "helper":
        assert lines[-1] == told[0]  # run_stage's line, no traceback
    else:  # the stage's own failure is the one run_stage prints; the helper's is logged
        assert lines[-1] == "the stage's own failure"
        assert " tracking WARNING MLflow (log_file): " in told[0]
    assert "Traceback" not in done.stderr


def test_caught_up_says_without_waiting_when_the_helper_is_idle(tmp_path: Path) -> None:
    import time

    with tracking.Tracker(f"sqlite:///{tmp_path}/mlflow.db", "stage-test") as tracker:
        ready = tracker.caught_up()
        deadline = time.monotonic() + 120
        while not ready.arrived():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ready.result() is None
        second = tracker.log_to_run("0" * 32, metrics={"x": 1.0})  # answers still come in order
        assert second.result() is False
