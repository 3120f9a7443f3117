"""Metrics for point predictions and their sampled uncertainty (scipy does the statistics)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from regressor.sampling import summarize


def _finite(*arrays: np.ndarray) -> np.ndarray:
    mask = np.ones_like(np.asarray(arrays[0], dtype=float), dtype=bool)
    for a in arrays:
        mask &= np.isfinite(np.asarray(a, dtype=float))
    return mask


def rank_correlations(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Spearman and Kendall; NaN when either side is constant (no ranking to compare)."""
    if len(y_true) < 2 or np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return {"spearman": float("nan"), "kendall": float("nan")}
    return {
        "spearman": float(stats.spearmanr(y_true, y_pred).statistic),
        "kendall": float(stats.kendalltau(y_true, y_pred).statistic),
    }


def point_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Spearman, Kendall, MAPE (%), MSE on raw and log scale over finite pairs: `n` counts them,
    `n_failed` the records with a target but no number predicted (none of their draws decoded
    to one). Those are in no metric, so a model failing on its hard records would look better:
    read `n_failed` beside them (the gate counts fewer scored records as worse,
    `registry.beats`). MAPE has no term for a truth of 0 (`n_mape_left_out` counts them), the
    log scale none for a pair with a side at or below 0 (`n_mse_log_left_out`).
    """
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    ok = _finite(y_true, y_pred)
    n_failed = float((np.isfinite(y_true) & ~np.isfinite(y_pred)).sum())
    t, p = y_true[ok], y_pred[ok]
    out = rank_correlations(t, p)
    nonzero = t != 0
    out["mape"] = _mean(np.abs((p[nonzero] - t[nonzero]) / t[nonzero])) * 100
    out["n_mape_left_out"] = float((~nonzero).sum())
    with np.errstate(over="ignore"):  # an untrained model can sample huge values: MSE is inf
        out["mse"] = float(np.mean((p - t) ** 2))
    positive = (t > 0) & (p > 0)
    out["mse_log"] = _mean((np.log(p[positive]) - np.log(t[positive])) ** 2)
    # A prediction at or below 0 has no log: out of `mse_log`, where it scored nothing while a
    # near miss scored its error. Counted, as `n_failed` counts (a truth at or below 0 too).
    out["n_mse_log_left_out"] = float((~positive).sum())
    out["n"] = float(ok.sum())
    out["n_failed"] = n_failed
    return out


def _mean(values: np.ndarray) -> float:
    """The mean, NaN (without numpy's warning) when there is nothing to average."""
    return float(np.mean(values)) if len(values) else float("nan")


def uncertainty_metrics(
    y_true: np.ndarray, median: np.ndarray, low: np.ndarray, high: np.ndarray, spread: np.ndarray
) -> dict[str, float]:
    """Coverage of [low, high] and the Spearman between sample spread and error.

    The second is the paper's check that the model knows when it does not know: a positive value
    means wider sample distributions go with larger errors. `uncertainty_spearman` compares the
    absolute error with the spread; `uncertainty_spearman_relative` compares the relative error
    |median - y| / |y| with the relative spread spread / |median|, the same check on the scale
    MAPE uses: a mantissa-and-exponent decoder's spread grows with the predicted magnitude, so the
    absolute version partly ranks records by their size rather than by the model's doubt.

    Records count with a finite truth and median and no missing bound or spread. An infinite
    bound (a conformal scale that overflowed: the honest interval of a model that knows
    nothing) covers its truth, and an infinite spread (draws whose std overflowed) is the
    largest: the Spearman is over ranks. Leaving them out reported 0.0 coverage where 0.9 of
    truths were covered, and took the most doubtful records out of the spread check.
    """
    y_true, median, low, high, spread = (
        np.asarray(a, dtype=float) for a in (y_true, median, low, high, spread)
    )
    ok = _finite(y_true, median) & ~np.isnan(low) & ~np.isnan(high) & ~np.isnan(spread)
    t, m, s = y_true[ok], median[ok], spread[ok]
    coverage = _mean((t >= low[ok]) & (t <= high[ok]))
    abs_err = np.abs(m - t)
    scaled = (t != 0) & (m != 0)
    relative_spread = s[scaled] / np.abs(m[scaled])  # m finite and nonzero: inf only from s
    relative = rank_correlations(
        abs_err[scaled] / np.abs(t[scaled]), stats.rankdata(relative_spread)
    )
    return {
        "interval_coverage": coverage,
        "uncertainty_spearman": rank_correlations(abs_err, stats.rankdata(s))["spearman"],
        "uncertainty_spearman_relative": relative["spearman"],
    }


def evaluate_predictions(y_true: np.ndarray, summary: dict[str, np.ndarray]) -> dict[str, float]:
    """All metrics for a model that returns sample summaries (median, std, q10, q90).

    The summary's std and interval are the calibrated ones when the model ships a conformal
    scale; with the raw `samples` present, `uncertainty_spearman_samples` also ranks the errors
    by the plain std of the samples, so the calibration's share of the figure stays visible.
    """
    metrics = point_metrics(y_true, summary["median"])
    metrics.update(
        uncertainty_metrics(
            y_true, summary["median"], summary["q10"], summary["q90"], summary["std"]
        )
    )
    if "samples" in summary:
        raw = summarize(summary["samples"], quantiles=(0.1, 0.9))
        plain = uncertainty_metrics(y_true, raw["median"], raw["q10"], raw["q90"], raw["std"])
        metrics["uncertainty_spearman_samples"] = plain["uncertainty_spearman"]
    return metrics


def within_task_spearman(
    tasks: list[str], y_true: np.ndarray, y_pred: np.ndarray, min_records: int = 5
) -> float:
    """Mean over tasks of the Spearman inside each task (tasks with >= `min_records` records).

    A pooled Spearman over many cells also ranks the cells against each other, which is easier
    than ranking one cell's days; an adapted model is scored inside one cell, so this is the
    like-for-like figure for the cells a base model trained on. A record without a finite target
    is left out of its task (it dropped the whole task, its `ptp` NaN).
    """
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    known = np.isfinite(y_true)
    y_true, y_pred, names = y_true[known], y_pred[known], np.asarray(tasks)[known]
    per_task = [
        _task_spearman(y_true[names == t], y_pred[names == t])
        for t in np.unique(names)
        if (names == t).sum() >= min_records
    ]
    finite = [r for r in per_task if np.isfinite(r)]
    return float(np.mean(finite)) if finite else float("nan")


def _task_spearman(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """One task's Spearman; NaN (left out) when its targets do not vary, 0 when the model ranks
    nothing there (one value, or no number, for all): a model that collapsed on a hard task
    used to lose nothing, the task dropped from the mean."""
    if np.ptp(y_true) == 0:
        return float("nan")
    ok = np.isfinite(y_pred)
    if ok.sum() < 2 or np.ptp(y_pred[ok]) == 0:
        return 0.0
    return rank_correlations(y_true[ok], y_pred[ok])["spearman"]
