"""Conformal recalibration of the sampled 10-90% interval on a validation split.

The sampled quantiles of a model trained by cross-entropy are often too narrow or too wide. Split
conformal prediction fixes the coverage without retraining: on validation records, each truth gets
the factor by which its interval's halves, measured from the median, must be stretched to reach it;
the `ceil((n + 1) * nominal) / n` quantile of those factors is one scale that, applied to the halves
of new intervals, covers the nominal fraction of new truths (exchangeability is the only
assumption). Scaling the halves keeps each interval's asymmetry and keeps wider intervals wider.

One pooled scale cannot tell an easy task from a hard one: a model is as sure of itself on a cell
it predicts badly as on one it predicts well. Mondrian (group-conditional) conformal fits one scale
per task that has enough validation records, with the same rule inside the task, and keeps the
pooled scale for the others; coverage then holds per task, and the spread (std and interval width)
grows on the tasks where the model errs more, which is what the spread-error check asks of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# A half of zero width cannot be stretched; a tiny floor keeps the factor finite (and huge).
_MIN_HALF = 1e-300


@dataclass(frozen=True)
class IntervalScale:
    """Factors for the halves of the interval [low, high] around the median."""

    scale: float  # pooled over every validation record: for tasks without a scale of their own
    nominal: float  # the coverage the scale was fitted for, e.g. 0.8 for q10..q90
    n_fit: int
    by_task: dict[str, float] = field(default_factory=dict)  # Mondrian: one scale per task
    # The narrowest half, relative to the median, that the fit and the bounds use (`floored`):
    # the codec's resolution. 0 in scales fitted before it, whose zero halves stay zero.
    min_half_rel: float = 0.0
    # The narrowest half at a median of exactly 0, where no relative floor exists: `min_half_rel`
    # of the calibration truths' median size. 0 in scales fitted before it (`_MIN_HALF` then).
    zero_half: float = 0.0
    # The sampling temperature of the draws it was fitted on. The draws' spread, and so the
    # factor that stretches it to the nominal coverage, depends on it: a scale fitted at 1.0
    # covered 0.45 of truths at 0.25 (for 0.8). 1.0 in scales fitted before it, as they were.
    temperature: float = 1.0

    def row_scales(self, n: int, tasks: Sequence[str | None] | None = None) -> np.ndarray:
        """Each row's factor, float64 [n]: its task's scale when fitted, else the pooled one."""
        if tasks is None or not self.by_task:
            return np.full(n, self.scale)
        assert len(tasks) == n, "one task per row"
        return np.array([self.by_task.get(str(t), self.scale) for t in tasks], dtype=float)

    def apply(
        self,
        median: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        tasks: Sequence[str | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stretched (or shrunk) bounds, float64 [N] each: median -/+ scale * half."""
        median = np.asarray(median, dtype=float)
        scale, rel, zero = self.row_scales(len(median), tasks), self.min_half_rel, self.zero_half
        return (
            stretched(median, low, scale, -1, rel, zero),
            stretched(median, high, scale, 1, rel, zero),
        )

    def apply_summary(
        self, summary: dict[str, np.ndarray], tasks: Sequence[str | None] | None = None
    ) -> dict[str, np.ndarray]:
        """A copy of a `sampling.summarize` dict with every quantile (`q<percent>` keys) moved
        from the median by the row's factor and `std` scaled by it: the summary of one rescaled
        distribution, whichever quantiles were asked for. The factor is fitted for q10..q90,
        whose coverage it guarantees; the other quantiles follow as that distribution's, which
        holds as far as the sampled shape is right. (It once moved only q10 and q90, and std
        only when both were asked for: p5 could then lie inside a widened p10, and std changed
        with the quantiles requested.) Median, mean and the raw samples stay as sampled."""
        median = np.asarray(summary["median"], dtype=float)
        scale, rel, zero = self.row_scales(len(median), tasks), self.min_half_rel, self.zero_half
        out = {
            k: stretched(median, v, scale, quantile_side(k), rel, zero) if is_quantile(k) else v
            for k, v in summary.items()
        }
        std = np.asarray(summary["std"], dtype=float)
        if rel > 0:  # a spread finer than the codec writes is the codec's resolution
            std = np.maximum(std, np.where(median == 0, zero, np.abs(median) * rel))
        with np.errstate(over="ignore", invalid="ignore"):  # as `stretched`: 0 * inf is 0
            out["std"] = np.where(std == 0, std, std * scale)
        return out


def percent_label(q: float) -> str:
    """0.1 -> '10', 0.025 -> '2.5', 5e-7 -> '0.00005': a quantile in percent, 6 significant
    digits, never in exponent notation (`q5e-05` read as no quantile key at all)."""
    return np.format_float_positional(float(f"{q * 100:.6g}") + 0.0, trim="-")  # -0 -> 0


def is_quantile(key: str) -> bool:
    """`sampling.summarize`'s quantile keys: `q10`, `q2.5`, `q50`."""
    return key.startswith("q") and key[1:].replace(".", "", 1).isdigit()


def quantile_side(key: str) -> int:
    """-1 for a quantile key below the median (`q10`), 1 above it (`q90`), 0 for `q50`."""
    return int(np.sign(float(key[1:]) - 50))


