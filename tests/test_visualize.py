"""The figures and the report: panels, numbers that match, a self-contained HTML."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline import paths
from pipeline.errors import PipelineError
from pipeline.format import LABELS, accuracy_table
from pipeline.report import comparison, figures, inputs, original_post, why
from pipeline.report.document import Paragraph, Table
from pipeline.results import Statistics

from .conftest import run_stages

FIGURES = [
    "activations",
    "activation_distributions",
    "training_curves",
    "layer_diagnostics",
    "confusion_matrices",
    "seed_accuracies",
    "input_percentiles",
    "input_gradients",
]


def panels(fig) -> list:
    """Axes that are plots, not colorbars or hidden fillers."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_visible()]


def fake_history(depth: int, epochs: int, seeds: int) -> figures.History:
    rng = np.random.default_rng(0)

    def row(epoch: int) -> dict[str, float]:
        values = {"epoch": epoch, "train_loss": 1 / epoch, "test_loss": 1.2 / epoch,
                  "test_accuracy": 0.9 + 0.01 * epoch, "epoch_seconds": 2.0}  # fmt: skip
        for k in range(1, depth + 1):
            for name in ("act_mean", "act_std", "dead_fraction", "grad_norm", *inputs.KEYS):
                values[f"layer_{k:02d}/{name}"] = float(rng.uniform(0.01, 1))
        return values

    return {
        v: {str(s): [row(e) for e in range(1, epochs + 1)] for s in range(seeds)}
        for v in ("bn", "nobn")
    }


@pytest.mark.parametrize(("width", "side", "blank"), [(64, 8, 0), (10, 4, 6), (1, 1, 0)])
def test_activation_vector_becomes_the_nearest_square(width: int, side: int, blank: int) -> None:
    image = figures.square(np.arange(width, dtype=float))
    assert image.shape == (side, side)
    assert int(np.isnan(image).sum()) == blank
    assert image.ravel()[width - 1] == width - 1


@pytest.mark.parametrize("depth", [3, 10])
def test_activation_grid_has_input_and_one_panel_per_layer_per_variant(depth: int) -> None:
    rng = np.random.default_rng(1)
    activations = {v: [rng.random(64) for _ in range(depth)] for v in ("bn", "nobn")}
    fig = figures.activation_grid(rng.random((28, 28)), activations, label=7, index=0)
    shown = panels(fig)
    assert len(shown) == 2 * (depth + 1)
    assert [ax.get_title() for ax in shown[: depth + 1]] == ["input"] + [
        f"layer {k}" for k in range(1, depth + 1)
    ]
    assert shown[1].images[0].get_array().shape == (8, 8)
    assert "test image 0 (label 7)" in fig.get_suptitle()


def test_distribution_panels_one_per_layer_with_both_variants() -> None:
    rng = np.random.default_rng(2)
    activations = {v: [np.maximum(rng.normal(size=(20, 16)), 0) for _ in range(7)]
                   for v in ("bn", "nobn")}  # fmt: skip
    shown = panels(figures.activation_distributions(activations))
    assert len(shown) == 7
    labels = [t.get_text() for t in shown[0].get_legend().get_texts()]
    assert len(labels) == 2 and labels[0].startswith("bn (") and "% zeros" in labels[0]
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in shown)


@pytest.mark.parametrize("seeds", [1, 3])
def test_training_curves_three_panels_two_variants(seeds: int) -> None:
    shown = panels(figures.training_curves(fake_history(depth=2, epochs=4, seeds=seeds)))
    assert [ax.get_title() for ax in shown] == ["Train loss", "Test loss", "Test accuracy"]
    for ax in shown:
        assert len(ax.get_lines()) == 2
        assert len(ax.collections) == (2 if seeds > 1 else 0)  # std band only with seeds
        assert ax.get_xlabel() == "epoch"
    assert shown[2].get_lines()[0].get_ydata()[-1] == pytest.approx(94.0)


def test_layer_diagnostics_one_line_per_layer() -> None:
    shown = panels(figures.layer_diagnostics(fake_history(depth=5, epochs=3, seeds=2)))
    assert len(shown) == 4
    assert all(len(ax.get_lines()) == 5 for ax in shown)
    assert shown[0].get_yscale() == "log"


