"""Imports run one way: the stages over report/ and tracking/, over nn/, over
data/, over the edge modules; and what the train and evaluate stages run
formats no report."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from .conftest import REPO

# The edge: what every layer may use. Everything else at the top of
# `pipeline/` is a stage or a command (train, evaluate, study, ...).
EDGE = {"cli", "errors", "files", "format", "lineage", "params", "paths", "results", "stats"}
LAYERS = {"edge": 0, "data": 1, "nn": 2, "report": 3, "tracking": 3, "stages": 4}


def layer(module: str) -> str:
    """The layer of a module of the `pipeline` package, by dotted name."""
    parts = module.split(".")[1:]  # without "pipeline"
    if not parts or parts[0] in EDGE:
        return "edge"
    if parts[0] in ("data", "nn", "report", "tracking"):
        return parts[0]
    return "stages"


def imports(path: Path, package: str) -> set[str]:
    """The `pipeline` modules a file imports anywhere in it (in functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))  # fmt: skip
            found.add(base)
            # `from pipeline import tracking` names a subpackage
            found |= {f"{base}.{alias.name}" for alias in node.names if base == "pipeline"}
    return {name for name in found if name == "pipeline" or name.startswith("pipeline.")}


def upward_imports(root: Path) -> list[str]:
    """Every import of a module from a higher layer, or across report/ and
    tracking/, in the package at root/pipeline: "importer -> imported"."""
    wrong = []
    for path in sorted((root / "pipeline").rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        mine = layer(name)
        for imported in imports(path, package):
            theirs = layer(imported)
            if imported == "pipeline" or theirs == mine:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{name} -> {imported}")
    return wrong


def test_no_import_runs_back_up() -> None:
    assert upward_imports(REPO) == []


def test_an_import_that_runs_back_up_is_found(tmp_path: Path) -> None:
    for name, code in {
        "pipeline/__init__.py": "",
        "pipeline/nn/__init__.py": "",
        "pipeline/nn/history.py": "from pipeline.stats import mean_std\n"
        "def f():\n    from pipeline.report import stats_text\n",
        "pipeline/data/mnist.py": "from pipeline import tracking\n",
        "pipeline/report/why.py": "from ..tracking import store\nfrom pipeline.nn import model\n",
        "pipeline/stats.py": "import pipeline.train\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(code)
    assert upward_imports(tmp_path) == [
        "pipeline.data.mnist -> pipeline.tracking",
        "pipeline.nn.history -> pipeline.report",
        "pipeline.report.why -> pipeline.tracking",
        "pipeline.stats -> pipeline.train",
    ]


def test_what_makes_the_numbers_formats_no_report() -> None:
    # A report module edited must not retrain or re-evaluate anything (nor
    # make a study's points stale): the stages that compute numbers never
    # depend on one. accuracy.md's table comes from edge modules.
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("train_bn", "train_nobn", "evaluate"):
        deps = [d for d in stages[name]["deps"] if d.startswith("pipeline/")]
        assert deps and not [d for d in deps if d.startswith("pipeline/report/")], name
