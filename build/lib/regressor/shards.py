"""Records as Parquet shards: written by DuckDB `COPY`, read back per rank by a DataModule.

A multi-node run should not open one DuckDB file from every node: export once, copy or mount the
directory, and let each rank read its own shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from regressor.warehouse import Warehouse, sql_text


@dataclass(frozen=True)
class ExportReport:
    out_dir: Path
    shards: int
    rows: int


def export_shards(
    warehouse: Path, out_dir: Path, shard_rows: int, source: str | None = None
) -> ExportReport:
    """Write `out_dir/shard=<k>/*.parquet`, `shard_rows` records each (the last may be short)."""
    if shard_rows < 1:
        raise ValueError("shard_rows must be at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    inner = sql_text("queries", "records_shards").strip().rstrip(";")
    target = str(out_dir).replace("'", "''")  # COPY takes a literal path, not a parameter
    copy = (
        f"COPY ({inner}) TO '{target}' "
        "(FORMAT parquet, PARTITION_BY (shard), OVERWRITE_OR_IGNORE true)"
    )
    with Warehouse(warehouse, read_only=True) as wh:
        wh.con.execute(copy, {"shard_rows": shard_rows, "source": source})
    files = shard_files(out_dir)
    rows = pl.scan_parquet(files).select(pl.len()).collect().item() if files else 0
    return ExportReport(out_dir, len({f.parent for f in files}), rows)


def shard_files(out_dir: Path) -> list[Path]:
    """Every shard file, in shard order (hive directories `shard=<k>`)."""
    files = out_dir.glob("shard=*/*.parquet")
    return sorted(files, key=lambda p: (int(p.parent.name.split("=", 1)[1]), p.name))


def shards_for_rank(out_dir: Path, rank: int, world_size: int) -> list[Path]:
    """Round-robin shards over ranks: disjoint, and together every record exactly once."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    return shard_files(out_dir)[rank::world_size]


def read_records(files: list[Path]) -> pl.DataFrame:
    """The records in `files`, columns as the warehouse's `records` query returns them."""
    if not files:
        return pl.DataFrame()
    return pl.read_parquet(files, hive_partitioning=False).sort(["task", "period", "source"])
