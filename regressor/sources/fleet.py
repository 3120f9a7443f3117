"""The `fleet` adapter: task configs (YAML/JSON), daily logs and a targets CSV -> the warehouse.

Idempotent: a file whose bytes (and parser version) are unchanged is skipped; a new or changed file
replaces every row previously derived from it, within one transaction per batch. Bad input never
stops the run: it becomes a `quarantine` row whose reason names the file, and the rest proceeds.
Files that disappear keep their rows (ingest only adds and replaces).

Large log sets are read, hashed, summarised and compressed in worker processes (`ingest_logs`)
while this process, DuckDB's single writer, writes the finished batches in order. Raw logs are
kept zstd-compressed in `logs.raw_blob` (`raw_log_text` reads them back).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import yaml
import zstandard
from pydantic import BaseModel, ConfigDict

from regressor.config import FleetSourceConfig
from regressor.sources.common import (
    BadInputError,
    Tally,
    inside,
    load_yaml_limited,
    safe_files,
)
from regressor.sources.logs import SUMMARY_VERSION, ShapeCache, summarize_logs
from regressor.warehouse import QuarantineRow, Warehouse

PARSER_VERSION = 1
BATCH_FILES = 256
BATCH_BYTES = 32_000_000  # a batch of logs also stops here: its frames take ~15x its bytes
# Raw logs are stored zstd-compressed (~5x smaller): DuckDB writes the compressed BLOBs ~20x
# faster than the same text as VARCHAR, which it would compress itself, slowly.
RAW_CODEC, RAW_LEVEL = "zstd", 1
# Logs are parsed in worker processes (the single DuckDB writer stays here) when there are at
# least this many bytes to parse: below it, starting the workers costs more than they save.
POOL_MIN_BYTES = 64_000_000
MAX_WORKERS = 4  # each holds one batch's frames (~0.5 GB at BATCH_BYTES)
Known = dict[str, tuple[str, str, str]]  # path -> (content hash, parser, status) as stored
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster


class IngestReport(BaseModel):
    """What one ingest run did. Invariant: files_seen == ingested + quarantined + unchanged."""

    model_config = ConfigDict(frozen=True)

    source: str
    run_id: str
    files_seen: int
    files_ingested: int
    files_quarantined: int
    files_unchanged: int
    records: int  # records of this source in the warehouse after the run
    records_added: int  # net change in that count (0 when nothing changed)
    quarantined: list[tuple[str, str]]  # (file, reason), files and rows rejected by this run


@dataclass
class Staged:
    """One file read from disk; `row` is its table row when it parsed, else `problem` says why."""

    path: Path
    rel: str
    kind: str
    data: bytes
    content_hash: str
    parser: str
    size: int = 0  # the file's bytes (kept when `data` is dropped after parsing)
    row: dict[str, Any] | None = None
    problem: BadInputError | None = None
    row_problems: list[BadInputError] = field(default_factory=list)


# -- decoding and parsing single files -------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes) -> str:
    """UTF-8 text, or BadInputError naming the first bad byte and its line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BadInputError(
            f"not valid UTF-8 ({exc.reason})", f"byte {exc.start} (line {line})"
        ) from exc


