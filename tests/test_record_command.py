"""`textperf record`: a stored record written as the JSON `predict` reads, on a real warehouse
and store (the tiny fleet ingested, an untrained tiny model registered)."""

# ruff: noqa: F811 (the tests take test_user_errors' `fleet` fixture by its name)

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from test_user_errors import assert_clear_failure, fleet, invoke  # noqa: F401

from regressor.dataset import record_from_row


def stored_rows(var: Path, task: str) -> list[dict]:
    with duckdb.connect(str(var / "warehouse.duckdb"), read_only=True) as con:
        query = "SELECT * FROM records WHERE task = $task ORDER BY period"
        return con.sql(query, params={"task": task}).pl().to_dicts()


def test_the_latest_record_of_a_task_is_written_as_predict_reads_it(fleet, tmp_path: Path):
    config, var = fleet
    result = invoke("record", "cell-a01", "-c", config, "--var-dir", var)
    assert result.exit_code == 0, result.output
    latest = stored_rows(var, "cell-a01")[-1]
    assert json.loads(result.stdout) == record_from_row(latest)
    assert f"stored target {latest['target']:.6g}" in result.stderr
    # A given period, to a file, which `predict` then reads like any record.
    first = stored_rows(var, "cell-a01")[0]
    out = tmp_path / "record.json"
    period = str(first["period"])
    written = invoke(
        "record", "cell-a01", "--period", period, "-o", out, "-c", config, "--var-dir", var
    )
    assert written.exit_code == 0, written.output
    assert json.loads(out.read_text()) == record_from_row(first)
    model = ["--model", "textperf/1", "--num-samples", "2"]
    predicted = invoke("predict", *model, out, "-c", config, "--var-dir", var)
    assert predicted.exit_code == 0, predicted.output
    assert predicted.stdout.startswith(f"{out}: median ")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["cell-zz"], ["source 'demo_fleet' has no task 'cell-zz'; its tasks: cell-a01"]),
        (["cell-a01", "--period", "1999-01-01"], ["no record for period '1999-01-01'", "run from"]),
    ],
)
def test_a_task_or_period_not_stored_is_named_with_what_there_is(fleet, args, needles):
    config, var = fleet
    assert_clear_failure(invoke("record", *args, "-c", config, "--var-dir", var), *needles)
