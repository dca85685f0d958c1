"""MNIST as published: the four IDX files, their canonical SHA-256, and the
one loader training uses (torchvision's, so there is no IDX parser of ours)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import paths
from pipeline.errors import PipelineError
from pipeline.files import read_json

if TYPE_CHECKING:  # torch is only needed once data is loaded, not to download it
    import torch

# SHA-256 of the original, uncompressed files (LeCun et al., 1998).
CANONICAL_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FILENAMES = tuple(CANONICAL_SHA256)


@dataclass(frozen=True)
class Mnist:
    train_images: torch.Tensor  # (60000, 28, 28) uint8
    train_labels: torch.Tensor  # (60000,) int64
    test_images: torch.Tensor  # (10000, 28, 28) uint8
    test_labels: torch.Tensor  # (10000,) int64


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of each of the four files in `folder` (all must exist)."""
    return {name: sha256_file(folder / name) for name in FILENAMES}


def digest_mismatches(digests: dict[str, str]) -> list[str]:
    """One line per file whose digest is not the canonical one."""
    return [
        f"{name}: SHA-256 {digests[name]} does not match the canonical {expected}"
        for name, expected in CANONICAL_SHA256.items()
        if digests.get(name) != expected
    ]


def digests_record(digests: dict[str, str], verified: bool) -> str:
    """The digests file's content: deterministic, so equal data hashes equal in DVC."""
    return json.dumps({"sha256": digests, "verified": verified}, indent=2, sort_keys=True) + "\n"


def load_split(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split, read by
    torchvision from `root`/MNIST/raw."""
    from torchvision.datasets import MNIST  # heavy import, only where data is read

    try:
        split = MNIST(str(root), train=train, download=False)
    except RuntimeError as err:
        raise PipelineError(
            f"{root}/MNIST/raw: cannot read MNIST ({err}); run `dvc repro download`"
        ) from None
    return split.data, split.targets


def load_mnist(root: Path) -> Mnist:
    """Train and test images and labels."""
    return Mnist(*load_split(root, train=True), *load_split(root, train=False))


@dataclass(frozen=True)
class DeviceData:
    """Images as (N, 784) float32 in [0, 1] and labels as (N,) int64, on one device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def scale_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) images become float32 (N, 784) in [0, 1], as ToTensor gives."""
    return images.flatten(1).float().div_(255)


def to_device(data: Mnist, device: torch.device) -> DeviceData:
    """Both splits on `device`, images scaled as `scale_images` does."""
    return DeviceData(
        scale_images(data.train_images.to(device)),
        data.train_labels.to(device),
        scale_images(data.test_images.to(device)),
        data.test_labels.to(device),
    )


def verified_digests(raw_dir: Path, verify: bool) -> dict[str, str]:
    """Digests of the files about to be trained on. Refuses files that differ
    from what download recorded (truncated, edited, swapped), and, with
    data.verify, anything that is not MNIST as published."""
    mnist_dir = raw_dir / paths.MNIST_SUBDIR
    recorded = read_json(raw_dir / paths.DIGESTS_NAME, "run `dvc repro download`")["sha256"]
    try:
        digests = file_digests(mnist_dir)
    except FileNotFoundError as err:
        raise PipelineError(f"{err.filename}: missing; run `dvc repro download`") from None
    problems = [
        f"{mnist_dir / name}: SHA-256 {digest} differs from {recorded.get(name)} recorded at "
        "download (the file was changed or truncated)"
        for name, digest in digests.items()
        if digest != recorded.get(name)
    ]
    if verify and not problems:
        problems = [f"{mnist_dir}/{problem}" for problem in digest_mismatches(digests)]
    if problems:
        raise PipelineError(
            *problems,
            "training refuses this data: restore it with `dvc checkout data/raw` "
            "or `dvc repro -f download`",
        )
    return digests
