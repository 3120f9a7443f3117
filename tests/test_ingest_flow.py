"""The ingest flow on Prefect's test server: bad files are quarantined, good ones all land."""

from __future__ import annotations

from pathlib import Path

from flows.ingest import IngestParams, ingest
from regressor.warehouse import Warehouse

pytest_plugins = ("conftest_data",)


def test_ingest_flow_accounts_for_every_file(prefect_harness, tmp_path: Path, tiny_fleet):
    raw_dir, summary = tiny_fleet
    fleet_dir = raw_dir / "demo_fleet"
    (fleet_dir / "cells" / "cell-zz.yaml").write_text("machines: [unclosed\n")
    (fleet_dir / "logs" / "cell-a01").mkdir(parents=True, exist_ok=True)
    (fleet_dir / "logs" / "cell-a01" / "2026-01-03.log").write_bytes(b"\xff\xfe not utf-8\n")
    var = raw_dir.parent

    result = ingest(IngestParams(var_dir=var))

    accounted = result.files_ingested + result.files_quarantined + result.files_unchanged
    assert result.files_seen == accounted
    assert result.files_quarantined >= 2
    reasons = " ".join(reason for _, reason in result.quarantined)
    assert "cell-zz.yaml" in reasons or any("cell-zz.yaml" in f for f, _ in result.quarantined)
    with Warehouse(var / "warehouse.duckdb", read_only=True) as wh:
        records = wh.query("records")
        quarantine = wh.query("quarantine_report")
    # Every day of every good cell is a record, except the day whose log is quarantined.
    assert records.height == summary.n_cells * summary.n_days - 1
    assert quarantine.height >= 2

    again = ingest(IngestParams(var_dir=var))
    assert again.records_added == 0
