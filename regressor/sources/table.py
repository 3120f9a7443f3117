"""The `table` adapter: rows of CSV/TSV/Parquet files -> `row_records` (one record per row).

Files are streamed in blocks (`BLOCK_BYTES` of text, `PARQUET_ROWS` rows), each block parsed with
polars and written before the next is read, so memory is bounded by the block, not the file.
A bad row (wrong field count, a line over `max_line_bytes`, a missing/non-numeric/absurd target,
a missing task, a repeated key - in this file, or held by a file listed before it -, a missing or
zero baseline under `target_relative_to`, a Parquet binary cell that is not UTF-8) is quarantined
with its line; a bad file (non-UTF-8, empty, truncated, missing columns, a used Parquet column that
cannot be read as text) is quarantined whole and none of its rows are kept. A file that cannot be
read at all (unreadable, vanished) is refused and keeps the rows stored from it until it reads.
Quoted fields are unquoted but may not contain the separator or newlines (the block splitter is
line-based for speed); such rows show up as wrong field counts, never as silently shifted values.
A key repeated across files is held by the file the listing reads first (the smallest path), so
the records do not depend on which file was ingested first: a file that takes a key from one
listed after it has that one's row quarantined in its stead.
A UTF-8 byte order mark before the header is dropped; a config cell that reads as a number too
large for a float (`1e400`) is kept as the text it is, never stored as non-standard JSON Infinity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import polars as pl

from regressor.config import TableSourceConfig, data_root
from regressor.sources.common import (
    BadInputError,
    Known,
    QuarantineRow,
    Tally,
    as_bad_input,
    file_hash,
    file_row,
    forget_paths,
    known_files,
    message,
    quarantine_row,
    replace_files,
    rules_hash,
    safe_files,
    target_problem,
    typed_columns,
)
from regressor.sources.fleet import IngestReport, build_report, count_records
from regressor.targets import MissingScaleError, scale_of
from regressor.warehouse import Warehouse

# 2: BOM dropped from the header; non-finite config numbers kept as text; baselines checked;
# keys checked against other files; Parquet reads only the columns it uses. 3: key parts escaped
# (`key_part`); a row starting with a NUL no longer taken for an over-long line; an integer
# beyond Int64 stays text, one of 19 digits within it an integer (`typed_columns`).
# 4: a row whose key cells are all blank is quarantined ("missing key"), not stored as key "".
# 5: a repeated key is held by the file listed first, not the file ingested first (`Taken`).
PARSER_VERSION = 5
BLOCK_BYTES = 8 << 20
PARQUET_ROWS = 100_000


CELL = "cell:"  # prefix of a data column in a block: no internal column (`line`, ...) has it


def cell(name: str) -> str:
    """A header name's column in a block, apart from the internal ones whatever the name."""
    return CELL + name


@dataclass
class Block:
    """Rows of one block as text cells, with their file line (CSV) or row number (Parquet)."""

    frame: pl.DataFrame  # one String column `cell(name)` per header name, plus `line`
    problems: list[BadInputError] = field(default_factory=list)


@dataclass(frozen=True)
class Taken:
    """A key this file holds that a file listed after it held (`holder`, at `holder_line`): once
    this file proves usable, that row gives way to this one's at `line`."""

    record_key: str
    key: str
    line: int
    holder: str
    holder_line: int
    holder_hash: str


@dataclass
class FileState:
    """What one file has produced so far while its blocks stream through."""

    header: list[str] = field(default_factory=list)
    seen_keys: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    problems: list[BadInputError] = field(default_factory=list)
    taken: list[Taken] = field(default_factory=list)
    usable: bool = True


# -- reading blocks --------------------------------------------------------------------------


