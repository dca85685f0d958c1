"""requirements.lock: pyproject.toml's dependencies pinned with hashes
(`make lock`), what `make setup` installs, and so what every run uses."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"


def locked(text: str) -> dict[str, tuple[Requirement, list[str]]]:
    """Each entry of a hashed requirements file: name -> (its `name==version ;
    marker` requirement, its hashes). Continuation lines are joined; comments
    (uv's `# via ...`) dropped."""
    entries = {}
    for entry in text.replace("\\\n", " ").splitlines():
        entry = entry.split("#", 1)[0].strip()
        if not entry:
            continue
        requirement, *options = entry.split(" --")
        parsed = Requirement(requirement)
        hashes = [o.removeprefix("hash=").strip() for o in options if o.startswith("hash=")]
        entries[canonicalize_name(parsed.name)] = (parsed, hashes)
    return entries


def pin(requirement: Requirement) -> str:
    (specifier,) = requirement.specifier
    assert specifier.operator == "==", f"{requirement}: not pinned"
    return specifier.version


@pytest.fixture(scope="module")
def lock() -> dict[str, tuple[Requirement, list[str]]]:
    return locked(LOCK.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def declared(pyproject: dict) -> list[Requirement]:
    """The project's dependencies and those of its extras (dev, server)."""
    project = pyproject["project"]
    lines = project["dependencies"] + [d for ds in project["optional-dependencies"].values()
                                       for d in ds]  # fmt: skip
    return [Requirement(line) for line in lines]


def test_every_dependency_is_locked_at_a_version_its_range_allows(lock, pyproject) -> None:
    requirements = declared(pyproject)
    assert {"torch", "mlflow", "dvc", "pytest", "psycopg"} <= {r.name for r in requirements}
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement}: not in requirements.lock; run `make lock`"
        version = pin(lock[name][0])
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{requirement}: requirements.lock has {version}; run `make lock`"
        )


def test_the_extras_the_project_asks_for_are_locked_too(lock, pyproject) -> None:
    # mlflow[auth], psycopg[binary]: what each extra adds (from the installed
    # package's metadata) must be in the lock as well
    asked = [r for r in declared(pyproject) if r.extras]
    assert asked
    for requirement in asked:
        for line in importlib.metadata.requires(requirement.name) or []:
            needed = Requirement(line)
            if needed.marker is None or not any(
                needed.marker.evaluate({"extra": extra}) for extra in requirement.extras
            ):
                continue
            name = canonicalize_name(needed.name)
            assert name in lock, f"{requirement} needs {needed}: not in requirements.lock"
            assert needed.specifier.contains(pin(lock[name][0]), prereleases=True), needed


def test_every_locked_package_is_pinned_with_sha256_hashes(lock) -> None:
    assert len(lock) > 100
    for name, (requirement, hashes) in lock.items():
        pin(requirement)
        assert hashes, f"{name}: no hash"
        assert all(h.startswith("sha256:") and len(h) == len("sha256:") + 64 for h in hashes)


def test_the_lock_holds_the_torch_pair_of_the_numbers(lock, pyproject) -> None:
    for line in pyproject["tool"]["uv"]["constraint-dependencies"]:
        constraint = Requirement(line)
        assert pin(lock[canonicalize_name(constraint.name)][0]) == pin(constraint)


def test_this_environment_is_the_lock(lock) -> None:
    # `make setup` installs exactly the lock: every entry whose marker holds
    # here is installed at its version (CI builds its venv the same way)
    wrong = []
    for name, (requirement, _) in lock.items():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "missing"
        if installed != pin(requirement):
            wrong.append(f"{name} {installed} (locked {pin(requirement)})")
    assert not wrong, f"not the locked versions (run `make setup`): {', '.join(wrong)}"


def test_hand_made_lock_entries_are_read() -> None:
    text = (
        "# header\n"
        "torch==2.14.1 \\\n"
        "    --hash=sha256:" + "a" * 64 + " \\\n"
        "    --hash=sha256:" + "b" * 64 + "\n"
        "    # via batchnorm-mnist (pyproject.toml)\n"
        "colorama==0.4.6 ; sys_platform == 'win32' \\\n"
        "    --hash=sha256:" + "c" * 64 + "\n"
    )
    entries = locked(text)
    assert list(entries) == ["torch", "colorama"]
    assert pin(entries["torch"][0]) == "2.14.1" and len(entries["torch"][1]) == 2
    assert str(entries["colorama"][0].marker) == 'sys_platform == "win32"'


@pytest.mark.network
def test_make_lock_twice_changes_nothing(tmp_path: Path) -> None:
    # uv resolves against the package index: the lock's versions are kept
    # where the ranges allow them, so refreshing an up-to-date lock is a no-op
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    before = LOCK.read_bytes()
    for _ in range(2):
        done = subprocess.run(["make", "--no-print-directory", "lock"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert (tmp_path / "requirements.lock").read_bytes() == before