def test_confusion_matrices_one_panel_each_with_accuracy_in_the_title() -> None:
    matrix = np.eye(10, dtype=int) * 8 + 1  # 90 correct out of 180
    shown = panels(figures.confusion_matrices({"bn": matrix, "nobn": matrix}))
    assert len(shown) == 2
    assert shown[0].get_title() == "with BatchNorm: 50.00% correct"
    assert len(shown[0].texts) == 100


def test_stage_writes_every_figure_as_png(reported: Path) -> None:
    for name in FIGURES:
        data = (reported / paths.FIGURES_DIR / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    assert sorted(p.stem for p in (reported / paths.FIGURES_DIR).iterdir()) == sorted(FIGURES)


def test_report_numbers_equal_statistics_json(reported: Path) -> None:
    statistics = json.loads((reported / paths.STATISTICS_FILE).read_text())
    text = (reported / paths.REPORT_MD).read_text()
    for variant, label in (("bn", "with BatchNorm"), ("nobn", "without BatchNorm")):
        m = statistics[variant]
        low, high = (100 * x for x in m["test_accuracy_ci95"])
        row = (f"| {label} | 2 | {100 * m['test_accuracy']:.2f} | {low:.2f} to {high:.2f} | "
               f"{100 * m['test_accuracy_std']:.2f} |")  # fmt: skip
        assert row in text
    diff = statistics["bn_minus_nobn"]
    gain = 100 * diff["test_accuracy"]
    assert text.splitlines()[2].startswith(f"BatchNorm {'adds' if gain > 0 else 'changes'}")
    assert f"{gain:+.2f} points" in text.splitlines()[2]
    assert f"| bn - nobn (paired) | 2 | {gain:+.2f} |" in text
    for name in FIGURES:
        assert f"(figures/{name}.png)" in text
    assert "## Reproducing the original post" in text
    assert "## Why does BatchNorm help? The post's explanation, tested" in text
    assert "the gradient vanishes toward the input. The first hidden layer's gradient" in text


def test_report_says_what_was_run(reported: Path) -> None:
    text = (reported / paths.REPORT_MD).read_text()
    digests = json.loads((reported / paths.DIGESTS_FILE).read_text())["sha256"]
    for digest in digests.values():
        assert digest in text
    assert "| model.depth | 3 |" in text
    assert "| train.seeds | [0, 1] |" in text
    assert re.search(r"\| device \| cpu \(\d+ threads?\) \|", text)
    assert re.search(r"\| generated \| \d{4}-\d\d-\d\d \d\d:\d\d UTC \|", text)


def test_html_is_self_contained(reported: Path) -> None:
    page = (reported / paths.REPORT_HTML).read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)
    assert "<link" not in page and "<script" not in page and "url(" not in page
    assert "http://" not in page and "https://" not in page
    statistics = json.loads((reported / paths.STATISTICS_FILE).read_text())
    assert f"<td>{100 * statistics['bn']['test_accuracy']:.2f}</td>" in page


def test_figures_and_report_are_attached_to_each_parent_run(reported: Path, client) -> None:
    for variant in ("bn", "nobn"):
        runs = json.loads((reported / paths.MODELS_DIR / variant / paths.RUNS_NAME).read_text())
        parent = runs["parent_run_id"]
        names = {Path(a.path).name for a in client.list_artifacts(parent, "report")}
        assert names == {f"{n}.png" for n in FIGURES} | {"report.html"}


def test_sample_index_beyond_the_test_set_is_refused(reported: Path, tmp_path: Path) -> None:
    params = (reported / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params.replace("sample_index: 0", "sample_index: 100"))
    with pytest.raises(PipelineError, match=r"visualize.sample_index = 100: must be less than 100"):
        run_stages(tmp_path, ["visualize"])


DIVERGED = None  # in statistics_of's accuracies: a seed whose loss became NaN


