"""Shared fixtures: the committed params, and small synthetic MNIST-shaped data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.data import mnist
from pipeline.data.mnist import file_digests
from pipeline.data.sources import images_idx, labels_idx

REPO = Path(__file__).resolve().parents[1]


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, 28, 28) uint8 images whose class is easy to learn, and their labels:
    class k lights a bright horizontal band at rows 2k..2k+3, over faint noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(count, 28, 28))
    for index, label in enumerate(labels):
        images[index, 2 * label : 2 * label + 4, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_synthetic_idx(folder: Path, n_train: int = 200, n_test: int = 100) -> dict[str, str]:
    """Write the four IDX files of a synthetic MNIST into `folder`; return their digests."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = synthetic_digits(count, seed)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(images_idx(images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(labels_idx(labels))
    return file_digests(folder)


def tiny_params(local_dir: Path) -> dict:
    """The committed params with a small network, two epochs, two seeds, on local data."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="local", local_dir=str(local_dir))
    params["model"].update(depth=3, width=16)
    params["train"].update(epochs=2, batch_size=32, lr=0.01, seeds=[0, 1], device="cpu")
    params["visualize"].update(distribution_images=50, dpi=40)
    params["tracking"]["experiment"] = "stage-test"
    return params


def run_stages(
    root: Path, stages: list[str], tracking_uri: str | None = None, env: Mapping[str, str] = {}
) -> None:
    """Run `download`, then the given stages in process, in the folder `root`,
    on synthetic data (made canonical for the run), logging to `tracking_uri`
    (default: a SQLite store in root/store), with `env` added to the environment."""
    from pipeline import download, evaluate, train, visualize

    mains = {
        "train_bn": lambda: train.main(["--variant", "bn"]),
        "train_nobn": lambda: train.main(["--variant", "nobn"]),
        "evaluate": lambda: evaluate.main([]),
        "visualize": lambda: visualize.main([]),
    }
    source = root / "source"
    digests = write_synthetic_idx(source)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mnist, "CANONICAL_SHA256", digests)
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri or f"sqlite:///{root}/store/mlflow.db")
        mp.setenv("PIPELINE_RUN_ID", "test-execution")
        for name, value in env.items():
            mp.setenv(name, value)
        if not (root / "params.yaml").exists():
            (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(source)))
        download.main([])
        for stage in stages:
            mains[stage]()


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary repo where both variants were trained on synthetic data."""
    root = tmp_path_factory.mktemp("stage")
    run_stages(root, ["train_bn", "train_nobn"])
    return root


@pytest.fixture(scope="session")
def reported(workspace: Path) -> Path:
    """The same repo after `evaluate` and `visualize`."""
    run_stages(workspace, ["evaluate", "visualize"])
    return workspace


@pytest.fixture(scope="session")
def client(workspace: Path):
    """An MLflow client on the workspace's store."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{workspace}/store/mlflow.db")


@pytest.fixture
def params_dict() -> dict:
    """The committed params.yaml as a dict, to modify per test."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def synthetic_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with synthetic IDX files, made canonical for the test's duration."""
    folder = tmp_path / "synthetic-source"
    digests = write_synthetic_idx(folder)
    monkeypatch.setattr(mnist, "CANONICAL_SHA256", digests)
    return folder


@pytest.fixture
def in_tmp_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run with a copy of params.yaml in an empty temporary working folder."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    monkeypatch.chdir(work)
    return work


def project_files() -> list[str]:
    """What a clone would hold: tracked files plus new, not ignored ones."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    return [name for name in listed if name and (REPO / name).is_file()]


def dvc(repo: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_RUN_ID")}  # fmt: skip
    # Stages run `python -m pipeline.<stage>`: this interpreter's, so its packages.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                          capture_output=True, text=True, check=False, timeout=timeout)  # fmt: skip


def free_port() -> int:
    """A loopback TCP port nothing listens on (for a server a test starts, or a dead one)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def project_copy(root: Path) -> Path:
    """The project as a fresh clone would hold it, committed in a new git repo
    at root/repo, with tiny params on synthetic local digits (root/digits)."""
    repo = root / "repo"
    for name in project_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    (repo / "dvc.lock").unlink(missing_ok=True)  # a fresh project: nothing ran yet
    source = root / "digits"
    write_synthetic_idx(source)
    params = tiny_params(source)
    params["data"]["verify"] = False  # synthetic digits are not MNIST
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "init", "-q")
    git(repo, "config", "user.name", "test")  # DVC commits experiments as this user
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "copy")
    return repo
