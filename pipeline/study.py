"""Named studies: how BatchNorm's gain changes with one param.

Each study in params.yaml `studies` varies one model or train key over its
`values`, with its `fixed` keys set in every point and everything else as in
the workspace. Every point is a normal DVC experiment, run by DVC's queue
(`make study`, or `make study STUDY=lr` for one):

    dvc repro                           # the workspace: the point every study shares
    python -m pipeline.study queue      # dvc exp run --queue -S 'train.lr=<values not computed>'
    dvc exp run --run-all --jobs 1      # runs the queue, one experiment at a time
    python -m pipeline.study summarize  # reports/study/<study>.md and .html; MLflow tags

A point is computed once for the same params and code: `queue` leaves out
the points that already have a successful (or queued, or running)
experiment with exactly the point's params and the workspace's stage code,
and the point whose params are the workspace's (its results are the
workspace's own). The summary reads the experiments of every commit through
`dvc exp show --json -A`, takes per point the newest successful one, and
reads its statistics (reports/statistics.json, reports/train/<variant>.json)
at its commit with `dvc.api.read`. Experiments with other params are never
picked up; those with a point's params but other code are named as stale.

Several machines share one study's points (docs/scale.md): `--share i/n`
queues only the values at positions i, i+n, ... of the study's list (the
workspace's own point left out: every machine has it); `push` sends this
machine's points to the git and DVC remotes (`dvc exp push`), and `--pull
<remote>` fetches every machine's first (`dvc exp pull`).
Plain `dvc repro` never runs a study.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import paths, tracking
from pipeline.cli import run_stage, stage_parser
from pipeline.errors import PipelineError
from pipeline.files import atomic_write_text, save_figure
from pipeline.nn.model import VARIANTS
from pipeline.params import Params, StudyParams, load_params
from pipeline.report import paper_report, study_report
from pipeline.report.document import render_html, render_markdown

log = logging.getLogger("study")

WORKSPACE = "workspace"  # the name of the point whose params are the workspace's
TAG_PREFIX = "study."  # MLflow tag per study: study.<name> = the point's value


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment (or the workspace), as `dvc exp show --json` has it."""

    name: str
    rev: str  # its commit
    created: str  # ISO timestamp
    state: str  # success | failed | queued | running
    params: dict[str, Any]  # params.yaml, flattened: {"model.depth": 10, ...}
    code: dict[str, str]  # the pipeline's modules and data/raw: path -> hash
    baseline: str = ""  # the commit it was run from ("" for the workspace)


@dataclass(frozen=True)
class Point:
    """One value of a study: the params its experiment must have."""

    study: str
    value: Any
    overrides: dict[str, Any]  # the study's param at `value`, and its fixed keys


def study_points(name: str, study: StudyParams) -> list[Point]:
    return [Point(name, value, study.fixed | {study.param: value}) for value in study.values]


def comparable(params: dict[str, Any]) -> dict[str, Any]:
    """The params that make two experiments different points (not the studies')."""
    return {key: value for key, value in params.items()
            if not key.startswith(("studies.", "paper."))}  # fmt: skip


def expected_params(point: Point, workspace: Experiment) -> dict[str, Any]:
    return comparable(workspace.params) | point.overrides


def what_differs(point: Point, workspace: Experiment) -> str:
    """ "depth=20", "lr=0.1 epochs=3": the point's params that are not the
    workspace's, by their last name; "" for the workspace's own point."""
    return " ".join(f"{key.rsplit('.', 1)[-1]}={_shown(value)}"
                    for key, value in sorted(point.overrides.items())
                    if workspace.params.get(key) != value)  # fmt: skip


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


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
    deps = data.get("deps") or {}
    code = {path: dep.get("hash") for path, dep in deps.items()
            if path.startswith("pipeline/") or path == str(paths.RAW_DIR)}  # fmt: skip
    return Experiment(name=name, rev=rev.get("rev", ""), created=data.get("timestamp") or "",
                      state=state, params=_flatten(params), code=code,
                      baseline=baseline)  # fmt: skip


def parse_exp_show(shown: list[dict]) -> tuple[Experiment, list[Experiment]]:
    """The workspace and every experiment in `dvc exp show --json` output."""
    workspace, experiments = None, []
    for baseline in shown:
        if baseline.get("rev") == "workspace":
            workspace = _experiment("workspace", baseline, None)
        for entry in baseline.get("experiments") or []:
            revs = entry.get("revs") or []
            if revs:
                experiments.append(_experiment(entry.get("name") or revs[0].get("rev", ""),
                                               revs[0], entry.get("executor"),
                                               baseline.get("rev", "")))  # fmt: skip
    if workspace is None:
        raise PipelineError("`dvc exp show --json` listed no workspace: is this a DVC repository?")
    return workspace, experiments


