"""The `runs` adapter: one folder per run (a report JSON/YAML + a time-series CSV log) -> `runs`,
then records derived from all of a source's runs -> `row_records`.

Runs are ingested in batches (one transaction each) and a run whose report and log bytes are
unchanged is skipped. Records are rebuilt from the stored runs at the end of every ingest: with a
`reference`, each run on a non-reference setting is paired with a run of the same workload on the
reference setting, and its record holds its own configuration plus the reference run's log
summary and target -- never its own log or anything derived from its own runtime.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from regressor.config import ReferenceConfig, RunsSourceConfig, data_root
from regressor.dataset import PAIRED_RUN
from regressor.sources.common import (
    FLOAT_RE,
    INT64_MAX,
    INT64_MIN,
    INT_RE,
    BadInputError,
    Known,
    Tally,
    as_bad_input,
    each_or_problem,
    file_hash,
    file_row,
    forget_paths,
    inside,
    known_files,
    quarantine_row,
    replace_files,
    rules_hash,
    sha256,
    shown_path,
    unlistable_folders,
    unreadable_reason,
)
from regressor.sources.fleet import IngestReport, build_report, count_records
from regressor.sources.parsing import count_lines, decode, parse_mapping, standard_json
from regressor.sources.series import SERIES_VERSION, read_series, summarize_frames
from regressor.targets import MissingScaleError, scale_of
from regressor.warehouse import Warehouse

# 2: booleans and strings such as "1_000" are no longer targets; a BOM or a YAML merge key no
# longer quarantines a report; NaN and infinity are stored as text; keys that are not text too.
# 3: a quoted integer beyond Int64 stays text (as a float two ids became one), one within it an
# integer; a NaN or infinite task is refused (it was the task "nan").
# 4: a timestamp with an offset dates its run in UTC (`period_of`).
# 5: a YAML `!!set` is a sorted list; a timestamp past the calendar in UTC has no period (the
# run was quarantined); a run reached through symlinks is read once (`where_read`: it was stored
# twice); `reference` values pair as the config shows them (`match_part`).
PARSER_VERSION = 5
BATCH_RUNS = 128
logger = logging.getLogger(__name__)


def parse_report(text: str, suffix: str) -> dict[str, Any]:
    """A report's text -> a mapping of plain JSON values; malformed, non-mapping or
    duplicate-key input is refused. A report not named .yaml or .yml is read as JSON."""
    return parse_mapping(text, suffix if suffix in {".yaml", ".yml"} else ".json")


# -- one run ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One run folder as read from disk; `row` is its `runs` row when the report was usable.
    `log` is where the log belongs; `log_found`: a log is there that may be read."""

    folder: Path
    rel: str
    report: Path | None
    log: Path
    log_found: bool = False
    report_hash: str = ""
    log_hash: str | None = None
    row: dict[str, Any] | None = None
    log_text: str | None = None
    frame: pl.DataFrame | None = None
    problems: dict[str, BadInputError] = field(default_factory=dict)  # file kind -> problem


def run_fields(run: Run, source: RunsSourceConfig, report: dict[str, Any]) -> dict[str, Any]:
    """Path groups, then report fields, then lookups keyed by either."""
    fields: dict[str, Any] = {}
    if source.path_pattern:
        match = re.fullmatch(source.path_pattern, run.rel)
        if match is None:
            raise BadInputError(f"folder {run.rel!r} does not match path_pattern")
        fields |= {k: v for k, v in match.groupdict().items() if v is not None}
    fields |= report
    for name, table in source.lookup.items():
        fields |= table.get(str(fields.get(name)), {})
    return fields