def statistics_of(
    bn: list[float | None], nobn: list[float | None], losses: tuple[float, float] = (0.08, 0.15)
) -> Statistics:
    """statistics.json as evaluate writes it, for these per-seed accuracies; each
    seed's test loss is `losses` (bn, nobn) shifted by its accuracy's offset from
    the first seed that learnt. DIVERGED is a seed whose network became NaN
    (class 0 for every image, NaN loss); an accuracy below 20% one that did not
    learn (its loss that of a guess, ln 10)."""
    from pipeline.evaluate import Evaluation, summarize

    def evaluation(accuracy: float | None, loss: float) -> Evaluation:
        if accuracy is DIVERGED:
            return Evaluation(0.098, math.nan, [[0] * 10] * 10, diverged=True)
        return Evaluation(accuracy, loss if accuracy >= 0.2 else math.log(10), [[0] * 10] * 10)

    def by_seed(values: list[float | None], loss: float) -> dict:
        first = next((v for v in values if v is not None and v >= 0.2), 0.0)
        return {k: evaluation(v, loss + 5 * ((v or 0.0) - first)) for k, v in enumerate(values)}

    return summarize({"bn": by_seed(bn, losses[0]), "nobn": by_seed(nobn, losses[1])})


def test_the_headline_gives_the_gain_its_interval_and_p() -> None:
    statistics = statistics_of([0.976, 0.975, 0.978, 0.9755], [0.966, 0.96, 0.968, 0.963])
    line = comparison.headline(statistics, epochs=9)
    diff = statistics.bn_minus_nobn.test_accuracy
    low, high = (100 * x for x in diff.ci95)
    assert line.startswith(
        f"BatchNorm adds +{100 * diff.mean:.2f} points of test accuracy "
        f"(95% CI {low:+.2f} to {high:+.2f}; paired t-test p = "
        f"{diff.p_value:.2g}; 4 seeds)."
    )
    assert "after 9 epochs" in line and "with BatchNorm" in line


def test_one_seed_says_why_there_is_no_interval() -> None:
    statistics = statistics_of([0.95], [0.96])
    line = comparison.headline(statistics, epochs=3)
    assert line.startswith("BatchNorm changes test accuracy by -1.00 points (one seed: a "
                           "confidence interval and a p-value need at least two")  # fmt: skip
    _, verdict = original_post.reproduction(statistics)
    assert len(verdict) == 1 and "with one seed there is no spread" in verdict[0].lower()


def test_the_posts_loss_is_converted_to_a_mean_per_image() -> None:
    mean, low, high = original_post.post_loss_per_image(
        "bn"
    )  # printed 0.0012: sums 157 batch means
    assert mean == pytest.approx(0.0012 * 10000 / 157)
    assert low == pytest.approx(0.00115 * 10000 / 157) and high == pytest.approx(
        0.00125 * 10000 / 157
    )


def test_the_verdict_follows_the_numbers() -> None:
    # Close to the post (97.83 / 95.98): both single runs plausible, gain within reach.
    near = statistics_of([0.976, 0.979, 0.977, 0.9785, 0.975], [0.962, 0.958, 0.961, 0.96, 0.963])
    table, verdict = original_post.reproduction(near)
    assert [row[0] for row in table.rows][:3] == [
        "with BatchNorm", "without BatchNorm", "gain (bn - nobn)",
    ]  # fmt: skip
    assert table.rows[0][1] == "97.83" and table.rows[2][1] == "+1.85"
    assert "97.83% with BatchNorm is inside" in verdict[0]
    assert "95.98% without BatchNorm is inside" in verdict[1]
    assert "(0.076 with BatchNorm, 0.159 without), are both inside" in verdict[2]
    assert verdict[-1].startswith("Verdict: the post's figures are what a single run")
    assert "BatchNorm helps here" in verdict[-1]
    # Far from it: every seed far above the post without BatchNorm, no gain at all.
    far = statistics_of([0.981, 0.982, 0.980, 0.9815], [0.980, 0.9825, 0.9805, 0.981], (0.03, 0.15))
    _, verdict = original_post.reproduction(far)
    assert "95.98% without BatchNorm is outside" in verdict[1]
    assert "inside but for the one with BatchNorm, which is outside" in verdict[2]
    assert "+1.85 points is outside the 95% CI of the mean gain" in verdict[3]
    assert verdict[-1].startswith("Verdict: the post's figures are not all what")
    assert "includes zero" in verdict[-1]


