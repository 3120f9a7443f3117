"""Records as Parquet shards: written by DuckDB `COPY`, read back per rank by a DataModule.

A multi-node run should not open one DuckDB file from every node: export once, copy or mount the
directory, and let each rank read its own shards.
"""

from __future__ import annotations

import shutil
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from regressor.warehouse import NoRecordsTableError, reading_records, sql_text

INGEST_FIRST = "ingest a source first (`textperf ingest`)"


class ExportError(ValueError):
    """An export that cannot be made as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ExportReport:
    out_dir: Path
    shards: int
    rows: int


def export_shards(
    warehouse: Path, out_dir: Path, shard_rows: int, source: str | None = None
) -> ExportReport:
    """Write `out_dir/shard=<k>/*.parquet`, `shard_rows` records each (the last may be short).

    All or nothing: the shards are written to a hidden directory inside `out_dir` and moved
    into place once complete, replacing a previous export's (a stale `shard=<k>` left beside a
    shorter new export would be read by a rank as well, twice the records). A directory holding
    anything else is refused, as is a file; a failed export leaves `out_dir` as it was.
    """
    if shard_rows < 1:
        raise ValueError("shard_rows must be at least 1")
    if not warehouse.is_file():  # before `out_dir` is made (`reading_records` checks it too late)
        raise ExportError(f"no warehouse at {warehouse} yet: {INGEST_FIRST}")
    out_dir = out_dir.absolute()
    _check_target(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f"{STAGING}{uuid.uuid4().hex[:12]}"
    try:
        rows = _copy_shards(warehouse, staging, shard_rows, source)
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return ExportReport(out_dir, len({f.parent for f in shard_files(out_dir)}), rows)


# Hidden working directories inside an export. A killed export's stay (another export may be
# writing its own there now); readers see only `shard=<k>`, and a next export accepts them.
STAGING, REPLACED = ".export-", ".replaced-"


def _check_target(out_dir: Path) -> None:
    """An `ExportError` unless `out_dir` is missing, empty, or a previous export."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is a file: name a directory for the shards")
    if not out_dir.is_dir():
        return
    other = sorted(
        p.name
        for p in out_dir.iterdir()
        if not (p.is_dir() and p.name.startswith(("shard=", STAGING, REPLACED)))
    )
    if other:
        listed = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
        raise ExportError(
            f"--out {out_dir} holds other files than an export's shards ({listed}): name a new "
            "or empty directory, or a previous export (it is replaced)"
        )


def _copy_shards(warehouse: Path, staging: Path, shard_rows: int, source: str | None) -> int:
    """DuckDB's `COPY` of the records into `staging/shard=<k>/`; the number of records. An
    `ExportError` when there are none (nothing to export)."""
    inner = sql_text("queries", "records_shards").strip().rstrip(";")
    target = str(staging).replace("'", "''")  # COPY takes a literal path, not a parameter
    copy = (
        f"COPY ({inner}) TO '{target}' "
        "(FORMAT parquet, PARTITION_BY (shard), OVERWRITE_OR_IGNORE true)"
    )
    try:
        with reading_records(warehouse) as wh:
            wh.con.execute(copy, {"shard_rows": shard_rows, "source": source})
            sources = wh.query("record_sources")["source"].to_list()
    except NoRecordsTableError as exc:
        raise ExportError(f"{exc}: {INGEST_FIRST}") from exc
    files = shard_files(staging)
    if not files:
        which = "" if source is None else f" of source {source!r}"
        there = f" (it has: {', '.join(sources)})" if sources else f": {INGEST_FIRST}"
        raise ExportError(f"no records{which} in {warehouse} to export{there}")
    # glob=False: polars reads `[1]` in a path (`--out exports/run[1]`) as a character class.
    return pl.scan_parquet(files, glob=False).select(pl.len()).collect().item()


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace `out_dir`'s shards with `staging`'s: renames inside one directory (one file
    system, even when `out_dir` is a mount), then drop the old ones. A rename that fails puts
    back what had moved (`_put_back`): the old shards had gone aside, and a failed export left
    `out_dir` with none, or some of the new ones."""
    replaced = out_dir / f"{REPLACED}{staging.name.removeprefix(STAGING)}"
    replaced.mkdir()
    moved: list[tuple[Path, Path]] = []  # (from, to), in the order they were renamed
    try:
        for shard in [*out_dir.glob("shard=*")]:
            moved.append((shard, replaced / shard.name))
            shard.rename(replaced / shard.name)
        for shard in [*staging.glob("shard=*")]:
            moved.append((shard, out_dir / shard.name))
            shard.rename(out_dir / shard.name)
    except BaseException:
        _put_back(moved)
        with suppress(OSError):  # left, old shards and all, if a rename back failed
            replaced.rmdir()
        raise
    shutil.rmtree(replaced, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _put_back(moved: list[tuple[Path, Path]]) -> None:
    """Undo `moved`'s renames, newest first; the last may not have happened (it failed)."""
    for source, target in reversed(moved):
        if target.exists() and not source.exists():
            with suppress(OSError):  # the failure being raised matters more than this one
                target.rename(source)


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
    frame = pl.read_parquet(files, hive_partitioning=False, glob=False)  # paths, not patterns
    # The warehouse's order (`records.sql`), ties and all: rows of one task and no period (a
    # table's, a runs source's) came in the files' order, which a re-export could change.
    return frame.sort(["task", "period", "source", "record_id"], nulls_last=True)
