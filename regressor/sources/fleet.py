"""The `fleet` adapter: task configs (YAML/JSON), daily logs and a targets CSV -> the warehouse.

Idempotent: a file whose bytes (and parser version) are unchanged is skipped; a new or changed file
replaces every row previously derived from it, within one transaction per batch. Bad input never
stops the run: it becomes a `quarantine` row whose reason names the file, and the rest proceeds.
Files that disappear keep their rows (ingest only adds and replaces) until a listed file names
their task or day (a renamed file), and so do files that cannot be read this run (gone since
they were listed, or no permission): those are quarantined unread. A task has one config and a
(task, period) one log: a second listed file for either is quarantined.

Large log sets are read, hashed, summarised and compressed in worker processes (`ingest_logs`)
while this process, DuckDB's single writer, writes the finished batches in order. Raw logs are
kept zstd-compressed in `logs.raw_blob` (`raw_log_text` reads them back).
"""

from __future__ import annotations

import csv
import functools
import json
import multiprocessing
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl
import zstandard
from pydantic import BaseModel, ConfigDict

from regressor.config import FleetSourceConfig
from regressor.sources.common import (
    NOT_READ,
    BadInputError,
    Known,
    Tally,
    as_bad_input,
    each_or_problem,
    forget_files,
    forget_paths,
    known_files,
    message,
    rules_hash,
    safe_files,
    sha256,
    unreadable_reason,
)
from regressor.sources.logs import SUMMARY_VERSION, ShapeCache, summarize_logs
from regressor.sources.parsing import count_lines, decode, parse_mapping, standard_json
from regressor.warehouse import QuarantineRow, Warehouse

# 2: duplicate keys and non-YYYY-MM-DD log names refused; keys, NaN and infinity kept as text
PARSER_VERSION = 2
# Config files only, so that a bump re-parses the (few, small) configs and not every log.
# 1: a hidden file (".yaml", ".#cell.yaml") is refused: its name names no task.
# 2: a YAML `!!set` is a sorted list (its text followed the process' hash seed).
CONFIG_VERSION = 2
BATCH_FILES = 256
BATCH_BYTES = 32_000_000  # a batch of logs also stops here: its frames take ~15x its bytes
# Raw logs are stored zstd-compressed (~5x smaller): DuckDB writes the compressed BLOBs ~20x
# faster than the same text as VARCHAR, which it would compress itself, slowly.
RAW_CODEC, RAW_LEVEL = "zstd", 1
# Logs are parsed in worker processes (the single DuckDB writer stays here) when there are at
# least this many bytes to parse: below it, starting the workers costs more than they save.
POOL_MIN_BYTES = 64_000_000
MAX_WORKERS = 4  # each holds one batch's frames (~0.5 GB at BATCH_BYTES)
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


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
    files_forgotten: list[str] = []  # gone files whose rows this run dropped (`--forget-gone`)
    # Stored target rows per task that no config or no log names: they join no record.
    unmatched_targets: dict[str, int] = {}


@dataclass
class Staged:
    """One file read from disk; `row` is its table row when it parsed, else `problem` says why.
    `read` is False when the file could not be read at all (`problem` says why)."""

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
    read: bool = True


# -- decoding and parsing single files -------------------------------------------------------


def config_json(config: dict[str, Any]) -> str:
    """A parsed config as canonical JSON: keys as text, dates as ISO text, NaN and infinity as
    text (`parsing.plain`, `parsing.standard_json`)."""
    return standard_json(config)


def parse_period(stem: str) -> date:
    """A log's period from its file name, exactly YYYY-MM-DD: `date.fromisoformat` alone also
    takes 20260101 and 2026-W01-4, which would give a day two logs under different names."""
    try:
        if not ISO_DATE.fullmatch(stem):
            raise ValueError(stem)
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
        task = task_of_config(config_path)
        text = decode(config_path.read_bytes())
        # Through JSON and back: the same coercions as ingest (YAML dates become strings).
        config = json.loads(config_json(parse_mapping(text, config_path.suffix.lower())))
    except BadInputError as exc:
        raise ValueError(f"{config_path}: {exc.location}: {exc}") from exc
    try:  # refused as ingest refuses it: a log cut mid-line, a name that is no day
        log_text = decode(log_path.read_bytes())
        check_log_text(log_text)
        period = parse_period(log_path.stem)
    except BadInputError as exc:
        raise ValueError(f"{log_path}: {exc.location}: {exc}") from exc
    return {
        "task": task,
        "period": period.isoformat(),
        "config": config,
        "logs": summarize_logs([log_text])[0],
    }


