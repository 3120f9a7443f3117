"""Stored records as the JSON files `textperf predict` reads: a template to edit, or a record to
predict again and compare with its stored target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from regressor.dataset import record_from_row
from regressor.pipeline import DataError, ingest_hint, names_of, reading_warehouse


def stored_record(
    warehouse: Path, source: str, task: str, period: str | None = None
) -> tuple[dict[str, Any], float]:
    """(the record of `task` at `period`, or its latest, as `predict` reads it; its target).
    A `DataError` naming what is missing: the warehouse, the task (with the tasks there are),
    or the period (with the task's first and last)."""
    with reading_warehouse(warehouse, source) as wh:
        rows = wh.query("task_records", source=source, task=task)
        tasks = [] if len(rows) else wh.query("source_tasks", source=source)["task"].to_list()
    if rows.is_empty():
        there = names_of(tasks) if tasks else f"none: {ingest_hint(source)}"
        raise DataError(f"source {source!r} has no task {task!r}; its tasks: {there}")
    periods = [None if p is None else str(p) for p in rows["period"].to_list()]
    index = len(periods) - 1 if period is None else _index_of(periods, period, task)
    row = rows.row(index, named=True)
    return record_from_row(row), float(row["target"])


def _index_of(periods: list[str | None], period: str, task: str) -> int:
    if periods[-1] is None:  # a table of configurations: no record has a period
        raise DataError(f"task {task!r} has no periods: leave --period out")
    if period not in periods:
        raise DataError(
            f"task {task!r} has no record for period {period!r}: its periods run from "
            f"{periods[0]} to {periods[-1]}"
        )
    return periods.index(period)


def record_json(record: dict[str, Any]) -> str:
    """The record as the JSON file `predict` reads (the period left out when it has none)."""
    return json.dumps({k: v for k, v in record.items() if v is not None}, indent=2) + "\n"