def target_of(fields: dict[str, Any], source: RunsSourceConfig) -> float:
    """The run's target: a number, or text that reads as one (FLOAT_RE, as the table adapter)."""
    name = source.target_field
    raw = fields.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise BadInputError(f"missing target {name}")
    if isinstance(raw, bool):  # JSON true, YAML yes: a bool is an int in Python, not a number
        raise BadInputError(f"non-numeric target {name} {raw} (a boolean)")
    if not isinstance(raw, int | float) and not (
        isinstance(raw, str) and re.fullmatch(FLOAT_RE, raw.strip())
    ):  # "1_000", "nan" and "0x10" are read by float(), not by the table adapter
        raise BadInputError(f"non-numeric target {name} {str(raw)[:40]!r}")
    try:
        value = float(raw)
    except OverflowError as exc:  # an integer beyond float64 (10**400): absurd, not a crash
        raise BadInputError(f"absurd target {name} {str(raw)[:40]}... (beyond float64)") from exc
    if not math.isfinite(value) or not source.target_min <= value <= source.target_max:
        raise BadInputError(
            f"absurd target {name} {raw} (allowed {source.target_min:g}..{source.target_max:g})"
        )
    return value


def json_number(value: Any) -> Any:
    """Numbers written as strings (lumos reports quote them) become numbers; the rest is as is,
    an integer beyond Int64 (as the table adapter: `INT_RE`) too."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if re.fullmatch(INT_RE, text):
        if len(text.lstrip("+-")) > len(str(INT64_MAX)):  # and not a 5,000-digit int() to parse
            return value
        number = int(text)
        return number if INT64_MIN <= number <= INT64_MAX else value
    if re.fullmatch(FLOAT_RE, text) and math.isfinite(number := float(text)):
        return number
    return value


def period_of(fields: dict[str, Any], source: RunsSourceConfig) -> date | None:
    """The run's date: of its timestamp in UTC when the timestamp has an offset (its first ten
    characters gave one instant two dates, `02:30+09:00` the day after `17:30Z`), else as
    written."""
    if not source.period_field or not fields.get(source.period_field):
        return None
    text = str(fields[source.period_field])
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        stamp = None
    if stamp is not None and stamp.tzinfo is not None:
        try:
            return stamp.astimezone(UTC).date()
        except OverflowError:  # 9999-12-31T23:30-05:00 is past the calendar in UTC
            return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None  # a run date is a convenience, not a reason to drop the run


def is_reference(fields: dict[str, Any], source: RunsSourceConfig) -> bool:
    ref = source.reference
    return ref is not None and str(fields.get(ref.field)) == ref.value


def reference_part(target: float, source: RunsSourceConfig) -> dict[str, Any]:
    """What a reference run adds to the config of each record paired with it."""
    assert source.reference is not None
    ref = source.reference
    return {PAIRED_RUN: {ref.field: ref.value, source.target_field: target}}


def check_baseline(
    config: dict[str, Any], target: float, reference: bool, source: RunsSourceConfig
) -> None:
    """Refuse at ingest what `targets.scale_of` would refuse when the dataset is built: a record
    without a positive baseline (`target_relative_to`). A reference run provides the part under
    `reference.` (its target: a run of 0 s is no baseline) to the records paired with it; a run
    with a record of its own provides the rest from its own config."""
    path = source.target_relative_to
    if path is None:
        return
    from_reference = source.reference is not None and path.split(".")[0] == PAIRED_RUN
    try:
        if reference and from_reference:
            scale_of(reference_part(target, source), path, "as a reference run")
        elif not reference and not from_reference:
            scale_of(config, path, "as a record")
    except MissingScaleError as exc:
        raise BadInputError(f"no usable baseline: {exc}") from exc


def report_row(run: Run, source: RunsSourceConfig, run_id: str) -> dict[str, Any]:
    """The run's `runs` row from its report (the log's columns come later), or BadInputError."""
    assert run.report is not None
    data = run.report.read_bytes()
    run.report_hash = sha256(data)  # of the bytes parsed, even if since changed
    fields = run_fields(run, source, parse_report(decode(data), run.report.suffix.lower()))
    task = fields.get(source.task_field)
    if task is None or task == "":
        raise BadInputError(f"missing task field {source.task_field}")
    if isinstance(task, bool) or not isinstance(task, str | int | float):  # it names the task
        kind = type(task).__name__
        raise BadInputError(f"task field {source.task_field} is a {kind}, not a name")
    if isinstance(task, float) and not math.isfinite(task):  # it would be the task "nan"
        raise BadInputError(f"task field {source.task_field} is {task}, not a name")
    target = target_of(fields, source)
    config = {k: json_number(fields[k]) for k in source.config_fields if k in fields}
    check_baseline(config, target, is_reference(fields, source), source)
    return {
        "source": source.name,
        "run_key": run.rel,
        "task": str(task),
        "period": period_of(fields, source),
        "ingest_run_id": run_id,
        "fields_json": standard_json(fields),
        "config_json": standard_json(config),
        "target": target,
    }


def read_report(run: Run, source: RunsSourceConfig, run_id: str) -> None:
    assert run.report is not None
    try:
        with as_bad_input(run.report):
            run.row = report_row(run, source, run_id)
    except BadInputError as exc:
        run.problems["report"] = exc


def log_frame(run: Run, source: RunsSourceConfig) -> tuple[str, pl.DataFrame]:
    data = run.log.read_bytes()
    run.log_hash = sha256(data)
    text = decode(data)
    if not text.strip():
        raise BadInputError("empty file")
    if not text.endswith("\n"):
        raise BadInputError("truncated: the last line has no newline", f"line {count_lines(text)}")
    return text, read_series(text, source.log_columns)


def read_log(run: Run, source: RunsSourceConfig) -> None:
    if not run.log_found:
        return
    try:
        with as_bad_input(run.log):
            run.log_text, run.frame = log_frame(run, source)
    except BadInputError as exc:
        run.problems["log"] = exc


# -- batches ---------------------------------------------------------------------------------


def find_runs(
    root: Path, source: RunsSourceConfig, tally: Tally, aliases: list[str] | None = None
) -> Iterator[Run]:
    """Run folders under `root`. What cannot be read safely is refused unread, counted and
    quarantined (`tally.refuse`): a folder whose name is not UTF-8, that resolves outside `root`
    or cannot be listed; a report or log that is a symlink out of `root`, a directory or a FIFO;
    a folder with neither report nor log; a folder on the way that glob cannot list; a match
    that is no folder (a file, a dangling symlink), which was passed over unsaid."""
    for folder, problem in unlistable_folders(root, [source.run_glob]).items():
        tally.refuse(shown_path(folder.relative_to(root)), shown_path(folder), problem)
    is_folder = {folder: maybe_dir(folder) for folder in sorted(root.glob(source.run_glob))}
    read_at = where_read(root, [folder for folder, yes in is_folder.items() if yes])
    for folder, yes in is_folder.items():
        rel = shown_path(folder.relative_to(root))
        if not yes:
            tally.refuse(rel, shown_path(folder), no_folder(folder))
            continue
        if read_at.get(folder, folder) != folder:
            first = shown_path(read_at[folder].relative_to(root))
            tally.refuse(rel, shown_path(folder), f"the same run folder as {first} (a symlink)")
            if aliases is not None:
                aliases.append(rel)
            continue
        try:
            run = folder_run(root, folder, source, tally)
        except OSError as exc:  # a folder that cannot be listed or searched
            problem = f"the run folder cannot be read ({exc.strerror or exc})"
            tally.refuse(rel, shown_path(folder), problem)
            continue
        if run is not None:
            yield run


def where_read(root: Path, folders: list[Path]) -> dict[Path, Path]:
    """Each folder reached through a symlink (`latest -> run_2`, or a linked parent folder) and
    the one of its aliases that is read: the one without a symlink on its way from `root`, else
    the first in order. Read as themselves, the run was stored twice, maybe on both sides of a
    split. A folder whose link cannot be followed is left to `folder_run`."""
    by_target: dict[Path, list[Path]] = {}
    for folder in folders:
        try:
            by_target.setdefault(folder.resolve(), []).append(folder)
        except (OSError, RuntimeError):  # a loop: refused when it is read
            continue
    real_root = root.resolve()
    read_at = {}
    for target, aliases in by_target.items():
        plain = [f for f in aliases if real_root / f.relative_to(root) == target]
        chosen = (plain or aliases)[0]
        read_at |= dict.fromkeys(aliases, chosen)
    return read_at


def no_folder(path: Path) -> str:
    """Why a `run_glob` match that is no directory is refused."""
    if path.is_symlink() and not path.exists():
        return "a symlink to nothing (dangling, or a loop) where a run folder is expected"
    return "a file where a run folder is expected (`run_glob` matches it)"


def maybe_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return True  # cannot tell: `folder_run` fails on it and the folder is refused


def folder_run(root: Path, folder: Path, source: RunsSourceConfig, tally: Tally) -> Run | None:
    """The folder's run (its first usable report, its log), or None when nothing is readable."""
    rel, shown = shown_path(folder.relative_to(root)), shown_path(folder)
    if shown != str(folder):
        tally.refuse(rel, shown, "the run folder's name is not valid UTF-8 (rename it)")
        return None
    if not inside(root, folder):
        tally.refuse(rel, shown, f"resolves outside the source folder {root} (symlink?)")
        return None
    os.listdir(folder)  # raises when the folder cannot be read: refused whole by the caller
    found: dict[str, Path] = {}
    refused = False
    for kind, name in [("report", n) for n in source.report_files] + [("log", source.log_file)]:
        path = folder / name
        if not (path.is_symlink() or path.exists()):
            continue
        if kind in found:  # the fleet adapter refuses a second config or log alike
            problem = f"a second {kind}: {found[kind].name} is the one read"
            tally.refuse(shown_path(path.relative_to(root)), str(path), problem)
        elif problem := unreadable_reason(root, path):
            tally.refuse(shown_path(path.relative_to(root)), str(path), problem)
            refused = True
        else:
            found[kind] = path
    if not found:
        if not refused:
            tally.refuse(rel, shown, "a run folder without report or log")
        return None
    log = found.get("log", folder / source.log_file)
    return Run(
        folder, folder.relative_to(root).as_posix(), found.get("report"), log, "log" in found
    )