def decode_block(data: bytes, offset: int, first_line: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data[: exc.start].count(b"\n")
        where = f"byte {offset + exc.start} (line {line})"
        raise BadInputError(f"not valid UTF-8 ({exc.reason})", where) from exc


# Starts an over-long line's stand-in: no line split at "\n" can (a NUL could: a row starting
# with one was reported as an over-long line, its text as the size).
LONG_LINE = "\n"


def raw_blocks(
    path: Path, max_line: int, block_bytes: int = BLOCK_BYTES
) -> Iterator[tuple[int, list[str], bool]]:
    """(first line number, lines, is last block) of a text file read `block_bytes` at a time.

    A line over `max_line` bytes becomes the marker `LONG_LINE` + its size in bytes: it is counted
    and quarantined without ever being held whole, so one runaway line cannot exhaust memory.
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
                lines.append(f"{LONG_LINE}{skipped + end}")
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
        lines = [f"{LONG_LINE}{n}" if (n := len(x.encode())) > max_line else x for x in lines]
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
            if lines[0].startswith(LONG_LINE):
                raise BadInputError(
                    f"header line of {lines[0][1:]} bytes exceeds the limit", "line 1"
                )
            # A byte order mark (Excel's "CSV UTF-8") is not part of the first column's name.
            text = lines[0].removeprefix("\ufeff").rstrip("\r")
            state.header = [h.strip().strip('"') for h in text.split(sep)]
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
        pl.col("text").str.starts_with(LONG_LINE).alias("long"),
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
        pl.col("cells").list.get(i).str.strip_chars().str.strip_chars('"').alias(cell(name))
        for i, name in enumerate(header)
    ]
    block.frame = good.select(*cells, "line")
    return block


def parquet_blocks(path: Path, source: TableSourceConfig, state: FileState) -> Iterator[Block]:
    """Blocks of a Parquet file, holding only the columns the records use (as text)."""
    try:
        schema = pl.read_parquet_schema(path)
        n_rows = pl.scan_parquet(path).select(pl.len()).collect().item()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise BadInputError(f"not a readable Parquet file: {exc}") from exc
    state.header = list(schema)
    if n_rows == 0:
        raise BadInputError("empty file (no rows)")
    used = resolve_columns(state.header, source).used
    for name in used:
        if schema[name].is_nested():  # cast to text, a struct would lose its field names
            raise BadInputError(f"column {name!r} holds {schema[name]} values, not plain values")
    for start in range(0, n_rows, PARQUET_ROWS):
        try:
            chunk = pl.scan_parquet(path).select(used).slice(start, PARQUET_ROWS).collect()
        except pl.exceptions.PolarsError as exc:
            raise BadInputError(f"not a readable Parquet file: {exc}", f"row {start + 1}") from exc
        yield text_block(chunk, start + 1)


def text_block(chunk: pl.DataFrame, first: int) -> Block:
    """A Parquet chunk as text cells; a binary cell that is not UTF-8 text makes its row a problem
    (the other rows stay), a type with no text form makes the file unusable."""
    lines = pl.int_range(first, first + chunk.height, dtype=pl.Int64, eager=True).alias("line")
    columns, bad_rows = [lines], set()
    for name, dtype in chunk.schema.items():
        if dtype == pl.Binary:
            text, bad = binary_text(chunk[name])
            bad_rows |= {(first + i, name) for i in bad}
        else:
            try:
                text = chunk[name].cast(pl.String)
            except pl.exceptions.PolarsError as exc:
                raise BadInputError(f"column {name!r} holds {dtype} values, not text") from exc
        columns.append(text.alias(cell(name)))
    frame = pl.DataFrame(columns)
    block = Block(frame.filter(~pl.col("line").is_in([line for line, _ in bad_rows])))
    for line, name in sorted(bad_rows):
        block.problems.append(BadInputError(f"column {name!r} is not valid UTF-8", f"line {line}"))
    return block


def binary_text(values: pl.Series) -> tuple[pl.Series, list[int]]:
    """Binary cells decoded as UTF-8 (null where they are not), and the indices of those that
    are not: polars refuses the whole column on one bad value, even cast non-strictly."""
    texts: list[str | None] = []
    bad = []
    for i, raw in enumerate(values.to_list()):
        try:
            texts.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(None)
            bad.append(i)
    return pl.Series(values.name, texts, dtype=pl.String), bad


def blocks(path: Path, source: TableSourceConfig, state: FileState) -> Iterator[Block]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return parquet_blocks(path, source, state)
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

    @property
    def used(self) -> list[str]:
        """Every header name a record reads, once each, in a stable order."""
        task = [self.task] if self.task else []
        return list(dict.fromkeys([self.target, *task, *self.keys, *self.config]))


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
    wh: Warehouse,
    block: Block,
    cols: Columns,
    source: TableSourceConfig,
    ctx: dict[str, str],
    state: FileState,
) -> pl.DataFrame:
    """Good rows of a block as `row_records` rows; bad ones are appended to `state.problems`."""
    value, problem = target_problem(
        pl.col(cell(cols.target)), cols.target, source.target_min, source.target_max
    )
    task = (
        pl.col(cell(cols.task)).str.strip_chars()
        if cols.task
        else pl.lit(source.task.replace("{stem}", ctx["stem"]))
    )
    problem = pl.when(task.is_null() | (task == "")).then(pl.lit("missing task")).otherwise(problem)
    if cols.keys:  # every key cell blank: the key "" was stored, and the next such row was its
        # "duplicate key () of line N"
        blank = [pl.col(cell(c)).fill_null("").str.strip_chars() == "" for c in cols.keys]
        missing = pl.lit(f"missing key ({', '.join(cols.keys)})")
        problem = (
            pl.when(problem.is_null() & pl.all_horizontal(blank)).then(missing).otherwise(problem)
        )
    key = (
        pl.concat_str([key_part(pl.col(cell(c)).fill_null("")) for c in cols.keys], separator=",")
        if cols.keys
        else message(f"{ctx['rel']}:", pl.col("line").cast(pl.String))
    )
    checked = block.frame.with_columns(
        value.alias("target"), problem.alias("problem"), task.alias("task"), key.alias("key")
    )
    valid = without_problems(checked, state)
    configs = config_values(valid, cols)
    record_ids = source.name + "/" + valid.select(RECORD_KEY)["record_key"]  # as the build does
    baseline = [
        baseline_problem(config, source.target_relative_to, record_id)
        for config, record_id in zip(configs, record_ids, strict=True)
    ]
    # allow_nan=False: stored JSON stays standard (config_values keeps non-finite numbers as text)
    config_json = [json.dumps(c, ensure_ascii=False, allow_nan=False) for c in configs]
    valid = valid.with_columns(
        pl.Series("problem", baseline, dtype=pl.String),
        pl.Series("config_json", config_json, dtype=pl.String),
    )
    good = dedupe(wh, without_problems(valid, state), cols, ctx, state)
    return good.select(
        pl.lit(source.name).alias("source"),
        RECORD_KEY,
        "task",
        pl.lit(None, pl.Date).alias("period"),
        "config_json",
        pl.lit("{}").alias("logs_json"),
        "target",
        pl.lit(ctx["rel"]).alias("path"),
        pl.col("line").cast(pl.Int32),
        pl.lit(ctx["hash"]).alias("content_hash"),
        pl.lit(ctx["run_id"]).alias("ingest_run_id"),
    )


def key_part(text: pl.Expr) -> pl.Expr:
    """`text` with `\\`, `,` and `/` escaped by a backslash, so that the parts joined into a record
    key cannot run into each other: keys (`a,b`, `c`) and (`a`, `b,c`), or task `a/b` with key
    `c` and task `a` with key `b/c`, were one record (the second a "duplicate"). A part without
    those characters is unchanged, and so are the record ids of such data."""
    for char in ("\\", ",", "/"):
        text = text.str.replace_all(char, "\\" + char, literal=True)
    return text


# A table row's record key: its task and key (`key_part`), which the record id follows.
RECORD_KEY = (key_part(pl.col("task")) + "/" + pl.col("key")).alias("record_key")


def without_problems(frame: pl.DataFrame, state: FileState) -> pl.DataFrame:
    """The rows whose `problem` is null; the others go to `state.problems` with their line."""
    bad = frame.filter(pl.col("problem").is_not_null()).select("line", "problem")
    state.problems += [BadInputError(reason, f"line {line}") for line, reason in bad.iter_rows()]
    return frame.filter(pl.col("problem").is_null())


def config_values(frame: pl.DataFrame, cols: Columns) -> list[dict[str, object]]:
    """Each row's config as typed JSON values keyed by header name. A cell that reads as a number
    beyond a float's range (`1e400` -> inf) stays the text it is: JSON has no Infinity, and the
    cell is a setting as written, not a measurement to refuse."""
    if not cols.config:
        return [{} for _ in range(frame.height)]
    names = [cell(c) for c in cols.config]
    columns = [
        [
            text if isinstance(v, float) and not math.isfinite(v) else v
            for v, text in zip(values, frame[name].str.strip_chars(), strict=True)
        ]
        for name, values in zip(names, typed_columns(frame, names), strict=True)
    ]
    return [dict(zip(cols.config, row, strict=True)) for row in zip(*columns, strict=True)]


def baseline_problem(config: dict[str, object], relative_to: str | None, record: str) -> str | None:
    """Why a record's target cannot be made relative to its baseline (the dataset build's own
    rule, `regressor.targets.scale_of`), so such a row is quarantined now, not failing the build."""
    if relative_to is None:
        return None
    try:
        scale_of(config, relative_to, record)
    except MissingScaleError as exc:
        return f"no usable baseline: {exc}"
    return None


def dedupe(
    wh: Warehouse, good: pl.DataFrame, cols: Columns, ctx: dict[str, str], state: FileState
) -> pl.DataFrame:
    """With declared key columns, one row per key: the first of this file, unless a file listed
    before it holds the key (then it is quarantined, naming that file's row). A key held by a
    file listed after it is taken (`state.taken`)."""
    if not cols.keys or good.is_empty():
        return good
    record_keys = good.select(RECORD_KEY)
    with wh.registered("candidate_keys", record_keys.unique()):
        stored = wh.query("stored_row_keys", source=ctx["source"], path=ctx["rel"])
    elsewhere = {k: (path, line, digest) for k, path, line, digest in stored.iter_rows()}
    keep = []
    for line, record_key, key in zip(
        good["line"], record_keys["record_key"], good["key"], strict=True
    ):
        holder = elsewhere.get(record_key)
        if holder and not listed_before(ctx["rel"], holder[0]):
            reason = f"duplicate key ({key}){STORED_ELSEWHERE}{holder[0]} line {holder[1]}"
        elif (first := state.seen_keys.setdefault(record_key, line)) != line:
            reason = f"duplicate key ({key}) of line {first}"
        else:
            if holder:
                state.taken.append(Taken(record_key, key, line, *holder))
            keep.append(True)
            continue
        keep.append(False)
        state.problems.append(BadInputError(reason, f"line {line}"))
    return good.filter(pl.Series(keep, dtype=pl.Boolean))


def listed_before(rel: str, other: str) -> bool:
    """Whether the listing (`safe_files`, sorted by path parts) reads `rel` before `other`."""
    return PurePosixPath(rel) < PurePosixPath(other)


def give_way(
    wh: Warehouse, source: str, root: Path, rel: str, taken: list[Taken], run_id: str
) -> list[QuarantineRow]:
    """Drop the rows whose keys `rel` took and quarantine them as the repeats they now are: what
    reading their files again would do. Returns those quarantine rows."""
    if not taken:
        return []
    keys = pl.DataFrame(
        {"path": [t.holder for t in taken], "record_key": [t.record_key for t in taken]}
    )
    with wh.registered("taken_keys", keys):
        wh.execute("delete_taken_keys", source=source)
    rows = [
        quarantine_row(
            source,
            root,
            root / t.holder,
            BadInputError(
                f"duplicate key ({t.key}){STORED_ELSEWHERE}{rel} line {t.line}",
                f"line {t.holder_line}",
            ),
            t.holder_hash,
        )
        for t in taken
    ]
    wh.write_quarantine(rows, run_id)
    return rows


# Marks a row quarantined as the repeat of a key another file holds: when any file changes, files
# with such rows are read again (the first holder may have dropped the key).
STORED_ELSEWHERE = ": first stored from "


# -- files -----------------------------------------------------------------------------------


def load_file(
    wh: Warehouse, source: TableSourceConfig, root: Path, path: Path, ctx: dict[str, str]
) -> FileState:
    """Stream one file's blocks into `row_records` (inside the caller's transaction)."""
    state = FileState()
    cols: Columns | None = None
    lines = 0  # data lines read, good or bad
    for block in blocks(path, source, state):
        cols = cols or resolve_columns(state.header, source)
        state.problems += block.problems
        lines += block.frame.height + len(block.problems)
        rows = block_records(wh, block, cols, source, ctx, state)
        state.rows += wh.insert_frame("row_records", rows)
    if lines == 0:
        resolve_columns(state.header, source)  # a header naming the wrong columns: that first
        # As an empty Parquet file is: ingested, it said nothing of the records it never had.
        raise BadInputError("empty file (a header, no rows)")
    return state


@dataclass(frozen=True)
class Fingerprint:
    """A file's size and sha256 as listed, or why it could not be read (hash and size empty)."""

    content_hash: str
    size: int
    problem: BadInputError | None = None


