"""One entry point for every adapter: the source config's `adapter` picks the module."""

from __future__ import annotations

from pathlib import Path

from regressor.config import (
    FleetSourceConfig,
    RunsSourceConfig,
    SourceConfig,
    TableSourceConfig,
    data_root,
)
from regressor.sources.fleet import IngestReport, count_records, ingest_fleet, source_root
from regressor.sources.forget import forget_gone, require_source_folder
from regressor.sources.runs import ingest_runs
from regressor.sources.table import ingest_table
from regressor.warehouse import Warehouse

# DuckDB's buffer pool for an ingest writer: enough for batch inserts, and bounded so that peak
# RSS does not grow with the size of the warehouse (bench/ingest.py measures it).
INGEST_MEMORY_LIMIT = "512MB"


def ingest_source(
    wh: Warehouse, source: SourceConfig, raw_dir: Path, run_id: str, forget: bool = False
) -> IngestReport:
    """Ingest `source` into `wh`; with `forget`, first drop the rows of its files that are gone
    for good (`regressor.sources.forget`), so the adapter then reads what depended on them."""
    root = require_source(source, raw_dir)
    if not forget:
        return adapter_ingest(wh, source, raw_dir, run_id)
    wh.migrate()
    before = count_records(wh, source.name)
    gone = forget_gone(wh, source.name, root)
    report = adapter_ingest(wh, source, raw_dir, run_id)
    return report.model_copy(
        update={"files_forgotten": gone, "records_added": report.records - before}
    )


def require_source(source: SourceConfig, raw_dir: Path) -> Path:
    """The source's folder; a `SourceFolderMissingError` when it is not there, empty or cannot
    be listed (`require_source_folder`). Callers check it before they open the warehouse too,
    which would otherwise be made, empty, under a misspelt `--var-dir` or `root`."""
    root = root_of(source, raw_dir)
    demo = " (the demo fleet's files are written by `textperf retrain`)"
    require_source_folder(source.name, root, demo if isinstance(source, FleetSourceConfig) else "")
    return root


def root_of(source: SourceConfig, raw_dir: Path) -> Path:
    """Fleet roots are under `raw_dir` (the generated demo); table and runs roots are data that
    already exists, resolved against the project root."""
    if isinstance(source, FleetSourceConfig):
        return source_root(source, raw_dir)
    return data_root(source.root)


def adapter_ingest(wh: Warehouse, source: SourceConfig, raw_dir: Path, run_id: str) -> IngestReport:
    if isinstance(source, FleetSourceConfig):
        return ingest_fleet(wh, source, raw_dir, run_id)
    if isinstance(source, TableSourceConfig):
        return ingest_table(wh, source, run_id)
    if isinstance(source, RunsSourceConfig):
        return ingest_runs(wh, source, run_id)
    raise TypeError(f"no adapter for {type(source).__name__}")