def run_files(run: Run) -> list[tuple[str, Path]]:
    files = [("report", run.report)] if run.report else []
    return files + ([("log", run.log)] if run.log_found else [])


def parse_batch(batch: Sequence[Run], source: RunsSourceConfig, run_id: str) -> None:
    for run in batch:
        if run.report is None:
            no_report = f"no report ({', '.join(source.report_files)}) in the run folder"
            run.problems["log"] = BadInputError(no_report)
        else:  # (a run with a file unreadable when hashed never gets here: left as stored)
            read_report(run, source, run_id)
        if run.row is not None:
            read_log(run, source)
    # All of the batch's logs in one polars pass; a run whose log is bad keeps its config record.
    with_logs = [(r, r.row, r.frame) for r in batch if r.frame is not None and r.row is not None]
    summaries = each_or_problem(
        [frame for _, _, frame in with_logs],
        [run.log for run, _, _ in with_logs],
        lambda frames: summarize_frames(frames, source.log_window_s),
    )
    for (run, row, _), summary in zip(with_logs, summaries, strict=True):
        if isinstance(summary, BadInputError):  # that log alone: the run keeps its config record
            run.problems["log"] = summary
            continue
        row |= {
            "log_hash": run.log_hash,
            "log_lines": count_lines(run.log_text or ""),
            "raw_log": run.log_text,
            "logs_json": json.dumps(summary, ensure_ascii=False),
        }


