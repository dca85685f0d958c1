"""The post's "why", tested: the numbers, the thresholds, the verdict's words,
the figures of the activations' inputs, and histories without them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.report import figures, inputs, why
from pipeline.report.document import Paragraph, Table
from pipeline.stats import estimate
from pipeline.visualize import input_figures


def epoch_row(epoch: int, depth: int, flat: float, ratio: float, median: float) -> dict:
    """One history.json row: every layer's inputs centred at `median` with a
    half-spread of 1 (so the shift is the median), `flat` of them flat, the
    input gradient falling geometrically from 1 (last layer) to `ratio` (first);
    the fixed unit's median moving 0.1 per epoch."""
    row = {"epoch": epoch, "diverged": False, "train_loss": 0.1, "test_loss": 0.1,
           "test_accuracy": 0.97, "epoch_seconds": 1.0}  # fmt: skip
    for k in range(1, depth + 1):
        layer = f"layer_{k:02d}/"
        row |= {f"{layer}input_p{q}": median + d for q, d in ((15, -1), (50, 0), (85, 1))}
        row |= {
            f"{layer}unit_p{q}": median + 0.1 * epoch + d for q, d in ((15, -1), (50, 0), (85, 1))
        }
        row |= {f"{layer}flat_fraction": flat, f"{layer}input_grad_norm": ratio ** ((depth - k) / (depth - 1)),
                f"{layer}dead_fraction": 0.0, f"{layer}grad_norm": 0.1, f"{layer}act_mean": 0.5,
                f"{layer}act_std": 1.0}  # fmt: skip
    return row


def variant(flat: float, ratio: float, median: float, seeds: int = 3, depth: int = 4,
            epochs: int = 3) -> dict[str, list[dict]]:  # fmt: skip
    """Seeds that differ a little: seed s has flat + 0.01 s, ratio * (1 + 0.1 s),
    median + 0.05 s."""
    return {
        str(s): [epoch_row(e, depth, flat + 0.01 * s, ratio * (1 + 0.1 * s), median + 0.05 * s)
                 for e in range(1, epochs + 1)]
        for s in range(seeds)
    }  # fmt: skip


def all_seeds(history: figures.History) -> dict[str, list[str]]:
    return {v: list(runs) for v, runs in history.items()}


SUPPORTING = {"bn": variant(flat=0.1, ratio=0.8, median=0.0),
              "nobn": variant(flat=0.6, ratio=0.02, median=-1.0)}  # fmt: skip
CONTRADICTING = {"bn": variant(flat=0.3, ratio=1.2, median=0.0),
                 "nobn": variant(flat=0.3, ratio=1.9, median=0.0)}  # fmt: skip


def verdict(history: figures.History, activation: str = "relu") -> list[str]:
    numbers = {v: why.variant_why(history[v], list(history[v])) for v in ("bn", "nobn")}
    difference = why.flat_difference(history, list(history["bn"]))
    return why.verdict_sentences(numbers, difference, activation, failed=False)


def test_numbers_that_support_the_post_are_called_supported() -> None:
    side, flat, vanishing = verdict(SUPPORTING)
    flats = estimate([0.60, 0.61, 0.62])
    shifts = estimate([-1.0, -0.95, -0.9])
    low, high = shifts.ci95
    assert side.startswith(
        "Supported: that without BatchNorm the activation's inputs are pushed to one side of "
        "ReLU's centre 0. In the last hidden layer their median sits -0.95 (95% CI "
        f"{low:+.2f} to {high:+.2f}) half-spreads from 0 without BatchNorm"
    )
    assert "(beyond 0.5 counts as one side)" in side
    low, high = (100 * x for x in flats.ci95)
    assert flat.startswith(
        "Supported: that without BatchNorm they fall into ReLU's flat side, below 0. Without "
        f"BatchNorm 61% (95% CI {low:.0f} to {high:.0f}) of the inputs are there"
    )
    assert "paired by seed (3 seeds), +50 points (95% CI +50 to +50) without BatchNorm" in flat
    ratio = math.exp(np.mean(np.log([0.02, 0.022, 0.024])))
    assert vanishing.startswith(
        "Supported: that without BatchNorm the gradient vanishes toward the input. The first "
        f"hidden layer's gradient at the activation's input is {ratio:.3g} (95% CI "
    )
    assert "(geometric mean over seeds; under 0.1 counts as vanished)" in vanishing


