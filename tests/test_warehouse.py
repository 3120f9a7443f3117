"""The DuckDB warehouse: migrations, named SQL, frames, transactions, locking, content hash."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from regressor.sources.fleet import ingest_fleet
from regressor.warehouse import (
    SQL_DIR,
    QuarantineRow,
    Warehouse,
    WarehouseLockedError,
    WarehouseTooNewError,
    WarehouseUnreadableError,
)

pytest_plugins = ("conftest_data",)


def test_migrate_is_idempotent(tmp_path):
    with Warehouse(tmp_path / "w.duckdb") as wh:
        first = wh.migrate()
        assert first == sorted(p.stem for p in (SQL_DIR / "migrations").glob("*.sql"))
        assert wh.migrate() == []
        versions = wh.query("applied_migrations")["version"].to_list()
    with Warehouse(tmp_path / "w.duckdb") as wh:  # and across connections
        assert wh.migrate() == []
        assert wh.query("applied_migrations")["version"].to_list() == versions


def custom_sql(tmp_path: Path, migrations: dict[str, str]) -> Path:
    sql = tmp_path / "sql"
    (sql / "migrations").mkdir(parents=True)
    for kind in ("queries", "statements"):
        (sql / kind).symlink_to(SQL_DIR / kind)
    for name, text in migrations.items():
        (sql / "migrations" / name).write_text(text)
    return sql


def test_migrations_apply_in_order_and_a_failing_one_rolls_back(tmp_path):
    sql = custom_sql(
        tmp_path,
        {
            "0002_add.sql": "ALTER TABLE t ADD COLUMN b INTEGER;",
            "0001_t.sql": "CREATE TABLE t (a INTEGER);",
            "0003_bad.sql": "CREATE TABLE u (a INTEGER); SELECT * FROM missing_table;",
        },
    )
    with Warehouse(tmp_path / "w.duckdb", sql_dir=sql) as wh:
        with pytest.raises(duckdb.CatalogException):
            wh.migrate()
        assert wh.query("applied_migrations")["version"].to_list() == [1, 2]
        tables = wh.con.sql("SELECT table_name FROM information_schema.tables").pl()
        assert "u" not in tables["table_name"].to_list()  # 0003 left nothing behind
        (sql / "migrations" / "0003_bad.sql").write_text("CREATE TABLE u (a INTEGER);")
        assert wh.migrate() == ["0003_bad"]


def test_a_warehouse_a_newer_textperf_migrated_is_refused_to_write(tmp_path):
    """An older writer went on into tables whose shape it does not know."""
    newer = custom_sql(tmp_path / "new", {"0001_t.sql": "CREATE TABLE t (a INTEGER);"})
    (newer / "migrations" / "0002_more.sql").write_text("ALTER TABLE t ADD COLUMN b INTEGER;")
    older = custom_sql(tmp_path / "old", {"0001_t.sql": "CREATE TABLE t (a INTEGER);"})
    with Warehouse(tmp_path / "w.duckdb", sql_dir=newer) as wh:
        assert wh.migrate() == ["0001_t", "0002_more"]
    refused = pytest.raises(WarehouseTooNewError, match=r"w\.duckdb: written by a newer .* 2; ")
    with Warehouse(tmp_path / "w.duckdb", sql_dir=older) as wh, refused:
        wh.migrate()


def test_the_quarantine_report_lists_a_files_lines_in_their_order(tmp_path):
    """Locations are text: `line 10` sorted before `line 3`."""
    where = ["line 10", "line 3", "file", "line 2", "header"]
    rows = [QuarantineRow("s", "a.csv", "/x/a.csv", at, f"bad at {at}", "h") for at in where]
    with Warehouse(tmp_path / "w.duckdb") as wh:
        wh.migrate()
        with wh.transaction():
            wh.write_quarantine(rows, "run-1")
        listed = wh.query("quarantine_report")["location"].to_list()
    assert listed == ["file", "header", "line 2", "line 3", "line 10"]


def test_named_queries_bind_parameters(tmp_path):
    with Warehouse(tmp_path / "w.duckdb") as wh:
        wh.migrate()
        files = pl.DataFrame(
            {
                "source": ["s", "t"],
                "path": ["a.yaml", "b.yaml"],
                "kind": "config",
                "content_hash": ["h1", "h2"],
                "parser": "p",
                "status": "ok",
                "size_bytes": [1, 2],
                "ingest_run_id": "r",
            }
        )
        assert wh.insert_frame("files", files) == 2
        assert wh.insert_frame("files", files.clear()) == 0
        known = wh.query("known_files", source="s")
        assert known.select("path", "content_hash").rows() == [("a.yaml", "h1")]
        with pytest.raises(FileNotFoundError, match="no_such_query"):
            wh.query("no_such_query")
        with pytest.raises(KeyError, match="version"):
            wh.execute("record_migration", name="x")


def test_transaction_rolls_back_on_error(tmp_path):
    with Warehouse(tmp_path / "w.duckdb") as wh:
        wh.migrate()
        rows = [QuarantineRow("s", "a.log", "/x/a.log", "file", "/x/a.log: empty file", "h")]

        def fail_midway() -> None:
            with wh.transaction():
                wh.write_quarantine(rows, "run-1")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            fail_midway()
        assert wh.query("quarantine_report").is_empty()
        with wh.transaction():
            wh.write_quarantine(rows, "run-1")
        report = wh.query("quarantine_report")
        assert report.columns[:4] == ["file", "location", "reason", "ingest_run_id"]
        assert report.select("file", "location", "reason", "ingest_run_id").rows() == [
            ("/x/a.log", "file", "/x/a.log: empty file", "run-1")
        ]


def test_read_only_warehouse_reads(tmp_path, tiny_warehouse):
    wh, report = tiny_warehouse
    wh.close()
    with Warehouse(wh.path, read_only=True) as ro:
        assert ro.query("records").height == report.records == 15
        with pytest.raises(duckdb.Error):
            ro.migrate()


def test_content_hash_names_the_records(tmp_path, tiny_fleet, fleet_source, tiny_warehouse):
    wh, _ = tiny_warehouse
    raw_dir, _ = tiny_fleet
    name = fleet_source.name
    first = wh.content_hash(name)
    assert len(first) == 64
    assert first == wh.content_hash(name)
    with Warehouse(tmp_path / "other.duckdb") as other:  # same data, other batching: same hash
        ingest_fleet(other, fleet_source, raw_dir, run_id="x", batch_size=2)
        assert other.content_hash(name) == first
        # Another source's records are not this source's snapshot: its training key stays.
        ingest_fleet(other, fleet_source.model_copy(update={"name": "other"}), raw_dir, "y")
        assert other.content_hash(name) == first
        assert other.content_hash("other") != first
    with Warehouse(tmp_path / "empty.duckdb") as empty:
        empty.migrate()
        assert empty.content_hash(name) != first
    targets = raw_dir / fleet_source.root / "targets.csv"
    targets.write_text(
        targets.read_text().replace("cell-a01,2026-01-01,0.", "cell-a01,2026-01-01,0.1")
    )
    ingest_fleet(wh, fleet_source, raw_dir, run_id="run-2")
    assert wh.content_hash(name) != first


STAMP_IN_TOKYO = """
import sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from regressor.warehouse import QuarantineRow, Warehouse
with Warehouse(Path(sys.argv[1])) as wh:
    wh.migrate()
    wh.write_quarantine([QuarantineRow("s", "f", "f", "line 1", "bad", "h")], "run-1")
    print(wh.con.sql("SELECT quarantined_at FROM quarantine").fetchall()[0][0].isoformat())
