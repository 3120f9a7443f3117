"""The `table` adapter: rows of CSV/TSV/Parquet files -> `row_records` (one record per row).

Files are streamed in blocks (`BLOCK_BYTES` of text, `PARQUET_ROWS` rows), each block parsed with
polars and written before the next is read, so memory is bounded by the block, not the file.
A bad row (wrong field count, a line over `max_line_bytes`, a missing/non-numeric/absurd target,
a missing task, a repeated key) is quarantined with its line; a bad file (non-UTF-8, empty,
truncated, unreadable, missing columns) is quarantined whole and none of its rows are kept.
Quoted fields are unquoted but may not contain the separator or newlines (the block splitter is
line-based for speed); such rows show up as wrong field counts, never as silently shifted values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from regressor.config import TableSourceConfig, data_root
from regressor.sources.common import (
    Known,
    file_hash,
    file_row,
    known_files,
    quarantine_row,
    replace_files,
    rules_hash,
    safe_files,
    target_problem,
    typed_columns,
)
from regressor.sources.fleet import BadInputError, IngestReport, Tally, build_report, count_records
from regressor.warehouse import Warehouse

PARSER_VERSION = 1
BLOCK_BYTES = 8 << 20
PARQUET_ROWS = 100_000


@dataclass
class Block:
    """Rows of one block as text cells, with their file line (CSV) or row number (Parquet)."""

    frame: pl.DataFrame  # one String column per header name, plus `line`
    problems: list[BadInputError] = field(default_factory=list)


@dataclass
class FileState:
    """What one file has produced so far while its blocks stream through."""

    header: list[str] = field(default_factory=list)
    seen_keys: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    problems: list[BadInputError] = field(default_factory=list)


# -- reading blocks --------------------------------------------------------------------------


def decode_block(data: bytes, offset: int, first_line: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data[: exc.start].count(b"\n")
        where = f"byte {offset + exc.start} (line {line})"
        raise BadInputError(f"not valid UTF-8 ({exc.reason})", where) from exc


def raw_blocks(
    path: Path, max_line: int, block_bytes: int = BLOCK_BYTES
) -> Iterator[tuple[int, list[str], bool]]:
    """(first line number, lines, is last block) of a text file read `block_bytes` at a time.

    A line over `max_line` bytes becomes the marker "\\0<bytes>": it is counted and quarantined
    without ever being held whole, so one runaway line cannot exhaust memory.
    """
    line_no, offset, carry, skipped = 1, 0, b"", 0
    with path.open("rb") as f:
        while True:
            chunk = f.read(block_bytes)
            data = carry + chunk
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            if chunk and cut == 0:  # no line end yet: wait for more, or drop an over-long line
                if skipped or len(data) > max_line:
                    skipped, carry = skipped + len(data), b""
                else:
                    carry = data
                continue
            lines, start = [], 0
            if skipped:  # the over-long line ends at the first newline of this data
                end = data.find(b"\n")
                end = len(data) if end < 0 else end
                lines.append(f"\0{skipped + end}")
                start, skipped = min(end + 1, len(data)), 0
            lines += split_block(data[start:cut], offset + start, line_no + len(lines), max_line)
            yield line_no, lines, not chunk
            if not chunk:
                return
            offset, line_no, carry = offset + cut, line_no + len(lines), data[cut:]


def split_block(data: bytes, offset: int, first_line: int, max_line: int) -> list[str]:
    """Whole lines of a block, decoded at once (a bad byte anywhere makes the file unusable)."""
    lines = decode_block(data, offset, first_line).split("\n")
    if lines[-1] == "":
        lines.pop()  # the block ends with a newline
    if len(data) > max_line:  # only then can one line be over the limit
        lines = [f"\0{n}" if (n := len(x.encode())) > max_line else x for x in lines]
    return lines


def csv_blocks(
    path: Path, sep: str, max_line: int, block_bytes: int, state: FileState
) -> Iterator[Block]:
    """Blocks of a delimited text file; the first line is the header."""
    ended_with_newline = True
    for start, block_lines, last in raw_blocks(path, max_line, block_bytes):
        first, lines = start, block_lines
        if not state.header:
            if not lines or not lines[0].strip():
                raise BadInputError("empty file (no header line)")
            if lines[0].startswith("\0"):
                raise BadInputError(
                    f"header line of {lines[0][1:]} bytes exceeds the limit", "line 1"
                )
            state.header = [h.strip().strip('"') for h in lines[0].rstrip("\r").split(sep)]
            lines, first = lines[1:], first + 1
        if last:
            ended_with_newline = path.stat().st_size == 0 or tail_byte(path) == b"\n"
        yield split_fields(lines, first, sep, state.header, last and not ended_with_newline)
    if not state.header:
        raise BadInputError("empty file")


def tail_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1)


def split_fields(lines: list[str], first: int, sep: str, header: list[str], cut: bool) -> Block:
    """Lines -> one String column per header name; rows with the wrong field count are problems."""
    frame = pl.DataFrame(
        {
            "line": pl.Series(range(first, first + len(lines)), dtype=pl.Int64),
            "text": pl.Series(lines, dtype=pl.String).str.strip_chars_end("\r"),
        }
    ).filter(pl.col("text").str.strip_chars() != "")
    frame = frame.with_columns(
        pl.col("text").str.split(sep).alias("cells"),
        pl.col("text").str.starts_with("\0").alias("long"),
    ).with_columns(pl.col("cells").list.len().alias("n"))
    block = Block(pl.DataFrame())
    ncols = len(header)
    bad = frame.filter(pl.col("long") | (pl.col("n") != ncols))
    if cut and bad.height and bad["line"][-1] == frame["line"][-1]:
        line = frame["line"][-1]
        raise BadInputError(
            "truncated: the last line has no newline and the wrong number of fields", f"line {line}"
        )
    for line, text, long, n in bad.select("line", "text", "long", "n").iter_rows():
        reason = (
            f"line of {text[1:]} bytes exceeds the limit"
            if long
            else f"wrong number of fields: {n}, the header has {ncols}"
        )
        block.problems.append(BadInputError(reason, f"line {line}"))
    good = frame.filter(~pl.col("long") & (pl.col("n") == ncols))
    cells = [
        pl.col("cells").list.get(i).str.strip_chars().str.strip_chars('"').alias(name)
        for i, name in enumerate(header)
    ]
    block.frame = good.select(*cells, "line")
    return block


def parquet_blocks(path: Path, state: FileState) -> Iterator[Block]:
    try:
        schema = pl.read_parquet_schema(path)
        n_rows = pl.scan_parquet(path).select(pl.len()).collect().item()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise BadInputError(f"not a readable Parquet file: {exc}") from exc
    state.header = list(schema)
    if n_rows == 0:
        raise BadInputError("empty file (no rows)")
    for start in range(0, n_rows, PARQUET_ROWS):
        try:
            chunk = pl.scan_parquet(path).slice(start, PARQUET_ROWS).collect()
        except pl.exceptions.PolarsError as exc:
            raise BadInputError(f"not a readable Parquet file: {exc}", f"row {start + 1}") from exc
        frame = chunk.select(pl.all().cast(pl.String)).with_columns(
            pl.int_range(start + 1, start + 1 + chunk.height, dtype=pl.Int64).alias("line")
        )
        yield Block(frame)


def blocks(path: Path, source: TableSourceConfig, state: FileState) -> Iterator[Block]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return parquet_blocks(path, state)
    if suffix not in {".csv", ".tsv", ".txt"}:
        raise BadInputError(f"unsupported table format {suffix!r} (expected .csv, .tsv, .parquet)")
    sep = source.separator or ("\t" if suffix == ".tsv" else ",")
    return csv_blocks(path, sep, source.max_line_bytes, source.block_bytes, state)


# -- rows -> records -------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    target: str
    config: list[str]
    task: str | None
    keys: list[str]


def resolve_columns(header: list[str], source: TableSourceConfig) -> Columns:
    """Which header names play which role; a file lacking a declared column is unusable."""
    if len(set(header)) != len(header):
        raise BadInputError(f"repeated column names in the header {header}", "line 1")
    target = next((c for c in source.target_columns if c in header), None)
    if target is None:
        wanted = list(source.target_columns)
        raise BadInputError(f"no target column (any of {wanted}); header is {header}", "line 1")
    declared = [source.task_column] if source.task_column else []
    declared += list(source.key_columns) + list(source.config_columns or ())
    missing = [c for c in declared if c not in header]
    if missing:
        raise BadInputError(f"missing column(s) {missing}; header is {header}", "line 1")
    if source.config_columns is not None:
        config = list(source.config_columns)
    else:
        # Key columns stay: they identify a row *and* describe its configuration.
        skip = {target, *source.target_columns, source.task_column, *source.exclude_columns}
        config = [c for c in header if c not in skip]
    return Columns(target, config, source.task_column, list(source.key_columns))


def block_records(
    block: Block, cols: Columns, source: TableSourceConfig, ctx: dict[str, str], state: FileState
) -> pl.DataFrame:
    """Good rows of a block as `row_records` rows; bad ones are appended to `state.problems`."""
    frame = block.frame
    value, problem = target_problem(
        pl.col(cols.target), cols.target, source.target_min, source.target_max
    )
    task = (
        pl.col(cols.task).str.strip_chars()
        if cols.task
        else pl.lit(source.task.replace("{stem}", ctx["stem"]))
    )
    problem = pl.when(task.is_null() | (task == "")).then(pl.lit("missing task")).otherwise(problem)
    key = (
        pl.concat_str([pl.col(c).fill_null("") for c in cols.keys], separator=",")
        if cols.keys
        else pl.format(f"{ctx['rel']}:{{}}", pl.col("line"))
    )
    checked = frame.with_columns(
        value.alias("target"), problem.alias("problem"), task.alias("task"), key.alias("key")
    )
    for line, reason in (
        checked.filter(pl.col("problem").is_not_null()).select("line", "problem").iter_rows()
    ):
        state.problems.append(BadInputError(reason, f"line {line}"))
    good = dedupe(checked.filter(pl.col("problem").is_null()), cols, state)
    configs = typed_columns(good, cols.config)
    config_json = (
        [
            json.dumps(dict(zip(cols.config, values, strict=True)), ensure_ascii=False)
            for values in zip(*configs, strict=True)
        ]
        if cols.config
        else ["{}"] * good.height
    )
    return good.select(
        pl.lit(source.name).alias("source"),
        (pl.col("task") + "/" + pl.col("key")).alias("record_key"),
        "task",
        pl.lit(None, pl.Date).alias("period"),
        pl.Series("config_json", config_json, dtype=pl.String),
        pl.lit("{}").alias("logs_json"),
        "target",
        pl.lit(ctx["rel"]).alias("path"),
        pl.col("line").cast(pl.Int32),
        pl.lit(ctx["hash"]).alias("content_hash"),
        pl.lit(ctx["run_id"]).alias("ingest_run_id"),
    )


def dedupe(good: pl.DataFrame, cols: Columns, state: FileState) -> pl.DataFrame:
    """With declared key columns, the first row of a key wins; later ones are quarantined."""
    if not cols.keys:
        return good
    keep = []
    for line, task, key in good.select("line", "task", "key").iter_rows():
        first = state.seen_keys.setdefault(f"{task}/{key}", line)
        keep.append(first == line)
        if first != line:
            state.problems.append(
                BadInputError(f"duplicate key ({key}) of line {first}", f"line {line}")
            )
    return good.filter(pl.Series(keep, dtype=pl.Boolean))


# -- files -----------------------------------------------------------------------------------


def load_file(
    wh: Warehouse, source: TableSourceConfig, root: Path, path: Path, ctx: dict[str, str]
) -> FileState:
    """Stream one file's blocks into `row_records` (inside the caller's transaction)."""
    state = FileState()
    cols: Columns | None = None
    for block in blocks(path, source, state):
        cols = cols or resolve_columns(state.header, source)
        state.problems += block.problems
        rows = block_records(block, cols, source, ctx, state)
        state.rows += wh.insert_frame("row_records", rows)
    if cols is None:
        cols = resolve_columns(state.header, source)  # a header without rows still gets checked
    return state


def ingest_file(
    wh: Warehouse,
    source: TableSourceConfig,
    root: Path,
    path: Path,
    parser: str,
    run_id: str,
    tally: Tally,
) -> None:
    """One file in one transaction: its rows and row problems, or (bad file) a single problem."""
    rel, content_hash = path.relative_to(root).as_posix(), file_hash(path)
    ctx = {"rel": rel, "hash": content_hash, "run_id": run_id, "stem": path.stem}
    size = path.stat().st_size
    with wh.transaction():
        ok_row = file_row(source.name, rel, "table", content_hash, parser, True, size, run_id)
        replace_files(wh, source.name, [ok_row], [], run_id)
        try:
            problems = load_file(wh, source, root, path, ctx).problems
            ok = True
        except BadInputError as exc:
            problems, ok = [exc], False
        quarantined = [quarantine_row(source.name, root, path, p, content_hash) for p in problems]
        row = file_row(source.name, rel, "table", content_hash, parser, ok, size, run_id)
        if not ok:  # drop whatever rows of this file were written before the problem showed
            replace_files(wh, source.name, [row], quarantined, run_id)
        else:
            wh.write_quarantine(quarantined, run_id)
    tally.ingested += ok
    tally.quarantined += not ok
    tally.rejected += [(q.file, q.reason) for q in quarantined]


def ingest_table(wh: Warehouse, source: TableSourceConfig, run_id: str) -> IngestReport:
    """Ingest every file matched by the source's globs; see the module docstring."""
    wh.migrate()
    root = data_root(source.root)
    rules = source.model_dump(exclude={"name", "root", "block_bytes"})
    parser = f"table-{PARSER_VERSION}:{rules_hash(rules)}"
    known: Known = known_files(wh, source.name)
    before, tally = count_records(wh, source.name), Tally()
    for path in safe_files(root, source.files, tally):
        tally.seen += 1
        stored = known.get(path.relative_to(root).as_posix())
        if stored and stored[:2] == (file_hash(path), parser):
            tally.unchanged += 1
            continue
        ingest_file(wh, source, root, path, parser, run_id, tally)
    return build_report(wh, source.name, run_id, tally, before)
