"""`make study`'s commands on two tiny studies that share a point (one
epoch, one seed), through DVC's real queue, in a temporary copy of the project."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, dvc, git, project_copy

pytestmark = pytest.mark.slow

VENV = Path(sys.executable).parent.parent


def study_commands(*make_args: str) -> list[str]:
    """The commands `make study` runs (`make -n`), without the environment
    prefix that puts the venv first; the venv counts as installed."""
    stamp = VENV / ".installed"
    # Under `make test` this runs inside make: without its variables, a nested
    # make would print "Entering directory" lines and inherit its flags.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    command = ["make", "--no-print-directory", "-n", "-o", str(stamp), "study", f"VENV={VENV}"]
    done = subprocess.run([*command, *make_args], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    prefix = f'PATH="{VENV / "bin"}:$PATH" VIRTUAL_ENV="{VENV}" '
    return [" ".join(line.removeprefix(prefix).split()) for line in done.stdout.splitlines()]


def run(repo: Path, command: str, returncode: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_RUN_ID")}  # fmt: skip
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python, dvc
    done = subprocess.run(shlex.split(command), cwd=repo, env=env, capture_output=True, text=True,
                          check=False, timeout=1200)  # fmt: skip
    assert done.returncode == returncode, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


TINY_STUDIES = {  # the workspace has depth 3 and lr 0.01: depth 2 is shared by both studies
    "depth": {"param": "model.depth", "values": [2, 3], "fixed": {}},
    "lr": {"param": "train.lr", "values": [0.01, 1000.0], "fixed": {"model.depth": 2}},
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = project_copy(tmp_path_factory.mktemp("study"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(epochs=1, seeds=[0])
    params["studies"] = TINY_STUDIES
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-q", "-am", "tiny studies")
    for command in study_commands():
        run(repo, command)
    return repo


def experiments(repo: Path) -> dict[str, dict]:
    shown = json.loads(dvc(repo, "exp", "show", "--json", "-A").stdout)
    return {e["name"]: e["revs"][0] for b in shown for e in b.get("experiments") or []}


def setting(rev: dict) -> tuple[int, float]:
    params = rev["data"]["params"]["params.yaml"]["data"]
    return params["model"]["depth"], params["train"]["lr"]


def test_make_study_runs_the_workspace_the_queue_and_the_summaries() -> None:
    assert study_commands() == [
        "dvc repro",
        "python -m pipeline.study queue",
        "dvc exp run --run-all --jobs 1",
        "python -m pipeline.study summarize",
    ]
    assert study_commands("STUDY=lr", "SHARE=1/2", "REMOTE=up") == [
        "dvc repro",
        "python -m pipeline.study queue --study lr --share 1/2 --pull up",
        "dvc exp run --run-all --jobs 1",
        "python -m pipeline.study push --study lr --remote up",
        "python -m pipeline.study summarize --study lr --pull up",
    ]


def test_each_point_is_computed_once_and_the_workspace_is_shared(repo: Path) -> None:
    found = experiments(repo)
    assert sorted(setting(r) for r in found.values()) == [(2, 0.01), (2, 1000.0)]
    assert all(r["error"] is None for r in found.values())


def test_each_study_has_its_summary_with_the_shared_points(repo: Path) -> None:
    names = {setting(r): name for name, r in experiments(repo).items()}
    folder = repo / "reports" / "study"
    depth = (folder / "depth.md").read_text()
    assert f"| 2 | {names[2, 0.01]} |" in depth and "| 3 | workspace |" in depth
    lr = (folder / "lr.md").read_text()
    assert f"| 0.01 | {names[2, 0.01]} |" in lr and f"| 1000.0 | {names[2, 1000.0]} |" in lr
    assert "BatchNorm's gain goes from" in depth
    assert "model.depth = 2" in lr  # held fixed for the lr study
    # the last commit that changed the code (project_copy's; "tiny studies" changed params)
    code = git(repo, "log", "-1", "--format=%H", "--", "dvc.yaml", "pipeline").strip()[:7]
    assert f"Computed with the pipeline at commit {code} (depth = 2, 3)." in depth
    for study in ("depth", "lr"):
        for figure in (f"{study}_accuracy.png", f"{study}_diagnostics.png"):
            assert (folder / figure).read_bytes()[:4] == b"\x89PNG"
        page = (folder / f"{study}.html").read_text()
        assert page.count('src="data:image/png;base64,') == 2


def test_the_points_runs_carry_each_studys_tag_and_say_what_differs(repo: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    experiment = client.get_experiment_by_name("stage-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3 * 4  # per point: two parents, one seed run each
    parents = {r.info.run_name: r.data.tags for r in runs if "-seed" not in r.info.run_name}
    assert sorted(parents) == sorted(f"{v}{differs}" for v in ("bn", "nobn")
                                     for differs in ("", " depth=2", " depth=2 lr=1000.0"))  # fmt: skip
    studies = {name: {k: v for k, v in tags.items() if k.startswith("study.")}
               for name, tags in parents.items()}  # fmt: skip
    assert studies["bn"] == {"study.depth": "3"}
    assert studies["bn depth=2"] == {"study.depth": "2", "study.lr": "0.01"}  # shared
    assert studies["nobn depth=2 lr=1000.0"] == {"study.lr": "1000.0"}
    seeds = [r for r in runs if "-seed" in r.info.run_name]
    assert all(any(k.startswith("study.") for k in r.data.tags) for r in seeds)
    assert all(r.data.tags["outcome"] in ("learnt", "diverged", "not_learning") for r in seeds)


def test_running_the_studies_again_computes_nothing(repo: Path) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the summaries")  # HEAD moves past the points
    before = experiments(repo)
    written = summaries(repo)
    outputs = [run(repo, command) for command in study_commands()]
    assert "nothing to queue" in outputs[1].stderr
    assert experiments(repo) == before
    assert summaries(repo) == written


def summaries(repo: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in (repo / "reports" / "study").glob("*.md")}


def test_a_report_edit_queues_nothing_and_leaves_the_summaries(repo: Path) -> None:
    why = repo / "pipeline" / "report" / "why.py"
    original = why.read_text()
    why.write_text(original + "# a sentence reworded\n")  # visualize's outputs: out of date
    before, written = experiments(repo), summaries(repo)
    # `make study` but its `dvc repro` (which would redraw only visualize's
    # outputs; `make paper` has none): the workspace's point stays current too
    outputs = [run(repo, c) for c in study_commands() if c != "dvc repro"]
    assert "nothing to queue" in outputs[0].stderr
    assert experiments(repo) == before
    assert summaries(repo) == written  # the same numbers, the same commit of the code
    why.write_text(original)


def test_a_training_edit_makes_every_point_stale(repo: Path) -> None:
    training = repo / "pipeline" / "nn" / "training.py"
    original = training.read_text()
    training.write_text(original + "# a comment\n")
    names = {setting(r): name for name, r in experiments(repo).items()}
    written = summaries(repo)
    refused = run(repo, "python -m pipeline.study summarize", returncode=1).stderr
    workspace = "the workspace's outputs are not up to date (`dvc status`): run `make run`"
    assert (f"no point of study depth has results (2: stale: {names[2, 0.01]} ran other code; "
            f"3: {workspace}): run `make study STUDY=depth`") in refused  # fmt: skip
    assert (f"no point of study lr has results (0.01: stale: {names[2, 0.01]} ran other code; "
            f"1000.0: stale: {names[2, 1000.0]} ran other code)") in refused  # fmt: skip
    assert summaries(repo) == written  # refused: nothing written
    queued = run(repo, "python -m pipeline.study queue").stderr
    assert "dvc exp run --queue -S model.depth=2\n" in queued  # the point both studies share
    assert "dvc exp run --queue -S train.lr=1000.0 -S model.depth=2\n" in queued
    assert dvc(repo, "queue", "status").stdout.count("Queued") == 2
    dvc(repo, "queue", "remove", "--all")
    training.write_text(original)


def test_a_new_value_queues_only_that_point(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["studies"]["depth"]["values"] = [2, 3, 4]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    queued = run(repo, "python -m pipeline.study queue")
    assert "dvc exp run --queue -S model.depth=4" in queued.stderr
    status = dvc(repo, "queue", "status").stdout
    assert status.count("Queued") == 1
    dvc(repo, "queue", "remove", "--all")
