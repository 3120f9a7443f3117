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
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from regressor.config import ReferenceConfig, RunsSourceConfig, data_root
from regressor.sources.common import (
    FLOAT_RE,
    INT_RE,
    Known,
    file_hash,
    file_row,
    inside,
    known_files,
    quarantine_row,
    replace_files,
    rules_hash,
)
from regressor.sources.fleet import (
    YAML_LOADER,
    BadInputError,
    IngestReport,
    Tally,
    build_report,
    count_lines,
    count_records,
    decode,
    parse_yaml,
)
from regressor.sources.series import SERIES_VERSION, read_series, summarize_frames
from regressor.warehouse import Warehouse

PARSER_VERSION = 1
BATCH_RUNS = 128


class UniqueKeyLoader(YAML_LOADER):  # type: ignore[misc, valid-type]
    """A safe YAML loader that refuses repeated mapping keys instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise BadInputError(f"duplicate key {k!r} in a JSON object")
    return dict(pairs)


def parse_report(text: str, suffix: str) -> dict[str, Any]:
    """A report's text -> a mapping; malformed, non-mapping or duplicate-key input is refused."""
    if not text.strip():
        raise BadInputError("empty file")
    if suffix in {".yaml", ".yml"}:
        value = parse_yaml(text, UniqueKeyLoader)
    else:
        try:
            value = json.loads(text, object_pairs_hook=unique_pairs)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"not valid JSON: {exc.msg}", f"line {exc.lineno}") from exc
    if not isinstance(value, dict):
        raise BadInputError(f"expected a mapping at the top level, got {type(value).__name__}")
    return value


# -- one run ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One run folder as read from disk; `row` is its `runs` row when the report was usable."""

    folder: Path
    rel: str
    report: Path | None
    log: Path
    report_hash: str = ""
    log_hash: str | None = None
    row: dict[str, Any] | None = None
    log_text: str | None = None
    frame: pl.DataFrame | None = None
    problems: dict[str, BadInputError] = field(default_factory=dict)  # file rel -> problem
    log_outside: bool = False  # the log resolves outside the root: never read


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
    name = source.target_field
    raw = fields.get(name)
    if raw is None or raw == "":
        raise BadInputError(f"missing target {name}")
    try:
        value = float(raw)
    except OverflowError as exc:  # an integer beyond float64 (10**400): absurd, not a crash
        raise BadInputError(f"absurd target {name} {str(raw)[:40]}... (beyond float64)") from exc
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"non-numeric target {name} {str(raw)[:40]!r}") from exc
    if not math.isfinite(value) or not source.target_min <= value <= source.target_max:
        raise BadInputError(
            f"absurd target {name} {raw} (allowed {source.target_min:g}..{source.target_max:g})"
        )
    return value


def json_number(value: Any) -> Any:
    """Numbers written as strings (lumos reports quote them) become numbers; the rest is as is."""
    if isinstance(value, str) and re.fullmatch(FLOAT_RE, value.strip()):
        number = float(value)
        if math.isfinite(number):
            return int(value) if re.fullmatch(INT_RE, value.strip()) else number
    return value


def period_of(fields: dict[str, Any], source: RunsSourceConfig) -> date | None:
    if not source.period_field or not fields.get(source.period_field):
        return None
    try:
        return date.fromisoformat(str(fields[source.period_field])[:10])
    except ValueError:
        return None  # a run date is a convenience, not a reason to drop the run


def read_report(run: Run, source: RunsSourceConfig, run_id: str) -> None:
    assert run.report is not None
    data = run.report.read_bytes()
    try:
        fields = run_fields(run, source, parse_report(decode(data), run.report.suffix.lower()))
        task = fields.get(source.task_field)
        if task is None or task == "":
            raise BadInputError(f"missing task field {source.task_field}")
        target = target_of(fields, source)
    except BadInputError as exc:
        run.problems["report"] = exc
        return
    config = {k: json_number(fields[k]) for k in source.config_fields if k in fields}
    run.row = {
        "source": source.name,
        "run_key": run.rel,
        "task": str(task),
        "period": period_of(fields, source),
        "ingest_run_id": run_id,
        "fields_json": json.dumps(fields, default=str, ensure_ascii=False),
        "config_json": json.dumps(config, default=str, ensure_ascii=False),
        "target": target,
    }


def read_log(run: Run, source: RunsSourceConfig) -> None:
    if not has_log(run):
        return
    data = run.log.read_bytes()
    try:
        text = decode(data)
        if not text.strip():
            raise BadInputError("empty file")
        if not text.endswith("\n"):
            raise BadInputError(
                "truncated: the last line has no newline", f"line {count_lines(text)}"
            )
        frame = read_series(text, source.log_columns)
    except BadInputError as exc:
        run.problems["log"] = exc
        return
    run.log_text, run.frame = text, frame


# -- batches ---------------------------------------------------------------------------------