# -- staging ---------------------------------------------------------------------------------


def stage(path: Path, root: Path, kind: str, parser: str) -> Staged:
    """The file's bytes and hash; one that cannot be read (gone since it was listed, or no
    permission) is staged unread, with the reason as its `problem`."""
    rel = path.relative_to(root).as_posix()
    try:
        with as_bad_input(path):
            data = path.read_bytes()
    except BadInputError as exc:
        return Staged(path, rel, kind, b"", "", parser, problem=exc, read=False)
    return Staged(path, rel, kind, data, sha256(data), parser, len(data))


def refuse_unread(staged: Sequence[Staged], tally: Tally) -> list[Staged]:
    """The files that were read. The others are refused (quarantined without a `files` row), so
    their rows from an earlier read are kept, as for a file that disappeared."""
    for s in staged:
        if not s.read:
            tally.refuse(s.rel, str(s.path), str(s.problem))
    return [s for s in staged if s.read]


def provenance(s: Staged, source: str, run_id: str) -> dict[str, Any]:
    return {
        "source": source,
        "path": s.rel,
        "content_hash": s.content_hash,
        "ingest_run_id": run_id,
    }


def task_of_config(path: Path) -> str:
    """The task a config file names: its name before the extension. `cells/*.yaml` also lists
    hidden files (an editor's `.#cell.yaml` lock, a bare `.yaml`), which name no task."""
    if path.name.startswith("."):
        raise BadInputError(
            f"hidden file {path.name!r}: a config's name before its extension is its task"
        )
    return path.stem