def fingerprint(path: Path) -> Fingerprint:
    try:
        with as_bad_input(path):  # "unreadable: Permission denied", "vanished since ..."
            return Fingerprint(file_hash(path), path.stat().st_size)
    except BadInputError as exc:
        return Fingerprint("", 0, exc)


def read_rows(
    wh: Warehouse, source: TableSourceConfig, root: Path, path: Path, ctx: dict[str, str]
) -> FileState:
    """The file's state once read; whatever parsing it raises makes it unusable, with that as
    its one problem, never the run's. A read that fails (vanished, an I/O error since it was
    hashed) is raised: it says nothing of the file's content (`ingest_file`)."""
    try:
        with as_bad_input(path):
            return load_file(wh, source, root, path, ctx)
    except BadInputError as exc:
        if isinstance(exc.__cause__, OSError):
            raise
        return FileState(problems=[exc], usable=False)


def ingest_file(
    wh: Warehouse,
    source: TableSourceConfig,
    root: Path,
    path: Path,
    parser: str,
    run_id: str,
    tally: Tally,
    seen: Fingerprint,
) -> None:
    """One readable file in one transaction: its rows and row problems, or (bad file) a single
    problem. One that cannot be read after all (gone, or an I/O error, since it was hashed) is
    refused as an unreadable one is: the transaction rolls back, so its stored rows stay, and
    it is read again next run. Quarantined under the hash it was listed with, it had lost its
    rows and counted as unchanged, never read again until its bytes changed."""
    rel, content_hash, size = path.relative_to(root).as_posix(), seen.content_hash, seen.size
    ctx = {
        "source": source.name,
        "rel": rel,
        "hash": content_hash,
        "run_id": run_id,
        "stem": path.stem,
    }
    try:
        with wh.transaction():
            ok_row = file_row(source.name, rel, "table", content_hash, parser, True, size, run_id)
            replace_files(wh, source.name, [ok_row], [], run_id)
            state = read_rows(wh, source, root, path, ctx)
            ok = state.usable
            quarantined = [
                quarantine_row(source.name, root, path, p, content_hash) for p in state.problems
            ]
            row = file_row(source.name, rel, "table", content_hash, parser, ok, size, run_id)
            if not ok:  # drop whatever rows of this file were written before the problem showed
                replace_files(wh, source.name, [row], quarantined, run_id)
            else:
                wh.write_quarantine(quarantined, run_id)
                quarantined += give_way(wh, source.name, root, rel, state.taken, run_id)
    except BadInputError as exc:  # not read after all (`read_rows`): rolled back, refused
        tally.seen -= 1  # counted as readable when listed; `refuse` counts it
        tally.refuse(rel, str(path), str(exc))
        return
    tally.ingested += ok
    tally.quarantined += not ok
    tally.rejected += [(q.file, q.reason) for q in quarantined]


