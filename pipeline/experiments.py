"""DVC experiments as a study's points: reading `dvc exp show`, and deciding
which experiment is each point's and whether it is current.

A point's numbers (reports/statistics.json, reports/train/<variant>.json)
are made by the stages NUMBER_STAGES. What made them, their Recipe, is
those stages' entries in dvc.yaml, so the pipeline modules and the
params.yaml keys they list; nothing else (the data's files are not compared:
with `data.verify` the digests in the code pin them). The Recipe decides
every rule that reads a point's code: which params make two points the same
(`Recipe.comparable`), whether an experiment ran the workspace's code
(`same_recipe`), the commit a summary names (`code_commit`) and whether the
workspace's own point is current (`workspace_current`). Editing visualize, a
report module, a summary's wording or another stage's entry changes none of
them.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import paths
from pipeline.errors import PipelineError
from pipeline.nn.model import VARIANTS
from pipeline.params import StudyParams

log = logging.getLogger("study")

WORKSPACE = "workspace"  # the name of the point whose params are the workspace's
NUMBER_STAGES = ("train_bn", "train_nobn", "evaluate")  # the stages that make a point's numbers
DVC_YAML = "dvc.yaml"


@dataclass(frozen=True)
class Recipe:
    """What made a point's numbers: the entries of NUMBER_STAGES in dvc.yaml,
    parsed (a comment, or another stage's entry, is no part of it)."""

    stages: dict[str, Any]  # stage name -> its entry (cmd, deps, params, outs); None: absent

    @classmethod
    def parse(cls, dvc_yaml: str) -> Recipe:
        stages = (yaml.safe_load(dvc_yaml) or {}).get("stages") or {}
        return cls({name: stages.get(name) for name in NUMBER_STAGES})

    def _listed(self, field: str) -> list[str]:
        return sorted({entry for stage in self.stages.values() if stage
                       for entry in stage.get(field) or []})  # fmt: skip

    @property
    def code(self) -> list[str]:
        """The pipeline modules the stages depend on."""
        return [dep for dep in self._listed("deps") if dep.startswith("pipeline/")]

    @property
    def params(self) -> list[str]:
        """The params.yaml sections and keys the stages read ("model", "data.verify")."""
        return self._listed("params")

    def comparable(self, params: dict[str, Any]) -> dict[str, Any]:
        """The flattened params that make two experiments different points:
        those the stages read (not visualize's, the studies' or the paper's)."""
        read = self.params
        return {key: value for key, value in params.items()
                if any(key == k or key.startswith(f"{k}.") for k in read)}  # fmt: skip


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment (or the workspace), as `dvc exp show --json` has it."""

    name: str
    rev: str  # its commit
    created: str  # ISO timestamp
    state: str  # success | failed | queued | running
    params: dict[str, Any]  # params.yaml, flattened: {"model.depth": 10, ...}
    baseline: str = ""  # the commit it was run from ("" for the workspace)


@dataclass(frozen=True)
class Point:
    """One value of a study: the params its experiment must have."""

    study: str
    value: Any
    overrides: dict[str, Any]  # the study's param at `value`, and its fixed keys


def study_points(name: str, study: StudyParams) -> list[Point]:
    return [Point(name, value, study.fixed | {study.param: value}) for value in study.values]


def expected_params(point: Point, workspace: Experiment, recipe: Recipe) -> dict[str, Any]:
    return recipe.comparable(workspace.params | point.overrides)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (params.flatten does it for Params models)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _experiment(name: str, rev: dict, executor: dict | None, baseline: str = "") -> Experiment:
    """`executor` is DVC's queue record (absent for `dvc exp run` in place)."""
    data = rev.get("data") or {}
    state = (executor or {}).get("state") or "success"
    if rev.get("error") or not data:
        state = "failed"
    params = (data.get("params") or {}).get(str(paths.PARAMS_FILE), {}).get("data", {})
    return Experiment(name=name, rev=rev.get("rev", ""), created=data.get("timestamp") or "",
                      state=state, params=_flatten(params), baseline=baseline)  # fmt: skip


def parse_exp_show(shown: list[dict]) -> tuple[Experiment, list[Experiment]]:
    """The workspace and every experiment in `dvc exp show --json` output."""
    workspace, experiments = None, []
    for baseline in shown:
        if baseline.get("rev") == "workspace":
            workspace = _experiment(WORKSPACE, baseline, None)
        for entry in baseline.get("experiments") or []:
            revs = entry.get("revs") or []
            if revs:
                experiments.append(_experiment(entry.get("name") or revs[0].get("rev", ""),
                                               revs[0], entry.get("executor"),
                                               baseline.get("rev", "")))  # fmt: skip
    if workspace is None:
        raise PipelineError("`dvc exp show --json` listed no workspace: is this a DVC repository?")
    return workspace, experiments


SameCode = Callable[[str, Recipe], bool]  # same_recipe: whether a commit ran this recipe


def find(
    point: Point,
    workspace: Experiment,
    experiments: list[Experiment],
    recipe: Recipe,
    same_code: SameCode,
) -> Experiment | str:
    """The point's experiment: the workspace itself when its params are the
    point's; else the newest successful experiment with exactly its params
    and the workspace's recipe. Or why there is none: "running: <names>",
    "queued: ...", "failed: ...", "stale: <names> ran other code", "missing"."""
    wanted = expected_params(point, workspace, recipe)
    if wanted == recipe.comparable(workspace.params):
        return workspace
    same_params = sorted((e for e in experiments if recipe.comparable(e.params) == wanted),
                         key=lambda e: e.created)  # fmt: skip
    current = [e for e in same_params if same_code(e.rev, recipe)]
    succeeded = [e for e in current if e.state == "success"]
    if succeeded:
        return succeeded[-1]
    for state in ("running", "queued", "failed"):
        names = [e.name for e in current if e.state == state]
        if names:
            return f"{state}: {', '.join(names)}"
    if same_params:
        return f"stale: {', '.join(e.name for e in same_params)} ran other code"
    return "missing"


def to_compute(
    points: list[Point],
    workspace: Experiment,
    experiments: list[Experiment],
    recipe: Recipe,
    same_code: SameCode,
) -> list[Point]:
    """The points with no experiment of their params and the workspace's
    recipe that succeeded, waits in the queue or runs; each set of params
    once (studies may share a point)."""
    missing, seen = [], []
    for point in points:
        found = find(point, workspace, experiments, recipe, same_code)
        wanted = expected_params(point, workspace, recipe)
        waiting = isinstance(found, str) and found.startswith(("running", "queued"))
        if isinstance(found, Experiment) or waiting or wanted in seen:
            continue
        seen.append(wanted)
        missing.append(point)
    return missing


def chosen_points(
    name: str,
    study: StudyParams,
    workspace: Experiment,
    experiments: list[Experiment],
    recipe: Recipe,
    same_code: SameCode,
    current: bool = True,
) -> dict[Any, Experiment | str]:
    """Per value, the point's experiment (or the workspace, when `current`:
    its numbers are those of its recipe, params and data), or why none."""
    chosen = {}
    for point in study_points(name, study):
        found = find(point, workspace, experiments, recipe, same_code)
        if found is workspace and not current:
            found = "the workspace's outputs are not up to date (`dvc status`): run `make run`"
        chosen[point.value] = found
    return chosen


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False)