def parse_config(s: Staged, source: str, run_id: str) -> None:
    try:
        with as_bad_input(s.path):
            task = task_of_config(s.path)
            text = decode(s.data)
            parsed = config_json(parse_mapping(text, s.path.suffix.lower()))
    except BadInputError as exc:
        s.problem = exc
        return
    s.row = {
        **provenance(s, source, run_id),
        "task": task,
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
        if not s.read:
            continue
        try:
            with as_bad_input(s.path):
                period = parse_period(s.path.stem)
                text = decode(s.data)
                check_log_text(text)
        except BadInputError as exc:
            s.problem = exc
            continue
        good.append((s, text, period))
    summaries = each_or_problem(
        [text for _, text, _ in good],
        [s.path for s, _, _ in good],
        lambda texts: summarize_logs(texts, cache=cache),
    )
    compressor = zstandard.ZstdCompressor(level=RAW_LEVEL)
    for (s, text, period), summary in zip(good, summaries, strict=True):
        if isinstance(summary, BadInputError):
            s.problem = summary
            continue
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
    """Read, hash and parse one batch of logs (in a worker or here): (changed files, unchanged).
    The changed files include those that could not be read (`read` False)."""
    staged = [stage(path, root, "log", parser) for path in paths]
    changed = [
        s
        for s in staged
        if not s.read or known.get(s.rel, ("", "", ""))[:2] != (s.content_hash, parser)
    ]
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


def decoded_lines(
    data: bytes,
) -> tuple[list[tuple[int, str]], list[tuple[int, BadInputError]]]:
    """Non-blank (line number, text) pairs, and (line number, problem) for each line with bad
    bytes: a problem, not a failure."""
    good, bad = [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            problem = BadInputError(f"not valid UTF-8 ({exc.reason})", f"line {number}")
            bad.append((number, problem))
            continue
        if text.strip():
            good.append((number, text))
    return good, bad


def csv_fields(text: str) -> list[str]:
    """One line's CSV fields. A quote left open is refused: its field would run on over the next
    lines (a quoted line break, or a stray quote), and one bad row must not swallow the rest."""
    if '"' not in text:
        return text.split(",")
    if text.count('"') % 2:
        raise BadInputError("unclosed quote (a quoted field may not span lines)")
    try:
        return next(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise BadInputError(f"not valid CSV: {exc}") from exc


def read_targets_frame(
    s: Staged, source: FleetSourceConfig
) -> tuple[pl.DataFrame, list[BadInputError]]:
    """The wanted columns as strings plus each row's file line number, and the rows refused: one
    that is not valid CSV on its own line, or has more fields than the header (an unquoted comma:
    which field is the target?). A short row's missing fields are null. BadInputError when the
    file as a whole is unusable."""
    lines, undecoded = decoded_lines(s.data)
    if undecoded and (not lines or undecoded[0][0] < lines[0][0]):  # the header's bytes are bad
        first = undecoded[0][1]  # not the next line taken for the header: name the encoding
        raise BadInputError(f"header: {first}", first.location)
    bad = [problem for _, problem in undecoded]
    if not lines:
        raise BadInputError("empty file")
    number, text = lines[0]
    try:
        header = csv_fields(text.removeprefix("\ufeff"))  # a byte order mark (Excel writes one)
    except BadInputError as exc:
        raise BadInputError(f"header: {exc}", f"line {number}") from exc
    wanted = [source.task_column, source.period_column, source.target_column]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise BadInputError(f"missing column(s) {missing}; header is {header}", f"line {number}")
    repeated = [c for c in wanted if header.count(c) > 1]
    if repeated:  # which copy holds the value? (the first was taken, unsaid; tables refuse it)
        raise BadInputError(
            f"column(s) {repeated} named twice; header is {header}", f"line {number}"
        )
    index = {c: header.index(c) for c in wanted}
    columns: dict[str, list[str | None]] = {c: [] for c in wanted}
    numbers = []
    for number, text in lines[1:]:
        try:
            fields = csv_fields(text)
            if len(fields) > len(header):
                raise BadInputError(f"{len(fields)} fields but the header has {len(header)}")
        except BadInputError as exc:
            bad.append(BadInputError(str(exc), f"line {number}"))
            continue
        numbers.append(number)
        for name, values in columns.items():
            values.append(fields[index[name]] if index[name] < len(fields) else None)
    frame = pl.DataFrame(columns, schema=dict.fromkeys(columns, pl.String))
    return frame.with_columns(pl.Series("line", numbers, dtype=pl.Int32)), bad


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
            message(
                f"bad {source.period_column} '", raw_period.fill_null(""), "' (want YYYY-MM-DD)"
            )
        )
        .when(raw_target.is_null() | (raw_target == ""))
        .then(pl.lit(f"missing {source.target_column}"))
        .when(target.is_null())
        .then(message(f"non-numeric {source.target_column} '", raw_target, "'"))
        .when(~target.is_finite() | (target < lo) | (target > hi))
        .then(message(f"absurd {source.target_column} ", raw_target, f" (allowed {lo:g}..{hi:g})"))
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
        with as_bad_input(s.path):
            frame, row_problems = read_targets_frame(s, source)
            rows = flag_duplicates(validate_targets(frame, source))
    except BadInputError as exc:
        s.problem = exc
        return pl.DataFrame()
    s.row_problems = row_problems
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
            forget_files(wh, files)
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
    """Read the files; count and drop those whose bytes and parser match what is stored, and
    refuse those that cannot be read."""
    staged = []
    for s in refuse_unread([stage(path, root, kind, parser) for path in paths], tally):
        tally.seen += 1
        if known.get(s.rel, ("", "", ""))[:2] == (s.content_hash, parser):
            tally.unchanged += 1
        else:
            staged.append(s)
    return staged


def stored_files(known: Known, prefix: str) -> list[str]:
    """Stored files of a kind (their parser starts with `prefix`) whose rows are in use."""
    return sorted(
        r
        for r, (_, parser, status) in known.items()
        if status == "ok" and parser.startswith(prefix)
    )


def supersede_gone(
    wh: Warehouse,
    source: str,
    known: Known,
    prefix: str,
    listed: set[str],
    key_of: Callable[[str], object],
) -> None:
    """A stored file no longer listed (deleted, renamed) keeps its rows, unless a listed file now
    names its key (a task; a task and day): that file takes the key over and the gone file's rows
    are deleted, so no key is ever held twice (a renamed config used to give each record twice)."""
    claimed = {key_of(rel) for rel in listed} - {None}
    gone = [r for r in stored_files(known, prefix) if r not in listed and key_of(r) in claimed]
    forget_paths(wh, source, gone)


def config_task(rel: str) -> str:
    return PurePosixPath(rel).stem


def claim_tasks(configs: Sequence[Staged], root: Path, known: Known) -> None:
    """One config per task: among the files that parsed, the first by name wins (a.json, a.yaml),
    unless a stored one that cannot be read this run holds the task (its rows are kept)."""
    unread = {s.rel for s in configs if not s.read}
    owners = {
        config_task(rel): f"{root / rel} (unreadable this run; its stored rows are kept)"
        for rel in stored_files(known, "config-")
        if rel in unread
    }
    for s in configs:
        if s.row is None:
            continue
        owner = owners.setdefault(s.path.stem, str(s.path))
        if owner != str(s.path):
            s.row, s.problem = None, BadInputError(f"duplicate config for task; using {owner}")
            # Its verdict names the file that serves: looked at again when that one changes
            # (the reason went on naming a deleted file), as a second log's is.
            s.parser += f":duplicate-of:{sha256(owner.encode())[:12]}"


def ingest_configs(
    wh: Warehouse,
    source: FleetSourceConfig,
    root: Path,
    paths: Sequence[Path],
    run_id: str,
    known: Known,
    tally: Tally,
    batch_size: int,
) -> None:
    """Configs are few and small: all are parsed every run, so task ownership sees every file.

    A file is unchanged when its bytes, parser and resulting status match what is stored.
    """
    parser = f"config-{PARSER_VERSION}.{CONFIG_VERSION}"
    configs = [stage(p, root, "config", parser) for p in paths]
    for s in configs:
        if s.read:
            parse_config(s, source.name, run_id)
    claim_tasks(configs, root, known)
    supersede_gone(wh, source.name, known, "config-", {s.rel for s in configs}, config_task)
    configs = refuse_unread(configs, tally)
    tally.seen += len(configs)
    pending = []
    for s in configs:
        status = "quarantined" if s.problem else "ok"
        if known.get(s.rel) == (s.content_hash, s.parser, status):
            tally.unchanged += 1
        else:
            pending.append(s)
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        rows = pl.DataFrame([s.row for s in batch if s.row])
        tally_batch(tally, batch, write_batch(wh, batch, "configs", rows, source.name, run_id))


def log_sizes(paths: Sequence[Path], root: Path, tally: Tally) -> tuple[list[Path], list[int]]:
    """The logs that are still there and their sizes (which bound each batch's bytes); a log
    gone since it was listed is refused."""
    found, sizes = [], []
    for path in paths:
        try:
            with as_bad_input(path):
                sizes.append(path.stat().st_size)
        except BadInputError as exc:
            tally.refuse(path.relative_to(root).as_posix(), str(path), str(exc))
            continue
        found.append(path)
    return found, sizes


def log_key(rel: str) -> tuple[str, date] | None:
    """A log's (task, period) from its path; None when its name is not a date (quarantined)."""
    path = PurePosixPath(rel)
    try:
        return path.parent.name, parse_period(path.stem)
    except BadInputError:
        return None


def second_logs(paths: Sequence[Path], root: Path) -> dict[Path, str]:
    """Logs for a (task, period) that another listed log already holds -> that log. The first by
    name holds the day, decided before reading (which file serves must not depend on its bytes)."""
    rels = {path: path.relative_to(root).as_posix() for path in paths}
    firsts: dict[tuple[str, date], str] = {}
    seconds = {}
    for path, rel in rels.items():
        if key := log_key(rel):
            first = firsts.setdefault(key, str(path))
            if first != str(path):
                seconds[path] = first
    return seconds


def quarantine_second_logs(
    wh: Warehouse,
    source: FleetSourceConfig,
    root: Path,
    seconds: dict[Path, str],
    parser: str,
    run_id: str,
    known: Known,
    tally: Tally,
) -> None:
    """A second log for a (task, period) is quarantined, not stored twice. Its parser names the
    log that serves the day, so the file is looked at again when that changes."""
    batch = []
    for path, first in seconds.items():
        tag = sha256(first.encode())[:12]
        for s in changed([path], root, "log", f"{parser}:second-to:{tag}", known, tally):
            period = parse_period(path.stem).isoformat()
            reason = f"duplicate log for ({path.parent.name}, {period}); using {first}"
            s.problem, s.data = BadInputError(reason), b""
            batch.append(s)
    if batch:
        rows = pl.DataFrame()
        tally_batch(tally, batch, write_batch(wh, batch, "logs", rows, source.name, run_id))


def ingest_logs(
    wh: Warehouse,
    source: FleetSourceConfig,
    root: Path,
    paths: Sequence[Path],
    run_id: str,
    known: Known,
    tally: Tally,
    batch_size: int,
    workers: int | None = None,
) -> None:
    """Workers read, hash, check, summarise and compress batches; this process writes each
    batch in its own transaction, in order, while the workers parse the next ones."""
    parser = f"log-{PARSER_VERSION}.{SUMMARY_VERSION}"
    listed = {path.relative_to(root).as_posix() for path in paths}
    supersede_gone(wh, source.name, known, "log-", listed, log_key)
    seconds = second_logs(paths, root)
    paths, sizes = log_sizes([p for p in paths if p not in seconds], root, tally)
    jobs = []
    for batch_paths in chunks(paths, batch_size, sizes, BATCH_BYTES):
        rels = (p.relative_to(root).as_posix() for p in batch_paths)
        mine = {rel: known[rel] for rel in rels if rel in known}
        jobs.append((list(batch_paths), root, parser, mine, source.name, run_id))
    workers = pool_size(sum(sizes)) if workers is None else workers
    for (staged, unchanged), job in zip(
        ordered_map(prepare_logs, jobs, workers), jobs, strict=True
    ):
        batch = refuse_unread(staged, tally)
        tally.seen += unchanged + len(batch)
        tally.unchanged += unchanged
        rows = pl.DataFrame([s.row for s in batch if s.row])
        replace = bool(job[3])  # the batch's files that `known` holds
        quarantined = write_batch(wh, batch, "logs", rows, source.name, run_id, replace)
        tally_batch(tally, batch, quarantined)
    quarantine_second_logs(wh, source, root, seconds, parser, run_id, known, tally)


def ingest_targets(
    wh: Warehouse, source: FleetSourceConfig, root: Path, run_id: str, known: Known, tally: Tally
) -> None:
    path = root / source.targets_file
    rel = path.relative_to(root).as_posix()
    try:
        if not path.exists() and not path.is_symlink():
            # A quarantine row, not a line of the report alone: no record is built without it.
            problem = "targets file not found (the target rows stored from it, if any, stay)"
        else:
            problem = unreadable_reason(root, path)  # a directory, a FIFO, outside the folder...
    except OSError as exc:  # a folder on its path that may not be searched
        problem = f"cannot be looked up ({exc.strerror})"
    if problem:
        tally.refuse(rel, str(path), problem)
        return
    # One targets file per source: a stored one of another name (the config now names a new
    # file) gives up its rows, or each record was built twice, once from each file.
    supersede_gone(wh, source.name, known, "targets-", {rel}, lambda _: "targets")
    # The validation rules are part of the parser: changing them re-validates unchanged bytes.
    rules = (
        source.task_column,
        source.period_column,
        source.target_column,
        source.target_min,
        source.target_max,
    )
    parser = f"targets-{PARSER_VERSION}:{rules_hash(rules)}"
    batch = changed([path], root, "targets", parser, known, tally)
    if batch:
        rows = parse_targets(batch[0], source, run_id)
        tally_batch(tally, batch, write_batch(wh, batch, "targets", rows, source.name, run_id))


def count_records(wh: Warehouse, source: str) -> int:
    return int(wh.query("source_record_count", source=source)["n"].item())


def write_refused(
    wh: Warehouse, source: str, refused: Sequence[tuple[str, str, str]], run_id: str
) -> None:
    """The source's rows for files refused unread, as this run found them: an earlier run's go
    (a file readable again is ingested or unchanged now), other rows of those files stay."""
    rows = [QuarantineRow(source, rel, file, "file", reason, "") for rel, file, reason in refused]
    with wh.transaction():
        wh.execute("delete_refused_quarantine", source=source, marker=NOT_READ)
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
        unmatched_targets=dict(wh.query("unmatched_targets", source=source).iter_rows()),
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
    known = known_files(wh, source.name)
    before = count_records(wh, source.name)
    tally = Tally()
    configs = safe_files(root, source.config_glob, tally)
    ingest_configs(wh, source, root, configs, run_id, known, tally, batch_size)
    logs = safe_files(root, source.log_glob, tally)
    ingest_logs(wh, source, root, logs, run_id, known, tally, batch_size, workers)
    ingest_targets(wh, source, root, run_id, known, tally)
    return build_report(wh, source.name, run_id, tally, before)