def find_runs(
    root: Path, source: RunsSourceConfig, rejected: list[tuple[str, str]]
) -> Iterator[Run]:
    """Run folders under `root`; a folder or file that resolves outside `root` is never read."""
    for folder in sorted(p for p in root.glob(source.run_glob) if p.is_dir()):
        if not inside(root, folder):
            rejected.append(
                (str(folder), f"{folder}: resolves outside {root} (symlink?); not read")
            )
            continue
        files = [folder / n for n in (*source.report_files, source.log_file)]
        for path in files:
            if path.is_file() and not inside(root, path):
                rejected.append(
                    (str(path), f"{path}: resolves outside {root} (symlink?); not read")
                )
        report = next((p for p in files[:-1] if p.is_file() and inside(root, p)), None)
        run = Run(folder, folder.relative_to(root).as_posix(), report, files[-1])
        run.log_outside = files[-1].is_file() and not inside(root, files[-1])
        yield run


def run_files(run: Run) -> list[tuple[str, Path]]:
    files = [("report", run.report)] if run.report else []
    return files + ([("log", run.log)] if has_log(run) else [])


def has_log(run: Run) -> bool:
    return not run.log_outside and run.log.is_file()


def parse_batch(batch: Sequence[Run], source: RunsSourceConfig, run_id: str) -> None:
    for run in batch:
        if run.report is None:
            run.problems["log"] = BadInputError(
                f"no report ({', '.join(source.report_files)}) in the run folder"
            )
        else:
            read_report(run, source, run_id)
        if run.row is not None:
            read_log(run, source)
    # All of the batch's logs in one polars pass; a run whose log is bad keeps its config record.
    with_logs = [(r, r.row, r.frame) for r in batch if r.frame is not None and r.row is not None]
    summaries = summarize_frames([frame for _, _, frame in with_logs], source.log_window_s)
    for (run, row, _), summary in zip(with_logs, summaries, strict=True):
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
            size = path.stat().st_size
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


def changed_runs(
    runs: Iterator[Run], root: Path, parser: str, known: Known, tally: Tally
) -> Iterator[Run]:
    """Runs with a new or changed file; every file is counted as seen here."""
    for run in runs:
        files = run_files(run)
        tally.seen += len(files)
        hashes = {kind: file_hash(path) for kind, path in files}
        run.report_hash, run.log_hash = hashes.get("report", ""), hashes.get("log")
        same = [
            (known.get(path.relative_to(root).as_posix()) or ("", "", ""))[:2]
            == (hashes[k], parser)
            for k, path in files
        ]
        if files and all(same):
            tally.unchanged += len(files)
            continue
        if not files:
            tally.rejected.append(
                (str(run.folder), f"{run.folder}: run folder without report or log")
            )
            continue
        yield run


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
        same = [r for r in usable if r["fields"].get(pair_on) == run["fields"].get(pair_on)]
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


def build_records(runs: pl.DataFrame, source: RunsSourceConfig, run_id: str) -> pl.DataFrame:
    rows = [r | {"fields": json.loads(r["fields_json"])} for r in runs.iter_rows(named=True)]
    ref = source.reference
    if ref is None:
        out = [record(r, None, source, run_id) for r in rows]
    else:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for r in rows:
            if str(r["fields"].get(ref.field)) == ref.value:
                groups.setdefault(tuple(r["fields"].get(m) for m in ref.match), []).append(r)
        out = []
        for r in rows:
            if str(r["fields"].get(ref.field)) == ref.value:
                continue  # a reference run has no reference of its own
            key = tuple(r["fields"].get(m) for m in ref.match)
            out += paired_records(r, groups.get(key, []), ref, source, run_id)
    return pl.DataFrame(out, schema=RECORD_SCHEMA)


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
        config["reference"] = {
            source.reference.field: source.reference.value,
            source.target_field: ref["target"],
        }
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


def rebuild_records(wh: Warehouse, source: RunsSourceConfig, run_id: str) -> None:
    records = build_records(wh.query("run_fields", source=source.name), source, run_id)
    with wh.transaction():
        wh.execute("delete_run_records", source=source.name)
        wh.insert_frame("row_records", records)


def ingest_runs(
    wh: Warehouse, source: RunsSourceConfig, run_id: str, batch_size: int = BATCH_RUNS
) -> IngestReport:
    """Ingest every run folder under the source's root; see the module docstring."""
    wh.migrate()
    root = data_root(source.root)
    rules = source.model_dump(exclude={"name", "root", "reference", "own_log"})
    parser = f"runs-{PARSER_VERSION}.{SERIES_VERSION}:{rules_hash(rules)}"
    known, tally = known_files(wh, source.name), Tally()
    before = count_records(wh, source.name)
    for batch in batches(
        changed_runs(find_runs(root, source, tally.rejected), root, parser, known, tally),
        batch_size,
    ):
        parse_batch(batch, source, run_id)
        write_runs(wh, batch, root, source, parser, run_id, tally)
    rebuild_records(wh, source, run_id)
    return build_report(wh, source.name, run_id, tally, before)
