"""Named studies on synthetic experiment records: which points each study
computes and which experiment it reads for each, when a point is stale (in
small git repositories), the commands that queue them, the summary's
numbers and sentences, and the checks of params.yaml `studies`.
(tests/test_study_e2e.py runs a tiny study through DVC.)"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline import experiments, paths, study
from pipeline.errors import ParamsError, PipelineError
from pipeline.evaluate import Evaluation, summarize
from pipeline.experiments import Experiment, Point, Recipe
from pipeline.format import failed_cell
from pipeline.params import StudyParams, parse_params
from pipeline.report import comparison, study_report
from pipeline.report.document import Heading, Image, Paragraph, Table
from pipeline.results import PointResults

from .conftest import REPO, git

DEPTH = {"param": "model.depth", "values": [2, 4, 10], "fixed": {}}  # as params.yaml has it


def record(rev: str, depth: int = 10, *, lr: float = 0.001, failed: bool = False,
           time: str = "2026-11-27T12:00:00", studies: dict | None = None,
           more: dict | None = None) -> dict:  # fmt: skip
    """One revision as `dvc exp show --json` writes it (`more`: other params
    sections). Name a revision "old..." to have it run other code (same_code)."""
    params = {"model": {"depth": depth, "width": 64}, "train": {"lr": lr, "seeds": [0, 1]},
              "studies": studies or {"depth": DEPTH}} | (more or {})  # fmt: skip
    deps = {"pipeline/train.py": {"hash": "c1"}, "data/raw": {"hash": "raw"},
            "data/models/bn": {"hash": f"models-{rev}"}}  # fmt: skip
    data = {"rev": rev, "timestamp": time, "params": {"params.yaml": {"data": params}},
            "deps": deps, "metrics": {}, "outs": {}, "meta": {}}  # fmt: skip
    error = {"type": "ReproductionError", "msg": "stage failed"} if failed else None
    return {"rev": rev, "name": None, "data": data, "error": error, "experiments": None}


def shown(workspace: dict, *entries: tuple) -> list[dict]:
    """`dvc exp show --json` of the workspace and one baseline with these
    (name, record) or (name, record, queue state) experiments."""
    baseline = record("b" * 40) | {"name": "main"}
    baseline["experiments"] = [
        {"name": e[0], "revs": [e[1]], "executor": {"state": e[2]} if len(e) > 2 else None}
        for e in entries
    ]
    return [workspace | {"rev": "workspace"}, baseline]


DVC_YAML = """\
stages:
  download:
    cmd: python -m pipeline.download
    deps:
      - pipeline/download.py
    params:
      - data
    outs:
      - data/raw
  train_bn:
    cmd: python -m pipeline.train --variant bn
    deps: &train_deps
      - data/raw
      - pipeline/nn/training.py
      - pipeline/train.py
    params: &train_params
      - data.verify
      - model
      - train
      - tracking
    outs:
      - data/models/bn
  train_nobn:
    cmd: python -m pipeline.train --variant nobn
    deps: *train_deps
    params: *train_params
    outs:
      - data/models/nobn
  evaluate:
    cmd: python -m pipeline.evaluate
    deps:
      - data/models/bn
      - data/models/nobn
      - pipeline/evaluate.py
    params:
      - evaluate
      - tracking.experiment
    outs:
      - reports/statistics.json
  visualize:
    cmd: python -m pipeline.visualize
    deps:
      - reports/statistics.json
      - pipeline/report/why.py
      - pipeline/visualize.py
    params:
      - visualize
