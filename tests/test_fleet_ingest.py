"""The fleet adapter: the records contract, provenance, idempotence, and every kind of bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import yaml

from regressor.sources.fleet import (
    IngestReport,
    chunks,
    ingest_fleet,
    ordered_map,
    raw_log_text,
    record_from_files,
)
from regressor.sources.logs import summarize_log
from regressor.warehouse import Warehouse

pytest_plugins = ("conftest_data",)
ALL = 15  # the tiny fleet: 3 cells x 5 days


def invariant(report: IngestReport) -> bool:
    ingested = report.files_ingested + report.files_quarantined + report.files_unchanged
    return report.files_seen == ingested


def table_counts(wh: Warehouse) -> dict[str, int]:
    tables = ("files", "configs", "logs", "targets", "quarantine")
    return {t: wh.con.sql(f"SELECT count(*) AS n FROM {t}").pl()["n"].item() for t in tables}


def test_records_join_config_logs_and_targets(tiny_warehouse, tiny_fleet, fleet_source):
    wh, report = tiny_warehouse
    root = tiny_fleet[0] / fleet_source.root
    assert invariant(report)
    assert report.files_seen == 3 + 15 + 1 == report.files_ingested
    assert report.records == ALL
    assert report.quarantined == []
    records = wh.query("records")
    assert records["record_id"].to_list() == sorted(records["record_id"].to_list())
    assert records.select("task", "period").rows() == sorted(
        records.select("task", "period").rows()
    )
    targets = {
        (r["cell"], r["day"]): float(r["efficiency"])
        for r in csv.DictReader((root / "targets.csv").open())
    }
    for row in records.iter_rows(named=True):
        day = row["period"].isoformat()
        assert row["record_id"] == f"demo_fleet/{row['task']}/{day}"
        assert json.loads(row["config_json"]) == yaml.safe_load(
            (root / "cells" / f"{row['task']}.yaml").read_text()
        )
        log = root / "logs" / row["task"] / f"{day}.log"
        assert json.loads(row["logs_json"]) == summarize_log(log.read_text())
        assert row["target"] == targets[(row["task"], day)]


def test_rows_carry_provenance(tiny_warehouse, tiny_fleet, fleet_source):
    wh, _ = tiny_warehouse
    root = tiny_fleet[0] / fleet_source.root
    logs = wh.con.sql("SELECT * FROM logs ORDER BY path").pl()
    first = logs.row(0, named=True)
    path = root / first["path"]
    assert first["path"] == "logs/cell-a01/2026-01-01.log"
    assert first["content_hash"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert first["ingest_run_id"] == "run-1"
    assert first["raw_codec"] == "zstd"
    assert len(first["raw_blob"]) < path.stat().st_size  # stored compressed
    assert raw_log_text(first) == path.read_text()
    assert (first["line_start"], first["line_end"]) == (1, len(path.read_text().splitlines()))
    targets = wh.con.sql("SELECT line FROM targets ORDER BY line").pl()
    assert targets["line"].to_list() == list(range(2, 2 + ALL))


def test_a_renamed_targets_file_takes_over_every_record(tiny_warehouse, tiny_fleet, fleet_source):
    """The config names a new targets file: the old one's rows used to stay, and every record
    was built twice, once from each file."""
    wh, _ = tiny_warehouse
    root = tiny_fleet[0] / fleet_source.root
    (root / "targets.csv").rename(root / "targets_v2.csv")
    renamed = fleet_source.model_copy(update={"targets_file": "targets_v2.csv"})
    ingest_fleet(wh, renamed, tiny_fleet[0], run_id="run-2")
    ids = wh.query("records")["record_id"]
    assert ids.len() == ids.n_unique() == ALL
    stored = wh.con.sql("SELECT DISTINCT path FROM targets").fetchall()
    assert stored == [("targets_v2.csv",)]


def test_reingesting_unchanged_files_adds_nothing(tiny_warehouse, tiny_fleet, fleet_source):
    wh, first = tiny_warehouse
    before, fingerprint = table_counts(wh), wh.content_hash(fleet_source.name)
    again = ingest_fleet(wh, fleet_source, tiny_fleet[0], run_id="run-2")
    assert invariant(again)
    assert again.files_unchanged == again.files_seen == first.files_seen
    assert again.files_ingested == 0
    assert (first.records_added, again.records_added) == (ALL, 0)
    assert again.records == ALL
    assert table_counts(wh) == before
    assert wh.content_hash(fleet_source.name) == fingerprint


def test_a_changed_file_replaces_its_rows(tiny_warehouse, tiny_fleet, fleet_source):
    wh, _ = tiny_warehouse
    log = tiny_fleet[0] / fleet_source.root / "logs" / "cell-a02" / "2026-01-03.log"

    def stored_row() -> dict:
        query = "SELECT * FROM logs WHERE path LIKE '%a02/2026-01-03%'"
        return wh.con.sql(query).pl().row(0, named=True)

    errors_before = json.loads(stored_row()["logs_json"])["levels"].get("ERROR", 0)
    log.write_text(log.read_text() + "2026-01-03T23:59:59 ERROR borglet: machine m-a02-0001 down\n")
    before = table_counts(wh)
    report = ingest_fleet(wh, fleet_source, tiny_fleet[0], run_id="run-2")
    assert (report.files_ingested, report.files_unchanged) == (1, report.files_seen - 1)
    assert table_counts(wh) == before
    row = stored_row()
    assert row["ingest_run_id"] == "run-2"
    assert raw_log_text(row) == log.read_text()
    # The summary was made again from the new text: one ERROR line more.
    assert json.loads(row["logs_json"])["levels"]["ERROR"] == errors_before + 1


def write(relpath: str, content: str | bytes) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return apply


def edit_log(relpath: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / relpath
        path.write_bytes(change(path.read_bytes()))

    return apply


A01 = "cells/cell-a01.yaml"
DAY2 = "logs/cell-a02/2026-01-02.log"

# (corruption, quarantined file, reason fragment, location fragment, records left)
BAD_FILES = {
    "malformed yaml": (write(A01, "cell: [a, b\nx: 1\n"), A01, "not valid YAML", "line", ALL - 5),
    "non-utf8 config": (
        write(A01, b"cell: caf\xe9\n"),
        A01,
        "not valid UTF-8",
        "byte 9 (line 1)",
        ALL - 5,
    ),
    "empty config": (write(A01, b""), A01, "empty file", "file", ALL - 5),
    "config not a mapping": (write(A01, "- a\n- b\n"), A01, "expected a mapping", "file", ALL - 5),
    "non-utf8 log": (
        edit_log(DAY2, lambda b: b[:40] + b"\xff\xfe" + b[40:]),
        DAY2,
        "not valid UTF-8",
        "line 1",
        ALL - 1,
    ),
    "empty log": (write(DAY2, ""), DAY2, "empty file", "file", ALL - 1),
    "truncated log": (edit_log(DAY2, lambda b: b[:-7]), DAY2, "truncated", "line", ALL - 1),
    "log not named by date": (
        write("logs/cell-a02/yesterday.log", "x\n"),
        "logs/cell-a02/yesterday.log",
        "not an ISO date",
        "file",
        ALL,
    ),
    "targets without target column": (
        write("targets.csv", "cell,day,eff\ncell-a01,2026-01-01,0.5\n"),
        "targets.csv",
        "missing column",
        "line 1",
        0,
    ),
    "empty targets": (write("targets.csv", ""), "targets.csv", "empty file", "file", 0),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_quarantined_and_the_rest_proceeds(case, tmp_path, tiny_fleet, fleet_source):
    corrupt, relpath, reason, location, records = BAD_FILES[case]
    raw_dir, _ = tiny_fleet
    corrupt(raw_dir / fleet_source.root)
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest_fleet(wh, fleet_source, raw_dir, run_id="run-1")
        assert invariant(report)
        assert report.files_quarantined == 1
        assert report.records == wh.query("records").height == records
        quarantine = wh.query("quarantine_report")
        assert quarantine.height == 1
        row = quarantine.row(0, named=True)
        assert row["file"].endswith(relpath)
        assert row["file"] in row["reason"]
        assert reason in row["reason"]
        assert location in row["location"]
        assert row["ingest_run_id"] == "run-1"
        assert report.quarantined == [(row["file"], row["reason"])]
        again = ingest_fleet(wh, fleet_source, raw_dir, run_id="run-2")  # still bad: nothing new
        assert again.files_unchanged == again.files_seen
        assert wh.query("quarantine_report").height == 1


def test_json_configs_duplicates_and_unknown_formats(tmp_path, tiny_fleet, fleet_source):
    raw_dir, _ = tiny_fleet
    cells = raw_dir / fleet_source.root / "cells"
    source = fleet_source.model_copy(update={"config_glob": "cells/*.*"})
    a01 = yaml.safe_load((cells / "cell-a01.yaml").read_text())
    (cells / "cell-a01.yaml").unlink()
    (cells / "cell-a01.json").write_text(json.dumps(a01))  # a01 now comes from JSON
    truncated = '{"cell": "cell-a02", "scheduler": {'
    (cells / "cell-a02.json").write_text(truncated)  # bad, so a02.yaml still serves
    (cells / "cell-a03.json").write_text(json.dumps({"cell": "cell-a03"}))  # owns a03 (first name)
    (cells / "cell-a03.txt").write_text("cell: cell-a03\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest_fleet(wh, source, raw_dir, run_id="run-1")
        assert invariant(report)
        assert report.files_quarantined == 3
        reasons = dict(wh.query("quarantine_report").select("file", "reason").iter_rows())
        assert reasons.keys() == {
            str(cells / n) for n in ("cell-a02.json", "cell-a03.txt", "cell-a03.yaml")
        }
        assert "not valid JSON" in reasons[str(cells / "cell-a02.json")]
        assert "unsupported format '.txt'" in reasons[str(cells / "cell-a03.txt")]
        assert "duplicate config" in reasons[str(cells / "cell-a03.yaml")]
        records = wh.query("records")
        assert records.height == ALL
        configs = dict(records.select("task", "config_json").unique("task").iter_rows())
        assert json.loads(configs["cell-a01"]) == a01
        assert json.loads(configs["cell-a03"]) == {"cell": "cell-a03"}
        again = ingest_fleet(wh, source, raw_dir, run_id="run-2")
        assert again.files_unchanged == again.files_seen


def test_fixing_a_file_clears_its_quarantine(tmp_path, tiny_fleet, fleet_source):
    raw_dir, _ = tiny_fleet
    config = raw_dir / fleet_source.root / A01
    good = config.read_bytes()
    config.write_text("cell: [broken\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        assert ingest_fleet(wh, fleet_source, raw_dir, run_id="run-1").records == ALL - 5
        config.write_bytes(good)
        report = ingest_fleet(wh, fleet_source, raw_dir, run_id="run-2")
        assert report.files_ingested == 1
        assert report.records == ALL
        assert wh.query("quarantine_report").is_empty()


def test_bad_target_rows_are_quarantined_one_by_one(tmp_path, tiny_fleet, fleet_source):
    raw_dir, _ = tiny_fleet
    targets = raw_dir / fleet_source.root / "targets.csv"
    lines = targets.read_bytes().splitlines(keepends=True)  # header, a01 x5, a02 x5, a03 x5
    bad = [
        b"cell-a01,2026-01-01,\n",  # missing target
        b"cell-a01,2026-01-02,fast\n",  # non-numeric
        b"cell-a01,2026-01-03,7.5\n",  # absurd: outside 0..1
        b"cell-a01,2026-13-01,0.5\n",  # bad day
        b",2026-01-04,0.5\n",  # missing cell
        b"cell-a01,2026-01-05,0.\xff5\n",  # non-UTF-8 bytes
        b"cell-a01,2026-01-05,nan\n",  # not finite
    ]
    # File lines: 1 header, 2-8 bad, 9-18 cells a02 and a03, then 19-20 repeat a02's days 1-2:
    # day 1 identically (line 9 is kept), day 2 with another value (neither 10 nor 20 is kept).
    repeats = [lines[6], lines[7].replace(b",0.", b",0.0")]
    targets.write_bytes(b"".join([lines[0], *bad, *lines[6:], *repeats]))
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest_fleet(wh, fleet_source, raw_dir, run_id="run-1")
        assert invariant(report)
        assert report.files_quarantined == 0
        found = dict(wh.query("quarantine_report").select("location", "reason").iter_rows())
        expected = {
            "line 2": "missing efficiency",
            "line 3": "non-numeric efficiency 'fast'",
            "line 4": "absurd efficiency 7.5",
            "line 5": "bad day '2026-13-01'",
            "line 6": "missing cell",
            "line 7": "not valid UTF-8",
            "line 8": "absurd efficiency nan",
            "line 10": "conflicting duplicate targets for (cell-a02, 2026-01-02) at lines 10, 20",
            "line 19": "duplicate (task, period) of line 9",
            "line 20": "conflicting duplicate targets",
        }
        assert found.keys() == expected.keys()
        for location, fragment in expected.items():
            assert fragment in found[location]
            assert str(targets) in found[location]
        # cell-a01 has no valid target left and a02 loses day 2; the rest are records.
        assert report.records == wh.query("records").height == ALL - 5 - 1


def test_a_missing_targets_file_is_reported(tmp_path, tiny_fleet, fleet_source):
    raw_dir, _ = tiny_fleet
    (raw_dir / fleet_source.root / "targets.csv").unlink()
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest_fleet(wh, fleet_source, raw_dir, run_id="run-1")
        rows = wh.query("quarantine_report").select("file", "reason").rows()
    assert invariant(report)
    assert report.records == 0
    assert (report.files_seen, report.files_quarantined) == (19, 1)  # 18 read, targets missing
    assert len(report.quarantined) == 1
    assert "targets file not found" in report.quarantined[0][1]
    assert [file for file, _ in rows] == [str(raw_dir / fleet_source.root / "targets.csv")]


def test_batches_bound_memory_without_changing_results(
    tmp_path, tiny_warehouse, tiny_fleet, fleet_source
):
    wh, _ = tiny_warehouse
    with Warehouse(tmp_path / "small-batches.duckdb") as other:
        report = ingest_fleet(other, fleet_source, tiny_fleet[0], run_id="x", batch_size=4)
        assert report.files_ingested == report.files_seen
        assert other.query("records").drop("source").equals(wh.query("records").drop("source"))


def test_record_from_files_matches_the_warehouse(tiny_warehouse, tiny_fleet, fleet_source):
    wh, _ = tiny_warehouse
    root = tiny_fleet[0] / fleet_source.root
    row = wh.query("records").row(7, named=True)
    day = row["period"].isoformat()
    record = record_from_files(
        root / "cells" / f"{row['task']}.yaml", root / "logs" / row["task"] / f"{day}.log"
    )
    assert record == {
        "task": row["task"],
        "period": day,
        "config": json.loads(row["config_json"]),
        "logs": json.loads(row["logs_json"]),
    }


def test_record_from_files_names_a_bad_file(tmp_path, tiny_fleet, fleet_source):
    root = tiny_fleet[0] / fleet_source.root
    bad = tmp_path / "cell-x.yaml"
    bad.write_text("- not\n- a mapping\n")
    log = root / "logs" / "cell-a01" / "2026-01-01.log"
    with pytest.raises(ValueError, match=r"cell-x\.yaml.*expected a mapping"):
        record_from_files(bad, log)
    empty = tmp_path / "2026-01-01.log"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"2026-01-01\.log.*empty file"):
        record_from_files(root / A01, empty)
    hidden = tmp_path / ".yaml"
    hidden.write_bytes((root / A01).read_bytes())
    with pytest.raises(ValueError, match=r"\.yaml.*hidden file '\.yaml'"):
        record_from_files(hidden, log)
    # What ingest quarantines, prediction refused too: a log cut mid-line, and one whose name
    # is no day (it was predicted, with the name as its period).
    cut = tmp_path / "2026-01-02.log"
    cut.write_bytes(log.read_bytes().rstrip(b"\n"))
    with pytest.raises(ValueError, match=r"2026-01-02\.log.*truncated: the last line"):
        record_from_files(root / A01, cut)
    undated = tmp_path / "today.log"
    undated.write_bytes(log.read_bytes())
    with pytest.raises(ValueError, match=r"today\.log.*'today' is not an ISO date"):
        record_from_files(root / A01, undated)


def warehouse_state(wh: Warehouse) -> dict[str, list[tuple]]:
    """Every table's rows (raw logs decoded), without the ingest timestamps."""
    logs = wh.con.sql("SELECT * EXCLUDE (raw_blob) FROM logs ORDER BY path").pl()
    raw = [
        raw_log_text(r)
        for r in wh.con.sql("SELECT * FROM logs ORDER BY path").pl().rows(named=True)
    ]
    return {
        "logs": logs.with_columns(raw=pl.Series(raw)).rows(),
        "files": wh.con.sql("SELECT * EXCLUDE (ingested_at) FROM files ORDER BY path").pl().rows(),
        "quarantine": wh.con.sql(
            "SELECT * EXCLUDE (quarantined_at) FROM quarantine ORDER BY path, location"
        )
        .pl()
        .rows(),
        "records": wh.query("records").rows(),
    }


