"""`make study`'s commands on a tiny study (two depths, one epoch, one seed),
through DVC's real queue, in a temporary copy of the project."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, dvc, git, project_copy

pytestmark = pytest.mark.slow


def study_commands() -> list[str]:
    """The recipe of `make study`, without the Makefile's environment prefix."""
    recipe = re.search(r"^study:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)
    assert recipe, "Makefile has no study target"
    return [line.strip().removeprefix("$(WITH_VENV)").strip()
            for line in recipe.group(1).splitlines()]  # fmt: skip


def run(repo: Path, command: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_RUN_ID")}  # fmt: skip
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python, dvc
    done = subprocess.run(shlex.split(command), cwd=repo, env=env, capture_output=True, text=True,
                          check=False, timeout=1200)  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = project_copy(tmp_path_factory.mktemp("study"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(epochs=1, seeds=[0])
    params["study"]["depths"] = [2, 3]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-q", "-am", "tiny study")
    for command in study_commands():
        run(repo, command)
    return repo


def experiments(repo: Path) -> dict[str, dict]:
    shown = json.loads(dvc(repo, "exp", "show", "--json", "-A").stdout)
    return {e["name"]: e["revs"][0] for b in shown for e in b.get("experiments") or []}


def test_make_study_wraps_the_queue_and_the_summary() -> None:
    assert study_commands() == [
        "python -m pipeline.study queue",
        "dvc exp run --run-all --jobs 1",
        "python -m pipeline.study",
    ]


def test_each_depth_is_one_dvc_experiment(repo: Path) -> None:
    found = experiments(repo)
    depths = sorted(r["data"]["params"]["params.yaml"]["data"]["model"]["depth"]
                    for r in found.values())  # fmt: skip
    assert depths == [2, 3]
    assert all(r["error"] is None for r in found.values())


def test_the_summary_has_both_points_the_figures_and_the_finding(repo: Path) -> None:
    text = (repo / "reports" / "study" / "depth.md").read_text()
    assert "BatchNorm's gain goes from" in text and "at depth 2 to" in text
    assert "no depth can be called" in text  # one seed: no intervals
    rows = [line for line in text.splitlines() if re.match(r"\| [23] \| ", line)]
    assert len(rows) == 2
    for name in ("depth_accuracy.png", "depth_diagnostics.png"):
        assert f"]({name})" in text
        assert (repo / "reports" / "study" / name).read_bytes()[:4] == b"\x89PNG"
    page = (repo / "reports" / "study" / "depth.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2


def test_the_points_runs_are_in_mlflow_with_their_depth(repo: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    experiment = client.get_experiment_by_name("stage-test")
    runs = client.search_runs([experiment.experiment_id])
    by_name = {}
    for r in runs:
        by_name.setdefault(r.data.tags["dvc_exp_name"], set()).add(r.data.params["model.depth"])
    assert sorted(by_name) == sorted(experiments(repo))
    assert sorted(depth for depths in by_name.values() for depth in depths) == ["2", "3"]
    assert len(runs) == 2 * 4  # per point: two parents, one seed run each


def test_running_the_study_again_computes_nothing(repo: Path) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the study's summary")  # HEAD moves past the points
    before = experiments(repo)
    queued = run(repo, "python -m pipeline.study queue")
    assert "nothing to queue" in queued.stderr
    run(repo, "dvc exp run --run-all --jobs 1")
    assert experiments(repo) == before
    summary = (repo / "reports" / "study" / "depth.md").read_text()
    run(repo, "python -m pipeline.study")
    assert (repo / "reports" / "study" / "depth.md").read_text() == summary


def test_a_new_depth_queues_only_that_point(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["study"]["depths"] = [2, 3, 4]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    queued = run(repo, "python -m pipeline.study queue")
    assert "already computed with these params and code: [2, 3]" in queued.stderr
    status = dvc(repo, "queue", "status").stdout
    assert status.count("Queued") == 1
    dvc(repo, "queue", "remove", "--all")