def find(
    point: Point,
    workspace: Experiment,
    experiments: list[Experiment],
    same_code: Callable[[Experiment], bool],
) -> Experiment | str:
    """The point's experiment: the workspace itself when its params are the
    point's; else the newest successful experiment with exactly its params
    and the workspace's code. Or why there is none: "running: <names>",
    "queued: ...", "failed: ...", "stale: <names> ran other code", "missing"."""
    wanted = expected_params(point, workspace)
    if wanted == comparable(workspace.params):
        return workspace
    same_params = sorted((e for e in experiments if comparable(e.params) == wanted),
                         key=lambda e: e.created)  # fmt: skip
    current = [e for e in same_params if same_code(e)]
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
    same_code: Callable[[Experiment], bool],
) -> list[Point]:
    """The points with no experiment of their params and the workspace's code
    that succeeded, waits in the queue or runs; each set of params once
    (studies may share a point). `same_code(e)` tells whether the code e's
    stages ran is the workspace's."""
    missing, seen = [], []
    for point in points:
        found = find(point, workspace, experiments, same_code)
        wanted = expected_params(point, workspace)
        waiting = isinstance(found, str) and found.startswith(("running", "queued"))
        if isinstance(found, Experiment) or waiting or wanted in seen:
            continue
        seen.append(wanted)
        missing.append(point)
    return missing


def share_of(values: list[Any], share: tuple[int, int] | None) -> list[Any]:
    """This machine's values: with share (i, n), those at positions i, i + n,
    ... (from 1) of the list (a study's values but the workspace's); every
    value without."""
    if share is None:
        return values
    i, n = share
    return [value for k, value in enumerate(values) if k % n == i - 1]


def queue_commands(points: list[Point], studies: dict[str, StudyParams]) -> list[list[str]]:
    """One `dvc exp run --queue` per study with points to compute: DVC's own
    sweep over the study's missing values (-S key=v1,v2), its fixed keys set."""
    commands = []
    for name, study in studies.items():
        values = [p.value for p in points if p.study == name]
        if not values:
            continue
        command = ["exp", "run", "--queue", "-S", f"{study.param}={','.join(map(_shown, values))}"]
        for key, value in study.fixed.items():
            command += ["-S", f"{key}={_shown(value)}"]
        commands.append(command)
    return commands


def same_code_as_workspace(e: Experiment) -> bool:
    """Whether the modules e's stages depend on, and dvc.yaml, are at e's
    commit what they are in the workspace (the study's own modules are not
    among them: changing the summary recomputes nothing)."""
    modules = [path for path in e.code if path.startswith("pipeline/")]
    done = subprocess.run(["git", "diff", "--quiet", e.rev, "--", "dvc.yaml", *modules],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode not in (0, 1):
        log.warning("git diff against %s (%s) failed, so it counts as other code: %s",
                    e.rev[:7], e.name, done.stderr.strip())  # fmt: skip
    return done.returncode == 0


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


def dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True,
                          check=False)  # fmt: skip


def _failure(command: str, done: subprocess.CompletedProcess) -> PipelineError:
    lines = done.stderr.strip().splitlines() or ["no message"]
    return PipelineError(f"`dvc {command}` failed (exit {done.returncode}): {lines[-1]}")


def exp_show() -> list[dict]:
    """Every experiment of every commit (-A): committing the study's summary
    moves HEAD, and its points stay valid while the stages' code and params
    do not change."""
    done = dvc("exp", "show", "--json", "--all-commits")
    if done.returncode != 0:
        raise _failure("exp show --json --all-commits", done)
    return json.loads(done.stdout)


def _read_at(path: str, rev: str) -> str:
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        return dvc.api.read(path, repo=".", rev=rev)
    except DvcException as err:  # not there, or not readable at that commit
        raise FileNotFoundError(f"{path}: {err}") from None