def forget_renamed(
    wh: Warehouse, source: str, known: Known, fingerprints: dict[str, Fingerprint]
) -> Known:
    """`known` less the stored files no longer listed whose bytes a listed file now has (renamed
    or moved), whose rows are deleted so the listed one is read in their place: they stayed
    beside it, each record twice (keys by path), or every keyed row of the renamed file was
    quarantined as a repeat of the gone one's. A gone file with no such twin keeps its rows
    (a share may be away for a run; `--forget-gone` drops them)."""
    hashes = {fp.content_hash for fp in fingerprints.values() if not fp.problem}
    gone = [rel for rel, (h, _, _) in known.items() if rel not in fingerprints and h in hashes]
    forget_paths(wh, source, gone)
    return {rel: stored for rel, stored in known.items() if rel not in gone}


def to_read(
    wh: Warehouse,
    source: TableSourceConfig,
    known: Known,
    parser: str,
    fingerprints: dict[str, Fingerprint],
) -> dict[str, Fingerprint]:
    """The listed files to read, changed ones first: new or changed bytes or parser, unreadable
    now; then, when any is, unchanged ones holding the repeat of a key another file held."""
    changed, same = {}, {}
    for rel, seen in fingerprints.items():
        stored = known.get(rel)
        unchanged = stored and not seen.problem and stored[:2] == (seen.content_hash, parser)
        (same if unchanged else changed)[rel] = seen
    if changed and source.key_columns:
        marked = wh.query("files_with_quarantine", source=source.name, reason=STORED_ELSEWHERE)
        changed |= {rel: same[rel] for rel in marked["path"] if rel in same}
    return changed


