"""Kill -9 during ingestion, at several points: the rerun completes and the warehouse equals a
clean ingest of the same files, every record exactly once, the quarantine intact.

A child process ingests a tiny fleet (small batches: many transactions) and a folder of small
table files (one transaction each) through the real adapters. Its warehouse prints a marker
inside and after every transaction; the parent SIGKILLs it right after a chosen marker: inside a
transaction (mid-write), right after a commit, and during the migrations of a fresh file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

from regressor.config import (
    FleetSimConfig,
    TableSourceConfig,
    load_source_config,
)
from regressor.fleetsim import generate_fleet
from regressor.sources.fleet import ingest_fleet
from regressor.sources.table import ingest_table
from regressor.warehouse import Warehouse

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FLEET = FleetSimConfig(seed=5, n_cells=4, n_days=12, samples_per_day=6, jobs_per_day=4)
N_TABLES = 8


class MarkedWarehouse(Warehouse):
    """The real warehouse, printing `begin N` inside and `commit N` after each transaction."""

    count = 0

    @contextmanager
    def transaction(self):
        MarkedWarehouse.count += 1
        n = MarkedWarehouse.count
        with super().transaction():
            print(f"begin {n}", flush=True)
            yield
        print(f"commit {n}", flush=True)


def table_source(root: Path) -> TableSourceConfig:
    return TableSourceConfig(
        name="tables", adapter="table", root=root, files=("*.csv",), target_columns=("y",)
    )


def make_inputs(base: Path) -> tuple[Path, Path]:
    """(raw dir of the fleet, folder of tables), each with files the adapters must quarantine."""
    raw = base / "raw"
    fleet_root = raw / "demo_fleet"
    generate_fleet(fleet_root, FLEET)
    (fleet_root / "cells" / "cell-zz.yaml").write_text("a: [unclosed\n")  # bad config
    bad_log = sorted((fleet_root / "logs").glob("*/*.log"))[3]
    bad_log.write_bytes(bad_log.read_bytes().rstrip(b"\n"))  # truncated: no final newline
    tables = base / "tables"
    tables.mkdir()
    for i in range(N_TABLES):
        rows = [f"{i},{j},{j * 0.5 + i}" for j in range(20)] + [f"{i},bad,not-a-number"]
        (tables / f"t{i:02d}.csv").write_text("t,x,y\n" + "\n".join(rows) + "\n")
    return raw, tables


def ingest_all(wh: Warehouse, raw: Path, tables: Path, run_id: str) -> None:
    ingest_fleet(wh, load_source_config("demo_fleet"), raw, run_id, batch_size=4)
    ingest_table(wh, table_source(tables), run_id)


def child_ingest(db: str, raw: str, tables: str, run_id: str) -> None:
    with MarkedWarehouse(Path(db)) as wh:
        ingest_all(wh, Path(raw), Path(tables), run_id)
    print("done", flush=True)


def start_child(call: str) -> subprocess.Popen:
    """`call` in a fresh Python (this module importable), its stdout readable line by line."""
    code = f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n{call}"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def kill_at(marker: str, db: Path, raw: Path, tables: Path, run_id: str) -> None:
    """Run the child until it prints `marker`, then SIGKILL it there."""
    proc = start_child(
        "from test_reliability_ingest import child_ingest\n"
        f"child_ingest({str(db)!r}, {str(raw)!r}, {str(tables)!r}, {run_id!r})"
    )
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line.strip())
            if line.strip() == marker:
                sigkill(proc)
                return
        raise AssertionError(f"{marker!r} never printed; the child said:\n{seen[-30:]}")
    finally:
        if proc.poll() is None:
            sigkill(proc)


def snapshot(db: Path) -> dict[str, list]:
    """Everything that must match a clean ingest: records, files, quarantine (run ids aside)."""
    with Warehouse(db, read_only=True) as wh:
        records = wh.query("records")
        files = pl.concat(
            [wh.query("known_files", source=s) for s in ("demo_fleet", "tables")], how="vertical"
        )
        quarantine = wh.query("quarantine_report").drop("ingest_run_id", "quarantined_at")
    ids = records["record_id"].to_list()
    assert len(ids) == len(set(ids)), "a record is stored twice"
    keys = records.select("source", "task", "period").rows()
    fleet_keys = [k for k in keys if k[0] == "demo_fleet"]
    assert len(fleet_keys) == len(set(fleet_keys)), "a (task, day) is stored twice"
    return {
        "records": sorted(records.drop("record_id").rows(), key=repr),
        "files": sorted(files.rows(), key=repr),
        "quarantine": sorted(quarantine.rows(), key=repr),
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, list]]:
    base = tmp_path_factory.mktemp("kill-ingest")
    raw, tables = make_inputs(base)
    with Warehouse(base / "reference.duckdb") as wh:
        ingest_all(wh, raw, tables, "reference")
    return raw, tables, snapshot(base / "reference.duckdb")


# Markers count each child's own transactions: the pending migrations first (3 in a new file),
# then one per changed fleet batch of 4 files, then one per changed table file. The kills chain:
# each child starts from what the previous one left.
KILL_POINTS = [
    ("begin 2", "during the migrations of a new warehouse file"),
    ("begin 5", "inside a fleet batch's transaction"),
    ("commit 6", "right after a commit"),
    ("begin 3", "inside a transaction, later in the ingest"),
]


def test_ingest_killed_at_several_points_then_rerun_equals_a_clean_ingest(
    tmp_path: Path, inputs: tuple[Path, Path, dict[str, list]]
) -> None:
    raw, tables, reference = inputs
    db = tmp_path / "warehouse.duckdb"
    for i, (marker, _where) in enumerate(KILL_POINTS):
        kill_at(marker, db, raw, tables, f"killed-{i}")
    # The final rerun, in this process; the killed children's file locks died with them.
    with Warehouse(db, lock_timeout_s=10) as wh:
        ingest_all(wh, raw, tables, "rerun")
    after = snapshot(db)
    assert after["records"] == reference["records"]
    assert after["files"] == reference["files"]
    assert after["quarantine"] == reference["quarantine"]
    assert any("cell-zz.yaml" in row[0] for row in after["quarantine"])
    assert any("bad" in row[2] or "non-numeric" in row[2] for row in after["quarantine"])
    # A second rerun finds every file unchanged and adds nothing.
    with Warehouse(db) as wh:
        again = ingest_fleet(wh, load_source_config("demo_fleet"), raw, "again")
        assert again.records_added == 0
        assert again.files_unchanged == again.files_seen
    assert snapshot(db) == after