def write_runs(
    wh: Warehouse,
    batch: Sequence[Run],
    root: Path,
    source: RunsSourceConfig,
    parser: str,
    run_id: str,
    tally: Tally,
) -> None:
    files, quarantined, rows = [], [], []
    for run in batch:
        for kind, path in run_files(run):
            problem = run.problems.get(kind)
            h = run.report_hash if kind == "report" else run.log_hash or ""
            rel = path.relative_to(root).as_posix()
            size = file_size(path)
            files.append(file_row(source.name, rel, kind, h, parser, problem is None, size, run_id))
            if problem is not None:
                quarantined.append(quarantine_row(source.name, root, path, problem, h))
            tally.ingested += problem is None
            tally.quarantined += problem is not None
        if run.row is not None:
            paths = {"path": rel_of(run.report, root), "log_path": rel_of(run.log, root)}
            rows.append(run.row | paths | {"content_hash": run.report_hash})
    with wh.transaction():
        if files:
            replace_files(wh, source.name, files, quarantined, run_id)
        wh.insert_frame("runs", runs_frame(rows))
    tally.rejected += [(q.file, q.reason) for q in quarantined]


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # vanished since it was read or hashed: its problem says so
        return 0


def rel_of(path: Path | None, root: Path) -> str:
    return "" if path is None else path.relative_to(root).as_posix()


