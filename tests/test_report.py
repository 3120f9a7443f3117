"""The report's metric tables read as words, and show only the columns that say something."""

from __future__ import annotations

from regressor import report

NAN = float("nan")


def test_a_table_names_its_columns_and_counts_records_as_whole_numbers():
    rows = {
        "textperf": {"spearman": 0.8912, "mape": 19.04, "interval_coverage": 0.855, "n": 690.0},
        "lightgbm": {"spearman": 0.674, "mape": 28.78, "n": 690.0},
    }
    lines = report.metrics_table(rows).splitlines()
    assert lines[0] == "| model | Spearman | MAPE % | 10-90% coverage (nominal 0.80) | records |"
    assert lines[2] == "| textperf | 0.891 | 19.040 | 0.855 | 690 |"
    assert lines[3] == "| lightgbm | 0.674 | 28.780 | - | 690 |"


def test_the_raw_samples_spread_check_is_shown_only_where_it_differs():
    """A pooled conformal scale keeps the spreads' ranks: the raw samples' Spearman is then the
    served one again, and a second column would read as independent evidence."""
    same = {"spearman": 0.9, "uncertainty_spearman": 0.41, "uncertainty_spearman_samples": 0.41}
    assert "raw samples" not in report.metrics_table({"textperf": same})
    assert "raw samples" not in report.metrics_table(
        {"a": {"uncertainty_spearman": NAN, "uncertainty_spearman_samples": NAN}}
    )
    per_task = same | {"uncertainty_spearman_samples": 0.35}
    table = report.metrics_table({"textperf": per_task, "mean": {"spearman": NAN}})
    assert "| spread-error Spearman | spread-error Spearman, raw samples |" in table
    assert "| textperf | 0.900 | 0.410 | 0.350 |" in table
    assert "| mean | - | - | - |" in table