"""  # the committed dvc.yaml's shape, small
RECIPE = Recipe.parse(DVC_YAML)


def same_code(rev: str, recipe: Recipe) -> bool:
    """As git would answer for a workspace whose recipe is RECIPE: the
    commits named "old..." ran other code."""
    assert recipe == RECIPE
    return not rev.startswith("old")


def depth(value: int) -> Point:
    return Point("depth", value, {"model.depth": value})


def studies(**named: dict) -> dict[str, StudyParams]:
    return {name: StudyParams(**fields) for name, fields in named.items()}


# What each study computes, and which experiment is each point's.


def test_exp_show_is_read_into_experiments_with_flat_params() -> None:
    workspace, listed = experiments.parse_exp_show(shown(
        record("workspace", 10),
        ("d2", record("e1", 2)),
        ("bad", record("e2", 4, failed=True)),
        ("waiting", record("e3", 6), "queued"),
        ("now", record("e4", 15), "running"),
    ))  # fmt: skip
    assert (workspace.name, workspace.state, workspace.params["model.depth"]) == (
        "workspace", "success", 10)  # fmt: skip
    first, failed, queued, running = listed
    assert (first.name, first.rev, first.created, first.state) == (
        "d2", "e1", "2026-11-27T12:00:00", "success")  # fmt: skip
    assert first.params == {
        "model.depth": 2, "model.width": 64, "train.lr": 0.001, "train.seeds": [0, 1],
        "studies.depth.param": "model.depth", "studies.depth.values": [2, 4, 10],
    }  # fmt: skip
    assert (first.baseline, workspace.baseline) == ("b" * 40, "")  # run from; HEAD's own
    assert RECIPE.comparable(first.params) == {
        "model.depth": 2, "model.width": 64, "train.lr": 0.001, "train.seeds": [0, 1]
    }  # fmt: skip
    assert [e.state for e in (failed, queued, running)] == ["failed", "queued", "running"]


def test_exp_show_of_every_commit_holds_the_experiments_of_each() -> None:
    older = record("a" * 40) | {"name": None, "experiments": [
        {"name": "old-d2", "revs": [record("e0", 2)], "executor": None},
        {"name": None, "revs": [record("e9", 4)], "executor": {"state": "queued"}},  # unnamed
    ]}  # fmt: skip
    _, listed = experiments.parse_exp_show([*shown(record("workspace"), ("d6", record("e1", 6))),
                                           older])  # fmt: skip
    assert [(e.name, e.params["model.depth"]) for e in listed] == [
        ("d6", 6), ("old-d2", 2), ("e9", 4)]  # fmt: skip
    with pytest.raises(PipelineError, match="listed no workspace"):
        experiments.parse_exp_show([older])


def test_a_study_has_a_point_per_value_with_its_fixed_keys() -> None:
    lr = StudyParams(param="train.lr", values=[0.001, 0.01], fixed={"model.depth": 4})
    assert experiments.study_points("lr", lr) == [
        Point("lr", 0.001, {"model.depth": 4, "train.lr": 0.001}),
        Point("lr", 0.01, {"model.depth": 4, "train.lr": 0.01}),
    ]


def test_the_workspace_point_is_the_workspace() -> None:
    workspace, listed = experiments.parse_exp_show(shown(
        record("workspace", 10, studies={"depth": DEPTH | {"values": [2, 10, 20]}}),
        ("same-as-workspace", record("e1", 10, time="2026-11-28T00:00:00")),
    ))  # fmt: skip
    assert experiments.find(depth(10), workspace, listed, RECIPE, same_code) is workspace


def test_the_newest_successful_experiment_with_the_points_params_and_code_wins() -> None:
    workspace, listed = experiments.parse_exp_show(shown(
        record("workspace", 10),
        ("old", record("e1", 2, time="2026-11-27T10:00:00")),
        ("new", record("e2", 2, time="2026-11-27T11:00:00")),
        ("newer-but-failed", record("e3", 2, time="2026-11-27T12:00:00", failed=True)),
        ("newer-other-code", record("old-e4", 2, time="2026-11-27T13:00:00")),
        ("newer-other-lr", record("e5", 2, time="2026-11-27T14:00:00", lr=0.01)),
        ("newer-queued", record("e6", 2, time="2026-11-27T15:00:00"), "queued"),
        ("other-study-list", record("e7", 4, studies={"depth": DEPTH | {"values": [4, 8]}})),
    ))  # fmt: skip
    assert experiments.find(depth(2), workspace, listed, RECIPE, same_code).name == "new"
    # what params.yaml `studies` said when it ran does not make another point
    assert (
        experiments.find(depth(4), workspace, listed, RECIPE, same_code).name == "other-study-list"
    )


def test_experiments_that_differ_in_any_other_param_are_never_a_point() -> None:
    workspace, listed = experiments.parse_exp_show(shown(
        record("workspace", 10),
        ("other-lr", record("e1", 4, lr=0.01)),
        ("other-lr-stale", record("old-e2", 4, lr=0.01)),
        ("other-lr-queued", record("e3", 4, lr=0.01), "queued"),
    ))  # fmt: skip
    assert experiments.find(depth(4), workspace, listed, RECIPE, same_code) == "missing"


def test_a_point_without_a_successful_experiment_says_why() -> None:
    workspace, listed = experiments.parse_exp_show(shown(
        record("workspace", 10),
        ("stale-a", record("old-e1", 2)),
        ("stale-b", record("old-e2", 2, failed=True)),
        ("broken", record("e3", 4, failed=True)),
        ("broken-too", record("e4", 4), "failed"),  # failed in DVC's queue
        ("later", record("e5", 6, failed=True)),
        ("later", record("e6", 6), "queued"),
        ("now", record("e7", 15), "running"),
        ("next", record("e8", 15), "queued"),
        ("stale-but-done", record("old-e9", 20)),
        ("current-but-failed", record("e10", 20, failed=True)),
    ))  # fmt: skip

    def why(value: int) -> str:
        return experiments.find(depth(value), workspace, listed, RECIPE, same_code)

    assert why(2) == "stale: stale-a, stale-b ran other code"
    assert why(4) == "failed: broken, broken-too"
    assert why(6) == "queued: later"  # waiting beats failed
    assert why(15) == "running: now"  # running beats queued
    assert why(20) == "failed: current-but-failed"  # stale ones only when none is current
    assert why(30) == "missing"


def test_only_points_without_a_current_experiment_are_computed() -> None:
    workspace, listed = experiments.parse_exp_show(shown(
        record("workspace", 10),
        ("done", record("e1", 2)),
        ("waiting", record("e2", 6), "queued"),
        ("now", record("e3", 15), "running"),
        ("broken", record("e4", 20, failed=True)),
        ("stale", record("old-e5", 30)),
        ("other-lr", record("e6", 40, lr=0.01)),
    ))  # fmt: skip
    points = [depth(v) for v in (2, 4, 6, 10, 15, 20, 30, 40)]
    missing = experiments.to_compute(points, workspace, listed, RECIPE, same_code)
    assert [p.value for p in missing] == [4, 20, 30, 40]


def test_a_point_shared_by_two_studies_is_computed_once() -> None:
    workspace, listed = experiments.parse_exp_show(shown(
        record("workspace", 10),
        ("lr-at-depth-10", record("e1", 10, lr=0.01)),  # not the lr study's: its depth is 4
    ))  # fmt: skip
    named = studies(
        depth={"param": "model.depth", "values": [2, 4, 10], "fixed": {}},
        lr={"param": "train.lr", "values": [0.001, 0.01], "fixed": {"model.depth": 4}},
    )
    points = [p for name, s in named.items() for p in experiments.study_points(name, s)]
    missing = experiments.to_compute(points, workspace, listed, RECIPE, same_code)
    # lr = 0.001 at depth 4 is depth = 4 at the workspace's lr: one experiment for both
    assert [(p.study, p.value) for p in missing] == [("depth", 2), ("depth", 4), ("lr", 0.01)]
    assert study.queue_commands(missing, named) == [
        ["exp", "run", "--queue", "-S", "model.depth=2,4"],
        ["exp", "run", "--queue", "-S", "train.lr=0.01", "-S", "model.depth=4"],
    ]


def test_a_value_added_to_a_study_computes_only_that_point() -> None:
    before = {"depth": DEPTH}
    after = {"depth": DEPTH | {"values": [2, 4, 10, 20]}}
    workspace, listed = experiments.parse_exp_show(shown(
        record("workspace", 10, studies=after),
        ("d2", record("e1", 2, studies=before)),
        ("d4", record("e2", 4, studies=before)),
    ))  # fmt: skip
    points = experiments.study_points("depth", StudyParams(**after["depth"]))
    assert experiments.to_compute(points, workspace, listed, RECIPE, same_code) == [depth(20)]


# What made a point's numbers: its recipe, and when a point is stale.


def test_a_recipe_is_what_the_train_and_evaluate_stages_list() -> None:
    assert RECIPE.code == ["pipeline/evaluate.py", "pipeline/nn/training.py", "pipeline/train.py"]
    assert RECIPE.params == ["data.verify", "evaluate", "model", "tracking",
                             "tracking.experiment", "train"]  # fmt: skip
    assert RECIPE.comparable({
        "model.depth": 2, "train.lr": 0.1, "data.verify": True, "evaluate.batch_size": 100,
        "tracking.log_model": False, "data.source": "local", "visualize.dpi": 30,
        "studies.depth.values": [2, 4], "paper.param": "train.lr", "models.x": 1,
    }) == {"model.depth": 2, "train.lr": 0.1, "data.verify": True, "evaluate.batch_size": 100,
           "tracking.log_model": False}  # fmt: skip
    # parsed, not read as text: a comment, or another stage's entry, is no part of it
    visualize_reads_more = DVC_YAML.replace("      - visualize\n",
                                            "      - visualize\n      - evaluate\n")  # fmt: skip
    assert Recipe.parse(visualize_reads_more + "# a comment\n") == RECIPE
    assert Recipe.parse(DVC_YAML.replace("--variant nobn", "--variant nobn --fast")) != RECIPE
    assert Recipe.parse("") == Recipe(dict.fromkeys(experiments.NUMBER_STAGES))


def test_the_committed_recipe_leaves_out_visualize_and_its_report() -> None:
    recipe = Recipe.parse((REPO / "dvc.yaml").read_text())
    assert {"pipeline/train.py", "pipeline/nn/training.py", "pipeline/evaluate.py"} <= set(
        recipe.code
    )
    report = {"pipeline/visualize.py", "pipeline/report/why.py", "pipeline/report/figures.py"}
    assert not report & set(recipe.code)
    assert "visualize" not in recipe.params and "model" in recipe.params


def test_only_the_params_the_stages_read_make_another_point() -> None:
    setting = {"data": {"source": "auto", "verify": True}, "visualize": {"dpi": 100},
               "evaluate": {"batch_size": 1000}}  # fmt: skip
    workspace, listed = experiments.parse_exp_show(shown(
        record("workspace", 10, more=setting),
        ("other-dpi-and-source", record("e1", 2, more=setting | {
            "data": {"source": "local", "verify": True}, "visualize": {"dpi": 30}})),
        ("other-batch", record("e2", 4, more=setting | {"evaluate": {"batch_size": 10}})),
        ("unverified", record("e3", 6, more=setting | {
            "data": {"source": "auto", "verify": False}})),
    ))  # fmt: skip

    def found(value: int) -> Experiment | str:
        return experiments.find(depth(value), workspace, listed, RECIPE, same_code)

    assert found(2).name == "other-dpi-and-source"  # visualize's or download's: the same point
    assert found(4) == "missing"
    assert found(6) == "missing"


MODULES = ("pipeline/download.py", "pipeline/train.py", "pipeline/nn/training.py",
           "pipeline/evaluate.py", "pipeline/report/why.py", "pipeline/visualize.py",
           "README.md")  # fmt: skip


@pytest.fixture
def code_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository as the working folder: DVC_YAML and a line in each
    of MODULES, committed."""
    monkeypatch.chdir(tmp_path)
    git(tmp_path, "init", "-q")
    for name, text in ({"dvc.yaml": DVC_YAML} | dict.fromkeys(MODULES, "x = 1\n")).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "code")
    return tmp_path