def test_seed_figure_draws_every_seed_its_pairs_and_the_post() -> None:
    fig = original_post.seed_accuracies(statistics_of([0.97, 0.98, 0.975], [0.96, 0.955, 0.965]))
    accuracy, gain = panels(fig)
    pairs = [line for line in accuracy.get_lines() if len(line.get_xdata()) == 2]
    assert len(pairs) == 3  # one line per seed, joining its two models
    assert list(pairs[1].get_ydata()) == pytest.approx([98.0, 95.5])
    dots = [c for c in accuracy.collections if len(c.get_offsets()) == 3]
    assert len(dots) == 2  # three seeds per variant
    stars = [c for c in accuracy.collections + gain.collections if c.get_gid() == "post"]
    assert sorted(round(float(c.get_offsets()[0][1]), 2) for c in stars) == [1.85, 95.98, 97.83]
    assert "3 seeds" in fig.get_suptitle()


def diverged_history(history: figures.History, variant: str, seeds: list[str]) -> figures.History:
    """`history` with these seeds diverged from epoch 2 on, as history.json has
    it: losses null (NaN is not JSON), the network's test accuracy at chance
    and no dead unit (a NaN activation is never 0), the row flagged."""
    for seed in seeds:
        for row in history[variant][seed][1:]:
            row.update({k: 0.0 if k.endswith("dead_fraction") else None for k in row
                        if k not in ("epoch", "epoch_seconds", "test_accuracy")})  # fmt: skip
            row.update(test_accuracy=0.098, diverged=True)
    return history


def cells(table, variant: str) -> list[str]:
    """The row of `table` that starts with the variant's label."""
    label = {"bn_minus_nobn": "bn - nobn (paired)"}.get(variant, LABELS.get(variant))
    return next(row for row in table.rows if row[0] == label)


def report_table(statistics: Statistics, history: figures.History) -> Table:
    """The report's accuracy table (format.accuracy_table with the training columns)."""
    return Table(*accuracy_table(statistics, comparison.training(history, statistics)))


def test_when_every_seed_learnt_the_report_says_nothing_new() -> None:
    statistics = statistics_of([0.976, 0.979, 0.977], [0.962, 0.958, 0.961])
    history = fake_history(depth=3, epochs=2, seeds=3)
    assert comparison.failures_paragraph(statistics) is None
    table = report_table(statistics, history)
    assert table.header[:3] == ["variant", "seeds", "final accuracy"]
    assert cells(table, "nobn")[1] == "3" and cells(table, "bn_minus_nobn")[1] == "3"
    seeds = {v: statistics.learnt_seeds(v) for v in LABELS}
    section = why.blocks(history, seeds, "relu")
    paragraphs = [b.text for b in section if isinstance(b, Paragraph)]
    text = " ".join([comparison.headline(statistics, epochs=2), comparison.accuracy_note(statistics),
                     *paragraphs])  # fmt: skip
    assert "learnt" not in text and "failed" not in text
    assert "tested on the last epoch, mean over seeds with its 95% t-interval" in text
    assert [row[1] for row in section[1].rows] == ["3", "3"]
    _, verdict = original_post.reproduction(statistics)
    assert verdict[-1].startswith("Verdict: ")