def ingest_table(wh: Warehouse, source: TableSourceConfig, run_id: str) -> IngestReport:
    """Ingest every file matched by the source's globs; see the module docstring."""
    wh.migrate()
    root = data_root(source.root)
    rules = source.model_dump(exclude={"name", "root", "block_bytes"})
    parser = f"table-{PARSER_VERSION}:{rules_hash(rules)}"
    known: Known = known_files(wh, source.name)
    before, tally = count_records(wh, source.name), Tally()
    listed = {p.relative_to(root).as_posix(): p for p in safe_files(root, source.files, tally)}
    fingerprints = {rel: fingerprint(path) for rel, path in listed.items()}
    known = forget_renamed(wh, source.name, known, fingerprints)
    reading = to_read(wh, source, known, parser, fingerprints)
    unreadable = {rel: seen.problem for rel, seen in reading.items() if seen.problem}
    tally.seen += len(listed) - len(unreadable)  # `refuse` counts the others
    tally.unchanged += len(listed) - len(reading)
    for rel, problem in unreadable.items():  # its stored rows stay until it reads again
        tally.refuse(rel, str(listed[rel]), str(problem))
    for rel, seen in reading.items():
        if rel not in unreadable:
            ingest_file(wh, source, root, listed[rel], parser, run_id, tally, seen)
    return build_report(wh, source.name, run_id, tally, before)