def test_numbers_that_contradict_the_post_are_called_not_supported() -> None:
    side, flat, vanishing = verdict(CONTRADICTING)
    for sentence in (side, flat, vanishing):
        assert sentence.startswith("Not supported: ")
    assert "+0 points (95% CI +0 to +0)" in flat  # the same flat fraction, seed by seed
    ratio = math.exp(np.mean(np.log([1.9, 2.09, 2.28])))
    assert f"input is {ratio:.3g} (95% CI " in vanishing


def test_an_interval_across_a_threshold_decides_nothing() -> None:
    history = {"bn": variant(flat=0.1, ratio=0.8, median=0.0),
               "nobn": variant(flat=0.6, ratio=0.02, median=-1.0)}  # fmt: skip
    for s, ratio in enumerate((0.01, 0.5, 0.02)):  # the interval of nobn's ratio spans 0.1
        history["nobn"][str(s)][-1]["layer_01/input_grad_norm"] = ratio
    assert verdict(history)[2].startswith("Not decided by these seeds: ")


def test_the_gradient_ratio_is_first_over_last_and_its_mean_geometric() -> None:
    row = epoch_row(1, depth=5, flat=0.2, ratio=0.05, median=0.0)
    assert inputs.gradient_ratio(row) == pytest.approx(0.05)
    row["layer_05/input_grad_norm"] = 0.0  # no logarithm of a zero ratio: left out
    assert inputs.gradient_ratio(row) is None
    summary = why.geometric([0.01, 1.0])
    assert summary.mean == pytest.approx(0.1) and summary.n == 2
    low, high = summary.ci95
    assert low < 0.01 and high > 1.0 and low * high == pytest.approx(0.01)


@pytest.mark.parametrize(("values", "threshold", "expected"), [
    ([0.6, 0.61, 0.62], 0.5, True), ([0.02, 0.021, 0.022], 0.1, False),
    ([0.05, 0.5, 0.2], 0.1, None), ([0.3], 0.1, True), ([0.1, 0.1], 0.1, False),
])  # fmt: skip
def test_a_threshold_is_judged_on_the_whole_interval(values, threshold, expected) -> None:
    assert why.above(why.arithmetic(values), threshold) is expected


def test_off_centre_looks_at_both_sides_and_logic_is_three_valued() -> None:
    assert why.off_centre(why.arithmetic([-0.9, -1.0, -1.1])) is True
    assert why.off_centre(why.arithmetic([0.9, 1.0, 1.1])) is True
    assert why.off_centre(why.arithmetic([-0.1, 0.0, 0.1])) is False
    assert why.off_centre(None) is None
    assert why.both(True, None) is None and why.both(None, False) is False
    assert why.both(True, True) is True and why.negation(None) is None


def test_the_drift_is_the_range_of_the_unit_median_in_half_spreads() -> None:
    rows = [epoch_row(e, depth=2, flat=0.1, ratio=0.5, median=0.0) for e in range(1, 6)]
    assert inputs.drift(rows, layer=2) == pytest.approx(0.4)  # 0.1 to 0.5, half-spread 1
    assert inputs.shift(rows[0], layer=1) == pytest.approx(0.0)


def test_one_seed_gives_values_without_intervals() -> None:
    history = {"bn": variant(0.1, 0.8, 0.0, seeds=1), "nobn": variant(0.6, 0.02, -1.0, seeds=1)}
    side, flat, vanishing = verdict(history)
    assert "-1.00 (one seed, no interval) half-spreads" in side
    assert "paired by seed (1 seed), +50 points (one seed, no interval) without BatchNorm" in flat
    assert side.startswith("Supported") and vanishing.startswith("Supported")
    table = why.numbers_table({v: why.variant_why(history[v], ["0"]) for v in history},
                              {"bn": 1, "nobn": 1})  # fmt: skip
    assert table.rows[1][:3] == ["without BatchNorm", "1", "-1"]


