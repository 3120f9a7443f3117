"""Hostile input through the `table` adapter: a file that cannot be read, Parquet columns with no
text form, column names that look like the adapter's own, keys repeated across files, rows with
no baseline for a relative target, a byte order mark, a config number too large for a float.

Each bad file or row lands in the quarantine table with the file and the reason, the run goes on,
every good record is stored, and files_seen == ingested + quarantined + unchanged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from conftest_data import with_file_modes_binding

from regressor.config import TableSourceConfig
from regressor.dataset import to_examples
from regressor.sources.fleet import IngestReport
from regressor.sources.runs import json_number
from regressor.sources.table import ingest_table
from regressor.warehouse import Warehouse

PROJECT = Path(__file__).resolve().parents[1]


def source(root: Path, **overrides: Any) -> TableSourceConfig:
    cfg = {
        "name": "t",
        "adapter": "table",
        "root": root,
        "files": ["*.csv", "*.tsv", "*.parquet"],
        "target_columns": ["y"],
    }
    return TableSourceConfig.model_validate(cfg | overrides)


def ingest(wh: Warehouse, cfg: TableSourceConfig, run_id: str = "run-1") -> IngestReport:
    report = ingest_table(wh, cfg, run_id)
    done = report.files_ingested + report.files_quarantined + report.files_unchanged
    assert report.files_seen == done, report
    return report


def records(wh: Warehouse) -> dict[str, tuple[float, dict[str, Any]]]:
    """record_id -> (target, config); stored config JSON must be standard JSON."""

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name} in a stored config")

    rows = wh.query("records").select("record_id", "target", "config_json").rows()
    return {rid: (y, json.loads(text, parse_constant=refuse)) for rid, y, text in rows}


def quarantine(wh: Warehouse) -> list[tuple[str, str, str]]:
    """(file name, location, reason) of every quarantine row."""
    rows = wh.query("quarantine_report").select("file", "location", "reason").rows()
    return sorted((Path(file).name, location, reason) for file, location, reason in rows)


# -- unreadable files ------------------------------------------------------------------------


def ingest_without_read_override(cfg: TableSourceConfig, db: Path) -> dict[str, Any]:
    """`ingest_table` in a child process that permissions bind: as root, one without the
    capabilities that let root read any file (setpriv), otherwise an ordinary one."""
    cmd = with_file_modes_binding([sys.executable, "-c", CHILD, cfg.model_dump_json(), str(db)])
    done = subprocess.run(
        cmd, cwd=PROJECT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


CHILD = """
import sys
from pathlib import Path
from regressor.config import TableSourceConfig
from regressor.sources.table import ingest_table
from regressor.warehouse import Warehouse
cfg = TableSourceConfig.model_validate_json(sys.argv[1])
with Warehouse(Path(sys.argv[2])) as wh:
    print(ingest_table(wh, cfg, "run-1").model_dump_json())
