"""The depth study: when does BatchNorm start to matter?

Every point of the study is a normal DVC experiment: the pipeline with
`model.depth` set to one of `study.depths` (params.yaml) and everything else
as in the workspace. DVC runs them (`make study`):

    python -m pipeline.study queue    # dvc exp run --queue -S 'model.depth=<the depths not yet computed>'
    dvc exp run --run-all --jobs 1    # runs the queue, one experiment at a time
    python -m pipeline.study          # reports/study/depth.md and depth.html

`queue` leaves out the depths that already have a successful experiment
with the workspace's params and stage code. The summary reads the
experiments of every commit through `dvc exp show --json -A`, takes per
depth the newest successful one, and reads its statistics
(reports/statistics.json, reports/train/<variant>.json) at its commit with
`dvc.api.read`. Plain `dvc repro` never runs the study.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import paths
from pipeline.cli import run_stage, stage_parser
from pipeline.errors import PipelineError
from pipeline.files import atomic_write_text, save_figure
from pipeline.nn.model import VARIANTS
from pipeline.params import Params, load_params
from pipeline.report import study_report
from pipeline.report.document import render_html, render_markdown

log = logging.getLogger("study")

VARIED = "model.depth"  # the one param the points may differ in (study.* aside)


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment (or the workspace), as `dvc exp show --json` has it."""

    name: str
    rev: str  # its commit
    created: str  # ISO timestamp
    state: str  # success | failed | queued | running
    params: dict[str, Any]  # params.yaml, flattened: {"model.depth": 10, ...}
    code: dict[str, str]  # the pipeline's modules and data/raw: path -> hash

    @property
    def depth(self) -> int | None:
        return self.params.get(VARIED)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (params.flatten does it for Params models)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _experiment(name: str, rev: dict, executor: dict | None) -> Experiment:
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
                      state=state, params=_flatten(params), code=code)  # fmt: skip


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
                                               revs[0], entry.get("executor")))  # fmt: skip
    if workspace is None:
        raise PipelineError("`dvc exp show --json` listed no workspace: is this a DVC repository?")
    return workspace, experiments


def setup_differences(points: Sequence[Experiment], code: bool = True) -> list[str]:
    """What differs between the points other than the depth: one line per
    param or (with `code`) code file, with each value and the points that have it."""
    lines = []
    kinds = [("param", lambda e: e.params)] + ([("code", lambda e: e.code)] if code else [])
    for kind, get in kinds:
        keys = sorted({k for e in points for k in get(e)})
        for key in keys:
            if key == VARIED or key.startswith("study."):
                continue
            holders: dict[str, list[str]] = {}
            for e in points:
                holders.setdefault(json.dumps(get(e).get(key)), []).append(e.name)
            if len(holders) > 1:
                shown = "; ".join(f"{value} in {', '.join(names)}"
                                  for value, names in holders.items())  # fmt: skip
                lines.append(f"{kind} {key}: {shown}")
    return lines


def to_compute(
    workspace: Experiment,
    experiments: list[Experiment],
    depths: list[int],
    same_code: Callable[[Experiment], bool],
) -> list[int]:
    """The depths with no successful (or queued, or running) experiment of
    the workspace's params and code; `same_code(e)` tells whether the code
    e's stages ran is the workspace's (the workspace's own dependency hashes
    are those of its last `dvc repro`, not of its files)."""
    done = {
        e.depth
        for e in experiments
        if e.state != "failed"
        and not setup_differences([e, workspace], code=False)
        and same_code(e)
    }
    return [depth for depth in depths if depth not in done]


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


def choose_points(experiments: list[Experiment], depths: list[int]) -> dict[int, Experiment | str]:
    """Per depth, the newest successful experiment; or why there is none
    ("running: <names>", "queued: ...", "failed: ..." or "missing")."""
    chosen: dict[int, Experiment | str] = {}
    for depth in depths:
        at_depth = sorted((e for e in experiments if e.depth == depth), key=lambda e: e.created)
        succeeded = [e for e in at_depth if e.state == "success"]
        if succeeded:
            chosen[depth] = succeeded[-1]
            continue
        chosen[depth] = "missing"
        for state in ("running", "queued", "failed"):
            names = [e.name for e in at_depth if e.state == state]
            if names:
                chosen[depth] = f"{state}: {', '.join(names)}"
                break
    return chosen


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
    if "layers" not in results["bn"] or "bn_minus_nobn" not in results["statistics"]:
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


def queue(depths: list[int]) -> None:
    workspace, experiments = parse_exp_show(exp_show())
    missing = to_compute(workspace, experiments, depths, same_code_as_workspace)
    computed = [d for d in depths if d not in missing]
    if computed:
        log.info("depths already computed with these params and code: %s", computed)
    if not missing:
        log.info("nothing to queue")
        return
    command = ["exp", "run", "--queue", "-S", f"{VARIED}={','.join(map(str, missing))}"]
    log.info("dvc %s", " ".join(command))
    done = dvc(*command)
    if done.returncode != 0:
        raise _failure(" ".join(command), done)


def summarize(depths: list[int], dpi: int) -> None:
    """Write the summary; refuse (writing nothing) when no depth has a
    successful experiment or the points differ in more than depth."""
    _, experiments = parse_exp_show(exp_show())
    chosen = choose_points(experiments, depths)
    points = [p for p in chosen.values() if isinstance(p, Experiment)]
    if not points:
        raise PipelineError(
            f"no depth of study.depths {depths} has a successful DVC experiment "
            f"({'; '.join(f'{d}: {why}' for d, why in chosen.items())}): run `make study`"
        )
    differences = setup_differences(points)
    if differences:
        raise PipelineError(
            f"the study's points differ in more than {VARIED}:",
            *differences,
            "run `make study` again: it recomputes the depths whose params or code differ "
            "from the workspace's",
        )
    results: dict[int, dict | str] = {}
    for depth, point in chosen.items():
        results[depth] = read_results(point, _read_at) if isinstance(point, Experiment) else point
    names = {d: p.name for d, p in chosen.items() if isinstance(p, Experiment)}
    blocks, figures = study_report.build(results, names, points[0].params)
    folder = paths.STUDY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, figure in figures.items():
        save_figure(figure, folder / name, dpi)
    atomic_write_text(folder / "depth.md", render_markdown(blocks))
    atomic_write_text(folder / "depth.html", render_html(blocks, folder))
    log.info("wrote %s and %s", folder / "depth.md", folder / "depth.html")


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=["summarize", "queue"], default="summarize",
                        help="queue the missing points, or summarize (default)")  # fmt: skip
    args = parser.parse_args(argv)
    params: Params = load_params(args.params)
    if args.action == "queue":
        queue(params.study.depths)
    else:
        summarize(params.study.depths, params.visualize.dpi)


if __name__ == "__main__":
    run_stage(main)