def append(name: str, line: str = "# a comment\n") -> None:
    with Path(name).open("a", encoding="utf-8") as file:
        file.write(line)


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


VISUALIZE_DRAWS_MORE = DVC_YAML.replace(
    "      - pipeline/visualize.py\n",
    "      - pipeline/visualize.py\n      - pipeline/report/figures.py\n",
)  # another stage's entry


def test_a_report_edit_queues_nothing_and_a_training_edit_makes_every_point_stale(
    code_repo: Path,
) -> None:
    rev = head(code_repo)
    workspace, listed = experiments.parse_exp_show(shown(
        record("workspace", 10), ("d2", record(rev, 2)), ("d4", record(rev, 4)),
    ))  # fmt: skip
    points = [depth(v) for v in (2, 4, 10)]

    def queued() -> list[Point]:
        return experiments.to_compute(points, workspace, listed, experiments.recipe_at(),
                                      experiments.same_recipe)  # fmt: skip

    assert queued() == []
    append("pipeline/report/why.py")
    append("pipeline/visualize.py")
    Path("dvc.yaml").write_text(VISUALIZE_DRAWS_MORE + "# visualize draws more\n")
    assert queued() == []
    git(code_repo, "commit", "-qam", "the report")
    assert queued() == []
    append("pipeline/nn/training.py")
    assert queued() == [depth(2), depth(4)]
    for value in (2, 4):
        assert experiments.find(depth(value), workspace, listed, experiments.recipe_at(),
                                experiments.same_recipe) == f"stale: d{value} ran other code"  # fmt: skip


def test_a_change_to_the_stages_entries_is_other_code(code_repo: Path) -> None:
    rev = head(code_repo)
    Path("dvc.yaml").write_text(DVC_YAML.replace("      - evaluate\n",
                                                 "      - evaluate\n      - visualize.dpi\n"))  # fmt: skip
    assert not experiments.same_recipe(rev, experiments.recipe_at())
    Path("dvc.yaml").write_text(DVC_YAML.replace("pipeline/evaluate.py", "pipeline/train.py"))
    assert not experiments.same_recipe(rev, experiments.recipe_at())
    Path("dvc.yaml").write_text(DVC_YAML + "# a comment\n")
    assert experiments.same_recipe(rev, experiments.recipe_at())
    assert not experiments.same_recipe("0" * 40, experiments.recipe_at())  # no such commit


def test_a_points_code_is_the_last_commit_that_changed_its_recipe(code_repo: Path) -> None:
    code = head(code_repo)
    append("README.md")  # a summary or a README: not the code
    git(code_repo, "commit", "-qam", "docs")
    append("pipeline/report/why.py")
    Path("dvc.yaml").write_text(VISUALIZE_DRAWS_MORE)
    git(code_repo, "commit", "-qam", "the report")
    report = head(code_repo)
    workspace = Experiment("workspace", "", "", "success", {})
    run_from_report = Experiment("e", "e1", "", "success", {}, baseline=report)

    def commit_of(point: Experiment) -> str:
        return experiments.code_commit(point, experiments.recipe_at())

    assert commit_of(workspace) == code
    assert commit_of(run_from_report) == code
    append("pipeline/visualize.py")
    assert commit_of(workspace) == code  # an uncommitted report edit is not the code either
    append("pipeline/train.py")
    assert commit_of(workspace) == "uncommitted changes"
    assert commit_of(run_from_report) == code  # an experiment's code is committed
    git(code_repo, "commit", "-qam", "train")
    train = head(code_repo)
    assert commit_of(workspace) == train
    Path("dvc.yaml").write_text(VISUALIZE_DRAWS_MORE.replace("--variant nobn", "--variant nobn -v"))
    assert commit_of(workspace) == "uncommitted changes"
    git(code_repo, "commit", "-qam", "the stage")
    assert commit_of(workspace) == head(code_repo)
    assert commit_of(run_from_report) == code


