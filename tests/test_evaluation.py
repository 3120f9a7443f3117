from __future__ import annotations

import math

import numpy as np
import pytest

from regressor.evaluation import evaluate_predictions, point_metrics, within_task_spearman


def test_perfect_predictions():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    m = point_metrics(y, y)
    assert m["spearman"] == 1.0
    assert m["kendall"] == 1.0
    assert m["mape"] == 0.0
    assert m["mse"] == 0.0


def test_reversed_ranking_and_mape():
    y = np.array([1.0, 2.0, 4.0])
    p = np.array([2.0, 1.0, 0.5])
    m = point_metrics(y, p)
    assert m["spearman"] == -1.0
    assert math.isclose(m["mape"], (100 + 50 + 87.5) / 3)


def test_constant_prediction_has_no_rank_correlation():
    m = point_metrics(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))
    assert math.isnan(m["spearman"])


def test_uncertainty_tracks_error():
    rng = np.random.default_rng(0)
    y = rng.uniform(1, 2, 200)
    spread = rng.uniform(0.01, 0.5, 200)
    median = y + rng.normal(0, 1, 200) * spread  # larger spread, larger error
    summary = {
        "median": median,
        "std": spread,
        "q10": median - 1.28 * spread,
        "q90": median + 1.28 * spread,
    }
    m = evaluate_predictions(y, summary)
    assert m["uncertainty_spearman"] > 0.3
    assert m["uncertainty_spearman_relative"] > 0.3  # y in [1, 2]: the scale barely moves it
    assert 0.7 < m["interval_coverage"] < 0.9


def test_relative_uncertainty_ignores_the_scale_of_the_records():
    """Errors and spreads both proportional to y (1 .. 1000): the absolute check mostly ranks the
    records by size, whether or not the spread follows the error; the relative one does not."""
    rng = np.random.default_rng(0)
    y = np.exp(rng.uniform(0, np.log(1000), 400))
    doubt = rng.uniform(0.01, 0.3, 400)  # relative spread
    tracking = y * (1 + rng.normal(0, 1, 400) * doubt)
    blind = y * (1 + rng.normal(0, 1, 400) * rng.permutation(doubt))
    for median, follows in ((tracking, True), (blind, False)):
        summary = {"median": median, "std": doubt * median, "q10": median, "q90": median}
        m = evaluate_predictions(y, summary)
        assert m["uncertainty_spearman"] > 0.5  # either way: size dominates
        assert (m["uncertainty_spearman_relative"] > 0.3) == follows


def test_within_task_spearman_ranks_inside_each_task_only():
    tasks = ["a"] * 5 + ["b"] * 5 + ["c"] * 2  # c is too small to rank and is left out
    y = np.array([1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 7, 8], dtype=float)
    # a perfectly ranked, b reversed: pooled ranking is good, within-task mean is 0.
    pred = np.array([1, 2, 3, 4, 5, 50, 40, 30, 20, 10, 0, 100], dtype=float)
    assert within_task_spearman(tasks, y, pred) == 0.0
    assert math.isclose(within_task_spearman(tasks, y, y), 1.0)


def test_a_record_without_a_number_is_counted_not_hidden():
    """A NaN prediction (no draw decoded) leaves the metrics: `n_failed` says how many did."""
    y = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    m = point_metrics(y, np.array([1.0, 2.0, np.nan, 4.0, 5.0]))
    assert (m["n"], m["n_failed"]) == (3.0, 1.0)


def test_a_prediction_without_a_log_is_counted_beside_mse_log():
    """A prediction of -5 for a truth of 3 was left out of `mse_log` unsaid, so it scored
    better there than a prediction of 1."""
    y = np.array([1.0, 2.0, 3.0])
    m = point_metrics(y, np.array([1.0, 2.0, -5.0]))
    assert m["mse_log"] == 0.0
    assert m["n_mse_log_left_out"] == 1.0
    assert point_metrics(y, y)["n_mse_log_left_out"] == 0.0


def test_a_model_that_ranks_nothing_in_a_task_scores_zero_there():
    """One value (or no number) for a whole task used to drop the task from the mean."""
    tasks = ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    y = np.array([1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 7, 7, 7, 7, 7], dtype=float)
    pred = np.array([1, 2, 3, 4, 5, *[9.0] * 5, 1, 2, 3, 4, 5], dtype=float)
    assert math.isclose(within_task_spearman(tasks, y, pred), 0.5)  # c: constant truth, out
    pred[5:10] = np.nan
    assert math.isclose(within_task_spearman(tasks, y, pred), 0.5)
    y[0] = np.nan  # a missing target leaves its record out, not task a (it dropped out: 0.0)
    assert math.isclose(within_task_spearman(tasks, y, pred, min_records=4), 0.5)


def test_an_infinite_bound_covers_its_truth_and_an_infinite_spread_ranks_highest():
    """A conformal scale that overflows gives the honest interval (-inf, inf) of a model that
    knows nothing, and an untrained model's draws can overflow their std: such records were
    dropped from the coverage (0.0 reported where 0.9 of truths were covered) and from the
    spread-error Spearman, which lost exactly its most doubtful records."""
    y = np.arange(1.0, 11.0)
    median = y.copy()
    low = np.full(10, -np.inf)
    high = np.full(10, np.inf)
    low[0], high[0] = 5.0, 6.0  # misses its truth 1.0
    spread = np.full(10, np.inf)
    spread[0] = 0.5
    metrics = evaluate_predictions(y, {"median": median, "std": spread, "q10": low, "q90": high})
    assert metrics["interval_coverage"] == 0.9
    median = y + np.array([0.1, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    spread = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, np.inf])
    summary = {"median": median, "std": spread, "q10": median - spread, "q90": median + spread}
    metrics = evaluate_predictions(y, summary)
    assert metrics["uncertainty_spearman"] == pytest.approx(1.0)  # inf: the largest error
    assert metrics["interval_coverage"] == 0.2  # records 0 and 9 (whose bounds are infinite)


def test_a_zero_truth_left_out_of_mape_is_counted():
    """MAPE has no term for a truth of 0, nor the log scale one for a truth at or below 0:
    three of four records left out read as a perfect MAPE and MSE on the log scale."""
    m = point_metrics(np.array([0.0, 0.0, -1.0, 5.0]), np.array([100.0, 200.0, -1.0, 5.0]))
    assert (m["mape"], m["mse_log"]) == (0.0, 0.0)
    assert (m["n_mape_left_out"], m["n_mse_log_left_out"]) == (2.0, 3.0)
    assert math.isnan(point_metrics(np.zeros(3), np.ones(3))["mape"])
    assert point_metrics(np.ones(2), np.ones(2))["n_mape_left_out"] == 0.0
