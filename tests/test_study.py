"""The depth study on synthetic experiment records: which points it computes,
which it summarizes, its maths, and its refusal of points that differ in
more than depth. (tests/test_study_e2e.py runs a tiny study through DVC.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import paths, study
from pipeline.errors import PipelineError
from pipeline.report import study_report
from pipeline.report.document import Image, Paragraph, Table


def record(rev: str, depth: int, *, lr: float = 0.001, code: str = "c1", failed: bool = False,
           time: str = "2026-11-27T12:00:00", depths: tuple = (2, 4)) -> dict:  # fmt: skip
    """One revision as `dvc exp show --json` writes it."""
    params = {"model": {"depth": depth, "width": 64}, "train": {"lr": lr, "seeds": [0, 1]},
              "study": {"depths": list(depths)}}  # fmt: skip
    deps = {"pipeline/train.py": {"hash": code}, "data/raw": {"hash": "raw"},
            "data/models/bn": {"hash": f"models-{rev}"}}  # fmt: skip
    data = {"rev": rev, "timestamp": time, "params": {"params.yaml": {"data": params}},
            "deps": deps, "metrics": {}, "outs": {}, "meta": {}}  # fmt: skip
    error = {"type": "ReproductionError", "msg": "stage failed"} if failed else None
    return {"rev": rev, "name": None, "data": data, "error": error, "experiments": None}


def shown(workspace: dict, *experiments: tuple) -> list[dict]:
    """`dvc exp show --json` of the workspace and one baseline with these
    (name, record) or (name, record, queue state) experiments."""
    baseline = record("b" * 40, 10) | {"name": "main"}
    baseline["experiments"] = [
        {"name": e[0], "revs": [e[1]], "executor": {"state": e[2]} if len(e) > 2 else None}
        for e in experiments
    ]
    return [workspace | {"rev": "workspace"}, baseline]


def test_exp_show_is_read_into_experiments_with_flat_params_and_code() -> None:
    workspace, experiments = study.parse_exp_show(
        shown(
            record("workspace", 10), ("d2", record("e1", 2)), ("bad", record("e2", 4, failed=True))
        )
    )
    assert workspace.name == "workspace" and workspace.depth == 10
    first, second = experiments
    assert (first.name, first.rev, first.depth, first.state) == ("d2", "e1", 2, "success")
    assert first.params["train.seeds"] == [0, 1] and first.params["train.lr"] == 0.001
    assert first.code == {"pipeline/train.py": "c1", "data/raw": "raw"}  # not the models
    assert second.state == "failed"


def test_only_depths_without_a_successful_point_of_the_same_setup_are_queued() -> None:
    workspace, experiments = study.parse_exp_show(shown(
        record("workspace", 10),
        ("same", record("e1", 2)),
        ("other-lr", record("e2", 4, lr=0.01)),
        ("other-code", record("e3", 6, code="c2")),
        ("failed", record("e4", 10, failed=True)),
        ("other-study-list", record("e5", 15, depths=(15,))),  # study.* is not the setup
        ("waiting", record("e6", 20), "queued"),  # queued already: not twice
    ))  # fmt: skip

    def same_code(e: study.Experiment) -> bool:  # as git would answer for the workspace
        return e.code["pipeline/train.py"] == "c1"

    depths = [2, 4, 6, 10, 15, 20]
    assert study.to_compute(workspace, experiments, depths, same_code) == [4, 6, 10]


def test_the_newest_successful_experiment_is_each_depths_point() -> None:
    _, experiments = study.parse_exp_show(shown(
        record("workspace", 10),
        ("old", record("e1", 2, time="2026-11-27T10:00:00")),
        ("new", record("e2", 2, time="2026-11-27T11:00:00")),
        ("newer-but-failed", record("e3", 2, time="2026-11-27T12:00:00", failed=True)),
        ("only-failed", record("e4", 4, failed=True)),
        ("later", record("e5", 10, time="2026-11-27T13:00:00"), "queued"),
        ("now", record("e6", 15), "running"),
        ("gone", record("e7", 15, failed=True)),
    ))  # fmt: skip
    chosen = study.choose_points(experiments, [2, 4, 6, 10, 15])
    assert chosen[2].name == "new"
    assert chosen[4] == "failed: only-failed"
    assert chosen[6] == "missing"
    # a queued point's commit holds the workspace's old reports: never read as results
    assert chosen[10] == "queued: later"
    assert chosen[15] == "running: now"


def test_points_that_differ_in_more_than_depth_are_named() -> None:
    _, experiments = study.parse_exp_show(shown(
        record("workspace", 10),
        ("a", record("e1", 2)), ("b", record("e2", 4, lr=0.01)), ("c", record("e3", 6, code="c2")),
    ))  # fmt: skip
    assert study.setup_differences(experiments) == [
        "param train.lr: 0.001 in a, c; 0.01 in b",
        'code pipeline/train.py: "c1" in a, b; "c2" in c',
    ]
    assert study.setup_differences(experiments[:1]) == []


def results(bn: list[float], nobn: list[float], dead: list[float], grads: list[float]) -> dict:
    """A point's statistics.json and train summaries, as the stages write them."""
    from pipeline.evaluate import Evaluation, summarize

    def by_seed(values: list[float]) -> dict[int, Evaluation]:
        return {seed: Evaluation(v, 0.1, [[0]]) for seed, v in enumerate(values)}

    layers = {"dead_fraction": dead, "grad_norm": grads}
    return {"statistics": summarize({"bn": by_seed(bn), "nobn": by_seed(nobn)}),
            "bn": {"layers": {"dead_fraction": [0.0] * len(dead), "grad_norm": [1.0] * len(grads)}},
            "nobn": {"layers": layers}}  # fmt: skip