RUNS_SCHEMA = {
    "source": pl.String,
    "run_key": pl.String,
    "task": pl.String,
    "period": pl.Date,
    "path": pl.String,
    "log_path": pl.String,
    "content_hash": pl.String,
    "log_hash": pl.String,
    "ingest_run_id": pl.String,
    "fields_json": pl.String,
    "config_json": pl.String,
    "target": pl.Float64,
    "log_lines": pl.Int32,
    "raw_log": pl.String,
    "logs_json": pl.String,
}


def runs_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    full = [{k: r.get(k) for k in RUNS_SCHEMA} for r in rows]
    return pl.DataFrame(full, schema=RUNS_SCHEMA)


@dataclass
class Listed:
    """What this ingest found: every run file's path, and each readable run's (report hash,
    log hash), by which a stored run gone from its folder is known to have moved."""

    paths: set[str] = field(default_factory=set)
    runs: set[tuple[str, str | None]] = field(default_factory=set)


def changed_runs(
    runs: Iterator[Run], root: Path, parser: str, known: Known, tally: Tally, listed: Listed
) -> Iterator[Run]:
    """Runs with a new or changed file; every file is counted as seen here, and noted in
    `listed`. A run with a file that cannot be read (unreadable, vanished) is left as stored:
    its files are refused."""
    for run in runs:
        files = run_files(run)
        listed.paths.update(path.relative_to(root).as_posix() for _, path in files)
        hashes = {kind: hash_of(run, kind, path) for kind, path in files}
        if run.problems:
            leave_as_stored(run, files, root, tally)
            continue
        tally.seen += len(files)
        run.report_hash, run.log_hash = hashes.get("report", ""), hashes.get("log")
        listed.runs.add((run.report_hash, run.log_hash))
        same = [
            (known.get(path.relative_to(root).as_posix()) or ("", "", ""))[:2]
            == (hashes[k], parser)
            for k, path in files
        ]
        if all(same):
            tally.unchanged += len(files)
            continue
        yield run


def leave_as_stored(run: Run, files: list[tuple[str, Path]], root: Path, tally: Tally) -> None:
    """Refuse each file of a run one of whose files cannot be read, so the run's stored rows
    stay (a transient fault does not drop a record) until every file reads again."""
    unreadable = next(path.name for kind, path in files if kind in run.problems)
    for kind, path in files:
        problem = run.problems.get(kind) or f"left as stored: {unreadable} beside it is unreadable"
        tally.refuse(path.relative_to(root).as_posix(), str(path), str(problem))


def hash_of(run: Run, kind: str, path: Path) -> str:
    try:
        with as_bad_input(path):
            return file_hash(path)
    except BadInputError as exc:
        run.problems[kind] = exc
        return ""


def batches(runs: Iterator[Run], size: int) -> Iterator[list[Run]]:
    batch: list[Run] = []
    for run in runs:
        batch.append(run)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- records ---------------------------------------------------------------------------------


# Joins a run's key and its reference run's key in the record key of an extra pair.
EXTRA_PAIR_MARK = "#ref="


def is_extra_pair(record_key: str) -> bool:
    """A record pairing a run with another than its matched reference run (`pairs: all`)."""
    return EXTRA_PAIR_MARK in record_key


