"""`dvc repro` end to end, in a temporary copy of the project, on synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import dvc, free_port, git, project_copy

pytestmark = pytest.mark.slow


def declared_outputs(dvc_yaml: dict) -> list[str]:
    outputs = []
    for stage in dvc_yaml["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                outputs.append(entry if isinstance(entry, str) else next(iter(entry)))
    return outputs


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = project_copy(tmp_path_factory.mktemp("e2e"))
    done = dvc(repo, "repro")
    assert done.returncode == 0, done.stdout + done.stderr
    return repo


def test_every_declared_output_exists(repo: Path) -> None:
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    outputs = declared_outputs(dvc_yaml)
    assert len(outputs) >= 12
    for output in outputs:
        path = repo / output
        assert path.exists(), output
        assert (path.is_file() and path.stat().st_size > 0) or any(path.iterdir()), output


def test_runs_land_in_the_default_store_with_one_execution_id(repo: Path) -> None:
    from mlflow.tracking import MlflowClient

    assert (repo / "mlflow.db").is_file() and (repo / "mlruns").is_dir()
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    experiment = client.get_experiment_by_name("stage-test")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [
        "bn", "bn-seed0", "bn-seed1", "nobn", "nobn-seed0", "nobn-seed1",
    ]  # fmt: skip
    assert len({r.data.tags["pipeline_run_id"] for r in runs}) == 1  # one `dvc repro`
    assert all("mlflow.source.git.commit" in r.data.tags for r in runs)


def test_dvc_metrics_and_plots_work_without_mlflow(repo: Path) -> None:
    shown = dvc(repo, "metrics", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    metrics = json.loads(shown.stdout)[""]["data"]
    assert set(metrics) == {"reports/metrics.json"}  # only what experiments compare
    compared = metrics["reports/metrics.json"]["data"]
    assert {variant: sorted(keys) for variant, keys in compared.items()} == {
        "bn": ["acc", "failed"], "nobn": ["acc", "failed"], "gain": ["acc", "p"],
    }  # fmt: skip
    plots = dvc(repo, "plots", "show", "--json")
    assert plots.returncode == 0, plots.stderr
    assert {"test_accuracy", "test_loss", "train_loss"} <= set(json.loads(plots.stdout)["data"])


def test_forced_rerun_gives_byte_identical_metrics(repo: Path) -> None:
    first = (repo / "reports" / "metrics.json").read_bytes()
    statistics = (repo / "reports" / "statistics.json").read_bytes()
    evaluation = (repo / "reports" / "evaluation.json").read_bytes()
    again = dvc(repo, "repro", "--force")
    assert again.returncode == 0, again.stderr
    assert "Running stage 'train_bn'" in again.stdout
    assert (repo / "reports" / "metrics.json").read_bytes() == first
    assert (repo / "reports" / "statistics.json").read_bytes() == statistics
    assert (repo / "reports" / "evaluation.json").read_bytes() == evaluation


def test_second_repro_runs_nothing(repo: Path) -> None:
    done = dvc(repo, "repro")
    assert done.returncode == 0, done.stderr
    assert "Running stage" not in done.stdout
    status = dvc(repo, "status", "--json")
    assert json.loads(status.stdout) == {}


def test_visualize_params_rerun_only_visualize(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["visualize"]["dpi"] = 50
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = dvc(repo, "repro")
    assert done.returncode == 0, done.stderr
    ran = [line.split("'")[1] for line in done.stdout.splitlines() if line.startswith("Running")]
    assert ran == ["visualize"]


def test_plain_mlflow_ui_in_the_repo_root_shows_the_runs(repo: Path) -> None:
    import signal
    import time
    import urllib.request

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow), "ui", "--host", "127.0.0.1", "--port", str(port)], cwd=repo, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def call(path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{base}{path}", data=data,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(0.5)
        experiment = call("/api/2.0/mlflow/experiments/get-by-name?experiment_name=stage-test")
        experiment_id = experiment["experiment"]["experiment_id"]
        runs = call("/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
        names = sorted({run["info"]["run_name"] for run in runs})
        assert names == ["bn", "bn-seed0", "bn-seed1", "nobn", "nobn-seed0", "nobn-seed1"]
        run_id = next(r["info"]["run_id"] for r in runs if r["info"]["run_name"] == "bn-seed0")
        history = call(f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=test_loss")
        assert [m["step"] for m in history["metrics"]] == [1, 2]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_push_then_pull_into_a_fresh_clone_needs_no_rerun(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"  # any DVC remote works the same: s3://..., ssh://...
    assert dvc(repo, "remote", "add", "--default", "store", str(remote)).returncode == 0
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "results")
    pushed = dvc(repo, "push")
    assert pushed.returncode == 0, pushed.stderr
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    assert not (clone / "data" / "models" / "bn").exists()
    pulled = dvc(clone, "pull")
    assert pulled.returncode == 0, pulled.stderr
    for output in declared_outputs(yaml.safe_load((clone / "dvc.yaml").read_text())):
        assert (clone / output).exists(), output
    for same in ("reports/report.html", "data/models/bn/seed0.pt", "data/raw/digests.json"):
        assert (clone / same).read_bytes() == (repo / same).read_bytes(), same
    again = dvc(clone, "repro")
    assert again.returncode == 0, again.stderr
    assert "Running stage" not in again.stdout
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}


# README, "Comparing experiments": the command that compares them at a glance.
EXP_SHOW = ["exp", "show", "--only-changed", "--drop", "data/|reports/"]


def on_a_terminal(repo: Path, columns: int, *args: str) -> str:
    """What `dvc <args>` prints on a terminal `columns` wide (DVC fits its
    tables to a terminal, collapsing what does not fit into `…`)."""
    import fcntl
    import pty
    import re
    import select
    import struct
    import termios
    import time

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PAGER")}
    env |= {"COLUMNS": str(columns), "TERM": "xterm", "DVC_PAGER": "cat"}
    shown = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                             stdin=child, stdout=child, stderr=child)  # fmt: skip
    os.close(child)
    output, deadline = b"", time.monotonic() + 60
    while True:
        ready, _, _ = select.select([main], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:  # a hung dvc fails the test instead of hanging it
            shown.kill()
            raise AssertionError(f"dvc {' '.join(args)} printed nothing for 60 s: {output!r}")
        try:
            chunk = os.read(main, 1 << 16)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert shown.wait(timeout=60) == 0, output.decode()
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode())


def test_exp_show_compares_experiments_at_a_glance_in_120_columns(repo: Path) -> None:
    done = dvc(repo, "exp", "run", "-S", "train.batch_size=16", "-S", "model.depth=5")
    assert done.returncode == 0, done.stdout + done.stderr
    table = on_a_terminal(repo, 120, *EXP_SHOW, "--no-pager")
    header = next(line for line in table.splitlines() if "Experiment" in line).split()
    # Every column DVC finds changed (a metric equal in both rows drops out) fits:
    columns = dvc(repo, *EXP_SHOW, "--csv").stdout.splitlines()[0].split(",")
    assert header == [c for c in columns if c not in ("rev", "typ")], table
    assert {"model.depth", "train.batch_size"} <= set(header)
    # which metrics differ depends on the rounding of a tiny run (100 test
    # images: an accuracy can come out equal); at least one does
    metrics = set(header[2:-2])
    assert metrics and metrics <= {"bn.acc", "bn.failed", "nobn.acc", "nobn.failed", "gain.acc",
                                   "gain.p"}, table  # fmt: skip
    assert "…" not in table
    assert max(len(line.rstrip()) for line in table.splitlines()) <= 120
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"dvc {' '.join(EXP_SHOW[:-1])} '{EXP_SHOW[-1]}'" in readme