def test_a_row_holds_the_paired_gain_and_the_diagnostics() -> None:
    r = study_report.row(4, "d4", results([0.97, 0.96, 0.98], [0.95, 0.95, 0.96],
                                          [0.1, 0.2, 0.3, 0.4], [0.5, 1, 1, 2]))  # fmt: skip
    assert r.seeds == 3
    assert r.accuracy["bn"][0] == pytest.approx(0.97)
    assert r.gain == pytest.approx(0.05 / 3)
    assert r.gain_ci[0] < r.gain < r.gain_ci[1] and 0 < r.p_value < 1
    assert r.dead == {"bn": 0.0, "nobn": pytest.approx(0.25)}
    assert r.grad_ratio == {"bn": 1.0, "nobn": 0.25}


def rows(gains: dict[int, list[float]]) -> list[study_report.Row]:
    """Rows whose per-seed gains are `gains[depth]` (nobn at 0.9)."""
    return [study_report.row(d, f"d{d}", results([0.9 + g for g in per_seed], [0.9] * len(per_seed),
                                                  [0.0], [1.0]))
            for d, per_seed in gains.items()]  # fmt: skip


def test_the_finding_names_the_smallest_depth_whose_interval_excludes_zero() -> None:
    text = study_report.finding(rows({2: [-0.002, 0.003, 0.0], 4: [0.004, 0.006, 0.005],
                                      6: [0.01, 0.012, 0.011]}))  # fmt: skip
    assert text.startswith("BatchNorm's gain goes from +0.03 points (95% CI ")
    assert (
        "Its 95% CI excludes zero from depth 4 on (+0.50 points, 95% CI +0.25 to +0.75; p = "
        in text
    )
    assert text.endswith("), and at every deeper point; at 2 layers it does not.")
    already = study_report.finding(rows({4: [0.004, 0.006, 0.005], 6: [-0.01, 0.01, 0.0]}))
    assert "excludes zero already at the shallowest depth studied, 4 (" in already
    assert already.endswith("), though not at every deeper point.")


def test_the_finding_says_when_no_depth_or_no_interval_allows_a_call() -> None:
    none = study_report.finding(rows({2: [-0.01, 0.01, 0.0], 4: [0.02, -0.02, 0.001]}))
    assert none.endswith("At no depth does the gain's 95% CI exclude zero.")
    single = study_report.finding(rows({2: [0.01], 4: [0.02]}))
    assert "from +1.00 points at depth 2 to +2.00 points at depth 4." in single
    assert single.endswith("no depth can be called.")
    assert study_report.finding([]).startswith("No point of the study has results yet")