def floored(
    half: np.ndarray, median: np.ndarray, min_half_rel: float, zero_half: float = 0.0
) -> np.ndarray:
    """Half-widths [N] no narrower than `min_half_rel` of the median's size, or `zero_half` at a
    median of 0 (nor `_MIN_HALF`). A sharp model draws one value on a side in most samples
    (q10 = median): a zero half there gave that record a score of |truth - median| / 1e-300,
    and enough such records pushed the fitted scale to ~1e300 while their own bounds stayed on
    the median. A median of exactly 0 (every draw 0) has no relative floor: it did the same."""
    floor = np.where(np.asarray(median) == 0, zero_half, np.abs(median) * min_half_rel)
    # NaN propagates from `half` (a missing bound stays missing), not from the floor.
    return np.maximum(half, np.fmax(floor, _MIN_HALF))


def stretched(
    median: np.ndarray,
    value: np.ndarray,
    scale: np.ndarray,
    side: int = 0,
    rel: float = 0.0,
    zero_half: float = 0.0,
) -> np.ndarray:
    """`value` moved from `median` by `scale` times its distance, float64 [N]. With `rel` > 0,
    the distance on `side` (-1 below, 1 above) is first `floored` as the fit floored it; else a
    zero distance stays zero (inf * 0 would be NaN). A huge scale may overflow to an infinite
    bound, which is the honest interval of a model that knows nothing."""
    distance = np.asarray(value, dtype=float) - median
    if rel > 0 and side != 0:
        distance = side * floored(side * distance, median, rel, zero_half)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(distance == 0, median, median + scale * distance)


def conformity_scores(
    y_true: np.ndarray,
    median: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    min_half_rel: float = 0.0,
    zero_half: float = 0.0,
) -> np.ndarray:
    """Per record: how many times its half-width (on the truth's side, `floored`) the truth
    lies away, [N]."""
    y, m = np.asarray(y_true, dtype=float), np.asarray(median, dtype=float)
    below = floored(m - np.asarray(low, dtype=float), m, min_half_rel, zero_half)
    above = floored(np.asarray(high, dtype=float) - m, m, min_half_rel, zero_half)
    return np.where(y < m, (m - y) / below, (y - m) / above)


def min_records(nominal: float) -> int:
    """The fewest records a conformal scale for `nominal` coverage can be fitted on: the
    k = ceil((n + 1) * nominal)-th score must exist (4 for 80%). With fewer, k was clipped to
    n and the scale covered n / (n + 1): 50% on one record."""
    if not 0 < nominal < 1:
        raise ValueError(f"nominal coverage must lie strictly between 0 and 1, got {nominal}")
    n = 1
    while math.ceil((n + 1) * nominal) > n:
        n += 1
    return n


def _conformal_quantile(scores: np.ndarray, nominal: float) -> float:
    """The k-th smallest score, k = ceil((n + 1) * nominal) (the finite-sample correction).

    A k-th score of 0 (most medians equal their truths: targets with few significant digits)
    would collapse every interval, and the std, onto the median; the smallest positive score
    stands in, which covers no fewer records. With no positive score there is no spread to fit.
    """
    ordered = np.sort(scores)
    k = math.ceil((len(ordered) + 1) * nominal)
    if k > len(ordered):
        need = min_records(nominal)
        raise ValueError(f"{len(ordered)} records; a scale for {nominal:.0%} coverage needs {need}")
    kth = float(ordered[k - 1])
    if kth == 0:
        positive = ordered[ordered > 0]
        if len(positive) == 0:
            raise ValueError("every truth equals its median: no spread to fit a scale to")
        kth = float(positive[0])
    # A hair above the k-th score: rebuilding that record's bound from the scale must still
    # cover it despite floating-point rounding.
    return kth * (1 + 1e-9)


def fit_interval_scale(
    y_true: np.ndarray,
    median: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    nominal: float = 0.8,
    tasks: Sequence[str] | None = None,
    min_task_records: int | None = None,
    min_half_rel: float = 0.0,
) -> IntervalScale:
    """The split-conformal scale from validation truths and their sampled median/low/high [N],
    each half `floored` at `min_half_rel` of the median (the codec's resolution).

    With `tasks` and `min_task_records`, each task with at least that many finite records also
    gets its own scale (Mondrian conformal). Records with any non-finite value are left out (they
    carry no distance to learn from). ValueError when no scale can be fitted (too few records,
    or no spread): the caller keeps the raw sampled bounds.
    """
    arrays = [np.asarray(a, dtype=float) for a in (y_true, median, low, high)]
    ok = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    if not ok.any():
        raise ValueError("no finite validation records to calibrate on")
    zero_half = min_half_rel * float(np.median(np.abs(arrays[0][ok])))
    scores = conformity_scores(*(a[ok] for a in arrays), min_half_rel, zero_half)
    pooled = _conformal_quantile(scores, nominal)
    by_task: dict[str, float] = {}
    if tasks is not None and min_task_records is not None:
        floor = max(min_task_records, min_records(nominal))
        names = np.asarray([str(t) for t in tasks])[ok]
        for task in np.unique(names):
            mine = scores[names == task]
            if len(mine) >= floor and np.any(mine > 0):  # else the pooled scale serves it
                by_task[str(task)] = _conformal_quantile(mine, nominal)
    return IntervalScale(
        scale=pooled,
        nominal=nominal,
        n_fit=len(scores),
        by_task=by_task,
        min_half_rel=min_half_rel,
        zero_half=zero_half,
    )