def test_failed_seeds_are_counted_with_the_interval_of_the_failure_rate() -> None:
    statistics = statistics_of([0.97, 0.975, 0.978, 0.972, 0.976],
                               [0.96, DIVERGED, 0.962, 0.1, 0.958])  # fmt: skip
    paragraph = comparison.failures_paragraph(statistics)
    assert paragraph.startswith(
        "2 of 5 seeds without BatchNorm failed to learn (1 diverged, 1 ended below 20% test "
        "accuracy; 95% CI 5% to 85% of seeds); none of 5 with it (95% CI 0% to 52%). "
        "Accuracies and the gain are over the seeds that learnt (the gain over the seeds where "
        "both variants learnt: 3 here), because a mean over learners and failures (near the 10% "
        "of chance, or diverged) mixes two populations"
    )
    assert paragraph.endswith("a variant that fails more often is worse even when its learners "
                              "are as good.")  # fmt: skip
    # the gain is over seeds 0, 2 and 4, where both learnt; the means over each one's learners
    line = comparison.headline(statistics, epochs=9)
    assert line.startswith("BatchNorm adds +1.47 points of test accuracy (95% CI ")
    assert "; 3 seeds of 5, those where both learnt). " in line
    assert "with BatchNorm, 96.00% (95% CI " in line and " without (3 of 5 seeds)." in line
    table = report_table(statistics, fake_history(depth=3, epochs=2, seeds=5))
    assert table.header[1:3] == ["seeds learnt", "failed to learn (95% CI)"]
    assert cells(table, "bn")[1:4] == ["5 of 5", "0 of 5 (95% CI 0 to 52%)", "97.42"]
    assert cells(table, "nobn")[1:4] == ["3 of 5", "2 of 5 (1 diverged, 1 not learning; 95% CI "
                                         "5 to 85%)", "96.00"]  # fmt: skip
    assert cells(table, "bn_minus_nobn")[1:4] == ["3 of 5", "", "+1.47"]
    assert "It counts only the seeds where both variants learnt." in comparison.accuracy_note(
        statistics
    )


def test_the_variant_that_failed_more_often_comes_first() -> None:
    statistics = statistics_of([DIVERGED, 0.1, 0.97], [0.96, 0.95, 0.1])
    assert comparison.failures_paragraph(statistics).startswith(
        "2 of 3 seeds with BatchNorm failed to learn (1 diverged, 1 ended below 20% test "
        "accuracy; 95% CI 9% to 99% of seeds); 1 of 3 without it (1 ended below 20% test "
        "accuracy; 95% CI 1% to 91%). "
    )


def test_a_variant_with_no_learnt_seed_has_no_numbers_and_no_why() -> None:
    statistics = statistics_of([0.97, 0.975, 0.98], [DIVERGED, DIVERGED, 0.1])
    history = diverged_history(fake_history(depth=3, epochs=2, seeds=3), "nobn", ["0", "1"])
    line = comparison.headline(statistics, epochs=2)
    assert line.startswith("No seed learnt with both variants, so there is no paired gain of "
                           "BatchNorm to give. Test accuracy after 2 epochs, mean over the seeds "
                           "that learnt: 97.50% (95% CI ")  # fmt: skip
    assert line.endswith(" with BatchNorm, no seed learnt without BatchNorm.")
    table = report_table(statistics, history)
    assert cells(table, "nobn")[1:] == ["0 of 3", "3 of 3 (2 diverged, 1 not learning; 95% CI "
                                        "29 to 100%)", "-", "-", "-", "", "-", "-", "-", "2.00"]  # fmt: skip
    assert cells(table, "bn_minus_nobn")[1:8] == ["0 of 3", "", "-", "-", "-", "-", ""]
    assert "No seed of 3 learnt with both variants" in comparison.accuracy_note(statistics)
    seeds = {v: statistics.learnt_seeds(v) for v in LABELS}
    method, table, verdict = why.blocks(history, seeds, "relu")
    assert "mean over each variant's seeds that learnt" in method.text
    assert table.rows[1] == ["without BatchNorm", "0 of 3"] + ["-"] * 8
    assert table.rows[0][1] == "3 of 3" and table.rows[0][2] != "-"
    assert verdict.text.startswith("No seed learnt without BatchNorm, so the post's explanation, "
                                   "a comparison of the two variants, is not tested")  # fmt: skip
    evaluation = {v: {str(s): {"class_accuracy": [0.9] * 10} for s in range(3)} for v in LABELS}
    _, rows = comparison.per_class_table(evaluation, statistics)
    assert rows[0] == ["0", "90.00", "0.00", "-", "-", "-"]


def test_the_post_is_not_compared_with_too_few_learnt_seeds() -> None:
    statistics = statistics_of([0.97, 0.975, 0.98], [DIVERGED, 0.96, 0.1])
    table, verdict = original_post.reproduction(statistics)
    nobn, gain = table.rows[1], table.rows[2]
    assert nobn[2:] == ["96.00", "-", "-", "diverged, 96.00, not learning"]
    assert gain[2:] == ["+1.50", "-", "-", "-, +1.50, -"]
    assert table.rows[4][2:] == ["0.150", "-", "-", "diverged, 0.150, not learning"]
    assert verdict == [
        "Too few learnt seeds to compare with the post: of 3 seeds, 3 learnt with BatchNorm, "
        "1 without and 1 with both; a prediction interval for one run, and a CI of the mean "
        "gain, need at least two."
    ]
    assert comparison.headline(statistics, epochs=2).startswith(
        "BatchNorm adds +1.50 points of test accuracy (one seed of 3 learnt with both variants: "
        "a confidence interval and a p-value need at least two)."
    )