def test_the_workspaces_point_is_current_when_the_stages_that_make_it_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changed = {"visualize": [{"changed deps": {"pipeline/report/why.py": "modified"}}]}

    def dvc(*args: str) -> subprocess.CompletedProcess:  # `dvc status --json [stages]`
        assert args[:2] == ("status", "--json")
        report = {stage: changed[stage] for stage in args[2:] or changed if stage in changed}
        return subprocess.CompletedProcess(["dvc", *args], 0, json.dumps(report), "")

    monkeypatch.setattr(experiments, "dvc", dvc)
    assert experiments.workspace_current()  # visualize's outputs are not a point's numbers
    changed["train_nobn"] = [{"changed deps": {"pipeline/nn/training.py": "modified"}}]
    assert not experiments.workspace_current()


# Shares of the values, and the commands that queue them.


def test_a_share_is_every_nth_value_from_the_ith() -> None:
    values = [2, 4, 6, 10, 15]
    assert study.share_of(values, None) == values
    assert study.share_of(values, (1, 1)) == values
    assert study.share_of(values, (1, 2)) == [2, 6, 15]
    assert study.share_of(values, (2, 2)) == [4, 10]
    assert study.share_of(values, (3, 3)) == [6]
    assert study.share_of([2, 4], (3, 3)) == []
    shares = [study.share_of(values, (i, 3)) for i in (1, 2, 3)]
    assert sorted(v for share in shares for v in share) == values  # each value once


@pytest.mark.parametrize("text, share", [("1/2", (1, 2)), ("2/2", (2, 2)), ("1/1", (1, 1))])
def test_a_share_argument_is_i_of_n(text: str, share: tuple[int, int]) -> None:
    assert study.share_argument(text) == share


@pytest.mark.parametrize("text", ["0/2", "3/2", "x", "1/0", "-1/2", "1/2/3", "1", ""])
def test_a_share_outside_1_to_n_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        study.share_argument(text)
    assert str(caught.value) == f"{text!r}: must be i/n with 1 <= i <= n, e.g. 1/2"


