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


def test_names_from_data_are_inert_inline_code_and_free_text_stays_on_its_line():
    """A task, file or model name came from data or configs and went between single backticks:
    one with a backtick ended the span (the rest rendered: bold, raw HTML), a newline started a
    heading, a `|` in a model name shifted every cell of its table row by one column."""
    nasty = "x` <img src=x onerror=alert(1)> **bold**"
    assert report.code(nasty) == "``x` <img src=x onerror=alert(1)> **bold**``"
    assert report.code("a\n# heading") == "`a # heading`"
    assert report.code("`edge`") == "`` `edge` ``"
    assert report.plain("bad\n<script>x</script>") == "bad &lt;script>x&lt;/script>"
    row = report.metrics_table({"textperf-gpu|a100/3": {"spearman": 0.5, "n": 30.0}})
    assert row.splitlines()[2] == "| textperf-gpu\\|a100/3 | 0.500 | 30 |"


def test_the_ingest_summary_counts_what_it_does_not_list_and_names_each_file_once():
    """Every list stopped at 50 without a word, though `textperf ingest` sends readers to the
    report for the rest; a reason that names its file printed the file twice."""
    from regressor.sources.fleet import IngestReport

    quarantined = [(f"/d/c{i:03}.yaml", f"/d/c{i:03}.yaml: not valid YAML") for i in range(120)]
    ingested = IngestReport(
        source="s",
        run_id="r",
        files_seen=120,
        files_ingested=0,
        files_quarantined=120,
        files_unchanged=0,
        records=0,
        records_added=0,
        quarantined=quarantined,
        unmatched_targets={f"t{i}": 1 for i in range(51)},
    )
    text = report.ingest_summary(ingested)
    assert "- `/d/c000.yaml`: not valid YAML" in text
    assert "- ... and 70 more (the warehouse's `quarantine` table holds them all)" in text
    assert "- ... and 1 more (`sql/queries/unmatched_targets.sql` lists them all)" in text
    assert "c050.yaml" not in text


def test_the_predict_line_reads_the_store_the_model_went_to(tmp_path, monkeypatch):
    """A tracking server named by the config was left out of the line, which then read the
    local store; a server is its own UI (`mlflow ui --backend-store-uri http://...` was
    offered)."""
    from regressor.config import PathsConfig, ResolvedPaths

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    server = ResolvedPaths(var_dir=tmp_path, mlflow_server="http://mlflow.team:5000")
    assert report.predict_command(server, "models:/m@champion") == (
        "MLFLOW_TRACKING_URI=http://mlflow.team:5000 textperf predict --model "
        "models:/m@champion RECORD.json"
    )
    assert report.ui_line(server) == "http://mlflow.team:5000"
    local = ResolvedPaths(var_dir=tmp_path)
    assert report.predict_command(local, "models:/m@champion").endswith(
        f"--var-dir {tmp_path} RECORD.json"
    )
    default = PathsConfig().resolve()
    assert report.predict_command(default, "m") == "textperf predict --model m RECORD.json"


def test_commands_to_copy_quote_a_path_with_a_space(tmp_path):
    """`--var-dir /home/ann/ML runs/var` split into two arguments, as did the `mlflow ui` and
    `mlflow gc` store URIs."""
    import shlex

    from regressor import jobs
    from regressor.config import ResolvedPaths

    spaced = ResolvedPaths(var_dir=tmp_path / "ML runs" / "var")
    words = shlex.split(report.predict_command(spaced, "models:/m@champion"))
    assert words[words.index("--var-dir") + 1] == str(spaced.var_dir)
    ui = shlex.split(report.ui_line(spaced).strip("`"))
    assert ui[-1] == spaced.tracking_uri
    gc = shlex.split(jobs.gc_command(spaced).strip("`"))
    assert gc[gc.index("--backend-store-uri") + 1] == gc[-1] == spaced.tracking_uri


def test_a_huge_metric_is_a_short_cell():
    """A barely trained model's MAPE of 1.7e306 was printed as 310 digits."""
    row = report.metrics_table({"textperf": {"spearman": 0.1, "mape": 1.7e306}}).splitlines()[-1]
    assert row == "| textperf | 0.100 | 1.7e+306 |"


def test_records_without_a_number_are_a_column_when_some_model_has_them():
    """A model that decoded no number for 8 of 10 records showed the metrics of the 2 it scored,
    as good as a model that scored all 10: the report now counts them beside `records`."""
    clean = {"textperf": {"spearman": 0.9, "n": 10.0, "n_failed": 0.0}}
    assert "without a number" not in report.metrics_table(clean)
    rows = clean | {"textperf-v2": {"spearman": 0.9, "n": 2.0, "n_failed": 8.0}}
    lines = report.metrics_table(rows).splitlines()
    assert lines[0] == "| model | Spearman | records | records without a number |"
    assert lines[3] == "| textperf-v2 | 0.900 | 2 | 8 |"