"""


def test_the_warehouse_stamps_times_in_utc_whatever_the_machines_zone(tmp_path):
    """A naive `current_timestamp` was the machine's local time: two machines writing one
    warehouse stamped it in two zones, and `quarantine_report`'s latest-first order lied."""
    root = str(Path(__file__).resolve().parents[1])
    before = datetime.now(UTC).replace(tzinfo=None)
    stamped = subprocess.run(
        [sys.executable, "-c", STAMP_IN_TOKYO, str(tmp_path / "w.duckdb"), root],
        env=os.environ | {"TZ": "Asia/Tokyo"},  # UTC+9, no DST
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    after = datetime.now(UTC).replace(tzinfo=None)
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(stamped) <= after


HOLD_LOCK = """
import pathlib, sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
pathlib.Path(sys.argv[1] + ".released").touch()  # before the lock goes
con.close()
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_locked_warehouse_is_waited_for(tmp_path, capsys):
    path = tmp_path / "w.duckdb"
    proc = hold_lock(path, 1.5)
    try:
        with Warehouse(path, lock_timeout_s=60) as wh:
            # Opened only once the holder was letting go: it marks that before it closes.
            assert Path(f"{path}.released").exists()
            assert wh.migrate()
    finally:
        proc.wait(timeout=30)
    err = capsys.readouterr().err
    assert err.count("is locked by another writer; waiting...") == 1
    assert str(path) in err


def test_a_lock_held_too_long_times_out(tmp_path):
    path = tmp_path / "w.duckdb"
    proc = hold_lock(path, 10)
    try:
        with pytest.raises(WarehouseLockedError, match="still locked"):
            Warehouse(path, lock_timeout_s=0.5)
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_records_contract_types(tiny_warehouse):
    wh, _ = tiny_warehouse
    records = wh.query("records")
    assert records.schema == pl.Schema(
        {
            "record_id": pl.String,
            "source": pl.String,
            "task": pl.String,
            "period": pl.Date,
            "config_json": pl.String,
            "logs_json": pl.String,
            "target": pl.Float64,
        }
    )
    assert records["record_id"][0] == "demo_fleet/cell-a01/2026-01-01"
    assert records["period"][0] == date(2026, 1, 1)


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 3]


def _checksums_broken(data: bytes) -> bytes:
    """16 bytes overwritten in every block past the headers: each block's checksum fails."""
    spoiled = bytearray(data)
    for offset in range(3 * 4096 + 64, len(spoiled), 4096):
        spoiled[offset : offset + 16] = b"\xff" * 16
    return bytes(spoiled)


@pytest.mark.parametrize("damage", [_cut, _checksums_broken])
def test_a_damaged_warehouse_is_named_in_one_line(tmp_path, damage):
    """A block whose checksum fails raises DuckDB's plain `Error` ("Corrupt database file"),
    which names no file: it came out as a raw traceback, not the message saying to move the
    file aside and ingest again."""
    path = tmp_path / "w.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT range AS i, 'x' || range AS s FROM range(300000)")
    con.close()
    path.write_bytes(damage(path.read_bytes()))
    refused = pytest.raises(WarehouseUnreadableError, match="move it aside and ingest again")
    with refused, Warehouse(path, lock_timeout_s=2) as wh:
        wh.con.sql("SELECT sum(i), count(s) FROM t").fetchall()


def test_a_damaged_warehouse_under_a_path_naming_a_lock_is_not_waited_for(tmp_path):
    """A lock conflict was told by "lock" anywhere in DuckDB's message, which quotes the
    path: a damaged file under `block-storage/` was waited on for the lock timeout, then
    reported as held by another process."""
    path = tmp_path / "block-storage" / "w.duckdb"
    path.parent.mkdir()
    path.write_bytes(b"x" * 5000)
    started = time.monotonic()
    with pytest.raises(WarehouseUnreadableError, match="move it aside"):
        Warehouse(path, lock_timeout_s=30).__enter__()
    assert time.monotonic() - started < 20  # refused at once, not after the lock timeout