def test_the_finding_names_seeds_that_learnt_nothing() -> None:
    r = study_report.row(20, "d20", results([0.97, 0.96, 0.97], [0.1135, 0.91, 0.1135],
                                            [0.5], [1.0]))  # fmt: skip
    assert r.stalled == {"bn": 0, "nobn": 2}
    text = study_report.finding([r])
    assert "At depth 20, 2 of 3 seeds without BatchNorm ended below 20% test accuracy" in text


def test_the_summary_names_points_without_results_and_tabulates_the_rest() -> None:
    point = results([0.97, 0.96, 0.98], [0.95, 0.95, 0.96], [0.1, 0.2], [0.5, 2.0])
    blocks, figures = study_report.build(
        {2: point, 4: "failed: x", 6: "missing", 10: "partial: no reports/statistics.json"},
        {2: "lucky-fox"},
        {"model.depth": 2, "model.width": 64, "train.lr": 0.001, "data.verify": True},
    )
    text = [b.text for b in blocks if isinstance(b, Paragraph)]
    assert (
        "depth 4: failed: x; depth 6: missing; depth 10: partial: no reports/statistics.json."
        in text
    )
    assert "model.width = 64, train.lr = 0.001." in text
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert table.rows[0][:3] == ["2", "lucky-fox", "3"]
    assert table.rows[0][3].startswith("97.00 (") and table.rows[0][7] == "15.0"
    assert sorted(figures) == sorted(b.path for b in blocks if isinstance(b, Image))
    assert (
        "Dead hidden units (zero for every test image, final epoch, mean over seeds) go from "
        "15.0% at depth 2 to 15.0% at depth 2 without BatchNorm, and from 0.0% at depth 2"
        in text[-2]
    )
    assert "gradient norm over the last one's goes from 0.25 at depth 2" in text[-2]


def test_a_point_missing_its_statistics_is_partial() -> None:
    def read(path: str, rev: str) -> str:
        if path == str(paths.STATISTICS_FILE):
            raise FileNotFoundError(path)
        return json.dumps({"layers": {}})

    point = study.Experiment("fox", "e" * 40, "", "success", {}, {})
    assert study.read_results(point, read) == (
        "partial: no reports/statistics.json at eeeeeee (fox)"
    )


def test_the_summary_refuses_points_with_mixed_params(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(study, "exp_show", lambda: shown(
        record("workspace", 10), ("a", record("e1", 2)), ("b", record("e2", 4, lr=0.01))
    ))  # fmt: skip
    with pytest.raises(PipelineError, match=r"differ in more than model\.depth") as caught:
        study.summarize([2, 4], dpi=40)
    assert "param train.lr: 0.001 in a; 0.01 in b" in caught.value.lines
    assert not (tmp_path / "reports").exists()  # nothing written


def test_a_study_without_any_result_writes_nothing(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(study, "exp_show", lambda: shown(
        record("workspace", 10), ("a", record("e1", 2, failed=True)), ("b", record("e2", 4), "queued")
    ))  # fmt: skip
    with pytest.raises(PipelineError) as caught:
        study.summarize([2, 4, 6], dpi=40)
    assert caught.value.lines == (
        "no depth of study.depths [2, 4, 6] has a successful DVC experiment (2: failed: a; "
        "4: queued: b; 6: missing): run `make study`",
    )
    assert not (tmp_path / "reports").exists()


def test_the_study_params_are_checked(params_dict: dict) -> None:
    import yaml

    from pipeline.errors import ParamsError
    from pipeline.params import parse_params

    params_dict["study"]["depths"] = [4, 2, 4]
    with pytest.raises(ParamsError, match=r"study.depths = \[4, 2, 4\]: .*repeat a depth"):
        parse_params(yaml.safe_dump(params_dict))
    params_dict["study"]["depths"] = [6, 2]
    assert parse_params(yaml.safe_dump(params_dict)).study.depths == [2, 6]
    params_dict["study"]["depths"] = [10]  # a study compares depths
    with pytest.raises(ParamsError, match=r"study.depths = \[10\]: .*at least 2"):
        parse_params(yaml.safe_dump(params_dict))
