"""A team's tracking server: `mlflow server` on PostgreSQL, artifacts served by it.

The test starts its own PostgreSQL cluster in a temporary folder on a free
loopback port (Debian's postgresql package; .ci/run installs it), then an
MLflow server against it, trains with MLFLOW_TRACKING_URI pointing there,
and reads everything back through the server.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline import paths
from pipeline.checkpoint import load_checkpoint
from pipeline.mnist import load_split
from pipeline.training import scale_images

from .conftest import free_port, run_stages

pytestmark = pytest.mark.postgres


def postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        pytest.fail(f"PostgreSQL's {name} not found: apt-get install postgresql (as .ci/run does)"
                    " or deselect with -m 'not postgres'")  # fmt: skip
    return found[-1]


def wait_until(ready, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} did not come up in {timeout} s"
        time.sleep(0.5)


def as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: CI runs as root, so drop to `postgres`."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server; yields the SQLAlchemy URI of an empty database."""
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    run = as_postgres_user()
    subprocess.run([*run, postgres_bin("initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)  # fmt: skip
    server = subprocess.Popen(
        [*run, postgres_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(folder),
         "-c", "listen_addresses=127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        import psycopg  # the [server] extra's driver, as mlflow server uses it

        address = f"postgresql://mlflow@127.0.0.1:{port}"

        def accepting() -> bool:
            try:
                psycopg.connect(f"{address}/postgres").close()
                return True
            except psycopg.OperationalError:
                return False

        wait_until(accepting, "PostgreSQL")
        with psycopg.connect(f"{address}/postgres", autocommit=True) as admin:
            admin.execute("CREATE DATABASE mlflow")
        yield f"{address}/mlflow"
    finally:
        os.killpg(server.pid, signal.SIGINT)  # PostgreSQL's "fast shutdown"
        server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on the database, serving artifacts from its own folder."""
    artifacts = tmp_path_factory.mktemp("served-artifacts")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
               postgres, "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
    log = (artifacts.parent / "mlflow-server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, Path(log.name).read_text()[-3000:]
        with contextlib.suppress(OSError):
            return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
        return False

    try:
        wait_until(healthy, "mlflow server", timeout=120)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def trained(tracking_server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("server-run")
    run_stages(root, ["train_bn", "train_nobn"], tracking_uri=tracking_server)
    return root


def runs_of(root: Path, variant: str) -> dict:
    return json.loads((root / paths.MODELS_DIR / variant / paths.RUNS_NAME).read_text())


def test_runs_are_on_the_server(trained: Path, tracking_server: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("stage-test")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [
        "bn", "bn-seed0", "bn-seed1", "nobn", "nobn-seed0", "nobn-seed1",
    ]  # fmt: skip
    assert all(r.info.status == "FINISHED" for r in runs)
    assert runs_of(trained, "bn")["tracking_uri"] == tracking_server
    run_id = runs_of(trained, "nobn")["runs"]["1"]["run_id"]
    history = client.get_metric_history(run_id, "test_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")


def test_checkpoints_come_back_through_the_server(
    trained: Path, tracking_server: str, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_server)
    run_id = runs_of(trained, "bn")["runs"]["0"]["run_id"]
    names = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    assert names == ["checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"]
    fetched = client.download_artifacts(run_id, "checkpoints/epoch_002.pt", str(tmp_path))
    served, _ = load_checkpoint(Path(fetched))
    local, _ = load_checkpoint(trained / paths.MODELS_DIR / "bn" / "seed0.pt")
    for a, b in zip(served.state_dict().values(), local.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_logged_model_loads_from_the_server(trained: Path, tracking_server: str) -> None:
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(tracking_server)
    logged = mlflow.pytorch.load_model(runs_of(trained, "nobn")["runs"]["0"]["model_uri"])
    local, _ = load_checkpoint(trained / paths.MODELS_DIR / "nobn" / "seed0.pt")
    images, _ = load_split(trained / paths.RAW_DIR, train=False)
    x = scale_images(images[:8])
    with torch.no_grad():
        assert torch.equal(logged(x).argmax(1), local(x).argmax(1))
