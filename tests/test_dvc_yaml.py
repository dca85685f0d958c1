"""dvc.yaml tells the truth: each stage depends on exactly the project modules
it imports, runs its module, and names params that exist."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.params import flatten, load_params

from .conftest import REPO

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]


def imported_modules(module: str) -> list[str]:
    """Files of the `pipeline` package that importing `module` loads: its
    modules, and the `__init__.py` of each subpackage on the way to them
    (the top package's own, which holds no code, left out)."""
    code = (
        "import importlib, json, sys; importlib.import_module(sys.argv[1]); "
        "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() "
        "if n.split('.')[0] == 'pipeline' and n != 'pipeline')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, module], cwd=REPO, capture_output=True, text=True, check=True
    )
    files = {Path(name).resolve().relative_to(REPO).as_posix() for name in json.loads(done.stdout)}
    return sorted(files)


def test_a_subpackage_counts_with_its_init() -> None:
    assert imported_modules("pipeline.nn.model") == [
        "pipeline/nn/__init__.py",
        "pipeline/nn/model.py",
    ]


def stage_module(stage: dict) -> str:
    command = stage["cmd"].split()
    assert command[:2] == ["python", "-m"], "stages run as `python -m pipeline.<stage>`"
    return command[2]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_exactly_the_code_it_imports(name: str) -> None:
    stage = STAGES[name]
    code_deps = sorted(d for d in stage["deps"] if d.startswith("pipeline/"))
    assert code_deps == imported_modules(stage_module(stage))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_exist(name: str) -> None:
    params = load_params(REPO / "params.yaml")
    keys = set(flatten(params))
    sections = set(type(params).model_fields)
    for entry in STAGES[name].get("params", []):
        assert entry in sections or entry in keys, f"{name}: unknown params entry {entry}"


def test_download_writes_where_training_reads() -> None:
    from pipeline import paths

    assert STAGES["download"]["outs"] == [str(paths.RAW_DIR)]


def test_plain_repro_is_the_five_stages_and_never_the_study() -> None:
    assert sorted(STAGES) == ["download", "evaluate", "train_bn", "train_nobn", "visualize"]
    assert not any("study" in stage["cmd"] for stage in STAGES.values())
