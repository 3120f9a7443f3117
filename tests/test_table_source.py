"""The `table` adapter: good rows of every format land, each kind of bad file or row is quarantined
with a reason, and the counts add up."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from regressor.config import (
    ConfigError,
    FleetSourceConfig,
    RunsSourceConfig,
    TableSourceConfig,
    load_source_config,
)
from regressor.sources.fleet import IngestReport
from regressor.sources.table import ingest_table, raw_blocks
from regressor.warehouse import Warehouse

HEADER = "system,threads,cache,runtime\n"


def source(root: Path, **overrides: object) -> TableSourceConfig:
    cfg = {
        "name": "bench",
        "adapter": "table",
        "root": root,
        "files": ["*.csv", "*.tsv", "*.parquet"],
        "target_columns": ["runtime", "perf"],
        "task_column": "system",
        "key_columns": ["system", "threads", "cache"],
        "target_min": 0.0,
        "target_max": 1e6,
    }
    return TableSourceConfig.model_validate(cfg | overrides)


def invariant(report: IngestReport) -> bool:
    done = report.files_ingested + report.files_quarantined + report.files_unchanged
    return report.files_seen == done


# Good records: (task, key) -> target. Every one of them must be present after ingest.
GOOD = {
    ("db", "db,1,on"): 10.0,
    ("db", "db,2,on"): 6.5,
    ("db", "db,4,off"): 4.0,
    ("web", "web,1,off"): 3.0,
    ("web", "web,8,on"): 1.25,
    ("pq", "pq,1,on"): 7.0,
    ("pq", "pq,2,on"): 5.0,
    ("big", "big,1,on"): 2.0,
    ("big", "big,2,on"): 1.0,
    ("rows", "rows,1,on"): 9.0,
    ("rows", "rows,9,on"): 0.5,
}

# Bad files, quarantined whole: name -> reason fragment.
BAD_FILES = {
    "latin1.csv": "not valid UTF-8",
    "empty.csv": "empty file",
    "cut.csv": "truncated",
    "no_target.csv": "no target column",
    "broken.parquet": "not a readable Parquet file",
    "notes.csv.bak": None,  # not matched by the globs: never seen
}

# Bad rows in otherwise good files: (file, line) -> reason fragment.
BAD_ROWS = {
    ("rows.csv", 3): "missing target runtime",
    ("rows.csv", 4): "non-numeric target runtime 'fast'",
    ("rows.csv", 5): "absurd target runtime -3",
    ("rows.csv", 6): "wrong number of fields: 5, the header has 4",
    ("rows.csv", 7): "duplicate key (rows,1,on) of line 2",
    ("rows.csv", 9): "missing task",
    ("rows.csv", 10): "absurd target runtime inf",
    ("big.csv", 3): "bytes exceeds the limit",
    ("types.parquet", 1): "non-numeric target runtime 'slow'",
    ("types.parquet", 2): "missing target runtime",
}


def write_mixed_dir(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "good.csv").write_text(HEADER + "db,1,on,10\ndb,2,on,6.5\ndb,4,off,4\n")
    (root / "good.tsv").write_text(
        "system\tthreads\tcache\truntime\nweb\t1\toff\t3\nweb\t8\ton\t1.25\n"
    )
    pl.DataFrame(
        {"system": ["pq", "pq"], "threads": [1, 2], "cache": ["on", "on"], "runtime": [7.0, 5.0]}
    ).write_parquet(root / "good.parquet")
    # A line of megabytes between two good rows: that row goes, its neighbours stay.
    huge = "big,3,on," + "9" * (3 << 20) + "\n"
    (root / "big.csv").write_text(HEADER + "big,1,on,2\n" + huge + "big,2,on,1\n")
    (root / "rows.csv").write_text(
        HEADER
        + "rows,1,on,9\n"  # 2 good
        + "rows,2,on,\n"  # 3 missing target
        + "rows,3,on,fast\n"  # 4 non-numeric
        + "rows,4,on,-3\n"  # 5 absurd
        + "rows,5,on,1,extra\n"  # 6 wrong column count
        + "rows,1,on,9\n"  # 7 duplicate key
        + "\n"  # 8 blank: skipped, not a problem
        + ",6,on,2\n"  # 9 missing task
        + "rows,7,on,inf\n"  # 10 not finite
        + "rows,9,on,0.5\n"  # 11 good
    )
    pl.DataFrame(
        {"system": ["t", "t"], "threads": [1, 2], "cache": ["a", "b"], "runtime": ["slow", None]}
    ).write_parquet(root / "types.parquet")
    (root / "latin1.csv").write_bytes(HEADER.encode() + b"caf\xe9,1,on,2\n")
    (root / "empty.csv").write_bytes(b"")
    (root / "cut.csv").write_text(HEADER + "cut,1,on,2\ncut,2,o")
    (root / "no_target.csv").write_text("system,threads,cache,speed\ns,1,on,2\n")
    (root / "broken.parquet").write_bytes(b"PAR1 this is not really parquet")
    (root / "notes.csv.bak").write_text("ignored\n")


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Warehouse, IngestReport, Path]:
    root = tmp_path / "tables"
    write_mixed_dir(root)
    with Warehouse(tmp_path / "w.duckdb") as wh:
        yield wh, ingest_table(wh, source(root, block_bytes=4096), "run-1"), root


def test_every_good_record_lands_and_every_bad_input_is_quarantined(mixed):
    wh, report, root = mixed
    assert invariant(report)
    seen = [n for n in BAD_FILES if BAD_FILES[n]] + [
        "good.csv",
        "good.tsv",
        "good.parquet",
        "big.csv",
        "rows.csv",
        "types.parquet",
    ]
    assert report.files_seen == len(seen)
    assert report.files_quarantined == len([n for n in BAD_FILES if BAD_FILES[n]])
    records = wh.query("records")
    got = {tuple(r.split("/", 2)[1:]): t for r, t in records.select("record_id", "target").rows()}
    assert got == GOOD
    assert report.records == len(GOOD) == report.records_added
    quarantine = wh.query("quarantine_report")
    by_file: dict[str, list[tuple[str, str]]] = {}
    for file, location, reason in quarantine.select("file", "location", "reason").rows():
        by_file.setdefault(Path(file).name, []).append((location, reason))
    for name, fragment in BAD_FILES.items():
        if fragment is None:
            assert name not in by_file
            continue
        [(_, reason)] = by_file[name]
        assert fragment in reason
        assert str(root / name) in reason
    for (name, line), fragment in BAD_ROWS.items():
        reasons = dict(by_file[name])
        assert fragment in reasons[f"line {line}"], (name, line, reasons)
    assert quarantine.height == len(BAD_ROWS) + report.files_quarantined
    assert len(report.quarantined) == quarantine.height


def test_record_config_is_typed_json_and_carries_provenance(mixed):
    wh, _, _ = mixed
    row = (
        wh.con.sql("SELECT * FROM row_records WHERE record_key = 'db/db,2,on'")
        .pl()
        .row(0, named=True)
    )
    assert json.loads(row["config_json"]) == {"threads": 2, "cache": "on"}
    assert (row["path"], row["line"], row["ingest_run_id"]) == ("good.csv", 3, "run-1")
    assert row["period"] is None
    assert row["logs_json"] == "{}"


def test_reingest_is_idempotent_and_a_changed_file_replaces_its_rows(mixed):
    wh, first, root = mixed
    cfg = source(root, block_bytes=4096)
    again = ingest_table(wh, cfg, "run-2")
    assert (again.files_unchanged, again.records_added) == (first.files_seen, 0)
    before_q = wh.query("quarantine_report").height
    (root / "good.csv").write_text(HEADER + "db,1,on,11\n")  # two rows gone, one changed
    (root / "empty.csv").write_text(HEADER + "e,1,on,1\n")  # fixed
    third = ingest_table(wh, cfg, "run-3")
    assert invariant(third)
    assert third.files_ingested == 2
    assert third.records_added == -2 + 1
    targets = dict(wh.query("records").select("record_id", "target").rows())
    assert targets["bench/db/db,1,on"] == 11.0
    assert "bench/db/db,2,on" not in targets
    assert wh.query("quarantine_report").height == before_q - 1


def test_task_from_the_file_stem_and_config_columns_by_default(tmp_path: Path):
    (tmp_path / "x264.csv").write_text("a,b,PERF\n0,1,5.5\n1,0,6.5\n1,0,6.5\n")
    cfg = source(
        tmp_path,
        files=["*.csv"],
        target_columns=["PERF"],
        task_column=None,
        key_columns=[],
        task="sys-{stem}",
    )
    with Warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest_table(wh, cfg, "r")
        records = wh.query("records")
    # No declared key: repeated measurements are distinct records keyed by file and line.
    assert report.records == 3
    assert records["record_id"].to_list() == [f"bench/sys-x264/x264.csv:{n}" for n in (2, 3, 4)]
    assert json.loads(records["config_json"][0]) == {"a": 0, "b": 1}


@pytest.mark.parametrize("block", [64, 1000, 1 << 20])
def test_blocks_split_at_line_ends_whatever_their_size(tmp_path: Path, block: int):
    lines = [f"{i}," + "x" * (i % 37) for i in range(500)]
    path = tmp_path / "f.csv"
    path.write_text("\n".join(lines) + "\n")
    got, numbers = [], []
    for first, part, _ in raw_blocks(path, max_line=1 << 20, block_bytes=block):
        got += part
        numbers += range(first, first + len(part))
    assert got == lines
    assert numbers == list(range(1, 501))


def test_source_configs_load_as_their_adapter(tmp_path: Path):
    assert isinstance(load_source_config("c3o"), TableSourceConfig)
    assert isinstance(load_source_config("lumos"), RunsSourceConfig)
    assert isinstance(load_source_config("demo_fleet"), FleetSourceConfig)
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: t\nadapter: table\nroot: .\nfiles: ['*.csv']\ntarget_column: [y]\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml"):
        load_source_config(str(typo))


def test_one_snapshot_gives_its_records_in_one_order_whatever_its_history(tmp_path: Path):
    """Records without a period came in the order they were inserted: a warehouse where a file
    was edited and restored held the same snapshot (same hash) in another order, so one seed
    trained on other batches."""
    root = tmp_path / "data"
    root.mkdir()
    first = HEADER + "a,1,1,10\na,2,1,20\n"
    (root / "a.csv").write_text(first)
    (root / "b.csv").write_text(HEADER + "a,3,1,30\na,4,1,40\n")
    cfg = source(root, key_columns=[])
    orders = []
    for name, history in (("clean", [first]), ("edited", [first + "a,5,1,50\n", first])):
        with Warehouse(tmp_path / f"{name}.duckdb") as wh:
            ingest_table(wh, cfg, f"{name}-0")
            for i, text in enumerate(history):
                (root / "a.csv").write_text(text)
                ingest_table(wh, cfg, f"{name}-{i + 1}")
            orders.append((wh.content_hash("bench"), wh.query("records")["record_id"].to_list()))
    assert orders[0] == orders[1]