def recipe_at(rev: str | None = None) -> Recipe:
    """The recipe in dvc.yaml at commit `rev` (None: the workspace's); with no
    dvc.yaml there, one with no stages, which no point's numbers have."""
    if rev is None:
        return Recipe.parse(Path(DVC_YAML).read_text(encoding="utf-8"))
    done = _git("show", f"{rev}:{DVC_YAML}")
    return Recipe.parse(done.stdout if done.returncode == 0 else "")


def same_recipe(rev: str, recipe: Recipe, at: str | None = None) -> bool:
    """Whether commit `rev` makes numbers as `recipe`, the one at commit `at`
    (None: the workspace), says: the same stage entries in dvc.yaml, and the
    modules they list as they are at `at`."""
    if recipe_at(rev) != recipe:
        return False
    done = _git("diff", "--quiet", rev, *([at] if at else []), "--", *recipe.code)
    if done.returncode not in (0, 1):
        log.warning("git diff against %s failed, so it counts as other code: %s",
                    rev[:7], done.stderr.strip())  # fmt: skip
    return done.returncode == 0


def code_commit(point: Experiment, recipe: Recipe) -> str:
    """The commit whose recipe (the workspace's) the point ran: the last one,
    up to the commit it was run from (the workspace: HEAD), that changed it;
    "uncommitted changes" when the workspace's differs from HEAD's. Committing
    a summary, or a change to visualize or a report module, does not move it."""
    if not point.baseline and not same_recipe("HEAD", recipe):
        return "uncommitted changes"
    done = _git("log", "--format=%H %P", point.baseline or "HEAD", "--", DVC_YAML, *recipe.code)
    for line in done.stdout.splitlines():  # newest first
        commit, *parents = line.split()
        if not parents or not same_recipe(parents[0], recipe_at(commit), commit):
            return commit
    return point.baseline or "unknown"


def dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True,
                          check=False)  # fmt: skip


def dvc_failure(command: str, done: subprocess.CompletedProcess) -> PipelineError:
    lines = done.stderr.strip().splitlines() or ["no message"]
    return PipelineError(f"`dvc {command}` failed (exit {done.returncode}): {lines[-1]}")


def workspace_current() -> bool:
    """Whether the workspace's numbers are those of its recipe, params and
    data: `dvc status` of NUMBER_STAGES has nothing to report (visualize's
    outputs may be out of date)."""
    done = dvc("status", "--json", *NUMBER_STAGES)
    return done.returncode == 0 and not json.loads(done.stdout or "{}")


def exp_show() -> list[dict]:
    """Every experiment of every commit (-A): committing the study's summary
    moves HEAD, and its points stay valid while their recipe and params do
    not change."""
    done = dvc("exp", "show", "--json", "--all-commits")
    if done.returncode != 0:
        raise dvc_failure("exp show --json --all-commits", done)
    return json.loads(done.stdout)


def read_results(point: Experiment, read: Callable[[str, str], str]) -> dict | str:
    """The point's statistics.json and both train summaries; or what is
    missing. `read(path, rev)` returns a file's text at a commit."""
    results = {}
    wanted = {"statistics": paths.STATISTICS_FILE} | {
        variant: paths.TRAIN_REPORTS_DIR / f"{variant}.json" for variant in VARIANTS
    }
    missing = []
    for key, path in wanted.items():
        try:
            results[key] = json.loads(read(str(path), point.rev))
        except (FileNotFoundError, ValueError, KeyError):
            missing.append(str(path))
    if missing:
        return f"partial: no {', '.join(missing)} at {point.rev[:7]} ({point.name})"
    layers = results["bn"].get("layers", {})
    if "flat_fraction" not in layers or "bn_minus_nobn" not in results["statistics"]:
        return f"partial: {point.name} was made by an older pipeline (no layer diagnostics)"
    return results


def _read_at(path: str, rev: str) -> str:
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        return dvc.api.read(path, repo=".", rev=rev)
    except DvcException as err:  # not there, or not readable at that commit
        raise FileNotFoundError(f"{path}: {err}") from None


def _read_file(path: str, rev: str) -> str:
    """The workspace's own file (`rev` is the workspace's)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise FileNotFoundError(f"{path}: {err}") from None


def reader(point: Experiment) -> Callable[[str, str], str]:
    return _read_file if point.name == WORKSPACE else _read_at