def code_commit(point: Experiment) -> str:
    """The commit whose stage code the point ran: the last one, up to the
    commit it was run from (the workspace: HEAD), that changed dvc.yaml or a
    module its stages depend on; "uncommitted changes" when the workspace
    differs from HEAD there. Committing a summary does not move it."""
    files = ["dvc.yaml", *(path for path in point.code if path.startswith("pipeline/"))]
    if not point.baseline:
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *files],
                                 capture_output=True, check=False)  # fmt: skip
        if changed.returncode == 1:
            return "uncommitted changes"
    done = subprocess.run(["git", "log", "-1", "--format=%H", point.baseline or "HEAD", "--",
                           *files], capture_output=True, text=True, check=False)  # fmt: skip
    return done.stdout.strip() or point.baseline or "unknown"


def workspace_current() -> bool:
    """Whether the workspace's outputs are those of its params, code and
    data (`dvc status` has nothing to report)."""
    done = dvc("status", "--json")
    return done.returncode == 0 and not json.loads(done.stdout or "{}")


def _read_file(path: str, rev: str) -> str:
    """The workspace's own file (`rev` is the workspace's)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise FileNotFoundError(f"{path}: {err}") from None


def reader(point: Experiment) -> Callable[[str, str], str]:
    return _read_file if point.name == WORKSPACE else _read_at


def queue(studies: dict[str, StudyParams], share: tuple[int, int] | None) -> None:
    workspace, experiments = parse_exp_show(exp_show())
    points = []
    for name, study in studies.items():  # the workspace's own point is nobody's share
        own = [p for p in study_points(name, study)
               if expected_params(p, workspace) != comparable(workspace.params)]  # fmt: skip
        mine = share_of([p.value for p in own], share)
        points += [p for p in own if p.value in mine]
    missing = to_compute(points, workspace, experiments, same_code_as_workspace)
    for name in studies:
        done = [p.value for p in points if p.study == name and p not in missing]
        if done:
            log.info("%s: computed, queued or the workspace's already: %s", name, done)
    if not missing:
        log.info("nothing to queue")
        return
    for command in queue_commands(missing, studies):
        log.info("dvc %s", " ".join(command))
        done = dvc(*command)
        if done.returncode != 0:
            raise _failure(" ".join(command), done)


def chosen_points(
    name: str,
    study: StudyParams,
    workspace: Experiment,
    experiments: list[Experiment],
    current: bool = True,
) -> dict[Any, Experiment | str]:
    """Per value, the point's experiment (or the workspace, when `current`:
    its outputs are those of its params and code), or why none."""
    chosen = {}
    for point in study_points(name, study):
        found = find(point, workspace, experiments, same_code_as_workspace)
        if found is workspace and not current:
            found = "the workspace's outputs are not up to date (`dvc status`): run `make run`"
        chosen[point.value] = found
    return chosen


def push(studies: dict[str, StudyParams], remote: str) -> None:
    """Send the studies' experiments made here to the git remote, and their
    outputs to the DVC remote (`dvc exp push`): other machines pull them."""
    workspace, experiments = parse_exp_show(exp_show())
    names = sorted({e.name for name, study in studies.items()  # the workspace is not pushed
                    for e in chosen_points(name, study, workspace, experiments).values()
                    if isinstance(e, Experiment) and e is not workspace})  # fmt: skip
    if not names:
        log.info("no experiment of %s to push", ", ".join(studies))
        return
    log.info("dvc exp push %s %s", remote, " ".join(names))
    done = dvc("exp", "push", remote, *names)
    if done.returncode != 0:
        raise _failure(f"exp push {remote}", done)


def pull(remote: str) -> None:
    """Fetch every experiment of the git remote, with its outputs (`dvc exp pull -A`)."""
    log.info("dvc exp pull -A %s", remote)
    done = dvc("exp", "pull", "--all-commits", remote)
    if done.returncode != 0:
        raise _failure(f"exp pull --all-commits {remote}", done)


@dataclass(frozen=True)
class Summary:
    """Where a study's summary goes and what builds it (see study_report.build)."""

    folder: Path
    build: Callable[..., tuple[list, dict]]
    command: str  # what computes its points


STUDIES = Summary(paths.STUDY_DIR, study_report.build, "make study STUDY={}")
PAPER = Summary(paths.PAPER_DIR, paper_report.build, "make paper")