def test_worker_processes_give_the_same_warehouse(tmp_path, tiny_fleet, fleet_source):
    raw_dir, _ = tiny_fleet
    edit_log(DAY2, lambda b: b[:40] + b"\xff" + b[40:])(raw_dir / fleet_source.root)
    states = []
    for workers in (1, 2):
        with Warehouse(tmp_path / f"w{workers}.duckdb") as wh:
            report = ingest_fleet(
                wh, fleet_source, raw_dir, run_id="run-1", batch_size=4, workers=workers
            )
            assert invariant(report)
            assert (report.files_quarantined, report.records) == (1, ALL - 1)
            states.append(warehouse_state(wh))
            again = ingest_fleet(wh, fleet_source, raw_dir, run_id="run-2", workers=workers)
            assert again.files_unchanged == again.files_seen
    assert states[0] == states[1]


def test_logs_stored_before_compression_stay_readable(tiny_warehouse, tiny_fleet, fleet_source):
    wh, _ = tiny_warehouse
    log = tiny_fleet[0] / fleet_source.root / "logs" / "cell-a01" / "2026-01-01.log"
    wh.con.execute(
        "UPDATE logs SET raw_text = ?, raw_codec = NULL, raw_blob = NULL WHERE path = ?",
        [log.read_text(), "logs/cell-a01/2026-01-01.log"],
    )
    row = wh.con.sql("SELECT * FROM logs WHERE path = 'logs/cell-a01/2026-01-01.log'").pl()
    assert raw_log_text(row.row(0, named=True)) == log.read_text()
    with pytest.raises(ValueError, match="unknown raw_codec"):
        raw_log_text({"raw_codec": "lz4", "raw_blob": b""})


def double_or_die(x: int, parent: int) -> int:
    """Doubles in the parent process; a worker process dies (as if OOM-killed) instead."""
    if os.getpid() != parent:
        os._exit(1)
    return 2 * x


def test_a_broken_worker_pool_falls_back_to_this_process(capsys):
    jobs = [(x, os.getpid()) for x in range(5)]
    assert list(ordered_map(double_or_die, jobs, workers=2)) == [0, 2, 4, 6, 8]
    assert "going on in this process" in capsys.readouterr().err


def test_batches_stop_at_a_count_or_a_byte_budget():
    items = [Path(f"{i}.log") for i in range(7)]
    sizes = [1, 50, 1, 1, 1, 60, 1]
    batches = [[p.stem for p in b] for b in chunks(items, 3, sizes, max_bytes=10)]
    assert batches == [["0"], ["1"], ["2", "3", "4"], ["5"], ["6"]]  # big files stand alone
    assert [len(b) for b in chunks(items, 3)] == [3, 3, 1]
    assert list(chunks([], 3, [], 10)) == []
