"""DVC's experiment queue: two experiments at once, both logged to the main store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .conftest import dvc, project_copy

pytestmark = pytest.mark.slow

EXPERIMENTS = {"deep": ["model.depth=4"], "wide": ["model.width=24", "train.batch_size=16"]}


def wait_for_queue(repo: Path, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = dvc(repo, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            return status
        assert time.monotonic() < deadline, f"queue still busy:\n{status}"
        time.sleep(3)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = project_copy(tmp_path_factory.mktemp("queue"))
    for name, values in EXPERIMENTS.items():
        sets = [arg for value in values for arg in ("-S", value)]
        queued = dvc(repo, "exp", "run", "--queue", "--name", name, *sets)
        assert queued.returncode == 0, queued.stderr
    started = dvc(repo, "queue", "start", "--jobs", "2")
    assert started.returncode == 0, started.stderr
    time.sleep(3)
    wait_for_queue(repo)
    return repo


def test_every_queued_experiment_succeeds(repo: Path) -> None:
    status = dvc(repo, "queue", "status").stdout
    for name in EXPERIMENTS:
        line = next(line for line in status.splitlines() if name in line)
        assert "Success" in line, status
        logs = dvc(repo, "queue", "logs", name).stdout
        assert "database is locked" not in logs
        assert "Traceback" not in logs


def test_experiments_show_their_params_and_metrics(repo: Path) -> None:
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = rev["data"]
    assert set(EXPERIMENTS) <= set(found)
    deep = found["deep"]
    assert deep["params"]["params.yaml"]["data"]["model"]["depth"] == 4
    metrics = deep["metrics"]["reports/metrics.json"]["data"]
    assert 0 <= metrics["bn"]["acc"] <= 1


def test_every_run_lands_in_the_main_repository_store(repo: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    experiment = client.get_experiment_by_name("stage-test")
    runs = client.search_runs([experiment.experiment_id])
    by_experiment: dict[str, list] = {}
    for run in runs:
        by_experiment.setdefault(run.data.tags.get("dvc_exp_name"), []).append(run)
    assert set(by_experiment) == set(EXPERIMENTS)
    for name, found in by_experiment.items():
        assert sorted(r.info.run_name for r in found) == [
            "bn", "bn-seed0", "bn-seed1", "nobn", "nobn-seed0", "nobn-seed1",
        ], name  # fmt: skip
        assert all(r.info.status == "FINISHED" for r in found)
        assert len({r.data.tags["pipeline_run_id"] for r in found}) == 1
        assert all(r.info.artifact_uri.startswith((repo / "mlruns").as_uri()) for r in found)
    ids = {found[0].data.tags["pipeline_run_id"] for found in by_experiment.values()}
    assert len(ids) == 2  # one execution id per experiment
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))
