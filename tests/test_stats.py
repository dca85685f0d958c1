"""Statistics across seeds: scipy's t-intervals and tests, and the edge cases
(one seed, no spread) that must give null, not nan."""

from __future__ import annotations

import math

import pytest

from pipeline import stats

T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # printed t tables, df -> 97.5% quantile


def test_estimate_gives_the_t_interval_and_the_prediction_interval() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, sample std sqrt(2.5)
    e = stats.estimate(values)
    std = math.sqrt(2.5)
    assert (e.n, e.mean, e.std) == (5, 3.0, pytest.approx(std))
    half = T_975[4] * std / math.sqrt(5)
    assert e.ci95 == pytest.approx((3 - half, 3 + half))
    wide = T_975[4] * std * math.sqrt(1 + 1 / 5)  # one more value, not the mean
    assert e.prediction95 == pytest.approx((3 - wide, 3 + wide))


def test_one_value_has_no_spread_and_no_interval() -> None:
    assert stats.estimate([0.97]) == stats.Estimate(1, 0.97, None, None, None)


def test_equal_values_give_a_zero_width_interval_not_nan() -> None:
    e = stats.estimate([0.5, 0.5, 0.5])
    assert e.std == 0.0 and e.ci95 == (0.5, 0.5) and e.prediction95 == (0.5, 0.5)


def test_no_values_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        stats.estimate([])


def test_paired_test_matches_the_closed_form_for_two_degrees_of_freedom() -> None:
    a, b = [0.98, 0.96, 0.97], [0.95, 0.95, 0.93]
    differences = [0.03, 0.01, 0.04]
    mean = sum(differences) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    p = stats.paired(a, b)
    assert (p.n, p.mean, p.std) == (3, pytest.approx(mean), pytest.approx(std))
    half = T_975[2] * std / math.sqrt(3)
    assert p.ci95 == pytest.approx((mean - half, mean + half))
    t = mean / (std / math.sqrt(3))
    assert p.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t))  # 2 (1 - CDF) for df 2


def test_pairing_finds_a_consistent_difference_that_the_spread_hides() -> None:
    # Each a is about 0.009 above its b; the seeds spread far more than that.
    from scipy import stats as scipy_stats

    a = [0.90, 0.95, 0.99, 0.93]
    b = [x - 0.01 + 0.001 * k for k, x in enumerate(a)]
    assert scipy_stats.ttest_ind(a, b).pvalue > 0.5  # unpaired: no difference to see
    assert stats.paired(a, b).p_value < 0.01


def test_paired_edge_cases_give_none_not_nan() -> None:
    assert stats.paired([0.9], [0.8]).p_value is None
    same = stats.paired([0.5, 0.75, 0.25], [0.25, 0.5, 0.0])  # every difference exactly 0.25
    assert same.mean == 0.25 and same.std == 0.0 and same.p_value is None
    assert same.ci95 == (0.25, 0.25)
    with pytest.raises(ValueError, match="different lengths"):
        stats.paired([0.1, 0.2], [0.1])


def test_prediction_for_one_unpaired_difference() -> None:
    # b has no spread: all of the variance is a's, with a's degrees of freedom.
    interval = stats.difference_prediction([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    half = T_975[2] * math.sqrt(1.0 * (1 + 1 / 3))
    assert interval == pytest.approx((2 - half, 2 + half))
    # and it is wider than the paired interval when the two sides vary together
    a, b = [0.97, 0.98, 0.96, 0.975], [0.95, 0.962, 0.941, 0.956]
    unpaired = stats.difference_prediction(a, b)
    paired = stats.estimate([x - y for x, y in zip(a, b, strict=True)]).prediction95
    assert unpaired[1] - unpaired[0] > paired[1] - paired[0]
    assert stats.difference_prediction([1.0], [0.0, 1.0]) is None