def test_the_section_has_method_table_verdict_and_drift() -> None:
    blocks = why.blocks(SUPPORTING, all_seeds(SUPPORTING), "tanh")
    assert [type(b) for b in blocks] == [Paragraph, Table, Paragraph, Paragraph]
    assert "tanh's flat tails, |z| > 1.82" in blocks[0].text
    assert [row[1] for row in blocks[1].rows] == ["3", "3"]
    assert blocks[2].text.count("Supported: ") == 3
    assert blocks[3].text.startswith("Over the 3 epochs, the median input of unit 0 of the last "
                                     "hidden layer moved over a range of 0.20 (95% CI ")  # fmt: skip


def test_a_variant_with_no_learnt_seed_is_not_compared() -> None:
    seeds = {"bn": ["0", "1", "2"], "nobn": []}
    blocks = why.blocks(SUPPORTING, seeds, "relu")
    assert blocks[1].rows[1] == ["without BatchNorm", "0 of 3"] + ["-"] * 8
    assert blocks[-1].text.startswith("No seed learnt without BatchNorm, so the post's "
                                      "explanation, a comparison of the two variants, is not "
                                      "tested")  # fmt: skip
    nothing = why.blocks(SUPPORTING, {"bn": [], "nobn": []}, "relu")
    assert len(nothing) == 1 and nothing[0].text.startswith("No seed learnt with either variant")


def old_history() -> figures.History:
    """history.json as code before the activation-input diagnostics wrote it."""
    keep = ("epoch", "diverged", "test_accuracy", "dead_fraction", "grad_norm", "act_std")
    return {v: {s: [{k: x for k, x in row.items() if k.endswith(keep)} for row in rows]
                for s, rows in runs.items()} for v, runs in SUPPORTING.items()}  # fmt: skip


def test_old_histories_say_the_diagnostics_are_missing_and_draw_nothing() -> None:
    history = old_history()
    assert not inputs.has_diagnostics(history) and inputs.has_diagnostics(SUPPORTING)
    assert why.blocks(history, all_seeds(history), "relu") == [Paragraph(why.MISSING)]
    assert input_figures(history, {"depth": 4}) == {}  # no activation key: an older checkpoint
    assert set(input_figures(SUPPORTING, {"depth": 4})) == {"input_percentiles", "input_gradients"}


def diverge(runs: dict[str, list[dict]], seed: str) -> None:
    """The seed diverged after its first epoch: its numbers null, as history.json has them."""
    for row in runs[seed][1:]:
        row.update({k: None for k in row if k.startswith("layer_")}, diverged=True)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_the_percentile_figure_draws_every_seed_per_variant(activation: str) -> None:
    history = {"bn": variant(0.1, 0.8, 0.0), "nobn": variant(0.6, 0.02, -1.0)}
    diverge(history["nobn"], "1")
    fig = figures.input_percentiles(history, activation)
    bn, nobn = fig.axes
    assert bn.get_shared_y_axes().joined(bn, nobn)
    assert bn.get_xlabel() == nobn.get_xlabel() == "epoch"
    seeds = [line for line in nobn.get_lines() if len(line.get_xdata()) == 3]
    assert len(seeds) == 9  # three percentiles, three seeds
    assert np.isnan(seeds[1].get_ydata()[1:]).all()  # the diverged seed stops
    assert list(seeds[0].get_ydata()) == pytest.approx([-1.9, -1.8, -1.7])  # 15th, seed 0
    assert nobn.get_title() == "without BatchNorm (3 seeds, 1 diverged)"
    name = {"relu": "ReLU", "sigmoid": "sigmoid"}[activation]
    assert fig.get_suptitle().startswith(f"{name} input of unit 0, hidden layer 4: ")
    assert len(bn.get_lines()) == 9 + (1 if activation == "relu" else 2)  # flat-region edges


def test_the_gradient_figure_draws_layers_on_a_log_scale() -> None:
    history = {"bn": variant(0.1, 0.8, 0.0), "nobn": variant(0.6, 0.02, -1.0)}
    diverge(history["nobn"], "1")
    ax = figures.input_gradients(history).axes[0]
    assert ax.get_yscale() == "log"
    assert len(ax.get_lines()) == 5  # three seeds with BatchNorm, two that did not diverge
    assert list(ax.get_lines()[3].get_ydata()) == pytest.approx([0.02, 0.02 ** (2 / 3),
                                                                0.02 ** (1 / 3), 1.0])  # fmt: skip