def pick_reference(
    run: dict[str, Any], refs: list[dict[str, Any]], pair_on: str | None
) -> dict[str, Any] | None:
    """The reference run with the same `pair_on` value (e.g. repetition), else the first one."""
    usable = [r for r in refs if r["logs_json"] is not None]
    if pair_on:
        own = match_part(run["fields"].get(pair_on))
        same = [r for r in usable if match_part(r["fields"].get(pair_on)) == own]
        usable = same or usable
    return usable[0] if usable else None


def paired_records(
    run: dict[str, Any],
    refs: list[dict[str, Any]],
    ref: ReferenceConfig,
    source: RunsSourceConfig,
    run_id: str,
) -> list[dict[str, Any]]:
    """The run's record with its matched reference run, then (`pairs: all`) one per other usable
    reference run of its group, keyed apart so the matched record keeps its own key."""
    chosen = pick_reference(run, refs, ref.pair_on)
    if chosen is None:
        return []
    out = [record(run, chosen, source, run_id)]
    if ref.pairs == "all":
        for other in refs:
            if other is not chosen and other["logs_json"] is not None:
                extra = record(run, other, source, run_id)
                extra["record_key"] += EXTRA_PAIR_MARK + other["run_key"]
                out.append(extra)
    return out


def match_key(fields: dict[str, Any], match: Sequence[str]) -> tuple[Any, ...]:
    """The values a run pairs with its reference on, as a dict key (`match_part`)."""
    return tuple(match_part(fields.get(m)) for m in match)


def match_part(value: Any) -> tuple[str, Any]:
    """A value as the config shows it (`json_number`: `"1"` is 1), tagged with its kind. Raw,
    Python's `True == 1 == 1.0` paired a `scale: true` reference with `scale: 1` runs, while
    `"1"` paired with nothing. A list or a mapping, which is no key, is spelt as JSON: raised
    here, the `TypeError` failed every later ingest of the source."""
    value = json_number(value)
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, int | float):
        return ("number", float(value))  # 1 and 1.0 are one number
    if isinstance(value, list | dict):
        return ("json", json.dumps(value, sort_keys=True))
    return ("text", str(value))


def build_records(
    runs: pl.DataFrame, source: RunsSourceConfig, run_id: str
) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
    """The source's records, and (record path, reason) for each left out: for want of a
    reference run to pair with, or of a baseline."""
    rows = [r | {"fields": json.loads(r["fields_json"])} for r in runs.iter_rows(named=True)]
    ref = source.reference
    unpaired: list[tuple[str, str]] = []
    if ref is None:
        out = [record(r, None, source, run_id) for r in rows]
    else:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for r in rows:
            if is_reference(r["fields"], source):
                groups.setdefault(match_key(r["fields"], ref.match), []).append(r)
        out = []
        for r in rows:
            if is_reference(r["fields"], source):
                continue  # a reference run has no reference of its own
            key = match_key(r["fields"], ref.match)
            paired = paired_records(r, groups.get(key, []), ref, source, run_id)
            if not paired:  # stored, but no record: said, not silently dropped
                unpaired.append((r["path"], no_reference(r["fields"], ref)))
            out += paired
    kept, skipped = with_baselines(out, source.target_relative_to)
    return pl.DataFrame(kept, schema=RECORD_SCHEMA), unpaired + skipped


def no_reference(fields: dict[str, Any], ref: ReferenceConfig) -> str:
    """Why a run has no record: no reference run of its workload with a usable log."""
    workload = ", ".join(f"{m}={fields.get(m)!r}" for m in ref.match)
    return (
        f"no {ref.field}={ref.value} run with a usable log for {workload} to pair with; "
        "the record is left out"
    )