def test_the_verdict_is_over_the_learnt_seeds() -> None:
    learnt = [0.976, 0.979, 0.977, 0.9785], [0.962, 0.958, 0.961, 0.96]
    statistics = statistics_of([*learnt[0], DIVERGED], [*learnt[1], 0.1])
    _, verdict = original_post.reproduction(statistics)
    _, expected = original_post.reproduction(statistics_of(*learnt))
    assert verdict[:4] == expected[:4]
    assert "with 4 seeds where both learnt the CI of the mean gain" in verdict[-1]


def test_no_seed_learnt_at_all_says_so_and_crashes_nowhere() -> None:
    statistics = statistics_of([0.1, DIVERGED], [DIVERGED, DIVERGED])
    history = diverged_history(fake_history(depth=3, epochs=2, seeds=2), "nobn", ["0", "1"])
    assert comparison.headline(statistics, epochs=2) == (
        "No seed learnt with either variant: there is no accuracy and no gain to give."
    )
    seeds = {v: statistics.learnt_seeds(v) for v in LABELS}
    assert why.blocks(history, seeds, "relu") == [Paragraph(
        "No seed learnt with either variant, so the post's explanation is not tested: a network "
        "that failed to learn shows its failure, not how the variant learns."
    )]  # fmt: skip
    table = report_table(statistics, history)
    assert cells(table, "bn")[3] == "-" and cells(table, "bn_minus_nobn")[3] == "-"
    assert "0 learnt with BatchNorm, 0 without" in original_post.reproduction(statistics)[1][0]


def test_figures_leave_out_or_mark_what_diverged() -> None:
    rng = np.random.default_rng(4)
    nan = [np.full((20, 16), np.nan)] * 3
    shown = panels(figures.activation_distributions(
        {"bn": nan, "nobn": [np.maximum(rng.normal(size=(20, 16)), 0) for _ in range(3)]}
    ))  # fmt: skip
    labels = [t.get_text() for t in shown[0].get_legend().get_texts()]
    assert labels[0] == "bn (diverged: NaN)" and labels[1].endswith("% zeros)")
    grid = figures.activation_grid(rng.random((28, 28)), {"bn": [a[0] for a in nan],
                                   "nobn": [rng.random(16)] * 3}, label=1, index=0)  # fmt: skip
    assert panels(grid)[0].get_ylabel() == "with BatchNorm\n(diverged: NaN)"
    history = diverged_history(fake_history(depth=2, epochs=3, seeds=3), "nobn", ["1"])
    accuracy = panels(figures.training_curves(history))[2]
    nobn = accuracy.get_lines()[1]
    assert nobn.get_label() == "without BatchNorm (3 seeds, 1 diverged)"
    assert np.isfinite(nobn.get_ydata()).all()  # the other seeds' mean after the divergence
    statistics = statistics_of([0.97, 0.98, 0.975], [0.96, DIVERGED, 0.1])  # nobn: 0.098 when NaN
    assert statistics.per_seed("nobn") == [0.96, 0.098, 0.1]
    masks = [statistics.learnt_mask(v) for v in ("nobn", "bn_minus_nobn")]
    assert masks == [[True, False, False]] * 2
    fig = original_post.seed_accuracies(statistics)
    accuracy, gain = panels(fig)
    crosses = [c for c in accuracy.collections + gain.collections if c.get_gid() == "failed"]
    assert sorted(len(c.get_offsets()) for c in crosses) == [2, 2]
    means = [line.get_ydata()[0] for line in accuracy.get_lines() if line.get_marker() == "D"]
    assert means == pytest.approx([97.5, 96.0])  # over the seeds that learnt
    assert "failed to learn (crosses)" in fig.get_suptitle()