def summarize(studies: dict[str, StudyParams], params: Params, summary: Summary = STUDIES) -> None:
    """Write each study's summary and tag its points' MLflow runs; refuse
    (writing nothing for it) a study with no point that has results, after
    summarizing the others."""
    workspace, experiments = parse_exp_show(exp_show())
    current = workspace_current()  # one `dvc status` for every study
    refused, tagging = [], []
    for name, study in studies.items():
        chosen = chosen_points(name, study, workspace, experiments, current)
        results = {v: read_results(p, reader(p)) if isinstance(p, Experiment) else p
                   for v, p in chosen.items()}  # fmt: skip
        points = {v: p for v, p in chosen.items() if isinstance(results[v], dict)}
        if not points:
            refused.append(
                f"no point of study {name} has results "
                f"({'; '.join(f'{_shown(v)}: {why}' for v, why in results.items())}): "
                f"run `{summary.command.format(name)}`"
            )
            continue
        names = {v: p.name for v, p in points.items()}
        commits = {v: code_commit(p) for v, p in points.items()}
        setting = comparable(workspace.params) | study.fixed
        blocks, figures = summary.build(name, study.param, results, names, setting, commits)
        folder = summary.folder
        folder.mkdir(parents=True, exist_ok=True)
        for figure_name, figure in figures.items():
            save_figure(figure, folder / figure_name, params.visualize.dpi)
        atomic_write_text(folder / f"{name}.md", render_markdown(blocks))
        atomic_write_text(folder / f"{name}.html", render_html(blocks, folder))
        log.info("wrote %s and %s", folder / f"{name}.md", folder / f"{name}.html")
        tagging.append((name, study, points))
    if tagging:  # after every summary is written: a dead server loses none of them
        tag_runs(tagging, workspace, params.tracking.experiment)
    if refused:
        raise PipelineError(*refused)


def tag_runs(
    studies: list[tuple[str, StudyParams, dict[Any, Experiment]]],
    workspace: Experiment,
    experiment: str,
) -> None:
    """Tag every run of each study's points (parents and seeds) `study.<name>`
    = the point's value, and name each point's parent runs by what differs
    from the workspace ("bn depth=20"), so `mlflow ui` can filter a study and
    tell its points apart. A run the store does not have is skipped with a
    warning."""
    uri = tracking.tracking_uri(os.environ, Path.cwd())
    with tracking.Tracker(uri, experiment) as tracker:
        for name, study, points in studies:
            for value, point in points.items():
                differs = what_differs(Point(name, value, study.fixed | {study.param: value}),
                                       workspace)  # fmt: skip
                tags = {f"{TAG_PREFIX}{name}": _shown(value)}
                for variant in VARIANTS:
                    runs_file = paths.MODELS_DIR / variant / paths.RUNS_NAME
                    try:
                        record = json.loads(reader(point)(str(runs_file), point.rev))
                    except (FileNotFoundError, ValueError) as err:
                        log.warning("%s (%s): no MLflow runs to tag: %s", point.name, variant, err)
                        continue
                    parent = record["parent_run_id"]
                    tracker.log_to_run(parent, tags=tags, name=f"{variant} {differs}".strip())
                    for run in record["runs"].values():
                        tracker.log_to_run(run["run_id"], tags=tags)


def share_argument(text: str) -> tuple[int, int]:
    """ "i/n", 1 <= i <= n: this machine's share of each study's values."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        i, n = 0, 0
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"{text!r}: must be i/n with 1 <= i <= n, e.g. 1/2")
    return i, n


def selected(params: Params, name: str | None, paper: bool = False) -> dict[str, StudyParams]:
    if paper:
        return {"paper": params.paper}
    if name is None:
        return dict(params.studies)
    if name not in params.studies:
        raise PipelineError(f"no study {name!r} in params.yaml; studies: "
                            f"{', '.join(params.studies) or 'none'}")  # fmt: skip
    return {name: params.studies[name]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=["summarize", "queue", "push"],
                        default="summarize",
                        help="queue the missing points, push them, or summarize (default)")  # fmt: skip
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--study", help="one study of params.yaml `studies` (default: all)")
    group.add_argument("--paper", action="store_true",
                       help="params.yaml `paper` (the BatchNorm paper's experiment), not `studies`")  # fmt: skip
    parser.add_argument("--share", type=share_argument, metavar="I/N",
                        help="queue only this machine's share of the values")  # fmt: skip
    parser.add_argument("--remote", default="origin", help="git remote for push (default origin)")
    parser.add_argument("--pull", metavar="REMOTE",
                        help="first pull every experiment from this git remote")  # fmt: skip
    args = parser.parse_args(argv)
    params = load_params(args.params)
    studies = selected(params, args.study, args.paper)
    if args.pull:
        pull(args.pull)
    if args.action == "queue":
        queue(studies, args.share)
    elif args.action == "push":
        push(studies, args.remote)
    else:
        summarize(studies, params, PAPER if args.paper else STUDIES)


if __name__ == "__main__":
    run_stage(main)
