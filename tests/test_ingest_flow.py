"""The ingest flow on Prefect's test server: bad files are quarantined, good ones all land."""

from __future__ import annotations

from pathlib import Path

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from flows.ingest import ingest
from regressor.warehouse import Warehouse

pytest_plugins = ("conftest_data",)


def test_ingest_flow_accounts_for_every_file(prefect_harness, tmp_path: Path, tiny_fleet):
    raw_dir, summary = tiny_fleet
    fleet_dir = raw_dir / "demo_fleet"
    (fleet_dir / "cells" / "cell-zz.yaml").write_text("machines: [unclosed\n")
    (fleet_dir / "logs" / "cell-a01").mkdir(parents=True, exist_ok=True)
    (fleet_dir / "logs" / "cell-a01" / "2026-01-03.log").write_bytes(b"\xff\xfe not utf-8\n")
    var = raw_dir.parent

    result = ingest(var_dir=var)

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

    again = ingest(var_dir=var)
    assert again.records_added == 0


def test_library_warnings_reach_the_flow_runs_log(prefect_harness, tmp_path: Path, tiny_fleet):
    """A file the fleet adapter refuses (a symlink out of the source folder) is logged by
    `regressor.sources.common` at WARNING; the flow run's log on the server holds it, where the
    Prefect UI shows it, and the refusal is in the report too."""
    raw_dir, _ = tiny_fleet
    outside = tmp_path / "outside.yaml"
    outside.write_text("machines: 4\n")
    (raw_dir / "demo_fleet" / "cells" / "cell-zy.yaml").symlink_to(outside)

    state = ingest(var_dir=raw_dir.parent, return_state=True)
    result = state.result()
    APILogHandler().flush()  # the handler sends in batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    refused = [log for log in logs if "resolves outside the source folder" in log.message]
    # Besides the printed report (prefect.flow_runs): the library's own record.
    from_library = [log for log in refused if log.name == "regressor.sources.common"]
    assert from_library
    assert all("cell-zy.yaml" in log.message and log.level == 30 for log in from_library)
    assert any("cell-zy.yaml" in file for file, _ in result.quarantined)


def test_forgetting_with_the_source_folder_gone_fails_at_once_with_its_message(
    prefect_harness, tmp_path: Path, tiny_fleet
):
    """A share not mounted is a mistake retrying cannot fix: the task was retried twice and the
    run ended with a traceback; now one attempt, and the run's message is the reason."""
    raw_dir, _ = tiny_fleet
    ingest(var_dir=raw_dir.parent)
    (raw_dir / "demo_fleet").rename(raw_dir / "away")
    state = ingest(var_dir=raw_dir.parent, forget_gone=True, return_state=True)
    assert state.is_failed()
    assert "not mounted" in state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    assert [run.run_count for run in runs] == [1]
