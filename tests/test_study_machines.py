"""One study shared by two machines (docs/scale.md): two clones of one git
remote (a bare repository here), one DVC remote (a local folder) and one
MLflow store, each running `make study STUDY=lr SHARE=i/2`; each computes
only its share, and a summary on either clone reads every point."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import dvc, git, project_copy
from .test_study_e2e import study_commands

pytestmark = pytest.mark.slow

# The workspace's lr is 0.01. Machine 1 takes positions 1 and 3 (0.02, and the
# workspace's own point), machine 2 position 2 (0.03): one experiment each.
STUDY = {"lr": {"param": "train.lr", "values": [0.02, 0.03, 0.01], "fixed": {}}}


def run(repo: Path, command: str, store: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_RUN_ID"}
    env["MLFLOW_TRACKING_URI"] = store  # the team's one store (a server in docs/scale.md)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python, dvc
    done = subprocess.run(shlex.split(command), cwd=repo, env=env, capture_output=True, text=True,
                          check=False, timeout=1200)  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


def lr_of(rev: dict) -> float:
    return rev["data"]["params"]["params.yaml"]["data"]["train"]["lr"]


def experiments(repo: Path) -> dict[float, str]:
    shown = json.loads(dvc(repo, "exp", "show", "--json", "-A").stdout)
    return {lr_of(e["revs"][0]): e["name"] for b in shown for e in b.get("experiments") or []}


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("machines")
    first = project_copy(root / "one")
    params = yaml.safe_load((first / "params.yaml").read_text())
    params["train"].update(epochs=1, seeds=[0])
    params["studies"] = STUDY
    (first / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(first, "remote", "add", "-d", "shared", str(root / "dvc-remote"))
    git(first, "add", "-A")
    git(first, "commit", "-q", "-m", "an lr study on two machines")
    git(root, "init", "-q", "--bare", "origin.git")
    git(first, "remote", "add", "origin", str(root / "origin.git"))
    git(first, "push", "-q", "origin", "HEAD:refs/heads/main")
    git(root, "clone", "-q", "--branch", "main", str(root / "origin.git"), "two")
    second = root / "two"
    git(second, "config", "user.name", "test")  # DVC commits experiments as this user
    git(second, "config", "user.email", "test@example.com")
    return first, second, f"sqlite:///{root}/team-mlflow.db"


def test_each_machine_computes_its_share_and_either_summary_has_every_point(
    machines: tuple[Path, Path, str],
) -> None:
    first, second, store = machines
    logs = {}
    for repo, share in ((first, "1/2"), (second, "2/2")):
        outputs = [run(repo, c, store) for c in study_commands("STUDY=lr", f"SHARE={share}")]
        logs[share] = "".join(o.stderr for o in outputs)
    assert "dvc exp run --queue -S train.lr=0.02" in logs["1/2"]
    assert "dvc exp run --queue -S train.lr=0.03" in logs["2/2"]
    assert "0.03" not in logs["1/2"].split("dvc exp run --queue", 1)[1].split("\n", 1)[0]
    # The first machine's summary ran before the second had pushed: its point was missing.
    # The second pulled the first's point; the first pulls the second's now.
    run(first, "python -m pipeline.study summarize --study lr --pull origin", store)
    names = experiments(second)
    assert sorted(names) == [0.02, 0.03] and experiments(first) == names
    for repo in (first, second):
        summary = (repo / "reports" / "study" / "lr.md").read_text()
        assert "Points without results" not in summary
        for lr, name in names.items():
            assert f"| {lr} | {name} |" in summary
        assert "| 0.01 | workspace |" in summary
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("stage-test").experiment_id])
    tagged = {r.data.tags.get("study.lr") for r in runs}
    assert {"0.02", "0.03", "0.01"} <= tagged  # both machines' points, in the one store
    parents = {r.info.run_name for r in runs if "-seed" not in r.info.run_name}
    assert {"bn lr=0.02", "nobn lr=0.03", "bn"} <= parents
