"""The evaluate stage: correct numbers, metrics.json, the table, MLflow."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from statistics import stdev

import pytest
import torch
from scipy import stats

from pipeline import evaluate, paths
from pipeline.data.mnist import load_split, scale_images
from pipeline.errors import PipelineError
from pipeline.evaluate import Evaluation
from pipeline.format import accuracy_table, failed_cell, markdown_table
from pipeline.nn.checkpoint import checkpoints_of, load_checkpoint
from pipeline.nn.model import DeepMLP
from pipeline.results import Statistics


def constant_model(predicted: int) -> DeepMLP:
    """A model whose logits are the same for every image: always `predicted`."""
    model = DeepMLP(1, 4, batchnorm=False)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.output.bias[predicted] = 1.0
    return model


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_evaluate_model_counts_and_loss(batch_size: int) -> None:
    y = torch.tensor([2, 2, 5, 7, 2, 0])
    x = torch.rand(len(y), 784)
    result = evaluate.evaluate_model(constant_model(2), x, y, batch_size)
    assert result.test_accuracy == pytest.approx(3 / 6)
    assert result.confusion[2][2] == 3
    assert result.confusion[5][2] == 1 and result.confusion[0][2] == 1
    assert sum(map(sum, result.confusion)) == 6
    logits = torch.zeros(len(y), 10)
    logits[:, 2] = 1.0
    expected = torch.nn.functional.cross_entropy(logits, y).item()
    assert result.test_loss == pytest.approx(expected)
    assert result.class_accuracy[2] == 1.0 and result.class_accuracy[5] == 0.0
    assert result.class_accuracy[9] == 0.0  # no image of class 9: 0, not a division error


def e(accuracy: float, loss: float) -> Evaluation:
    return Evaluation(accuracy, loss, [[0] * 10 for _ in range(10)])


# t quantile for 2 degrees of freedom, 97.5%: from a printed table, to check scipy's use
T_975_DF2 = 4.302652729911275


def table_of(statistics: dict) -> str:
    """reports/accuracy.md for this statistics.json, as evaluate writes it."""
    return markdown_table(*accuracy_table(Statistics.from_json(statistics))) + "\n"


def t_df2_two_sided_p(t: float) -> float:
    """The two-sided p of a t statistic with 2 degrees of freedom, in closed
    form: the CDF is 1/2 + t / (2 sqrt(2 + t^2))."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def test_summary_has_means_stds_intervals_and_the_paired_test() -> None:
    summary = evaluate.summarize(
        {
            "bn": {0: e(0.98, 0.1), 1: e(0.96, 0.3), 2: e(0.97, 0.2)},
            "nobn": {0: e(0.95, 0.2), 1: e(0.95, 0.35), 2: e(0.93, 0.32)},
        }
    )
    statistics = summary.to_json()
    assert Statistics.from_json(statistics) == summary  # what statistics.json reads back as
    bn = statistics["bn"]
    assert bn["seeds"] == 3
    assert bn["test_accuracy"] == pytest.approx(0.97)
    assert bn["test_accuracy_std"] == pytest.approx(0.01)  # sample std
    half = T_975_DF2 * 0.01 / math.sqrt(3)
    assert bn["test_accuracy_ci95"] == pytest.approx([0.97 - half, 0.97 + half])
    assert statistics["nobn"]["test_loss"] == pytest.approx(0.29)
    assert bn["per_seed"]["1"] == {"test_accuracy": 0.96, "test_loss": 0.3, "outcome": "learnt"}
    assert (bn["learnt"], bn["outcomes"]["failed"]) == (3, 0)
    assert bn["outcomes"]["failed_fraction_ci95"] == pytest.approx([0.0, 0.7076], abs=1e-4)
    diff = statistics["bn_minus_nobn"]
    differences = [0.03, 0.01, 0.04]  # bn - nobn, seed by seed
    mean, std = sum(differences) / 3, stdev(differences)
    assert diff["seeds"] == 3
    assert diff["test_accuracy"] == pytest.approx(mean)
    assert diff["test_accuracy_std"] == pytest.approx(std)
    half = T_975_DF2 * std / math.sqrt(3)
    assert diff["test_accuracy_ci95"] == pytest.approx([mean - half, mean + half])
    t = mean / (std / math.sqrt(3))
    assert diff["test_accuracy_p_value"] == pytest.approx(t_df2_two_sided_p(t))
    assert diff["test_loss"] == pytest.approx(-0.09)
    assert 0 < diff["test_loss_p_value"] < 1
    table = table_of(statistics)
    assert "| with BatchNorm | 3 | 97.00 | 94.52 to 99.48 | 1.00 |  | 0.2000 |" in table
    assert failed_cell(summary.bn.outcomes) == "0 of 3 (95% CI 0 to 71%)"  # shown once one fails
    assert f"| bn - nobn (paired) | 3 | +2.67 | {100 * (mean - half):+.2f} to " in table
    assert f" | 1.53 | {diff['test_accuracy_p_value']:.2g} | -0.0900 |" in table
    assert evaluate.compared(summary) == {
        "bn": {"acc": pytest.approx(0.97), "failed": 0},
        "nobn": {"acc": pytest.approx(0.9433333), "failed": 0},
        "gain": {"acc": pytest.approx(mean), "p": diff["test_accuracy_p_value"]},
    }


