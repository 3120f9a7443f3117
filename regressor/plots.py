"""Figures logged to MLflow: predicted vs actual, and calibration of the sampled quantiles."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from regressor.sampling import nan_quantile

# Beyond this a barely trained model's draws (the codec spans every float64, up to ~1.8e308) can
# make an axis whose span overflows to inf, and matplotlib's tick locator then raises: such points
# are drawn at the bound instead of failing the run that logs the figure.
PLOT_BOUND = 1e300
TITLE_CHARS = 50  # what a title line holds across a 5-inch figure


# Beyond this many records, bars overlap into one blob (690 held-out days on the demo): each
# point is then coloured by whether its interval covers the truth, and no bar is drawn.
MAX_BARS = 100


def _figure() -> tuple[Figure, Axes]:
    """A 5x5 figure that pyplot does not track: nothing to close, so a figure whose drawing or
    upload failed is not kept alive in a long-lived process."""
    fig = Figure(figsize=(5, 5))
    return fig, fig.subplots()


def _titled(ax: Axes, title: str) -> None:
    """`title` as plain text: a task named `price_$USD_per_$` read as mathtext failed the
    figure, and with it the adaptation that logs it. Wrapped at `TITLE_CHARS` (matplotlib's
    own `wrap` parses it as mathtext again): on a 5-inch figure a title holding a
    28-character task name ran past both edges, its record count cut off."""
    ax.set_title(textwrap.fill(title, TITLE_CHARS), parse_math=False)


def _untold(ax: Axes, missing: int, what: str) -> None:
    """A legend line for the `missing` records a figure cannot draw."""
    if missing:
        ax.plot([], [], " ", label=f"{missing} more without {what}")


def predicted_vs_actual(
    y_true: np.ndarray, median: np.ndarray, low: np.ndarray, high: np.ndarray, title: str
) -> Figure:
    # Counted as `interval_coverage` counts: a finite truth and median, bounds not missing (an
    # infinite one covers, drawn at the plot's bound).
    finite = np.isfinite(y_true) & np.isfinite(median) & ~np.isnan(low) & ~np.isnan(high)
    median, low, high = (np.clip(v, -PLOT_BOUND, PLOT_BOUND) for v in (median, low, high))
    fig, ax = _figure()
    if len(y_true) <= MAX_BARS:
        yerr = np.vstack([np.clip(median - low, 0, None), np.clip(high - median, 0, None)])
        ax.errorbar(y_true, median, yerr=yerr, fmt="o", ms=3, alpha=0.5, elinewidth=0.5)
        ylabel = "predicted median (bars: 10-90%)"
    else:
        _coverage_points(ax, y_true[finite], median[finite], low[finite], high[finite])
        ylabel = "predicted median"
    _untold(ax, int((~finite).sum()), "a finite prediction")
    lo = float(np.nanmin([y_true.min(), np.nanmin(median)]))
    hi = float(np.nanmax([y_true.max(), np.nanmax(median)]))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set(xlabel="actual target", ylabel=ylabel)
    _titled(ax, title)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def _coverage_points(ax, y_true, median, low, high) -> None:
    """Each record a point, blue when its interval covers the truth, red when not."""
    covered = (low <= y_true) & (y_true <= high)
    for inside, colour, where in ((True, "tab:blue", "inside"), (False, "tab:red", "outside")):
        mask = covered == inside
        label = f"truth {where} its 10-90% ({mask.sum()} of {len(y_true)})"
        ax.plot(y_true[mask], median[mask], "o", ms=2.5, alpha=0.5, color=colour, label=label)


def calibration(y_true: np.ndarray, samples: np.ndarray, title: str) -> Figure:
    """Empirical vs nominal quantile level of the raw samples (before the conformal scale,
    which moves only the reported quantiles): a calibrated model lies on the diagonal."""
    levels = np.linspace(0.05, 0.95, 19)
    # Over the records with a finite draw and truth, as the metrics count: a record with none
    # has NaN quantiles, and `y <= NaN` counted it as a truth above every level.
    drawn = np.isfinite(samples).any(axis=1) & np.isfinite(y_true)
    finite = np.where(np.isfinite(samples[drawn]), samples[drawn], np.nan)
    fig, ax = _figure()
    if drawn.any():
        quantiles = nan_quantile(finite, levels)  # [L, N drawn]
        empirical = (y_true[drawn][None, :] <= quantiles).mean(axis=1)
        ax.plot(levels, empirical, "o-", label="model")
    _untold(ax, int((~drawn).sum()), "a finite draw")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    ax.set(xlabel="nominal quantile level of the raw samples", ylabel="fraction of actuals below")
    _titled(ax, title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig
