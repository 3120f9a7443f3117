"""The `runs` adapter: run folders -> runs -> records paired with a reference run, with every bad
report or log quarantined, no good record lost, and no run's own log in its own record."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from regressor.config import RunsSourceConfig
from regressor.dataset import to_examples
from regressor.sources.fleet import IngestReport
from regressor.sources.runs import ingest_runs, is_extra_pair, period_of
from regressor.sources.series import read_series, summarize_frames
from regressor.warehouse import Warehouse

PATTERN = r"(?P<vm>[^/]+)/(?P<job>[a-z]+)_(?P<run>\d+)"


def source(root: Path, **overrides: object) -> RunsSourceConfig:
    cfg = {
        "name": "lab",
        "adapter": "runs",
        "root": root,
        "run_glob": "*/*",
        "report_files": ["report.json", "report.yaml"],
        "log_file": "log.csv",
        "path_pattern": PATTERN,
        "target_field": "elapsed",
        "task_field": "vm",
        "period_field": "when",
        "config_fields": ["vm", "job", "cores", "input_mb"],
        "lookup": {"vm": {"ref": {"cores": 2}, "big": {"cores": 8}, "small": {"cores": 1}}},
        "reference": {"field": "vm", "value": "ref", "match": ["job"], "pair_on": "run"},
        "target_min": 0.0,
    }
    return RunsSourceConfig.model_validate(cfg | overrides)


def sar(seconds: int, level: float) -> str:
    rows = [f"23:59:{50 + i:02d}" if i < 10 else f"00:00:{i - 10:02d}" for i in range(seconds)]
    return "time,cpu,mem,iface\n" + "".join(
        f"{t},{level + i},{level * 2},lo\n" for i, t in enumerate(rows)
    )


def report(elapsed: object, **extra: object) -> str:
    return json.dumps(
        {"elapsed": elapsed, "when": "2024-05-01 10:00:00", "input_mb": "64", **extra}
    )


def put(root: Path, run: str, report_text: str | bytes | None, log: str | bytes | None) -> None:
    folder = root / run
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (("report.json", report_text), ("log.csv", log)):
        if content is not None:
            data = content.encode() if isinstance(content, str) else content
            (folder / name).write_bytes(data)


GOOD_RUNS = {  # run -> elapsed; every one with a usable report is stored in `runs`
    "ref/sort_1": 30,
    "ref/sort_2": 32,
    "ref/grep_1": 20,
    "ref/scan_1": 12,  # its log is bad, so it cannot serve as a reference
    "big/sort_1": 10,
    "big/sort_2": 11,
    "big/sort_3": 12,  # no ref sort_3: pairs with ref sort_1
    "big/grep_1": 7,
    "big/scan_1": 5,  # no usable reference: a run but no record
    "small/grep_1": 40,
    "small/grep_2": 41,  # own log truncated: its record needs only the reference's log
    "small/grep_3": 42,  # own log has a line of megabytes
}
RECORDS = {  # record run -> its reference run
    "big/sort_1": "ref/sort_1",
    "big/sort_2": "ref/sort_2",
    "big/sort_3": "ref/sort_1",
    "big/grep_1": "ref/grep_1",
    "small/grep_1": "ref/grep_1",
    "small/grep_2": "ref/grep_1",
    "small/grep_3": "ref/grep_1",
}
BAD = {  # file -> reason fragment
    "ref/scan_1/log.csv": "not valid UTF-8",
    "small/grep_2/log.csv": "truncated",
    "small/grep_3/log.csv": "not a readable CSV",
    "big/badjson_1/report.json": "not valid JSON",
    "big/badyaml_1/report.yaml": "not valid YAML",
    "big/dupkey_1/report.json": "duplicate key 'elapsed'",
    "big/empty_1/report.json": "empty file",
    "big/types_1/report.json": "non-numeric target elapsed 'fast'",
    "big/missing_1/report.json": "missing target elapsed",
    "big/nan_1/report.json": "absurd target elapsed",
    "big/orphan_1/log.csv": "no report",
}


def write_runs(root: Path) -> None:
    for i, (run, elapsed) in enumerate(GOOD_RUNS.items()):
        put(root, run, report(elapsed), sar(elapsed, 10.0 * i))
    put(root, "ref/scan_1", None, b"time,cpu\n00:00:01,\xff\n")
    put(root, "small/grep_2", None, sar(41, 1.0)[:-9])
    put(root, "small/grep_3", None, sar(5, 1.0) + "00:00:09," + "7" * (2 << 20) + ",1,x,y\n")
    put(root, "big/badjson_1", '{"elapsed": 3,', sar(3, 1.0))
    (root / "big/badyaml_1").mkdir(parents=True)
    (root / "big/badyaml_1/report.yaml").write_text("elapsed: [3\n")
    put(root, "big/dupkey_1", '{"elapsed": 3, "elapsed": 4}', sar(3, 1.0))
    put(root, "big/empty_1", "", sar(3, 1.0))
    put(root, "big/types_1", report("fast"), sar(3, 1.0))
    put(root, "big/missing_1", json.dumps({"when": "2024-05-01"}), sar(3, 1.0))
    put(root, "big/nan_1", '{"elapsed": NaN}', sar(3, 1.0))
    put(root, "big/orphan_1", None, sar(3, 1.0))


def invariant(r: IngestReport) -> bool:
    return r.files_seen == r.files_ingested + r.files_quarantined + r.files_unchanged


@pytest.fixture
def lab(tmp_path: Path) -> tuple[Warehouse, IngestReport, Path]:
    root = tmp_path / "runs"
    write_runs(root)
    with Warehouse(tmp_path / "w.duckdb") as wh:
        yield wh, ingest_runs(wh, source(root), "run-1", batch_size=5), root


def test_good_runs_and_records_land_and_bad_files_are_quarantined(lab):
    wh, rep, root = lab
    assert invariant(rep)
    assert rep.files_seen == sum(1 for p in root.rglob("*") if p.is_file())
    assert rep.files_quarantined == len(BAD)
    runs = dict(wh.con.sql("SELECT run_key, target FROM runs").fetchall())
    assert runs == {k: float(v) for k, v in GOOD_RUNS.items()}
    records = wh.query("records")
    assert sorted(records["record_id"]) == sorted(f"lab/{r}" for r in RECORDS)
    assert rep.records == len(RECORDS) == rep.records_added
    reasons = dict(wh.query("quarantine_report").select("file", "reason").rows())
    assert reasons.keys() == {str(root / f) for f in BAD}
    for file, fragment in BAD.items():
        assert fragment in reasons[str(root / file)], file
    # The report also names the run stored without a record, and why.
    said = dict(rep.quarantined)
    assert "no vm=ref run with a usable log" in said[str(root / "big/scan_1/report.json")]
    assert len(rep.quarantined) == len(BAD) + 1


def test_a_record_holds_the_reference_log_never_its_own(lab):
    wh, _, _ = lab
    logs = dict(wh.con.sql("SELECT run_key, logs_json FROM runs").fetchall())
    rows = wh.con.sql(
        "SELECT record_key, config_json, logs_json, target FROM row_records"
    ).fetchall()
    for key, config_json, logs_json, target in rows:
        ref = RECORDS[key]
        assert logs_json == logs[ref]
        assert logs_json != logs.get(key)
        config = json.loads(config_json)
        assert config["reference"] == {"vm": "ref", "elapsed": float(GOOD_RUNS[ref])}
        assert config["cores"] in (8, 1)
        assert config["input_mb"] == 64
        assert "elapsed" not in config
        assert "when" not in config
        assert target == GOOD_RUNS[key]
        assert json.loads(logs_json)["samples"] == GOOD_RUNS[ref]


def test_reingest_adds_nothing_and_a_fixed_file_is_picked_up(lab):
    wh, first, root = lab
    cfg = source(root)
    again = ingest_runs(wh, cfg, "run-2")
    assert again.files_unchanged == first.files_seen
    assert again.records_added == 0
    put(root, "ref/scan_1", None, sar(12, 3.0))  # the reference log is fixed
    third = ingest_runs(wh, cfg, "run-3")
    assert invariant(third)
    assert third.files_ingested == 2
    assert third.records_added == 1  # big/scan_1 now has a reference
    assert third.files_quarantined == 0
    assert wh.query("quarantine_report").height == len(BAD) - 1


def test_without_a_reference_the_own_log_is_opt_in(tmp_path: Path, lab):
    _, _, root = lab
    with Warehouse(tmp_path / "other.duckdb") as wh:
        ingest_runs(wh, source(root, reference=None), "r")
        assert set(wh.query("records")["logs_json"]) == {"{}"}
    with Warehouse(tmp_path / "own.duckdb") as wh:
        ingest_runs(wh, source(root, reference=None, own_log=True), "r")
        own = dict(wh.con.sql("SELECT record_key, logs_json FROM row_records").fetchall())
        assert json.loads(own["big/sort_1"])["samples"] == 10


def test_series_summary_per_window_with_clock_wrap():
    frame = read_series(sar(20, 0.0), None)
    assert frame.columns == ["cpu", "mem", "t"]  # `iface` is text, dropped
    assert frame["t"].to_list() == [float(i) for i in range(20)]  # 23:59:50 -> 00:00:09
    [summary] = summarize_frames([frame], window_s=10)
    assert summary["samples"] == 20
    assert list(summary["windows"]) == ["0s", "10s"]
    cpu = summary["windows"]["10s"]["cpu"]
    assert cpu == {"mean": 14.5, "p50": 14.5, "p95": 18.55, "max": 19.0, "trend": 3600.0}
    assert summary["windows"]["0s"]["mem"]["trend"] == 0.0


def _series(*rows: str) -> pl.DataFrame:
    return read_series("time,cpu\n" + "".join(f"{row}\n" for row in rows), None)


def test_a_sar_log_keeps_its_times_through_a_stray_row_or_step_back():
    """One row whose stamp did not parse (sar's `Average:` line, a header repeated mid-file)
    switched the whole file to sample indices (a 10-minute trend of 6/h read 1440/h, and the
    row was a sample); a one-second step back was read as a day passing (span 24 h); and
    datetimes out of order gave negative times."""
    stray = _series("10:00:00,1", "10:10:00,2", "10:20:00,3", "Average:,2", "time,cpu")
    assert stray["t"].to_list() == [0.0, 600.0, 1200.0]
    [summary] = summarize_frames([stray])
    assert summary["samples"] == 3
    assert summary["windows"]["all"]["cpu"]["trend"] == 6.0
    back = _series("10:00:00,1", "10:00:02,2", "10:00:01,3", "10:00:03,4")
    assert back["t"].to_list() == [0.0, 2.0, 1.0, 3.0]
    assert summarize_frames([back])[0]["span_h"] == round(3 / 3600, 7)
    midnight = _series("23:59:59,1", "00:00:01,2")
    assert midnight["t"].to_list() == [0.0, 2.0]
    unsorted = _series("2026-01-01 10:00:30,1", "2026-01-01 10:00:00,2", "2026-01-01 10:01:30,3")
    assert unsorted["t"].to_list() == [30.0, 0.0, 90.0]
    # fractional and AM/PM clocks were sample indices too
    assert _series("10:00:30.5,1", "10:00:31.0,2", "10:00:32.5,3")["t"].to_list() == [0, 0.5, 2]
    assert _series("11:59:59 PM,1", "12:00:01 AM,2")["t"].to_list() == [0.0, 2.0]


def test_a_header_with_spaces_after_its_commas_names_its_columns():
    """The values were stripped, the header names not: `time, %user` kept ` %user`, and
    `log_columns: ["%user"]` silently kept nothing."""
    frame = read_series("time, %user, cpu\n10:00:00, 5, 1\n10:00:01, 7, 2\n", ["%user"])
    assert frame.columns == ["%user", "t"]
    assert frame["%user"].to_list() == [5.0, 7.0]


def test_a_trend_needs_two_times_and_keeps_its_precision_on_large_values():
    """One sample had a trend of 0.0 (the log summary's rule gives None); and the uncentred
    covariance lost the slope of a counter near 1e12 (3600/h read 4051 and 2701)."""
    [one] = summarize_frames([_series("10:00:00,5")])
    assert one["windows"]["all"]["cpu"]["trend"] is None
    rows = [f"10:{m:02d}:{s:02d},{1e12 + 60 * m + s:.0f}" for m in range(10) for s in range(60)]
    [counter] = summarize_frames([_series(*rows)])
    assert counter["windows"]["all"]["cpu"]["trend"] == 3600.0
    # A slope that is nil is 0.0, not the sums' rounding residue (lumos read 4.6e-14).
    level = [f"10:00:{s:02d},{v}" for s, v in enumerate([0.3, 5.77, 0.51, 0.1, 0.51, 5.77, 0.3])]
    assert summarize_frames([_series(*level)])[0]["windows"]["all"]["cpu"]["trend"] == 0.0


def test_nan_and_numbers_beyond_float64_in_a_log_count_as_missing_samples():
    """`NaN` or `1e400` (read as infinity) in a sar column used to turn that column's mean, p95,
    max and trend into nulls; they are dropped like text, and a column of nothing else goes."""
    rows = [("00:00:01", "5", "NaN"), ("00:00:02", "1e400", "inf"), ("00:00:03", "7", "-1e400")]
    odd = "time,cpu,bad\n" + "".join(",".join(r) + "\n" for r in rows)
    blank = "time,cpu,bad\n00:00:01,5,\n00:00:02,,\n00:00:03,7,\n"
    [summary] = summarize_frames([read_series(odd, None)])
    assert summary == summarize_frames([read_series(blank, None)])[0]
    assert summary["windows"]["all"] == {
        "cpu": {"mean": 6.0, "p50": 6.0, "p95": 6.9, "max": 7.0, "trend": 3600.0}
    }


def test_records_learn_their_ratio_to_the_reference_run(lab):
    """`target_relative_to: reference.elapsed`: each record's baseline is its paired reference
    run's target, and what the model learns is the ratio to it."""
    wh, _, _ = lab
    examples = to_examples(wh.query("records").sort("record_id"), relative_to="reference.elapsed")
    for record_id, scale, ratio in zip(
        examples.record_ids, examples.scale_values, examples.model_targets, strict=True
    ):
        key = record_id.removeprefix("lab/")
        assert scale == GOOD_RUNS[RECORDS[key]]
        assert ratio == pytest.approx(GOOD_RUNS[key] / GOOD_RUNS[RECORDS[key]])


def test_every_pairing_adds_one_record_per_other_reference_run(tmp_path: Path, lab):
    """`pairs: all`: each run keeps its matched record and gains one per other usable reference
    run of its group, keyed apart; runs with one usable reference gain nothing."""
    _, _, root = lab
    every = source(root).reference.model_copy(update={"pairs": "all"})
    with Warehouse(tmp_path / "all.duckdb") as wh:
        ingest_runs(wh, source(root, reference=every), "r")
        rows = wh.con.sql("SELECT record_key, config_json FROM row_records").fetchall()
    refs = {key: json.loads(config)["reference"]["elapsed"] for key, config in rows}
    extra = {key for key in refs if is_extra_pair(key)}
    assert {key for key in refs if not is_extra_pair(key)} == set(RECORDS)
    assert extra == {
        "big/sort_1#ref=ref/sort_2",
        "big/sort_2#ref=ref/sort_1",
        "big/sort_3#ref=ref/sort_2",
    }
    assert refs["big/sort_2#ref=ref/sort_1"] == GOOD_RUNS["ref/sort_1"]
    assert refs["big/sort_2"] == GOOD_RUNS["ref/sort_2"]


@pytest.mark.parametrize(
    ("stamp", "day"),
    [
        ("2024-03-02T02:30:00+09:00", "2024-03-01"),  # the same instant as the next
        ("2024-03-01T17:30:00Z", "2024-03-01"),
        ("2024-05-01 10:00:00", "2024-05-01"),  # no offset: the day as written (lumos)
        ("2024-05-01", "2024-05-01"),
        ("yesterday", None),
        # Past the calendar once in UTC: the run was quarantined (OverflowError), not undated.
        ("9999-12-31T23:30:00-05:00", None),
        ("0001-01-01T00:30:00+01:00", None),
    ],
)
def test_a_runs_date_is_its_utc_date_when_its_timestamp_has_an_offset(stamp: str, day):
    """Its first ten characters gave one instant two dates, so a run could change sides of a
    split by the zone of the machine that wrote its report."""
    got = period_of({"when": stamp}, source(Path("data")))
    assert (None if got is None else got.isoformat()) == day