def count_lines(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def parse_yaml(text: str, loader: type) -> Any:
    """YAML text through a safe `loader` (alias bombs refused), or BadInputError with the line."""
    try:
        return load_yaml_limited(text, loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "file"
        raise BadInputError(f"not valid YAML: {str(exc).splitlines()[0]}", where) from exc


def parse_config_text(text: str, suffix: str) -> dict[str, Any]:
    """A config file's text -> a JSON-compatible mapping, or BadInputError."""
    if not text.strip():
        raise BadInputError("empty file")
    if suffix in {".yaml", ".yml"}:
        value = parse_yaml(text, YAML_LOADER)
    elif suffix == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"not valid JSON: {exc.msg}", f"line {exc.lineno}") from exc
    else:
        raise BadInputError(f"unsupported config format {suffix!r} (expected .yaml, .yml or .json)")
    if not isinstance(value, dict):
        raise BadInputError(f"expected a mapping at the top level, got {type(value).__name__}")
    return value


def config_json(config: dict[str, Any]) -> str:
    """Canonical JSON; YAML dates become ISO strings, NaN/inf are refused (not valid JSON)."""
    try:
        return json.dumps(config, default=str, allow_nan=False, ensure_ascii=False)
    except ValueError as exc:
        raise BadInputError(f"config holds a value JSON cannot represent: {exc}") from exc


def parse_period(stem: str) -> date:
    try:
        return date.fromisoformat(stem)
    except ValueError as exc:
        raise BadInputError(f"log file name {stem!r} is not an ISO date (YYYY-MM-DD)") from exc


def check_log_text(text: str) -> None:
    if not text or text.isspace():  # (not `strip`, which would copy the whole text)
        raise BadInputError("empty file")
    if not text.endswith("\n"):
        # A day's log cut mid-line is incomplete: its counts would understate the day.
        raise BadInputError("truncated: the last line has no newline", f"line {count_lines(text)}")


def record_from_files(config_path: Path, log_path: Path) -> dict[str, Any]:
    """`{"task", "period", "config", "logs"}` from raw files, as the warehouse would build it.

    For new inputs at prediction time; raises ValueError naming the file when one is unusable.
    """
    try:
        text = decode(config_path.read_bytes())
        # Through JSON and back: the same coercions as ingest (YAML dates become strings).
        config = json.loads(config_json(parse_config_text(text, config_path.suffix.lower())))
    except BadInputError as exc:
        raise ValueError(f"{config_path}: {exc.location}: {exc}") from exc
    try:
        log_text = decode(log_path.read_bytes())
        if not log_text.strip():
            raise BadInputError("empty file")
    except BadInputError as exc:
        raise ValueError(f"{log_path}: {exc.location}: {exc}") from exc
    return {
        "task": config_path.stem,
        "period": log_path.stem,
        "config": config,
        "logs": summarize_logs([log_text])[0],
    }


# -- staging ---------------------------------------------------------------------------------


def stage(path: Path, root: Path, kind: str, parser: str) -> Staged:
    data = path.read_bytes()
    rel = path.relative_to(root).as_posix()
    return Staged(path, rel, kind, data, sha256(data), parser, len(data))


def provenance(s: Staged, source: str, run_id: str) -> dict[str, Any]:
    return {
        "source": source,
        "path": s.rel,
        "content_hash": s.content_hash,
        "ingest_run_id": run_id,
    }


def parse_config(s: Staged, source: str, run_id: str) -> None:
    try:
        text = decode(s.data)
        parsed = config_json(parse_config_text(text, s.path.suffix.lower()))
    except BadInputError as exc:
        s.problem = exc
        return
    s.row = {
        **provenance(s, source, run_id),
        "task": s.path.stem,
        "line_start": 1,
        "line_end": count_lines(text),
        "raw_text": text,
        "config_json": parsed,
    }


def parse_logs(
    batch: Sequence[Staged], source: str, run_id: str, cache: ShapeCache | None = None
) -> None:
    """Check each log, then summarise the good ones together (one polars pass per batch).

    The raw bytes are kept zstd-compressed in the row and `data` is dropped: a batch crosses
    from a worker process to the writer at a fifth of its size.
    """
    good: list[tuple[Staged, str, date]] = []
    for s in batch:
        try:
            period = parse_period(s.path.stem)
            text = decode(s.data)
            check_log_text(text)
        except BadInputError as exc:
            s.problem = exc
            continue
        good.append((s, text, period))
    summaries = summarize_logs([text for _, text, _ in good], cache=cache)
    compressor = zstandard.ZstdCompressor(level=RAW_LEVEL)
    for (s, text, period), summary in zip(good, summaries, strict=True):
        s.row = {
            **provenance(s, source, run_id),
            "task": s.path.parent.name,
            "period": period,
            "line_start": 1,
            "line_end": count_lines(text),
            "raw_codec": RAW_CODEC,
            "raw_blob": compressor.compress(s.data),
            "logs_json": json.dumps(summary, ensure_ascii=False),
        }
    for s in batch:
        s.data = b""


def raw_log_text(row: dict[str, Any]) -> str:
    """A `logs` row's raw text, whichever way it was stored (`raw_codec` null: `raw_text`)."""
    if row.get("raw_codec") is None:
        return str(row["raw_text"])
    if row["raw_codec"] != RAW_CODEC:
        raise ValueError(f"unknown raw_codec {row['raw_codec']!r}")
    return zstandard.ZstdDecompressor().decompress(row["raw_blob"]).decode("utf-8")


# -- parallel parsing ------------------------------------------------------------------------


@functools.cache
def shape_cache() -> ShapeCache:
    """One per process: a worker reuses its templates across the batches it parses."""
    return ShapeCache()


def prepare_logs(
    paths: Sequence[Path], root: Path, parser: str, known: Known, source: str, run_id: str
) -> tuple[list[Staged], int]:
    """Read, hash and parse one batch of logs (in a worker or here): (changed files, unchanged)."""
    staged = [stage(path, root, "log", parser) for path in paths]
    changed = [s for s in staged if known.get(s.rel, ("", "", ""))[:2] != (s.content_hash, parser)]
    parse_logs(changed, source, run_id, shape_cache())
    return changed, len(staged) - len(changed)


def pool_size(total_bytes: int) -> int:
    """Worker processes for parsing logs: 1 (in-process) for small inputs or when this process
    may not have children (a daemon, e.g. a Dask worker)."""
    if multiprocessing.current_process().daemon:
        return 1
    if total_bytes < POOL_MIN_BYTES:
        return 1
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def pooled_map(
    fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], workers: int
) -> Iterator[Any]:
    """`fn(*job)` for each job, in order, in `workers` spawned processes, with at most two jobs
    per worker in flight so that finished batches never pile up in memory."""
    # spawn, not fork: forking a process that runs polars' and DuckDB's threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: deque[Future[Any]] = deque()
        for job in jobs:
            pending.append(pool.submit(fn, *job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def ordered_map(
    fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], workers: int
) -> Iterator[Any]:
    """`fn(*job)` for each job, in order: in worker processes when `workers` > 1 and, if the
    pool breaks (a worker killed, e.g. by the OOM killer), the remaining jobs in this one."""
    done = 0
    if workers > 1:
        try:
            for result in pooled_map(fn, jobs, workers):
                done += 1
                yield result
        except BrokenProcessPool as exc:
            print(f"parsing workers failed ({exc}); going on in this process", file=sys.stderr)
    yield from (fn(*job) for job in jobs[done:])


# -- targets ---------------------------------------------------------------------------------


def decoded_lines(data: bytes) -> tuple[list[tuple[int, str]], list[BadInputError]]:
    """Non-blank (line number, text) pairs; a line with bad bytes is a problem, not a failure."""
    good, bad = [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            bad.append(BadInputError(f"not valid UTF-8 ({exc.reason})", f"line {number}"))
            continue
        if text.strip():
            good.append((number, text))
    return good, bad


def read_targets_frame(
    s: Staged, source: FleetSourceConfig
) -> tuple[pl.DataFrame, list[BadInputError]]:
    """The CSV as strings plus its file line numbers; BadInputError when the file is unusable."""
    lines, bad = decoded_lines(s.data)
    if not lines:
        raise BadInputError("empty file")
    text = "\n".join(t for _, t in lines) + "\n"
    try:
        frame = pl.read_csv(io.StringIO(text), infer_schema=False, truncate_ragged_lines=True)
    except pl.exceptions.PolarsError as exc:
        raise BadInputError(f"not a readable CSV: {exc}") from exc
    wanted = [source.task_column, source.period_column, source.target_column]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise BadInputError(f"missing column(s) {missing}; header is {frame.columns}", "line 1")
    if frame.height != len(lines) - 1:  # quoted newlines would break the line mapping
        raise BadInputError("rows do not map one-to-one onto lines (multi-line quoted fields?)")
    line_numbers = pl.Series("line", [n for n, _ in lines[1:]], dtype=pl.Int32)
    return frame.select(wanted).with_columns(line_numbers), bad


def validate_targets(frame: pl.DataFrame, source: FleetSourceConfig) -> pl.DataFrame:
    """Typed columns task, period, target, line, plus `problem` (null when the row is good)."""
    raw_task, raw_period, raw_target = (
        pl.col(c).str.strip_chars()
        for c in (source.task_column, source.period_column, source.target_column)
    )
    period = raw_period.str.to_date("%Y-%m-%d", strict=False)
    target = raw_target.cast(pl.Float64, strict=False)
    lo, hi = source.target_min, source.target_max
    problem = (
        pl.when(raw_task.is_null() | (raw_task == ""))
        .then(pl.lit(f"missing {source.task_column}"))
        .when(period.is_null())
        .then(
            pl.format(
                f"bad {source.period_column} '{{}}' (want YYYY-MM-DD)", raw_period.fill_null("")
            )
        )
        .when(raw_target.is_null() | (raw_target == ""))
        .then(pl.lit(f"missing {source.target_column}"))
        .when(target.is_null())
        .then(pl.format(f"non-numeric {source.target_column} '{{}}'", raw_target))
        .when(~target.is_finite() | (target < lo) | (target > hi))
        .then(pl.format(f"absurd {source.target_column} {{}} (allowed {lo:g}..{hi:g})", raw_target))
    )
    return frame.select(
        raw_task.alias("task"),
        period.alias("period"),
        target.alias("target"),
        "line",
        problem.alias("problem"),
    )


def flag_duplicates(rows: pl.DataFrame) -> pl.DataFrame:
    """Repeated (task, period): identical values keep the first line; conflicting ones keep none."""
    key = ["task", "period"]
    valid = rows.filter(pl.col("problem").is_null())
    groups = valid.group_by(key).agg(
        pl.len().alias("copies"),
        pl.col("line").min().alias("first"),
        pl.col("target").n_unique().alias("values"),
        pl.col("line").sort().cast(pl.String).str.join(", ").alias("lines"),
    )
    problem = (
        pl.when(pl.col("copies") == 1)
        .then(None)
        .when(pl.col("values") > 1)
        .then(pl.format("conflicting duplicate targets for ({}, {}) at lines {}", *key, "lines"))
        .when(pl.col("line") != pl.col("first"))
        .then(pl.format("duplicate (task, period) of line {}; kept that one", "first"))
    )
    checked = valid.join(groups, on=key).with_columns(problem.alias("problem"))
    invalid = rows.filter(pl.col("problem").is_not_null())
    return pl.concat([invalid, checked.select(rows.columns)]).sort("line")


def parse_targets(s: Staged, source: FleetSourceConfig, run_id: str) -> pl.DataFrame:
    try:
        frame, s.row_problems = read_targets_frame(s, source)
    except BadInputError as exc:
        s.problem = exc
        return pl.DataFrame()
    rows = flag_duplicates(validate_targets(frame, source))
    for line, problem in (
        rows.filter(pl.col("problem").is_not_null()).select("line", "problem").iter_rows()
    ):
        s.row_problems.append(BadInputError(problem, f"line {line}"))
    good = rows.filter(pl.col("problem").is_null()).drop("problem")
    return good.with_columns(
        **{k: pl.lit(v) for k, v in provenance(s, source.name, run_id).items()}
    )


# -- writing ---------------------------------------------------------------------------------


def quarantine_rows(s: Staged, source: str) -> list[QuarantineRow]:
    problems = ([s.problem] if s.problem else []) + s.row_problems
    return [
        QuarantineRow(source, s.rel, str(s.path), p.location, f"{s.path}: {p}", s.content_hash)
        for p in problems
    ]


def file_row(s: Staged, source: str, run_id: str) -> dict[str, Any]:
    return {
        **provenance(s, source, run_id),
        "kind": s.kind,
        "parser": s.parser,
        "status": "quarantined" if s.problem else "ok",
        "size_bytes": s.size,
    }


def write_batch(
    wh: Warehouse,
    batch: Sequence[Staged],
    table: str,
    rows: pl.DataFrame,
    source: str,
    run_id: str,
    replace: bool = True,
) -> list[QuarantineRow]:
    """Replace everything derived from the batch's files, atomically. `replace=False` when no
    file of the batch was known before this run: it has no old rows, so nothing is deleted."""
    if not batch:
        return []
    files = pl.DataFrame([file_row(s, source, run_id) for s in batch])
    quarantined = [q for s in batch for q in quarantine_rows(s, source)]
    with wh.transaction():
        if replace:
            with wh.registered("staged_files", files.select("source", "path")):
                wh.execute("delete_staged_files")
        wh.insert_frame("files", files)
        wh.insert_frame(table, rows)
        wh.write_quarantine(quarantined, run_id)
    return quarantined


def tally_batch(
    tally: Tally, batch: Sequence[Staged], quarantined: Sequence[QuarantineRow]
) -> None:
    tally.ingested += sum(s.problem is None for s in batch)
    tally.quarantined += sum(s.problem is not None for s in batch)
    tally.rejected += [(q.file, q.reason) for q in quarantined]


# -- the adapter -----------------------------------------------------------------------------


def chunks(
    items: Sequence[Path], size: int, sizes: Sequence[int] | None = None, max_bytes: int = 0
) -> Iterator[Sequence[Path]]:
    """Runs of at most `size` items and, given their `sizes`, at most `max_bytes` (a single
    larger item is a batch of its own): a batch's memory is bounded whatever the file sizes."""
    start, total = 0, 0
    for end in range(len(items)):
        grown = total + (sizes[end] if sizes else 0)
        if end > start and (end - start == size or (max_bytes and grown > max_bytes)):
            yield items[start:end]
            start, grown = end, grown - total
        total = grown
    if start < len(items):
        yield items[start:]


def changed(
    paths: Sequence[Path], root: Path, kind: str, parser: str, known: Known, tally: Tally
) -> list[Staged]:
    """Read the files; count and drop those whose bytes and parser match what is stored."""
    staged = []
    for path in paths:
        s = stage(path, root, kind, parser)
        tally.seen += 1
        if known.get(s.rel, ("", "", ""))[:2] == (s.content_hash, parser):
            tally.unchanged += 1
        else:
            staged.append(s)
    return staged


def claim_tasks(configs: Sequence[Staged]) -> None:
    """One config per task: among the files that parsed, the first by name wins (a.json, a.yaml)."""
    owners: dict[str, Path] = {}
    for s in configs:
        if s.row is None:
            continue
        owner = owners.setdefault(s.row["task"], s.path)
        if owner != s.path:
            s.row, s.problem = None, BadInputError(f"duplicate config for task; using {owner}")


def ingest_configs(
    wh: Warehouse,
    source: FleetSourceConfig,
    root: Path,
    run_id: str,
    known: Known,
    tally: Tally,
    batch_size: int,
) -> None:
    """Configs are few and small: all are parsed every run, so task ownership sees every file.

    A file is unchanged when its bytes, parser and resulting status match what is stored.
    """
    parser = f"config-{PARSER_VERSION}"
    paths = safe_files(root, source.config_glob, tally)
    configs = [stage(p, root, "config", parser) for p in paths]
    for s in configs:
        parse_config(s, source.name, run_id)
    claim_tasks(configs)
    tally.seen += len(configs)
    pending = []
    for s in configs:
        status = "quarantined" if s.problem else "ok"
        if known.get(s.rel) == (s.content_hash, parser, status):
            tally.unchanged += 1
        else:
            pending.append(s)
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        rows = pl.DataFrame([s.row for s in batch if s.row])
        tally_batch(tally, batch, write_batch(wh, batch, "configs", rows, source.name, run_id))


def ingest_logs(
    wh: Warehouse,
    source: FleetSourceConfig,
    root: Path,
    run_id: str,
    known: Known,
    tally: Tally,
    batch_size: int,
    workers: int | None = None,
) -> None:
    """Workers read, hash, check, summarise and compress batches; this process writes each
    batch in its own transaction, in order, while the workers parse the next ones."""
    paths = safe_files(root, source.log_glob, tally)
    parser = f"log-{PARSER_VERSION}.{SUMMARY_VERSION}"
    sizes = [p.stat().st_size for p in paths]
    jobs = []
    for batch_paths in chunks(paths, batch_size, sizes, BATCH_BYTES):
        rels = (p.relative_to(root).as_posix() for p in batch_paths)
        mine = {rel: known[rel] for rel in rels if rel in known}
        jobs.append((list(batch_paths), root, parser, mine, source.name, run_id))
    workers = pool_size(sum(sizes)) if workers is None else workers
    for (batch, unchanged), job in zip(ordered_map(prepare_logs, jobs, workers), jobs, strict=True):
        tally.seen += len(job[0])
        tally.unchanged += unchanged
        rows = pl.DataFrame([s.row for s in batch if s.row])
        replace = bool(job[3])  # the batch's files that `known` holds
        quarantined = write_batch(wh, batch, "logs", rows, source.name, run_id, replace)
        tally_batch(tally, batch, quarantined)


def ingest_targets(
    wh: Warehouse, source: FleetSourceConfig, root: Path, run_id: str, known: Known, tally: Tally
) -> None:
    path = root / source.targets_file
    if not path.is_file():
        tally.rejected.append((str(path), f"{path}: targets file not found"))
        return
    if not inside(root, path):
        tally.rejected.append((str(path), f"{path}: resolves outside {root} (symlink?); not read"))
        return
    # The validation rules are part of the parser: changing them re-validates unchanged bytes.
    rules = (
        source.task_column,
        source.period_column,
        source.target_column,
        source.target_min,
        source.target_max,
    )
    parser = f"targets-{PARSER_VERSION}:{sha256(repr(rules).encode())[:12]}"
    batch = changed([path], root, "targets", parser, known, tally)
    if batch:
        rows = parse_targets(batch[0], source, run_id)
        tally_batch(tally, batch, write_batch(wh, batch, "targets", rows, source.name, run_id))


def count_records(wh: Warehouse, source: str) -> int:
    return int(wh.query("source_record_count", source=source)["n"].item())


def write_refused(
    wh: Warehouse, source: str, refused: Sequence[tuple[str, str, str]], run_id: str
) -> None:
    """Quarantine rows for files refused unread, replacing those of an earlier run."""
    if not refused:
        return
    rows = [QuarantineRow(source, rel, file, "file", reason, "") for rel, file, reason in refused]
    paths = pl.DataFrame({"source": [source] * len(rows), "path": [r.path for r in rows]})
    with wh.transaction():
        with wh.registered("refused_files", paths):
            wh.execute("delete_refused_quarantine")
        wh.write_quarantine(rows, run_id)


def build_report(
    wh: Warehouse, source: str, run_id: str, tally: Tally, before: int
) -> IngestReport:
    """The run's counts, once the files it refused are in the quarantine table; `records_added`
    is the net change in the source's records."""
    write_refused(wh, source, tally.refused, run_id)
    records = count_records(wh, source)
    return IngestReport(
        source=source,
        run_id=run_id,
        files_seen=tally.seen,
        files_ingested=tally.ingested,
        files_quarantined=tally.quarantined,
        files_unchanged=tally.unchanged,
        records=records,
        records_added=records - before,
        quarantined=tally.rejected,
    )


def source_root(source: FleetSourceConfig, raw_dir: Path) -> Path:
    return source.root if source.root.is_absolute() else raw_dir / source.root


def ingest_fleet(
    wh: Warehouse,
    source: FleetSourceConfig,
    raw_dir: Path,
    run_id: str,
    batch_size: int = BATCH_FILES,
    workers: int | None = None,
) -> IngestReport:
    """Ingest a fleet source's configs, logs and targets; see the module docstring. `workers`:
    processes that parse logs (None: one per core for large inputs, else in this process)."""
    wh.migrate()
    root = source_root(source, raw_dir)
    known: Known = {
        path: (content_hash, parser, status)
        for path, content_hash, parser, status in wh.query(
            "known_files", source=source.name
        ).iter_rows()
    }
    before = count_records(wh, source.name)
    tally = Tally()
    ingest_configs(wh, source, root, run_id, known, tally, batch_size)
    ingest_logs(wh, source, root, run_id, known, tally, batch_size, workers)
    ingest_targets(wh, source, root, run_id, known, tally)
    return build_report(wh, source.name, run_id, tally, before)