def with_baselines(
    records: list[dict[str, Any]], relative_to: str | None
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Records whose baseline `targets.scale_of` accepts, and the others' reasons. Ingest refuses
    such runs already (`check_baseline`); this catches a pairing that changed since (the
    `reference` rules do not re-parse stored runs), so the dataset build never meets one."""
    if relative_to is None:
        return records, []
    kept, skipped = [], []
    for rec in records:
        try:
            scale_of(json.loads(rec["config_json"]), relative_to, f"record {rec['record_key']}")
        except MissingScaleError as exc:
            skipped.append((rec["path"], f"{exc}; the record is left out"))
            continue
        kept.append(rec)
    return kept, skipped


RECORD_SCHEMA = {
    "source": pl.String,
    "record_key": pl.String,
    "task": pl.String,
    "period": pl.Date,
    "config_json": pl.String,
    "logs_json": pl.String,
    "target": pl.Float64,
    "path": pl.String,
    "line": pl.Int32,
    "ref_path": pl.String,
    "content_hash": pl.String,
    "ingest_run_id": pl.String,
}


def record(
    run: dict[str, Any], ref: dict[str, Any] | None, source: RunsSourceConfig, run_id: str
) -> dict[str, Any]:
    config = json.loads(run["config_json"])
    logs = run["logs_json"] if source.own_log and run["logs_json"] else "{}"
    if ref is not None and source.reference is not None:
        config |= reference_part(ref["target"], source)
        logs = ref["logs_json"]
    return {
        "source": source.name,
        "record_key": run["run_key"],
        "task": run["task"],
        "period": run["period"],
        "config_json": json.dumps(config, ensure_ascii=False),
        "logs_json": logs,
        "target": run["target"],
        "path": run["path"],
        "line": 0,  # marks a derived run record (rebuilt as a whole)
        "ref_path": None if ref is None else ref["path"],
        "content_hash": run["content_hash"],
        "ingest_run_id": run_id,
    }


def rebuild_records(
    wh: Warehouse, source: RunsSourceConfig, root: Path, run_id: str
) -> list[tuple[str, str]]:
    """Replace the source's records; returns (file, reason) for each record left out."""
    records, skipped = build_records(wh.query("run_fields", source=source.name), source, run_id)
    with wh.transaction():
        wh.execute("delete_run_records", source=source.name)
        wh.insert_frame("row_records", records)
    for path, reason in skipped:
        logger.warning("%s: %s", root / path, reason)
    return [(str(root / path), f"{root / path}: {reason}") for path, reason in skipped]


def forget_aliases(wh: Warehouse, source: str, known: Known, aliases: list[str]) -> None:
    """Drop what an earlier ingest stored from run folders now read under another name
    (`where_read`): refused files otherwise keep their rows, and the link still resolves, so
    `--forget-gone` never dropped them either."""
    stale = [path for path in known if any(path.startswith(f"{alias}/") for alias in aliases)]
    forget_paths(wh, source, stale)


def forget_moved(wh: Warehouse, source: str, listed: Listed) -> None:
    """Drop the stored runs whose folder is gone while a listed run has their very files (the
    same report and log bytes): a renamed or moved run folder, whose old name kept its run, a
    record twice under both names until `--forget-gone`. A gone run with no such twin keeps
    its rows (a share may be away for a run)."""
    moved = [
        path
        for report, log, report_hash, log_hash in wh.query("stored_runs", source=source).rows()
        if report not in listed.paths and (report_hash, log_hash) in listed.runs
        for path in (report, log)
        if path is not None and path not in listed.paths
    ]
    forget_paths(wh, source, moved)


def ingest_runs(
    wh: Warehouse, source: RunsSourceConfig, run_id: str, batch_size: int = BATCH_RUNS
) -> IngestReport:
    """Ingest every run folder under the source's root; see the module docstring."""
    wh.migrate()
    root = data_root(source.root)
    rules = source.model_dump(exclude={"name", "root", "reference", "own_log"})
    parser = f"runs-{PARSER_VERSION}.{SERIES_VERSION}:{rules_hash(rules)}"
    known, tally, aliases, listed = known_files(wh, source.name), Tally(), [], Listed()
    before = count_records(wh, source.name)
    for batch in batches(
        changed_runs(find_runs(root, source, tally, aliases), root, parser, known, tally, listed),
        batch_size,
    ):
        parse_batch(batch, source, run_id)
        write_runs(wh, batch, root, source, parser, run_id, tally)
    forget_aliases(wh, source.name, known, aliases)
    forget_moved(wh, source.name, listed)
    tally.rejected += rebuild_records(wh, source, root, run_id)
    return build_report(wh, source.name, run_id, tally, before)
