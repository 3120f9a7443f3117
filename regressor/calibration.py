"""Conformal recalibration of the sampled 10-90% interval on a validation split.

The sampled quantiles of a model trained by cross-entropy are often too narrow or too wide. Split
conformal prediction fixes the coverage without retraining: on validation records, each truth gets
the factor by which its interval's halves, measured from the median, must be stretched to reach it;
the `ceil((n + 1) * nominal) / n` quantile of those factors is one scale that, applied to the halves
of new intervals, covers the nominal fraction of new truths (exchangeability is the only
assumption). Scaling the halves keeps each interval's asymmetry and keeps wider intervals wider,
so the spread still ranks the errors as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A half of zero width cannot be stretched; a tiny floor keeps the factor finite (and huge).
_MIN_HALF = 1e-300


@dataclass(frozen=True)
class IntervalScale:
    """One factor for the halves of the interval [low, high] around the median."""

    scale: float
    nominal: float  # the coverage the scale was fitted for, e.g. 0.8 for q10..q90
    n_fit: int

    def apply(
        self, median: np.ndarray, low: np.ndarray, high: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stretched (or shrunk) bounds, float64 [N] each: median -/+ scale * half."""
        median = np.asarray(median, dtype=float)
        below = median - np.asarray(low, dtype=float)
        above = np.asarray(high, dtype=float) - median
        # A zero-width half stays zero (inf * 0 would be NaN); a huge scale may overflow to an
        # infinite bound, which is the honest interval of a model that knows nothing.
        with np.errstate(over="ignore", invalid="ignore"):
            new_low = np.where(below == 0, median, median - self.scale * below)
            new_high = np.where(above == 0, median, median + self.scale * above)
        return new_low, new_high

    def apply_summary(
        self, summary: dict[str, np.ndarray], low_key: str = "q10", high_key: str = "q90"
    ) -> dict[str, np.ndarray]:
        """A copy of a `sampling.summarize` dict with the interval's quantiles recalibrated."""
        low, high = self.apply(summary["median"], summary[low_key], summary[high_key])
        return {**summary, low_key: low, high_key: high}


def conformity_scores(
    y_true: np.ndarray, median: np.ndarray, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Per record: how many times its half-width (on the truth's side) the truth lies away, [N]."""
    y, m = np.asarray(y_true, dtype=float), np.asarray(median, dtype=float)
    below = np.maximum(m - np.asarray(low, dtype=float), _MIN_HALF)
    above = np.maximum(np.asarray(high, dtype=float) - m, _MIN_HALF)
    return np.where(y < m, (m - y) / below, (y - m) / above)


def fit_interval_scale(
    y_true: np.ndarray,
    median: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    nominal: float = 0.8,
) -> IntervalScale:
    """The split-conformal scale from validation truths and their sampled median/low/high [N].

    Records with any non-finite value are left out (they carry no distance to learn from).
    """
    arrays = [np.asarray(a, dtype=float) for a in (y_true, median, low, high)]
    ok = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    scores = np.sort(conformity_scores(*(a[ok] for a in arrays)))
    n = len(scores)
    if n == 0:
        raise ValueError("no finite validation records to calibrate on")
    # The finite-sample correction: the k-th smallest score, k = ceil((n + 1) * nominal).
    k = min(n, math.ceil((n + 1) * nominal))
    # A hair above the k-th score: rebuilding that record's bound from the scale must still
    # cover it despite floating-point rounding.
    return IntervalScale(scale=float(scores[k - 1]) * (1 + 1e-9), nominal=nominal, n_fit=n)