def test_one_seed_has_no_spread_interval_or_p_value() -> None:
    summary = evaluate.summarize({"bn": {0: e(0.98, 0.1)}, "nobn": {0: e(0.95, 0.2)}})
    statistics = summary.to_json()
    for entry in (statistics["bn"], statistics["bn_minus_nobn"]):
        assert entry["seeds"] == 1
        assert entry["test_accuracy_std"] is None and entry["test_accuracy_ci95"] is None
    assert statistics["bn_minus_nobn"]["test_accuracy"] == pytest.approx(0.03)
    assert statistics["bn_minus_nobn"]["test_accuracy_p_value"] is None
    assert "| bn - nobn (paired) | 1 | +3.00 | - | - | - | -0.1000 |" in table_of(statistics)
    assert evaluate.compared(summary)["gain"] == {"acc": pytest.approx(0.03), "p": None}
    parent = evaluate.parent_metrics(statistics, "bn")
    assert parent == {
        "eval/bn/test_accuracy": 0.98,
        "eval/bn/test_loss": 0.1,
        "eval/bn_minus_nobn/test_accuracy": pytest.approx(0.03),
        "eval/bn_minus_nobn/test_loss": pytest.approx(-0.1),
        "eval/bn/failed": 0,
        "eval/bn/diverged": 0,
        "eval/bn/not_learning": 0,
    }  # nothing null reaches MLflow


def test_failed_seeds_are_counted_and_left_out_of_the_means() -> None:
    summary = evaluate.summarize(
        {
            "bn": {0: e(0.98, 0.1), 1: e(0.96, 0.3), 2: e(0.97, 0.2), 3: e(0.97, 0.2)},
            "nobn": {
                0: e(0.95, 0.2),
                1: dataclasses.replace(e(0.098, math.nan), diverged=True),
                2: e(0.11, 2.3),  # ended at chance: not learning
                3: e(0.93, 0.35),
            },
        }
    )
    statistics = summary.to_json()
    nobn = statistics["nobn"]
    assert (nobn["seeds"], nobn["learnt"]) == (4, 2)
    assert nobn["test_accuracy"] == pytest.approx(0.94)  # seeds 0 and 3 only
    assert nobn["test_loss"] == pytest.approx(0.275)
    failed = stats.binomtest(2, 4).proportion_ci(0.95, method="exact")
    assert nobn["outcomes"] == {
        "learnt": 2, "diverged": 1, "not_learning": 1, "failed": 2, "failed_fraction": 0.5,
        "failed_fraction_ci95": pytest.approx([failed.low, failed.high]),
    }  # fmt: skip
    assert nobn["per_seed"]["1"] == {"test_accuracy": 0.098, "test_loss": None,
                                     "outcome": "diverged"}  # fmt: skip
    assert nobn["per_seed"]["2"]["outcome"] == "not_learning"
    diff = statistics["bn_minus_nobn"]  # over the seeds where both learnt: 0 and 3
    assert diff["seeds"] == 2
    assert diff["test_accuracy"] == pytest.approx(((0.98 - 0.95) + (0.97 - 0.93)) / 2)
    assert statistics["bn"]["test_accuracy"] == pytest.approx(0.97)  # every bn seed learnt
    table = table_of(statistics)
    assert ("| without BatchNorm | 2 of 4 | 2 of 4 (1 diverged, 1 not learning; 95% CI 7 to 93%) "
            "| 94.00 |") in table  # fmt: skip
    assert evaluate.compared(summary)["nobn"] == {"acc": pytest.approx(0.94), "failed": 2}


def test_no_seed_learnt_leaves_means_and_gain_null() -> None:
    failed = dataclasses.replace(e(0.1, math.nan), diverged=True)
    statistics = evaluate.summarize({"bn": {0: e(0.98, 0.1), 1: e(0.97, 0.1)},
                                     "nobn": {0: failed, 1: failed}}).to_json()  # fmt: skip
    assert statistics["nobn"]["test_accuracy"] is None and statistics["nobn"]["learnt"] == 0
    diff = statistics["bn_minus_nobn"]
    assert (diff["seeds"], diff["test_accuracy"], diff["test_accuracy_p_value"]) == (0, None, None)
    table = table_of(statistics)
    assert (
        "| without BatchNorm | 0 of 2 | 2 of 2 (2 diverged; 95% CI 16 to 100%) | - | - | - |  | - |"
        in table
    )
    assert "| bn - nobn (paired) | 0 of 2 |  | - | - | - | - | - |" in table
    parent = evaluate.parent_metrics(statistics, "nobn")
    assert parent == {"eval/nobn/failed": 2, "eval/nobn/diverged": 2, "eval/nobn/not_learning": 0}