"""


def test_an_unreadable_file_is_quarantined_and_the_run_goes_on(tmp_path: Path) -> None:
    """A file the ingest may not read (mode 000, read by a process that permissions bind) is
    quarantined as unreadable, with its name; the files around it are ingested; once readable
    again it is ingested on the next run; stored, then unreadable, it keeps its record."""
    root = tmp_path / "data"
    root.mkdir()
    for name, y in (("a", 1), ("b", 2), ("c", 3)):
        (root / f"{name}.csv").write_text(f"k,y\n{name},{y}\n")
    (root / "b.csv").chmod(0)
    report = ingest_without_read_override(source(root), tmp_path / "w.duckdb")
    counts = [report[f"files_{n}"] for n in ("seen", "ingested", "quarantined", "unchanged")]
    assert counts == [3, 2, 1, 0]
    [(file, reason)] = report["quarantined"]
    assert file == str(root / "b.csv")
    assert reason == f"{root / 'b.csv'}: unreadable: Permission denied; not read"
    with Warehouse(tmp_path / "w.duckdb") as wh:
        assert set(records(wh)) == {"t/a/a.csv:2", "t/c/c.csv:2"}
        assert quarantine(wh) == [("b.csv", "file", reason)]
        (root / "b.csv").chmod(0o644)
        again = ingest(wh, source(root), "run-2")
        assert (again.files_ingested, again.files_unchanged) == (1, 2)
        assert set(records(wh)) == {"t/a/a.csv:2", "t/b/b.csv:2", "t/c/c.csv:2"}
        assert quarantine(wh) == []
    (root / "b.csv").chmod(0)  # a stored file turned unreadable keeps its record
    report = ingest_without_read_override(source(root), tmp_path / "w.duckdb")
    assert (report["files_quarantined"], report["files_unchanged"]) == (1, 2)
    with Warehouse(tmp_path / "w.duckdb") as wh:
        assert set(records(wh)) == {"t/a/a.csv:2", "t/b/b.csv:2", "t/c/c.csv:2"}
    (root / "b.csv").chmod(0o644)


def test_a_file_that_fails_to_read_after_it_was_hashed_keeps_its_rows_and_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error between hashing a changed file and reading it (a flaky share) quarantined
    it under the new hash: its stored rows were deleted, and the next runs counted it as
    unchanged and never read it again until its bytes changed."""
    from regressor.sources import table

    root = tmp_path / "data"
    root.mkdir()
    (root / "a.csv").write_text("k,y\na,1\n")
    (root / "b.csv").write_text("k,y\nb,2\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        ingest(wh, source(root))
        (root / "b.csv").write_text("k,y\nb,20\n")
        read_blocks = table.blocks

        def failing_for_b(path: Path, *args: Any):
            if path.name == "b.csv":
                raise OSError(5, "Input/output error")
            return read_blocks(path, *args)

        monkeypatch.setattr(table, "blocks", failing_for_b)
        flaky = ingest(wh, source(root), "run-2")
        assert (flaky.files_seen, flaky.files_quarantined, flaky.files_unchanged) == (2, 1, 1)
        [(file, reason)] = flaky.quarantined
        assert file == str(root / "b.csv")
        assert reason == f"{root / 'b.csv'}: unreadable: Input/output error; not read"
        assert records(wh)["t/b/b.csv:2"][0] == 2.0  # kept until the file reads
        monkeypatch.setattr(table, "blocks", read_blocks)
        again = ingest(wh, source(root), "run-3")
        assert again.files_ingested == 1
        assert records(wh)["t/b/b.csv:2"][0] == 20.0


@pytest.mark.parametrize("keys", [None, ["k"]])
def test_a_renamed_table_file_is_read_in_place_of_its_old_name(
    tmp_path: Path, keys: list[str] | None
) -> None:
    """A renamed file's gone name kept its rows: keyed by path, every record was stored twice;
    with key columns, the renamed file's rows were all quarantined as repeats of the gone
    file's, and an edit to it never reached the warehouse. A gone file with no twin still
    keeps its rows (a share may be away for a run)."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "bench_2024.csv").write_text("k,y\na,1\nb,2\n")
    (root / "other.csv").write_text("k,y\nc,3\n")
    cfg = source(root, **({"key_columns": keys} if keys else {}))
    with Warehouse(tmp_path / "w.duckdb") as wh:
        ingest(wh, cfg)
        (root / "bench_2024.csv").rename(root / "bench_renamed.csv")
        (root / "other.csv").unlink()
        report = ingest(wh, cfg, "run-2")
        assert report.quarantined == []
        stored = records(wh)
        assert sorted(y for y, _ in stored.values()) == [1.0, 2.0, 3.0]  # each record once
        assert not any("bench_2024" in rid for rid in stored), stored
        (root / "bench_renamed.csv").write_text("k,y\na,10\nb,2\n")
        ingest(wh, cfg, "run-3")
        assert sorted(records(wh)[rid][0] for rid in records(wh)) == [2.0, 3.0, 10.0]


# -- Parquet columns that are not text -------------------------------------------------------


def test_parquet_columns_with_no_text_form_are_quarantined_not_fatal(tmp_path: Path) -> None:
    """A used List or Duration column quarantines its file with the column and type named; a
    Binary cell that is not UTF-8 quarantines only its row; an unused List column is ignored."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "good.csv").write_text("cfg,y\nplain,1.5\n")
    pl.DataFrame({"cfg": [[1, 2], [3]], "y": [1.0, 2.0]}).write_parquet(root / "lists.parquet")
    took = [timedelta(seconds=1), timedelta(seconds=2)]
    pl.DataFrame({"took": took, "y": [1.0, 2.0]}).write_parquet(root / "durations.parquet")
    pl.DataFrame({"cfg": [b"\xff\xfe", b"ok"], "y": [3.0, 4.0]}).write_parquet(root / "bin.parquet")
    pl.DataFrame({"cfg": ["a"], "tags": [[1]], "y": [5.0]}).write_parquet(root / "unused.parquet")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest(wh, source(root, exclude_columns=["tags"]))
        assert (report.files_seen, report.files_quarantined) == (5, 2)
        assert records(wh) == {
            "t/good/good.csv:2": (1.5, {"cfg": "plain"}),
            "t/bin/bin.parquet:2": (4.0, {"cfg": "ok"}),
            "t/unused/unused.parquet:1": (5.0, {"cfg": "a"}),
        }
        got = quarantine(wh)
    assert [(name, location) for name, location, _ in got] == [
        ("bin.parquet", "line 1"),
        ("durations.parquet", "file"),
        ("lists.parquet", "file"),
    ]
    reasons = [reason for _, _, reason in got]
    assert reasons[0] == f"{root / 'bin.parquet'}: column 'cfg' is not valid UTF-8"
    assert reasons[1].startswith(f"{root / 'durations.parquet'}: column 'took' holds Duration")
    assert reasons[2].startswith(f"{root / 'lists.parquet'}: column 'cfg' holds List(Int64)")


# -- column names the adapter uses itself ----------------------------------------------------


def test_a_csv_column_named_line_is_config_like_any_other(tmp_path: Path) -> None:
    """A CSV column named `line` (the adapter's own name for a row's line number) is stored as
    written, and the file's other rows and files are unaffected."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "good.csv").write_text("k,y\n1,2.0\n")
    (root / "m.csv").write_text("k,line,y\n1,5,1.0\n2,6,3.0\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest(wh, source(root))
        assert (report.files_ingested, report.records) == (2, 3)
        assert records(wh) == {
            "t/good/good.csv:2": (2.0, {"k": 1}),
            "t/m/m.csv:2": (1.0, {"k": 1, "line": 5}),
            "t/m/m.csv:3": (3.0, {"k": 2, "line": 6}),
        }
        assert quarantine(wh) == []


def test_columns_named_like_the_adapters_own_keep_their_values(tmp_path: Path) -> None:
    """Columns named `key`, `problem`, `target` or `task` (with the task from the file stem), and
    a Parquet column named `line`, are config like any other: their values are stored as written,
    never replaced by the adapter's key, target, task or row number."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "m.csv").write_text("k,key,problem,target,task,y\n1,K1,P1,T1,mytask,1.0\n")
    pl.DataFrame({"line": [77, 88], "y": [1.0, 2.0]}).write_parquet(root / "p.parquet")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest(wh, source(root))
        assert (report.files_ingested, report.records) == (2, 3)
        config = {"k": 1, "key": "K1", "problem": "P1", "target": "T1", "task": "mytask"}
        assert records(wh) == {
            "t/m/m.csv:2": (1.0, config),
            "t/p/p.parquet:1": (1.0, {"line": 77}),
            "t/p/p.parquet:2": (2.0, {"line": 88}),
        }
        assert quarantine(wh) == []


# -- keys repeated across files --------------------------------------------------------------


def test_a_key_already_stored_from_another_file_is_quarantined(tmp_path: Path) -> None:
    """With key columns, a row repeating a key another file holds is quarantined naming that
    file and line (one record per key); when the first file drops the key, the repeat's file is
    read again and its row becomes the record."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.csv").write_text("k,y\n1,10\n2,20\n")
    (root / "z.csv").write_text("k,y\n1,11\n3,30\n")
    cfg = source(root, key_columns=["k"], task="bench")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        ingest(wh, cfg)
        first = {"t/bench/1": 10.0, "t/bench/2": 20.0, "t/bench/3": 30.0}
        assert {rid: y for rid, (y, _) in records(wh).items()} == first
        reason = f"{root / 'z.csv'}: duplicate key (1): first stored from a.csv line 2"
        assert quarantine(wh) == [("z.csv", "line 2", reason)]
        again = ingest(wh, cfg, "run-2")
        assert (again.files_unchanged, again.records_added) == (2, 0)
        (root / "a.csv").write_text("k,y\n2,20\n")
        third = ingest(wh, cfg, "run-3")
        assert (third.files_ingested, third.files_unchanged) == (2, 0)
        last = {"t/bench/1": 11.0, "t/bench/2": 20.0, "t/bench/3": 30.0}
        assert {rid: y for rid, (y, _) in records(wh).items()} == last
        assert quarantine(wh) == []


def snapshot(wh: Warehouse) -> tuple[object, ...]:
    return records(wh), quarantine(wh), wh.content_hash("t")


def test_the_file_listed_first_holds_a_repeated_key_whatever_came_first(tmp_path: Path) -> None:
    """A key in two files is held by the one the listing reads first (the smaller path), also
    when that file came after the other: the key went to whichever file was ingested first, so
    a clean rebuild of the warehouse gave another snapshot than the incremental one. The file
    that gives way has its row quarantined as a rebuild would, without being read again; a bad
    file takes no key."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "z.csv").write_text("k,y\n1,11\n3,30\n")
    cfg = source(root, key_columns=["k"], task="bench")
    with Warehouse(tmp_path / "incremental.duckdb") as wh:
        ingest(wh, cfg)
        (root / "a.csv").write_text("k,y\n4,40\n1,10\n2,20")  # no final newline: still good
        (root / "b.csv").write_bytes(b"k,y\n3,31\n1,\xe9\n")  # not UTF-8: quarantined whole
        report = ingest(wh, cfg, "run-2")
        assert (report.files_ingested, report.files_quarantined) == (1, 1)
        assert (report.files_unchanged, report.records_added) == (1, 2)
        incremental = snapshot(wh)
        assert ingest(wh, cfg, "run-3").files_unchanged == 3
        assert snapshot(wh) == incremental
    with Warehouse(tmp_path / "clean.duckdb") as wh:
        ingest(wh, cfg)
        assert snapshot(wh) == incremental
    held = {"t/bench/1": 10.0, "t/bench/2": 20.0, "t/bench/3": 30.0, "t/bench/4": 40.0}
    assert {rid: y for rid, (y, _) in incremental[0].items()} == held
    reason = f"{root / 'z.csv'}: duplicate key (1): first stored from a.csv line 3"
    assert [row for row in incremental[1] if row[0] == "z.csv"] == [("z.csv", "line 2", reason)]


# -- relative targets ------------------------------------------------------------------------


def test_rows_without_a_usable_baseline_are_quarantined_at_ingest(tmp_path: Path) -> None:
    """With `target_relative_to`, a row whose baseline is 0, negative, missing or not a number is
    quarantined by the dataset build's own rule, so the build of the rest cannot fail."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "job.tsv").write_text(
        "n\tdata_size_MB\ty\n1\t100\t5\n2\t0\t6\n3\t\t7\n4\tbig\t8\n5\t-1\t9\n6\t2.5\t10\n"
    )
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest(wh, source(root, target_relative_to="data_size_MB"))
        assert (report.files_ingested, report.records) == (1, 2)
        assert set(records(wh)) == {"t/job/job.tsv:2", "t/job/job.tsv:7"}
        got = quarantine(wh)
        examples = to_examples(wh.query("records"), relative_to="data_size_MB")
    assert [location for _, location, _ in got] == ["line 3", "line 4", "line 5", "line 6"]
    assert all("no usable baseline" in r and "data_size_MB" in r for _, _, r in got)
    assert "'data_size_MB' is 0, not a positive finite number" in got[0][2]
    assert "found None" in got[1][2]
    assert "found 'big'" in got[2][2]
    assert sorted(examples.scales) == [2.5, 100.0]


# -- byte order mark, huge numbers -----------------------------------------------------------


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    """A CSV or TSV saved with a UTF-8 BOM (Excel's "CSV UTF-8") has the same column names as
    without: a key column declared as the first column is found, config keys are clean."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "excel.csv").write_bytes(b"\xef\xbb\xbfk,x,y\r\n1,a,1.0\r\n")
    (root / "excel.tsv").write_bytes(b"\xef\xbb\xbfk\tx\ty\n2\tb\t2.0\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest(wh, source(root, key_columns=["k"], task="bench"))
        assert (report.files_ingested, report.files_quarantined) == (2, 0)
        assert records(wh) == {
            "t/bench/1": (1.0, {"k": 1, "x": "a"}),
            "t/bench/2": (2.0, {"k": 2, "x": "b"}),
        }
        assert quarantine(wh) == []


def test_a_config_number_beyond_float_range_is_kept_as_its_text(tmp_path: Path) -> None:
    """`1e400` in a config cell would be Infinity, which JSON has not: the cell is stored as the
    text it is (the record kept, its stored JSON standard), finite numbers stay numbers."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "m.csv").write_text("k,x,y\n1,1e400,1.0\n2,-1e999,2.0\n3,2.5e3,3.0\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest(wh, source(root))
        assert report.records == 3
        assert {rid: c["x"] for rid, (_, c) in records(wh).items()} == {
            "t/m/m.csv:2": "1e400",
            "t/m/m.csv:3": "-1e999",
            "t/m/m.csv:4": 2500.0,
        }
        assert quarantine(wh) == []


# -- a warehouse fault is not a bad file -----------------------------------------------------


def test_a_warehouse_error_stops_the_run_instead_of_quarantining_the_file(tmp_path: Path) -> None:
    """Only what a file's bytes cause is that file's problem. A real DuckDB error while writing
    its rows (here a NOT NULL column the rows cannot fill: a schema a migration broke) stops the
    run; were it turned into a quarantine row, every file would be quarantined in turn."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.csv").write_text("k,y\na,1\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        wh.migrate()
        wh.con.execute("ALTER TABLE row_records ADD COLUMN required VARCHAR DEFAULT 'x'")
        wh.con.execute("ALTER TABLE row_records ALTER COLUMN required DROP DEFAULT")
        wh.con.execute("ALTER TABLE row_records ALTER COLUMN required SET NOT NULL")
        with pytest.raises(duckdb.ConstraintException):
            ingest(wh, source(root))
        assert quarantine(wh) == []


# -- record keys -------------------------------------------------------------------------------


def test_keys_that_only_joined_the_same_are_distinct_records(tmp_path: Path) -> None:
    """Key parts and the task were joined with `,` and `/` as they were: keys (`a,b`, `c`) and
    (`a`, `b,c`) in a TSV, or task `a/b` with key `c` and task `a` with key `b/c`, made one
    record, and the second good row was quarantined as its duplicate."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "k.tsv").write_text("p1\tp2\ty\na,b\tc\t1\na\tb,c\t2\n")
    (root / "j.csv").write_text("job,p1,y\na/b,c,3\na,b/c,4\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        ingest(wh, source(root, files=["k.tsv"], key_columns=["p1", "p2"], task="k"))
        ingest(wh, source(root, name="j", files=["j.csv"], key_columns=["p1"], task_column="job"))
        assert quarantine(wh) == []
        assert {rid: target for rid, (target, _) in records(wh).items()} == {
            "t/k/a\\,b,c": 1.0,
            "t/k/a,b\\,c": 2.0,
            "j/a\\/b/c": 3.0,
            "j/a/b\\/c": 4.0,
        }
        tasks = wh.query("records").filter(pl.col("source") == "j")["task"].sort().to_list()
        assert tasks == ["a", "a/b"]  # the task itself is stored as written


def test_a_row_without_any_key_is_quarantined_as_missing_its_key(tmp_path: Path) -> None:
    """All key cells blank was stored as the key "" (record `t/k/,`), and the next such row
    was quarantined as its "duplicate key (,) of line 2"; one blank part of two is a key."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "k.csv").write_text("p1,p2,y\n,,1\n , ,2\na,,3\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        ingest(wh, source(root, key_columns=["p1", "p2"], task="k"))
        assert quarantine(wh) == [
            ("k.csv", "line 2", f"{root / 'k.csv'}: missing key (p1, p2)"),
            ("k.csv", "line 3", f"{root / 'k.csv'}: missing key (p1, p2)"),
        ]
        assert {rid: target for rid, (target, _) in records(wh).items()} == {"t/k/a,": 3.0}


def test_a_row_starting_with_a_nul_is_not_taken_for_an_over_long_line(tmp_path: Path) -> None:
    """Over-long lines were marked in-band with a leading NUL: a row that began with one was
    reported as "line of abc,20 bytes exceeds the limit". It is read as the row it is."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "n.csv").write_bytes(b"k,y\n\x00abc,20\nd,5\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest(wh, source(root, key_columns=["k"], task="n"))
        assert "exceeds the limit" not in str(report.quarantined)
        assert report.records == 2


def test_integers_beyond_int64_stay_exact_as_text(tmp_path: Path) -> None:
    """20-digit ids were read as floats: two distinct ones became the same 1.2345678901234567e19;
    a 19-digit one Int64 holds (a nanosecond timestamp) is an exact integer."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "i.csv").write_text(
        "k,id,y\na,12345678901234567890,1\nb,12345678901234567891,2\nc,1733400000123456789,3\n"
    )
    with Warehouse(tmp_path / "w.duckdb") as wh:
        ingest(wh, source(root, key_columns=["k"], task="i"))
        ids = [config["id"] for _, config in sorted(records(wh).values())]
    assert ids == ["12345678901234567890", "12345678901234567891", 1733400000123456789]
    # runs reports' quoted numbers, the same way
    assert json_number("-12345678901234567890") == "-12345678901234567890"
    assert json_number("1733400000123456789") == 1733400000123456789
    assert json_number("1" * 5000) == "1" * 5000  # not parsed: past Python's int() digit limit
    assert json_number(" 2.5 ") == 2.5


def test_braces_in_a_file_name_or_target_column_are_text_not_slots(tmp_path: Path) -> None:
    """Keys and reasons were built with `pl.format`, whose template read a `{}` in a file name
    or a column name as a slot: every good row of `run{}.csv` was quarantined with the file."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "run{}.csv").write_text("x,y{}\n1,1.5\n2,oops\n")
    (root / "job{1}.csv").write_text("x,y{}\n3,2.5\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest(wh, source(root, target_columns=["y{}"], task="bench"))
        assert (report.files_ingested, report.files_quarantined) == (2, 0)
        assert sorted(records(wh)) == ["t/bench/job{1}.csv:2", "t/bench/run{}.csv:2"]
        reason = f"{root / 'run{}.csv'}: non-numeric target y{{}} 'oops'"
        assert quarantine(wh) == [("run{}.csv", "line 3", reason)]


def test_a_csv_with_a_header_and_no_rows_is_quarantined_like_an_empty_parquet(
    tmp_path: Path,
) -> None:
    """A header-only CSV (an export cut before its first row) counted as ingested with no
    record and nothing said, while an empty Parquet file was quarantined."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "good.csv").write_text("x,y\n1,2.0\n")
    (root / "header.csv").write_text("x,y\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest(wh, source(root, task="bench"))
        assert (report.files_ingested, report.files_quarantined) == (1, 1)
        assert sorted(records(wh)) == ["t/bench/good.csv:2"]
        (row,) = quarantine(wh)
        assert row[0] == "header.csv"
        assert "empty file (a header, no rows)" in row[2]


@pytest.mark.parametrize("runtime", ["0", "-0", "1e-400", "0.0"])
def test_the_shipped_c3o_source_refuses_a_runtime_of_zero(tmp_path: Path, runtime: str) -> None:
    """Its bounds were [0, 1e7], inclusive: a runtime of 0 (and 1e-400, read as 0.0) was a
    record. Two real rows of grep.tsv, the second given `runtime`."""
    from regressor.config import load_source_config

    (tmp_path / "data").mkdir()
    header = "instance_count\tmachine_type\tslots\tmemory\tdata_size_MB\tline_length\tlines"
    rows = "\t".join(["2", "c4.2xlarge", "16", "30000", "15150", "100", "150000000", "0.5"])
    (tmp_path / "data" / "grep.tsv").write_text(
        f"{header}\tp_occurrence\tgross_runtime\n{rows}\t150\n{rows}\t{runtime}\n"
    )
    c3o = load_source_config("c3o").model_copy(update={"root": tmp_path})
    with Warehouse(tmp_path / "w.duckdb") as wh:
        ingest(wh, c3o)
        assert [target for target, _ in records(wh).values()] == [150.0]
        ((_, location, reason),) = quarantine(wh)
        assert location == "line 3"
        assert "absurd target gross_runtime" in reason
