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
experiment with exactly the point's params and the workspace's recipe, and
the point whose params are the workspace's (its results are the workspace's
own). A point's recipe is what made its numbers: the entries in dvc.yaml of
the train and evaluate stages, the modules and params keys they list
(pipeline/experiments.py); editing visualize, a report module or a summary
queues nothing. The summary reads the experiments of every commit through
`dvc exp show --json -A`, takes per point the newest successful one, and
reads its statistics (reports/statistics.json, reports/train/<variant>.json)
at its commit with `dvc.api.read`. Experiments with other params are never
picked up; those with a point's params but another recipe are named as stale.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import paths, tracking
from pipeline.cli import run_stage, stage_parser
from pipeline.errors import PipelineError
from pipeline.experiments import (
    Experiment,
    Point,
    chosen_points,
    code_commit,
    dvc,
    dvc_failure,
    exp_show,
    expected_params,
    parse_exp_show,
    read_results,
    reader,
    recipe_at,
    same_recipe,
    study_points,
    to_compute,
    workspace_current,
)
from pipeline.files import atomic_write_text, save_figure
from pipeline.nn.model import VARIANTS
from pipeline.params import Params, StudyParams, load_params
from pipeline.report import paper_report, study_report
from pipeline.report.document import render_html, render_markdown

log = logging.getLogger("study")

TAG_PREFIX = "study."  # MLflow tag per study: study.<name> = the point's value


def what_differs(point: Point, workspace: Experiment) -> str:
    """ "depth=20", "lr=0.1 epochs=3": the point's params that are not the
    workspace's, by their last name; "" for the workspace's own point."""
    return " ".join(f"{key.rsplit('.', 1)[-1]}={_shown(value)}"
                    for key, value in sorted(point.overrides.items())
                    if workspace.params.get(key) != value)  # fmt: skip


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


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


def queue(studies: dict[str, StudyParams], share: tuple[int, int] | None) -> None:
    workspace, experiments = parse_exp_show(exp_show())
    recipe = recipe_at()
    own_params = recipe.comparable(workspace.params)
    points = []
    for name, study in studies.items():  # the workspace's own point is nobody's share
        own = [p for p in study_points(name, study)
               if expected_params(p, workspace, recipe) != own_params]  # fmt: skip
        mine = share_of([p.value for p in own], share)
        points += [p for p in own if p.value in mine]
    missing = to_compute(points, workspace, experiments, recipe, same_recipe)
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
            raise dvc_failure(" ".join(command), done)


def push(studies: dict[str, StudyParams], remote: str) -> None:
    """Send the studies' experiments made here to the git remote, and their
    outputs to the DVC remote (`dvc exp push`): other machines pull them."""
    workspace, experiments = parse_exp_show(exp_show())
    recipe = recipe_at()
    names = sorted({e.name for name, study in studies.items()  # the workspace is not pushed
                    for e in chosen_points(name, study, workspace, experiments, recipe,
                                           same_recipe).values()
                    if isinstance(e, Experiment) and e is not workspace})  # fmt: skip
    if not names:
        log.info("no experiment of %s to push", ", ".join(studies))
        return
    log.info("dvc exp push %s %s", remote, " ".join(names))
    done = dvc("exp", "push", remote, *names)
    if done.returncode != 0:
        raise dvc_failure(f"exp push {remote}", done)


def pull(remote: str) -> None:
    """Fetch every experiment of the git remote, with its outputs (`dvc exp pull -A`)."""
    log.info("dvc exp pull -A %s", remote)
    done = dvc("exp", "pull", "--all-commits", remote)
    if done.returncode != 0:
        raise dvc_failure(f"exp pull --all-commits {remote}", done)


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
    recipe = recipe_at()
    current = workspace_current()  # one `dvc status` for every study
    refused, tagging = [], []
    for name, study in studies.items():
        chosen = chosen_points(name, study, workspace, experiments, recipe, same_recipe, current)
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
        commits = {v: code_commit(p, recipe) for v, p in points.items()}
        setting = recipe.comparable(workspace.params) | study.fixed
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
    tracker = tracking.Tracker(uri, experiment)
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
