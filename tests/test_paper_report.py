"""The paper summary (pipeline/report/paper_report.py) on hand-made results:
the verdicts against Figure 1 follow the numbers, both ways."""

from __future__ import annotations

import pytest

from pipeline.evaluate import Evaluation, summarize
from pipeline.report import paper_report
from pipeline.report.document import Table, render_markdown
from pipeline.stats import failures

SEEDS = ["0", "1", "2", "3", "4"]
SETTING = {"train.batch_size": 60, "train.momentum": 0.0, "train.optimizer": "sgd",
           "model.init_std": 0.1, "model.depth": 3, "train.lr": 1.0}  # fmt: skip


def summary(accuracy: list[float], median_drift: float, offsets: list[float]) -> dict:
    """A train summary: every seed learnt; seed k's accuracy curve is `accuracy`
    shifted by offsets[k]; the fixed unit's median moves linearly by
    median_drift (plus a seed's own share), and its spread grows by half as much."""
    epochs = len(accuracy)
    per_epoch = {}
    for seed, offset in zip(SEEDS, offsets, strict=True):
        drift = median_drift * (1 + offset)
        mid = [drift * e / (epochs - 1) + offset for e in range(epochs)]
        half = [1.0 + drift / 4 * e / (epochs - 1) for e in range(epochs)]
        per_epoch[seed] = {
            "epoch": list(range(1, epochs + 1)),
            "test_accuracy": [a + offset / 100 for a in accuracy],
            "layers": {
                f"unit_p{q}": [[0.0, m + side * h] for m, h in zip(mid, half, strict=True)]
                for q, side in ((15, -1.0), (50, 0.0), (85, 1.0))
            },
        }
    return {
        "per_seed": {s: {"outcome": "learnt"} for s in SEEDS},
        "per_epoch": per_epoch,
        "outcomes": failures(["learnt"] * len(SEEDS)),
    }


def statistics_of(bn: dict, nobn: dict) -> dict:
    """statistics.json as evaluate writes it for the summaries' final accuracies."""

    def final(s: dict) -> dict[int, Evaluation]:
        return {
            int(k): Evaluation(s["per_epoch"][k]["test_accuracy"][-1], 0.1, [[0]]) for k in SEEDS
        }

    return summarize({"bn": final(bn), "nobn": final(nobn)}).to_json()


OFFSETS = [0.0, 0.1, -0.1, 0.05, -0.02]


def results(bn_curve: list[float], nobn_curve: list[float], bn_drift: float,
            nobn_drift: float) -> dict:  # fmt: skip
    bn = summary(bn_curve, bn_drift, OFFSETS)
    nobn = summary(nobn_curve, nobn_drift, [o * 1.5 for o in OFFSETS])
    return {"statistics": statistics_of(bn, nobn), "bn": bn, "nobn": nobn}


def verdicts(blocks: list) -> list[str]:
    table = next(b for b in blocks if isinstance(b, Table))
    return [row[2] for row in table.rows]


def test_data_like_the_papers_support_every_claim() -> None:
    good = results([0.95, 0.97, 0.98], [0.90, 0.93, 0.96], bn_drift=0.1, nobn_drift=2.0)
    blocks, figures = paper_report.build("paper", "train.lr", {1.0: good}, {1.0: "x"}, SETTING)
    assert verdicts(blocks) == ["supported", "supported", "supported"]
    text = render_markdown(blocks)
    assert "above the baseline's at 3 of 3 evaluations (every 1,000 steps)" in text
    assert "+2.00 points" in text  # 0.98 - 0.96, the offsets cancel in the mean... nearly
    assert set(figures) == {"paper_accuracy.png", "paper_percentiles.png"}


def test_data_against_the_paper_contradict_it() -> None:
    bad = results([0.90, 0.93, 0.95], [0.95, 0.97, 0.98], bn_drift=2.0, nobn_drift=0.1)
    blocks, _ = paper_report.build("paper", "train.lr", {1.0: bad}, {1.0: "x"}, SETTING)
    assert verdicts(blocks) == ["contradicted", "contradicted", "contradicted"]
    assert "at 0 of 3 evaluations" in render_markdown(blocks)
    assert "lower, against the paper" in render_markdown(blocks)


def test_each_variant_is_judged_at_its_own_best_rate() -> None:
    low = results([0.95, 0.97, 0.98], [0.80, 0.85, 0.90], 0.1, 2.0)
    high = results([0.94, 0.96, 0.97], [0.95, 0.97, 0.975], 0.1, 2.0)
    blocks, _ = paper_report.build("paper", "train.lr", {0.3: low, 3.0: high},
                                   {0.3: "a", 3.0: "b"}, SETTING)  # fmt: skip
    text = render_markdown(blocks)
    assert "(BatchNorm 0.3, the baseline 3.0)" in text
    assert "after 3,000 steps BatchNorm's test accuracy is" in text.lower() or "After 3,000" in text


@pytest.mark.parametrize("missing", ["missing", "failed: exit 1"])
def test_a_point_without_results_is_named(missing: str) -> None:
    good = results([0.95, 0.97, 0.98], [0.90, 0.93, 0.96], 0.1, 2.0)
    blocks, _ = paper_report.build("paper", "train.lr", {1.0: good, 3.0: missing},
                                   {1.0: "x"}, SETTING)  # fmt: skip
    assert f"lr = 3.0: {missing}" in render_markdown(blocks)


def test_behind_early_then_ahead_says_from_when() -> None:
    crossing = results([0.90, 0.95, 0.97], [0.92, 0.93, 0.94], 0.1, 2.0)
    blocks, _ = paper_report.build("paper", "train.lr", {1.0: crossing}, {1.0: "x"}, SETTING)
    text = render_markdown(blocks)
    assert verdicts(blocks)[0] == "contradicted"  # not higher throughout
    assert "it is not above at step 1,000, and above at every one from step 2,000 on." in text