def test_the_command_line_refuses_a_bad_share(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as caught:
        study.main(["queue", "--share", "3/2"])
    assert caught.value.code == 2
    assert "'3/2': must be i/n with 1 <= i <= n" in capsys.readouterr().err


def test_queue_commands_write_values_as_dvc_reads_them() -> None:
    named = studies(
        lr={"param": "train.lr", "values": [1e-05, 0.1, 1.0], "fixed": {}},
        depth={"param": "model.depth", "values": [2, 20], "fixed": {
            "train.eps": 1e-08, "train.device": "cpu", "train.cuda_graph": False,
            "train.betas": [0.9, 0.99]}},
        untouched={"param": "model.width", "values": [32, 64], "fixed": {}},
    )  # fmt: skip
    points = [Point("lr", v, {}) for v in (1e-05, 1.0)] + [Point("depth", 20, {})]
    assert study.queue_commands(points, named) == [
        ["exp", "run", "--queue", "-S", "train.lr=1e-05,1.0"],
        ["exp", "run", "--queue", "-S", "model.depth=20", "-S", "train.eps=1e-08",
         "-S", "train.device=cpu", "-S", "train.cuda_graph=false",
         "-S", "train.betas=[0.9, 0.99]"],
    ]  # fmt: skip
    assert study.queue_commands([], named) == []


def test_what_differs_names_the_points_params_that_are_not_the_workspaces() -> None:
    workspace = Experiment("workspace", "", "", "success",
                           {"model.depth": 10, "train.lr": 0.001, "train.device": "auto"})  # fmt: skip
    assert study.what_differs(depth(20), workspace) == "depth=20"
    assert study.what_differs(depth(10), workspace) == ""
    assert study.what_differs(Point("lr", 0.01, {"model.depth": 4, "train.lr": 0.01}),
                              workspace) == "depth=4 lr=0.01"  # fmt: skip
    assert study.what_differs(Point("lr", 1e-05, {"model.depth": 10, "train.lr": 1e-05}),
                              workspace) == "lr=1e-05"  # fmt: skip
    assert study.what_differs(Point("d", "cpu", {"train.device": "cpu"}),
                              workspace) == "device=cpu"  # fmt: skip
    # by key, whichever study names the shared point: one name for its runs
    assert study.what_differs(Point("depth", 4, {"train.lr": 0.01, "model.depth": 4}),
                              workspace) == "depth=4 lr=0.01"  # fmt: skip


def test_a_study_is_chosen_by_name(params_dict: dict) -> None:
    params = parse_params(yaml.safe_dump(params_dict, sort_keys=False))
    assert list(study.selected(params, None)) == ["depth", "batch_size", "lr", "activation"]
    assert list(study.selected(params, None, paper=True)) == ["paper"]  # not among `studies`
    assert study.selected(params, "lr") == {"lr": params.studies["lr"]}
    with pytest.raises(PipelineError) as caught:
        study.selected(params, "width")
    assert caught.value.lines == (
        "no study 'width' in params.yaml; studies: depth, batch_size, lr, activation",
    )


# The summary: rows, sentences, the table and the report.


def evaluation(outcome: float | str) -> Evaluation:
    """One seed's evaluation: its test accuracy, or "diverged"."""
    if outcome == "diverged":
        return Evaluation(0.098, math.nan, [[0]], diverged=True)
    return Evaluation(outcome, 0.1, [[0]])


def results(bn: list, nobn: list, dead: tuple[float, ...] = (0.1, 0.3),
            grads: tuple[float, ...] = (0.5, 2.0)) -> dict:  # fmt: skip
    """A point's statistics.json and train summaries, as the stages write
    them; per seed its test accuracy or "diverged". Without BatchNorm the
    layers hold `dead` and `grads`, with it no dead unit and even norms;
    None (as train writes them) for a variant where no seed learnt."""
    statistics = summarize({"bn": {s: evaluation(o) for s, o in enumerate(bn)},
                            "nobn": {s: evaluation(o) for s, o in enumerate(nobn)}}).to_json()  # fmt: skip

    def layers(variant: str, dead: list, grads: list) -> dict:
        learnt = statistics[variant]["learnt"] > 0
        return {"layers": {"flat_fraction": list(dead) if learnt else [None] * len(dead),
                           "input_grad_norm": list(grads) if learnt else [None] * len(grads)}}  # fmt: skip

    return {"statistics": statistics, "bn": layers("bn", [0.0] * len(dead), [1.0] * len(grads)),
            "nobn": layers("nobn", dead, grads)}  # fmt: skip


def point(bn: list, nobn: list) -> PointResults:
    """results(bn, nobn) as the summaries read them."""
    return PointResults.from_json(results(bn, nobn))


T_975_DF2 = 4.302652729911275  # t quantile, 2 degrees of freedom, 97.5%: from a printed table
LEARNT_BN = [0.97, 0.96, 0.98, 0.97, 0.97]  # mean 97.00, 95% CI 96.12 to 97.88


def rows(gains: dict[int, list[float]]) -> list[study_report.Row]:
    """Rows whose per-seed gains are `gains[depth]` (nobn at 0.9)."""
    return [study_report.row(d, f"d{d}", point([0.9 + g for g in per_seed], [0.9] * len(per_seed)))
            for d, per_seed in gains.items()]  # fmt: skip


def test_a_row_holds_accuracies_over_learners_failures_and_diagnostics() -> None:
    r = study_report.row(20, "d20", point(LEARNT_BN, [0.95, "diverged", 0.11, 0.94, 0.96]))
    pairs = r.statistics.bn_minus_nobn.seeds
    assert (r.value, r.name, r.statistics.seeds, pairs) == (20, "d20", 5, 3)  # seeds 0, 3 and 4
    assert r.accuracy("bn").mean == pytest.approx(0.97)
    assert r.accuracy("nobn").mean == pytest.approx(0.95)  # the three that learnt
    assert r.gain.mean == pytest.approx(0.02)  # 0.02, 0.03, 0.01
    half = T_975_DF2 * 0.01 / math.sqrt(3)  # differences' sample std 0.01, 3 pairs
    assert r.gain.ci95 == pytest.approx((0.02 - half, 0.02 + half))
    t_p = 1 - 2 * math.sqrt(3) / math.sqrt(14)  # t = 2 sqrt(3), df 2
    assert r.gain.p_value == pytest.approx(t_p)
    assert (r.outcomes("bn").failed, r.outcomes("nobn").failed) == (0, 2)
    nobn = r.outcomes("nobn")
    assert (nobn.learnt, nobn.diverged, nobn.not_learning) == (3, 1, 1)
    assert nobn.failed_fraction_ci95 == pytest.approx((0.0527450, 0.8533672))  # exact binomial
    assert r.flat == {"bn": 0.0, "nobn": pytest.approx(0.2)}
    assert r.grad_ratio == {"bn": 1.0, "nobn": 0.25}
    assert failed_cell(nobn) == "2 of 5 (1 diverged, 1 not learning; 95% CI 5 to 85%)"
    assert failed_cell(r.outcomes("bn")) == "0 of 5 (95% CI 0 to 52%)"


def test_without_failures_the_finding_gives_the_gain_and_where_its_interval_lies() -> None:
    found = rows({2: [-0.002, 0.003, 0.0], 4: [0.004, 0.006, 0.005]})
    assert study_report.failure_sentences(found, "depth") == []
    p_value = 1 - 5 * math.sqrt(3) / math.sqrt(77)  # t = 0.005 / (0.001 / sqrt(3)), df 2
    assert f"{p_value:.2g}" == "0.013"
    assert study_report.finding(found, "depth") == (
        "BatchNorm's gain goes from +0.03 points (95% CI -0.59 to +0.66) at depth = 2 to "
        "+0.50 points (95% CI +0.25 to +0.75) at depth = 4. Its 95% CI lies above zero at "
        "depth 4; it includes zero at depth 2. The clearest is at depth = 4 (+0.50 points, "
        "95% CI +0.25 to +0.75; paired t-test p = 0.013)."
    )


def test_the_finding_spans_consecutive_points_and_lists_the_others() -> None:
    found = rows({2: [0.004, 0.006, 0.005], 4: [0.01, 0.012, 0.011], 6: [-0.01, 0.01, 0.0],
                  8: [0.004, 0.006, 0.005]})  # fmt: skip
    text = study_report.finding(found, "depth")
    assert "Its 95% CI lies above zero at depth 2, 4 and 8; it includes zero at depth 6." in text
    below = rows({2: [-0.004, -0.006, -0.005], 4: [-0.01, -0.012, -0.011]})
    text = study_report.finding(below, "depth")
    assert "Its 95% CI lies below zero at depth from 2 to 4." in text
    assert "The clearest" not in text


def test_failures_are_counted_per_variant_and_the_worse_variant_named() -> None:
    found = [
        study_report.row(2, "d2", point(LEARNT_BN, [0.95, 0.96, 0.94, 0.95, 0.95])),
        study_report.row(20, "d20", point(LEARNT_BN, [0.95, "diverged", 0.11, 0.94, 0.96])),
        study_report.row(30, "d30", point(LEARNT_BN, ["diverged"] * 5)),
    ]
    assert study_report.failure_sentences(found, "depth") == [
        "With BatchNorm, every seed learnt at every point.",
        "Without BatchNorm, seeds failed to learn (diverged, or ended below 20% test accuracy "
        "where chance is 10%) at depth = 20: 2 of 5 (1 diverged, 1 not learning; 95% CI 5 to "
        "85%); depth = 30: 5 of 5 (5 diverged; 95% CI 48 to 100%); every seed learnt at depth 2.",
        # Fisher's exact test, two-sided: 2 of 5 against 0 of 5 is 2 * C(5,2)/C(10,5) = 0.44...
        "At depth = 20 the variant without BatchNorm failed more often (2 of 5 seeds against 0; "
        "Fisher's exact test p = 0.44), so it is the worse one there, though with this many "
        "seeds the difference in failures could be chance.",
        # ... and 5 of 5 against 0 of 5 is 2 / C(10,5) = 0.0079
        "At depth = 30 the variant without BatchNorm failed more often (5 of 5 seeds against 0; "
        "Fisher's exact test p = 0.0079), so it is the worse one there whatever its learners' "
        "accuracy.",
        comparison.learnt_only(),
    ]
    gains, failures = study_report.finding_paragraphs(found, "depth")  # a paragraph each
    assert failures == " ".join(study_report.failure_sentences(found, "depth"))
    assert gains.startswith("BatchNorm's gain goes from")
    text = study_report.finding(found, "depth")
    # depth 30 has no pair that learnt: no gain there, so the gain runs from 2 to 20
    assert text.startswith(
        "BatchNorm's gain goes from +2.00 points (95% CI +0.24 to +3.76) at depth = 2 to "
        "+2.00 points (95% CI -0.48 to +4.48) at depth = 20. Its 95% CI lies above zero at "
        "depth 2; it includes zero at depth 20."
    )


def test_the_code_sentence_names_each_commit_and_its_points() -> None:
    assert study_report.code_sentence({2: "a" * 40, 4: "a" * 40, 10: "b" * 40}, "depth") == (
        "Computed with the pipeline at commit aaaaaaa (depth = 2, 4) and bbbbbbb (depth = 10)."
    )
    assert study_report.code_sentence({0.1: "a" * 40, 1: "uncommitted changes"}, "lr") == (
        "Computed with the pipeline at commit aaaaaaa (lr = 0.1) and uncommitted changes (lr = 1)."
    )


def test_an_interval_outside_0_to_100_percent_is_called_out() -> None:
    # two learners at 95% and 75%: mean 85, t-interval with 1 degree of freedom 85 +- 127
    r = study_report.row(20, "d20", point(LEARNT_BN, [0.95, 0.1, 0.75, 0.1, 0.1]))
    low, high = r.accuracy("nobn").ci95
    assert low < 0 and high > 1
    assert study_report.range_sentences([r], "depth") == [
        "At depth = 20 the t-interval of the mean accuracy without BatchNorm runs outside 0 to "
        "100%: 2 seeds learnt (1 degree of freedom), too few or too far apart for it to say "
        "more than that their accuracies differ widely."
    ]
    assert study_report.finding([r], "depth").endswith("their accuracies differ widely.")
    assert study_report.range_sentences(rows({2: [0.004, 0.006, 0.005]}), "depth") == []


def test_a_point_where_no_pair_learnt_has_no_gain() -> None:
    r = study_report.row(30, "d30", point(LEARNT_BN, ["diverged", 0.1, 0.1, 0.1, 0.1]))
    gain, pairs = r.gain, r.statistics.bn_minus_nobn.seeds
    assert (pairs, gain.mean, gain.ci95, gain.p_value) == (0, None, None, None)
    assert (r.accuracy("nobn").mean, r.accuracy("nobn").ci95) == (None, None)
    assert r.flat["nobn"] is None and r.grad_ratio["nobn"] is None
    assert study_report.gain_sentences([r], "depth") == [
        "At no point did any seed learn in both variants, so there is no gain to give."
    ]
    assert "failed more often (5 of 5 seeds against 0;" in study_report.finding([r], "depth")
    assert "; 1.00 at depth = 30 with BatchNorm." in study_report.why([r], "depth")
    assert "not known without BatchNorm (no seed learnt)" in study_report.why([r], "depth")


def test_a_point_with_one_pair_has_a_gain_but_no_interval() -> None:
    one_pair = study_report.row(20, "d20", point([0.97, 0.96, 0.98], [0.95, 0.1, 0.1]))
    gain = one_pair.gain
    assert (one_pair.statistics.bn_minus_nobn.seeds, gain.ci95, gain.p_value) == (1, None, None)
    assert gain.mean == pytest.approx(0.02)
    assert study_report.gain_sentences([one_pair], "depth") == [
        "BatchNorm's gain is +2.00 points at depth = 20.",
        "Where fewer than two seeds learnt in both variants there is no interval.",
    ]


def test_the_table_has_a_row_per_point_with_dashes_where_nothing_learnt() -> None:
    found = [
        study_report.row(2, "workspace", point(LEARNT_BN, [0.95, 0.96, 0.94, 0.95, 0.95])),
        study_report.row(20, "d20", point(LEARNT_BN, [0.95, "diverged", 0.11, 0.94, 0.96])),
        study_report.row(30, "d30", point(LEARNT_BN, ["diverged"] * 5)),
    ]
    table = study_report.table(found, "depth")
    assert table.header == [
        "depth", "experiment", "with BatchNorm (%)", "without BatchNorm (%)", "gain (points)",
        "p (paired t-test)", "failed with BN", "failed without BN", "flat-region inputs without BN (%)",
    ]  # fmt: skip
    assert table.rows == [
        ["2", "workspace", "97.00 (96.12 to 97.88)", "95.00 (94.12 to 95.88)",
         "+2.00 (+0.24 to +3.76)", "0.034", "0 of 5 (95% CI 0 to 52%)",
         "0 of 5 (95% CI 0 to 52%)", "20.0"],
        ["20", "d20", "97.00 (96.12 to 97.88)", "95.00 (92.52 to 97.48)",
         "+2.00 (-0.48 to +4.48)", "0.074", "0 of 5 (95% CI 0 to 52%)",
         "2 of 5 (1 diverged, 1 not learning; 95% CI 5 to 85%)", "20.0"],
        ["30", "d30", "97.00 (96.12 to 97.88)", "-", "-", "-", "0 of 5 (95% CI 0 to 52%)",
         "5 of 5 (5 diverged; 95% CI 48 to 100%)", "-"],
    ]  # fmt: skip


def test_the_summary_names_points_without_results_and_shows_the_rest() -> None:
    point = results(LEARNT_BN, [0.95, 0.96, 0.94, 0.95, 0.95])
    blocks, figures = study_report.build(
        "depth",
        "model.depth",
        {2: point, 4: "failed: x", 6: "missing", 10: "partial: no reports/statistics.json"},
        {2: "lucky-fox"},
        {"model.depth": 10, "model.width": 64, "train.lr": 0.001, "data.verify": True},
    )
    assert blocks[0] == Heading("Study `depth`: BatchNorm's gain against model.depth", 1)
    text = [b.text for b in blocks if isinstance(b, Paragraph)]
    assert text[0].startswith("BatchNorm's gain is +2.00 points (95% CI +0.24 to +3.76) at")
    assert (
        "depth = 4: failed: x; depth = 6: missing; depth = 10: partial: no reports/statistics.json."
        in text
    )
    assert text[-1] == "model.width = 64, train.lr = 0.001."  # not the varied param, nor data.*
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert [r[:2] for r in table.rows] == [["2", "lucky-fox"]]
    assert sorted(figures) == ["depth_accuracy.png", "depth_diagnostics.png"]
    assert sorted(b.path for b in blocks if isinstance(b, Image)) == sorted(figures)
    assert figures["depth_accuracy.png"].axes[0].get_xscale() == "linear"


def test_a_summary_without_results_has_no_table_or_figures() -> None:
    blocks, figures = study_report.build("lr", "train.lr", {1e-05: "missing", 0.1: "missing"},
                                         {}, {"train.lr": 0.001})  # fmt: skip
    assert figures == {}
    assert not [b for b in blocks if isinstance(b, Table | Image)]
    assert Paragraph("lr = 1e-05: missing; lr = 0.1: missing.") in blocks


def test_learning_rates_are_drawn_on_a_log_axis() -> None:
    point = results(LEARNT_BN, [0.95, 0.96, 0.94, 0.95, 0.95])
    _, figures = study_report.build("lr", "train.lr", {1e-05: point, 0.1: point},
                                    {1e-05: "a", 0.1: "b"}, {})  # fmt: skip
    accuracy = figures["lr_accuracy.png"].axes[0]
    assert accuracy.get_xscale() == "log"
    assert [t.get_text() for t in accuracy.get_xticklabels()] == ["1e-05", "0.1"]


def test_a_point_missing_its_statistics_is_partial() -> None:
    def read(path: str, rev: str) -> str:
        if path == str(paths.STATISTICS_FILE):
            raise FileNotFoundError(path)
        return json.dumps({"layers": {}})

    point = Experiment("fox", "e" * 40, "", "success", {})
    assert experiments.read_results(point, read) == (
        "partial: no reports/statistics.json at eeeeeee (fox)"
    )


# The summary end to end on synthetic experiments (no DVC, no MLflow).


@pytest.fixture
def summary_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, params_dict: dict) -> dict:
    """A temporary folder with DVC_YAML to summarize in; study's DVC, git and
    MLflow calls replaced; returns what tag_runs was called with, and the params."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    monkeypatch.setattr(study, "same_recipe", same_code)
    monkeypatch.setattr(study, "workspace_current", lambda: True)
    monkeypatch.setattr(study, "code_commit", lambda point, recipe: point.baseline or "c" * 40)
    tagged: list[tuple] = []
    monkeypatch.setattr(study, "tag_runs", lambda *args: tagged.append(args))
    params_dict["visualize"]["dpi"] = 30
    return {"tagged": tagged, "params": parse_params(yaml.safe_dump(params_dict, sort_keys=False))}


def test_a_study_without_any_result_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, summary_setup: dict
) -> None:
    monkeypatch.setattr(study, "exp_show", lambda: shown(
        record("workspace", 10), ("a", record("e1", 2, failed=True)), ("b", record("e2", 4), "queued")
    ))  # fmt: skip
    named = studies(depth={"param": "model.depth", "values": [2, 4, 6], "fixed": {}})
    with pytest.raises(PipelineError) as caught:
        study.summarize(named, summary_setup["params"])
    assert caught.value.lines == (
        "no point of study depth has results (2: failed: a; 4: queued: b; 6: missing): "
        "run `make study STUDY=depth`",
    )
    assert not (tmp_path / "reports").exists()
    assert summary_setup["tagged"] == []


def test_points_whose_results_cannot_be_read_are_no_results(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, summary_setup: dict
) -> None:
    monkeypatch.setattr(study, "exp_show", lambda: shown(record("workspace", 10),
                                                         ("d2", record("e1", 2))))  # fmt: skip

    def unreadable(path: str, rev: str) -> str:
        raise FileNotFoundError(path)

    monkeypatch.setattr(experiments, "_read_at", unreadable)
    for key, content in results(LEARNT_BN, [0.95, 0.96, 0.94, 0.95, 0.95]).items():
        path = (
            paths.STATISTICS_FILE
            if key == "statistics"
            else paths.TRAIN_REPORTS_DIR / f"{key}.json"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))  # the workspace's own files: readable
    named = studies(depth={"param": "model.depth", "values": [2, 4], "fixed": {}},
                    lr={"param": "train.lr", "values": [0.001, 0.01], "fixed": {}})  # fmt: skip
    with pytest.raises(PipelineError) as caught:
        study.summarize(named, summary_setup["params"])
    assert caught.value.lines[0].startswith("no point of study depth has results (2: partial: no ")
    assert len(caught.value.lines) == 1  # the lr study has the workspace's point: summarized
    assert not (tmp_path / "reports" / "study" / "depth.md").exists()
    assert (tmp_path / "reports" / "study" / "lr.md").exists()
    ((tagged, _, _),) = summary_setup["tagged"]  # one call, after every summary
    assert [name for name, _, _ in tagged] == ["lr"]


def test_an_out_of_date_workspace_is_not_a_result(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, summary_setup: dict
) -> None:
    monkeypatch.setattr(study, "exp_show", lambda: shown(record("workspace", 10)))
    monkeypatch.setattr(study, "workspace_current", lambda: False)
    named = studies(depth={"param": "model.depth", "values": [2, 10], "fixed": {}})
    with pytest.raises(PipelineError) as caught:
        study.summarize(named, summary_setup["params"])
    assert caught.value.lines == (
        "no point of study depth has results (2: missing; 10: the workspace's outputs are not "
        "up to date (`dvc status`): run `make run`): run `make study STUDY=depth`",
    )
    assert not (tmp_path / "reports").exists()


def test_the_summary_writes_the_report_and_tags_the_points(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, summary_setup: dict
) -> None:
    at_depth_2 = results(LEARNT_BN, [0.95, 0.96, 0.94, 0.95, 0.95])
    at_depth_10 = results(LEARNT_BN, [0.95, "diverged", 0.11, 0.94, 0.96])
    for key, content in at_depth_10.items():  # the workspace's files, read from disk
        path = paths.TRAIN_REPORTS_DIR / f"{key}.json"
        path = paths.STATISTICS_FILE if key == "statistics" else path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    read = []

    def read_at(path: str, rev: str) -> str:  # an experiment's files, as dvc.api.read gives them
        read.append((path, rev))
        assert rev == "e1"
        key = "statistics" if path == str(paths.STATISTICS_FILE) else Path(path).stem
        return json.dumps(at_depth_2[key])

    monkeypatch.setattr(experiments, "_read_at", read_at)
    monkeypatch.setattr(study, "exp_show", lambda: shown(
        record("workspace", 10), ("d2", record("e1", 2)), ("d4-old", record("old-e2", 4)),
    ))  # fmt: skip
    named = studies(depth={"param": "model.depth", "values": [2, 4, 10], "fixed": {}})
    study.summarize(named, summary_setup["params"])

    folder = tmp_path / "reports" / "study"
    assert sorted(p.name for p in folder.iterdir()) == [
        "depth.html", "depth.md", "depth_accuracy.png", "depth_diagnostics.png"
    ]  # fmt: skip
    for figure in ("depth_accuracy.png", "depth_diagnostics.png"):
        assert (folder / figure).read_bytes().startswith(b"\x89PNG")
    markdown = (folder / "depth.md").read_text()
    assert "| 2 | d2 | 97.00 (96.12 to 97.88) | 95.00 (94.12 to 95.88) |" in markdown
    assert "| 10 | workspace | 97.00 (96.12 to 97.88) | 95.00 (92.52 to 97.48) |" in markdown
    assert "depth = 4: stale: d4-old ran other code." in markdown
    assert "![Test accuracy, BatchNorm's gain and failures against depth](depth_accuracy.png)" in (
        markdown
    )
    assert "data:image/png;base64," in (folder / "depth.html").read_text()
    assert (
        "## Code\n\nComputed with the pipeline at commit bbbbbbb (depth = 2) and ccccccc "
        "(depth = 10)." in (folder / "depth.md").read_text()
    )  # the experiment's baseline; the commit of the workspace's code
    assert sorted(read) == sorted((str(p), "e1") for p in (
        paths.STATISTICS_FILE, paths.TRAIN_REPORTS_DIR / "bn.json",
        paths.TRAIN_REPORTS_DIR / "nobn.json"))  # fmt: skip
    ((tagged, workspace, experiment),) = summary_setup["tagged"]
    ((name, tagged_study, points),) = tagged
    assert (name, tagged_study, experiment) == ("depth", named["depth"], "batchnorm-mnist")
    assert {v: p.name for v, p in points.items()} == {2: "d2", 10: "workspace"}
    assert workspace.name == "workspace"


# params.yaml `studies`.


@pytest.fixture
def with_studies(params_dict: dict):
    """Parse the committed params with these studies instead of its own."""

    def parse(**named: dict):
        params_dict["studies"] = named
        return parse_params(yaml.safe_dump(params_dict, sort_keys=False))

    return parse


def problems(parse, **named: dict) -> tuple[str, ...]:
    with pytest.raises(ParamsError) as caught:
        parse(**named)
    return caught.value.lines


STUDIED = ("model.depth, model.width, model.activation, model.init_std, model.inputs, "
           "train.epochs, train.batch_size, train.optimizer, train.lr, train.momentum, "
           "train.betas, train.eps, train.weight_decay, train.seeds, train.device, "
           "train.cpu_threads, train.cuda_graph")  # fmt: skip


def test_the_committed_studies_are_read(params_dict: dict) -> None:
    named = parse_params(yaml.safe_dump(params_dict, sort_keys=False)).studies
    assert list(named) == ["depth", "batch_size", "lr", "activation"]
    assert named["lr"] == StudyParams(param="train.lr", values=[1e-05, 0.0001, 0.001, 0.01, 0.1,
                                      1.0], fixed={})  # fmt: skip


def test_a_study_may_set_only_model_and_train_keys(with_studies) -> None:
    outside = {"param": "model.depthh", "values": [1, 2], "fixed": {"data.source": "local"}}
    assert problems(with_studies, x=outside) == (
        f"params.yaml: studies.x: model.depthh: not a key a study can set; allowed: {STUDIED}",
        f"params.yaml: studies.x: data.source: not a key a study can set; allowed: {STUDIED}",
    )


def test_a_study_may_not_fix_the_param_it_varies(with_studies) -> None:
    both = {"param": "model.depth", "values": [2, 4], "fixed": {"model.depth": 3}}
    assert problems(with_studies, depth=both) == (
        "params.yaml: studies.depth.fixed: model.depth: is the param the study varies",
    )


def test_a_study_has_two_or_more_different_values(with_studies) -> None:
    assert problems(with_studies, depth={"param": "model.depth", "values": [10], "fixed": {}}) == (
        "params.yaml: studies.depth.values = [10]: must have at least 2 items",
    )
    repeated = {"param": "model.depth", "values": [2, 4, 2], "fixed": {}}
    assert problems(with_studies, depth=repeated) == (
        "params.yaml: studies.depth.values = [2, 4, 2]: must not repeat a value (repeated: [2])",
    )


def test_every_point_of_a_study_must_be_valid_params(with_studies) -> None:
    negative = {"param": "train.lr", "values": [0.001, -1], "fixed": {}}
    assert problems(with_studies, lr=negative) == (
        "params.yaml: studies.lr.values[1] = -1: train.lr = -1: must be greater than 0",
    )
    fractional = {"param": "model.depth", "values": [2, 4.5], "fixed": {}}
    assert problems(with_studies, depth=fractional) == (
        "params.yaml: studies.depth.values[1] = 4.5: model.depth = 4.5: must be a valid integer",
    )
    bad_fixed = {"param": "train.lr", "values": [0.001, 0.1], "fixed": {"train.batch_size": 1}}
    assert problems(with_studies, lr=bad_fixed) == (  # each point is told
        "params.yaml: studies.lr.values[0] = 0.001: train.batch_size = 1: "
        "must be greater than or equal to 2",
        "params.yaml: studies.lr.values[1] = 0.1: train.batch_size = 1: "
        "must be greater than or equal to 2",
    )


def test_a_study_of_a_list_or_a_choice_is_valid(with_studies) -> None:
    named = with_studies(
        betas={"param": "train.betas", "values": [[0.9, 0.999], [0.5, 0.9]], "fixed": {}},
        graph={"param": "train.cuda_graph", "values": [True, False], "fixed": {"model.depth": 4}},
    ).studies  # fmt: skip
    assert named["betas"].values == [[0.9, 0.999], [0.5, 0.9]]
    assert named["graph"].fixed == {"model.depth": 4}


def test_a_study_name_is_a_lowercase_identifier(with_studies) -> None:
    (line,) = problems(with_studies, Depth={"param": "model.depth", "values": [2, 4], "fixed": {}})
    assert line.startswith('params.yaml: studies.Depth.[key] = "Depth": must match pattern')
