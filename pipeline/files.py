"""Writes that are all or nothing: a reader (or DVC) never sees half a file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())  # mkstemp's 0600 would make the result private
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_figure(figure: Any, path: Path, dpi: int) -> None:
    """A matplotlib Figure as PNG, written atomically."""
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))


def atomic_write_json(path: Path, data: Any, sort_keys: bool = True) -> None:
    """`data` as indented JSON; keys sorted unless `sort_keys` is false (then
    in the dict's own order, e.g. the column order of `dvc exp show`)."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys, allow_nan=False)  # NaN is not JSON
    atomic_write_text(path, text + "\n")


def read_json(path: Path, missing: str) -> Any:
    """The JSON in `path`; a PipelineError saying `missing` (what to run) when
    it is absent, or that it is damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; {missing}") from None
    except (OSError, ValueError) as err:
        raise PipelineError(f"{path}: unreadable ({err}); {missing}") from None


def staging_dir(target: Path) -> Path:
    """A new, empty folder beside `target` to build its next content in, after
    removing what a killed run may have left there (staging or old copies)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for pattern in (f".{target.name}-staging-*", f".{target.name}.old-*"):
        for stale in target.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-staging-", dir=target.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make the result private
    return staging


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished folder `new` to `target`, replacing what was there.

    Both live on one filesystem, so each step is a rename; the old folder is
    only deleted once the new one is in place, and restored if the move fails.
    """
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old)