def test_variants_with_different_seeds_cannot_be_paired() -> None:
    with pytest.raises(PipelineError, match=r"different seeds \(bn: \[0, 1\], nobn: \[0\]\)"):
        evaluate.summarize({"bn": {0: e(0.9, 0.1), 1: e(0.9, 0.1)}, "nobn": {0: e(0.9, 0.1)}})


def test_no_checkpoints_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="no checkpoints; run `dvc repro train_bn"):
        checkpoints_of(tmp_path)


def test_checkpoints_are_ordered_by_seed_number(tmp_path: Path) -> None:
    for seed in (10, 2, 1):
        (tmp_path / f"seed{seed}.pt").touch()
    assert list(checkpoints_of(tmp_path)) == [1, 2, 10]


def test_stage_metrics_match_a_fresh_evaluation(reported: Path) -> None:
    statistics = json.loads((reported / paths.STATISTICS_FILE).read_text())
    assert json.loads((reported / paths.METRICS_FILE).read_text()) == evaluate.compared(
        Statistics.from_json(statistics)
    )
    images, labels = load_split(reported / paths.RAW_DIR, train=False)
    for variant in ("bn", "nobn"):
        for seed, path in checkpoints_of(reported / paths.MODELS_DIR / variant).items():
            model, _ = load_checkpoint(path)
            accuracy = (model(scale_images(images)).argmax(1) == labels).float().mean().item()
            assert statistics[variant]["per_seed"][str(seed)]["test_accuracy"] == pytest.approx(
                accuracy
            )
    details = json.loads((reported / paths.EVALUATION_FILE).read_text())
    confusion = details["bn"]["0"]["confusion"]
    assert sum(map(sum, confusion)) == len(labels)
    assert sum(confusion[k][k] for k in range(10)) / len(labels) == pytest.approx(
        statistics["bn"]["per_seed"]["0"]["test_accuracy"]
    )
    table = (reported / paths.ACCURACY_TABLE).read_text()
    assert table == table_of(statistics)  # written from statistics.json's numbers
    assert f"| without BatchNorm | 2 | {100 * statistics['nobn']['test_accuracy']:.2f} |" in table


def test_final_training_accuracy_equals_evaluation(reported: Path) -> None:
    statistics = json.loads((reported / paths.STATISTICS_FILE).read_text())
    for variant in ("bn", "nobn"):
        history = json.loads((reported / paths.MODELS_DIR / variant / "history.json").read_text())
        for seed, rows in history.items():
            assert statistics[variant]["per_seed"][seed]["test_accuracy"] == pytest.approx(
                rows[-1]["test_accuracy"]
            )


def test_evaluation_lands_in_each_training_run(reported: Path, client) -> None:
    runs = json.loads((reported / paths.MODELS_DIR / "nobn" / paths.RUNS_NAME).read_text())
    statistics = json.loads((reported / paths.STATISTICS_FILE).read_text())
    for seed, entry in runs["runs"].items():
        run = client.get_run(entry["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.metrics["eval/test_accuracy"] == pytest.approx(
            statistics["nobn"]["per_seed"][seed]["test_accuracy"]
        )
        assert "eval/class_9_accuracy" in run.data.metrics
        path = client.download_artifacts(entry["run_id"], "evaluation/confusion_matrix.json")
        assert len(json.loads(Path(path).read_text())) == 10
    parent = client.get_run(runs["parent_run_id"]).data.metrics
    low, high = statistics["nobn"]["test_accuracy_ci95"]
    assert parent["eval/nobn/test_accuracy"] == pytest.approx(statistics["nobn"]["test_accuracy"])
    assert parent["eval/nobn/test_accuracy_ci95_low"] == pytest.approx(low)
    assert parent["eval/nobn/test_accuracy_ci95_high"] == pytest.approx(high)
    diff = statistics["bn_minus_nobn"]
    assert parent["eval/bn_minus_nobn/test_accuracy"] == pytest.approx(diff["test_accuracy"])
    if diff["test_accuracy_p_value"] is not None:
        assert parent["eval/bn_minus_nobn/test_accuracy_p_value"] == pytest.approx(
            diff["test_accuracy_p_value"]
        )


def test_a_run_missing_from_the_store_is_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    from pipeline import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = tracking.Tracker(uri, "e")
    assert tracker.log_to_run("0" * 32, metrics={"x": 1.0}) is False
    assert not (tmp_path / "mlflow.db").exists()  # no store created just to look
    tracking.prepare_experiment(uri, "e")
    tracker = tracking.Tracker(uri, "e")
    assert tracker.log_to_run("0" * 32, metrics={"x": 1.0}) is False
    assert "is not in" in caplog.text  # the tracker's warning
