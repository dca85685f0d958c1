"""Shared fixtures: the committed params, and small synthetic MNIST-shaped data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import mnist
from pipeline.mnist import file_digests
from pipeline.sources import images_idx, labels_idx

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
