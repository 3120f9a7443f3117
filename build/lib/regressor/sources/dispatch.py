"""One entry point for every adapter: the source config's `adapter` picks the module."""

from __future__ import annotations

from pathlib import Path

from regressor.config import FleetSourceConfig, RunsSourceConfig, SourceConfig, TableSourceConfig
from regressor.sources.fleet import IngestReport, ingest_fleet
from regressor.sources.runs import ingest_runs
from regressor.sources.table import ingest_table
from regressor.warehouse import Warehouse

# DuckDB's buffer pool for an ingest writer: enough for batch inserts, and bounded so that peak
# RSS does not grow with the size of the warehouse (bench/ingest.py measures it).
INGEST_MEMORY_LIMIT = "512MB"


def ingest_source(wh: Warehouse, source: SourceConfig, raw_dir: Path, run_id: str) -> IngestReport:
    """Ingest `source` into `wh`. Fleet roots are under `raw_dir` (the generated demo); table and
    runs roots are data that already exists, resolved against the project root."""
    if isinstance(source, FleetSourceConfig):
        return ingest_fleet(wh, source, raw_dir, run_id)
    if isinstance(source, TableSourceConfig):
        return ingest_table(wh, source, run_id)
    if isinstance(source, RunsSourceConfig):
        return ingest_runs(wh, source, run_id)
    raise TypeError(f"no adapter for {type(source).__name__}")
