"""The figures logged to MLflow, drawn for real (Agg backend)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from regressor.plots import MAX_BARS, PLOT_BOUND, calibration, predicted_vs_actual


def test_predicted_vs_actual_draws_absurd_draws_at_the_bound_instead_of_failing() -> None:
    """A barely trained model can sample -1e308 and 1e308 for one record: the axis span would
    overflow and matplotlib's tick locator raise (a retrain failed on it in CI-like runs)."""
    y = np.array([1.0, 2.0, 3.0])
    median = np.array([1.0, -1e308, 1e308])
    fig = predicted_vs_actual(y, median, median, median, "absurd")
    low, high = fig.axes[0].get_ylim()
    assert -10 * PLOT_BOUND < low < 0 < high < 10 * PLOT_BOUND
    fig.savefig("/dev/null", format="png")  # rendering the ticks works too
    plt.close(fig)


def test_predicted_vs_actual_leaves_ordinary_values_as_they_are() -> None:
    y = np.array([10.0, 20.0, 30.0])
    median = np.array([11.0, 19.0, 33.0])
    fig = predicted_vs_actual(y, median, median - 1, median + 2, "ordinary")
    points = fig.axes[0].lines[0].get_xydata()  # the errorbar's markers
    np.testing.assert_array_equal(points, np.column_stack([y, median]))
    plt.close(fig)


def test_many_records_are_points_coloured_by_coverage_instead_of_overlapping_bars() -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(0.1, 0.9, MAX_BARS + 1)
    median = y + rng.normal(0, 0.05, len(y))
    low, high = median - 0.05, median + 0.05
    fig = predicted_vs_actual(y, median, low, high, "many")
    ax = fig.axes[0]
    assert not ax.containers  # no error bars
    inside = int(((low <= y) & (y <= high)).sum())
    labels = [line.get_label() for line in ax.lines]
    assert labels[:2] == [
        f"truth inside its 10-90% ({inside} of {len(y)})",
        f"truth outside its 10-90% ({len(y) - inside} of {len(y)})",
    ]
    assert len(ax.lines[0].get_xdata()) + len(ax.lines[1].get_xdata()) == len(y)
    fig.savefig("/dev/null", format="png")
    plt.close(fig)
    # Counted over finite records, as `interval_coverage` is; the others are named apart.
    median[:3] = np.nan
    fig = predicted_vs_actual(y, median, low, high, "some NaN")
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels[0].endswith(f" of {len(y) - 3})")
    assert "3 more without a finite prediction" in labels
    plt.close(fig)
    low[:3], high[:3], median[:3] = -np.inf, np.inf, y[:3]  # an overflowed scale covers
    fig = predicted_vs_actual(y, median, low, high, "infinite bounds")
    labels = [line.get_label() for line in fig.axes[0].lines]
    covered = int(((low <= y) & (y <= high)).sum())
    assert labels[0] == f"truth inside its 10-90% ({covered} of {len(y)})"  # all 101 drawn
    plt.close(fig)


def test_the_calibration_curve_leaves_out_records_with_no_finite_draw() -> None:
    """A record none of whose draws decoded has NaN quantiles, and `y <= NaN` counted it as a
    truth above every level: a calibrated model's curve sank with its failed records."""
    rng = np.random.default_rng(1)
    y = rng.normal(size=300)
    samples = rng.normal(size=(300, 64))  # calibrated by construction
    alone = calibration(y, samples, "scored").axes[0].lines[0].get_ydata()
    samples_with_failures = np.vstack([samples, np.full((150, 64), np.nan)])
    with_failed = calibration(np.concatenate([y, np.ones(150)]), samples_with_failures, "half")
    ax = with_failed.axes[0]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), alone)
    assert "150 more without a finite draw" in [line.get_label() for line in ax.lines]


def test_few_records_name_those_without_a_finite_prediction_too() -> None:
    """The error-bar figure (every adaptation's test split) dropped NaN medians unsaid."""
    y = np.arange(1.0, 31.0)
    median = y.copy()
    median[:10] = np.nan
    fig = predicted_vs_actual(y, median, median - 1, median + 1, "thirty")
    assert "10 more without a finite prediction" in [line.get_label() for line in fig.axes[0].lines]


def test_a_title_is_plain_text_and_figures_are_not_kept_by_pyplot() -> None:
    """A task named with two `$` was read as mathtext and failed the figure, and with it the
    adaptation logging it; every figure pyplot tracked stayed alive when logging failed."""
    before = plt.get_fignums()
    y = np.array([1.0, 2.0, 3.0])
    title = "price_$USD_per_$ (3 records)"
    for fig in (predicted_vs_actual(y, y, y, y, title), calibration(y, y[:, None], title)):
        fig.savefig("/dev/null", format="png")
        assert fig.axes[0].get_title() == title
    assert plt.get_fignums() == before


def test_a_long_title_is_wrapped_onto_the_figure() -> None:
    """On a 5-inch figure a title holding a 28-character task name ran past both edges, and
    its record count was cut off."""
    y = np.array([1.0, 2.0, 3.0])
    title = "adapted to cell-west-europe-batch-gpu-a100, its test records (3 records)"
    fig = predicted_vs_actual(y, y, y, y, title)
    fig.canvas.draw()
    shown = fig.axes[0].title
    box = shown.get_window_extent()
    assert " ".join(shown.get_text().split()) == title
    assert box.x0 >= 0
    assert box.x1 <= fig.bbox.width
