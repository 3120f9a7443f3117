"""Hostile input, fuzzed with hypothesis, through ingestion (table, runs and fleet adapters) and
serialization: YAML alias bombs and cycles, huge numbers, NaN/inf targets, control characters,
SQL-looking strings in every field, path traversal in configured globs, symlinks out of the
source folder. Bad input is quarantined with a reason; good input is stored verbatim; nothing
outside the configured folder is read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from regressor.config import (
    FleetSimConfig,
    FleetSourceConfig,
    RunsSourceConfig,
    TableSourceConfig,
    load_source_config,
)
from regressor.fleetsim import generate_fleet
from regressor.serialize import approx_token_count, serialize
from regressor.sources.common import (
    FLOAT_RE,
    MAX_YAML_NODES,
    BadInputError,
    Tally,
    YAMLBombError,
    load_yaml_limited,
    safe_files,
)
from regressor.sources.fleet import ingest_fleet
from regressor.sources.parsing import YAML_LOADER, parse_mapping
from regressor.sources.runs import ingest_runs, json_number
from regressor.sources.table import ingest_table
from regressor.warehouse import Warehouse

FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SQL_LIKE = [
    "'; DROP TABLE records; --",
    "Robert'); DELETE FROM files;--",
    "1' OR '1'='1",
    "$source",
    "?",
    "); COMMIT; BEGIN; --",
    "/* */ UNION SELECT * FROM quarantine",
]
# Printable and control characters; never the CSV separator, quotes or line breaks (the table
# adapter documents that quoted fields may not hold them: such rows are quarantined, not shifted).
CELL_CHARS = st.characters(
    blacklist_categories=("Cs",), blacklist_characters=',"\n\r\x00', max_codepoint=0x2FFF
)
CELLS = st.one_of(
    st.sampled_from(SQL_LIKE), st.text(CELL_CHARS, min_size=1, max_size=30).map(lambda s: f"<{s}>")
)
TARGETS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["NaN", "-inf", "Infinity", "1e999", "-1e400", "1e308", "0x10", "", "1_000"]),
)


def bomb(depth: int, width: int) -> str:
    """A "billion laughs" YAML document: `width ** depth` leaves from a few hundred bytes."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, depth):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def document_nodes(depth: int, width: int) -> int:
    """Nodes of `bomb(depth, width)` once every alias is expanded: the top mapping, and per level
    its key plus its list (level 0: `width` strings; level i: `width` copies of level i - 1)."""
    total, level = 1, 1 + width
    for _ in range(depth):
        total += 1 + level
        level = 1 + width * level
    return total


# -- YAML ------------------------------------------------------------------------------------


class CountingLoader(YAML_LOADER):
    """The project's loader, counting the documents it constructs (Python objects built)."""

    constructed = 0

    def construct_document(self, node):
        type(self).constructed += 1
        return super().construct_document(node)


@FUZZ
@given(depth=st.integers(2, 12), width=st.integers(2, 12))
def test_yaml_alias_bombs_are_refused_before_expansion(depth: int, width: int) -> None:
    text = bomb(depth, width)
    CountingLoader.constructed = 0
    if document_nodes(depth, width) > MAX_YAML_NODES:
        with pytest.raises(YAMLBombError, match="YAML bomb"):
            load_yaml_limited(text, CountingLoader)
        assert CountingLoader.constructed == 0  # refused on the node graph, nothing built
    else:
        assert load_yaml_limited(text, CountingLoader) == yaml.safe_load(text)
        assert CountingLoader.constructed == 1


@pytest.mark.parametrize(
    "text", ["a: &a [*a]\n", "a: &a {b: *a}\n", "[" * 3000 + "]" * 3000, "!!python/name:os.system"]
)
def test_cyclic_deep_or_unsafe_yaml_is_refused(text: str) -> None:
    with pytest.raises(yaml.YAMLError):
        load_yaml_limited(text, YAML_LOADER)


def test_only_safe_loaders_are_accepted() -> None:
    with pytest.raises(TypeError):
        load_yaml_limited("a: 1", yaml.UnsafeLoader)
    with pytest.raises(TypeError):
        load_yaml_limited("a: 1", yaml.FullLoader)


def runs_source(root: Path) -> RunsSourceConfig:
    return RunsSourceConfig(
        name="runs",
        adapter="runs",
        root=root,
        run_glob="*",
        report_files=("report.yaml", "report.json"),
        target_field="runtime",
        task_field="app",
        config_fields=("app", "note", "size"),
    )


@pytest.mark.timeout(120)  # the hang guard: expanded, this bomb is a 2 GB string
def test_runs_adapter_quarantines_a_yaml_bomb(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    (root / "r1").mkdir(parents=True)
    (root / "r1" / "report.yaml").write_text(bomb(9, 9) + "app: x\nruntime: 1.0\n")
    (root / "r2").mkdir()
    (root / "r2" / "report.yaml").write_text("app: y\nruntime: 2.0\n")
    with Warehouse(tmp_path / "wh.duckdb") as wh:
        report = ingest_runs(wh, runs_source(root), "run-1")
    assert report.records == 1
    (reason,) = [r for f, r in report.quarantined if "r1" in f]
    assert "YAML bomb" in reason


def test_fleet_adapter_quarantines_a_yaml_bomb(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    root = raw / "demo_fleet"
    generate_fleet(root, FleetSimConfig(seed=1, n_cells=2, n_days=2, samples_per_day=2))
    # 9^7 = 4.8 M leaves: small enough to expand in a second when it is (wrongly) accepted.
    (root / "cells" / "cell-bomb.yaml").write_text(bomb(7, 9))
    with Warehouse(tmp_path / "wh.duckdb") as wh:
        report = ingest_fleet(wh, load_source_config("demo_fleet"), raw, "run-1")
    assert any("YAML bomb" in reason for _, reason in report.quarantined)


# -- the table adapter -----------------------------------------------------------------------


def table_source(root: Path, files: tuple[str, ...] = ("*.csv",)) -> TableSourceConfig:
    return TableSourceConfig(
        name="fuzz", adapter="table", root=root, files=files, target_columns=("y",)
    )


LIMIT = 1e300  # the default target_min/target_max: beyond it a target is absurd


def finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    usable = abs(value) <= LIMIT and re.fullmatch(FLOAT_RE, text.strip())
    return value if usable else None


@FUZZ
@given(rows=st.lists(st.tuples(CELLS, CELLS, TARGETS), min_size=1, max_size=12))
def test_table_rows_are_stored_verbatim_or_quarantined(rows: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        lines = [f"{i},{a},{b},{y}" for i, (a, b, y) in enumerate(rows)]
        (root / "t.csv").write_text("k,a,b,y\n" + "\n".join(lines) + "\n", encoding="utf-8")
        with Warehouse(Path(tmp) / "wh.duckdb") as wh:
            report = ingest_table(wh, table_source(root), "fuzz")
            records = wh.query("records")
    assert report.files_seen == report.files_ingested + report.files_quarantined
    expected = {i: (a, b, finite(y)) for i, (a, b, y) in enumerate(rows) if finite(y) is not None}
    assert records.height == len(expected)
    for row in records.iter_rows(named=True):
        config = json.loads(row["config_json"])
        a, b, target = expected[config["k"]]
        assert (config["a"], config["b"]) == (a, b)  # SQL-looking, control chars: verbatim
        assert row["target"] == target
    rejected = len(rows) - len(expected)
    assert len([r for r in report.quarantined if "target" in r[1]]) == rejected


# -- the runs adapter ------------------------------------------------------------------------


@FUZZ
@given(
    app=CELLS,
    note=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    size=st.one_of(st.integers(), st.floats(), st.sampled_from([10**400, -(10**30)])),
    runtime=st.one_of(st.floats(), st.sampled_from([10**400, "NaN", "1e999", None, "x"])),
)
def test_runs_reports_are_stored_verbatim_or_quarantined(
    app: str, note: str, size: object, runtime: object
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        (root / "r1").mkdir(parents=True)
        report_text = json.dumps({"app": app, "note": note, "size": size, "runtime": runtime})
        (root / "r1" / "report.json").write_text(report_text, encoding="utf-8")
        with Warehouse(Path(tmp) / "wh.duckdb") as wh:
            report = ingest_runs(wh, runs_source(root), "fuzz")
            records = wh.query("records")
    try:
        good = abs(float(runtime)) <= LIMIT  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        good = False
    assert records.height == int(good)
    assert report.files_quarantined == int(not good)
    if good:
        row = records.row(0, named=True)
        assert row["task"] == app
        config = json.loads(row["config_json"])
        # Verbatim, except that numbers written as strings become numbers (documented).
        assert config["note"] == json_number(note)
        assert config["app"] == json_number(app)


# -- the fleet adapter: SQL-looking names and values -----------------------------------------


@settings(max_examples=8, deadline=None)
@given(value=st.sampled_from(SQL_LIKE), key=st.sampled_from(SQL_LIKE))
def test_fleet_stores_sql_looking_names_keys_and_values_verbatim(value: str, key: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        root = raw / "demo_fleet"
        generate_fleet(root, FleetSimConfig(seed=2, n_cells=2, n_days=2))
        config = next((root / "cells").glob("*.yaml"))
        task = config.stem
        data = yaml.safe_load(config.read_text())
        data[key] = value
        config.write_text(yaml.safe_dump(data))
        with Warehouse(Path(tmp) / "wh.duckdb") as wh:
            ingest_fleet(wh, load_source_config("demo_fleet"), raw, "fuzz")
            records = wh.query("records").filter(task=task)
    assert records.height > 0
    for row in records.iter_rows(named=True):
        assert json.loads(row["config_json"])[key] == value


# -- serialization ---------------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.sampled_from(SQL_LIKE),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@FUZZ
@given(config=st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6), logs=JSON_VALUES)
def test_serialize_is_total_and_deterministic_on_hostile_records(
    config: dict, logs: object
) -> None:
    record = {"task": "t\x00\x1b[31m", "period": "2026-01-01", "config": config, "logs": logs}
    text = serialize(record)
    assert isinstance(text, str)
    assert text == serialize(record)
    budgeted = serialize(record, budget_tokens=64)
    assert approx_token_count(budgeted) <= 64  # the default counter's own budget
    assert text.startswith(budgeted)  # whole lines cut from the end, nothing rewritten


# -- paths: traversal in globs, symlinks out of the folder -----------------------------------

PARTS = st.lists(st.sampled_from(["..", "a", "*", "**", "x.csv", "."]), min_size=1, max_size=5)


@FUZZ
@given(parts=PARTS, absolute=st.booleans())
def test_configured_globs_cannot_climb_out_of_the_root(parts: list[str], absolute: bool) -> None:
    pattern = ("/" if absolute else "") + "/".join(parts)
    bad = absolute or ".." in parts
    for build in (
        lambda: table_source(Path("."), (pattern,)),
        lambda: FleetSourceConfig(name="f", root=Path("r"), log_glob=pattern),
        lambda: RunsSourceConfig(
            name="r",
            adapter="runs",
            root=Path("r"),
            run_glob=pattern,
            target_field="t",
            task_field="a",
        ),
    ):
        if bad:
            with pytest.raises(ValidationError):
                build()
        else:
            build()
    if bad:
        with pytest.raises(ValueError, match="glob"):
            safe_files(Path("."), pattern, Tally())


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "secret.csv").write_text("k,a,y\n1,TOP-SECRET,1.0\n")
    (secret / "report.json").write_text('{"app": "TOP-SECRET", "runtime": 1.0}')
    return secret


def test_table_adapter_never_reads_through_symlinks_out_of_its_folder(
    tmp_path: Path, outside: Path
) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "ok.csv").write_text("k,a,y\n1,fine,2.0\n")
    (root / "evil.csv").symlink_to(outside / "secret.csv")
    (root / "sub" / "link").symlink_to(outside, target_is_directory=True)
    with Warehouse(tmp_path / "wh.duckdb") as wh:
        report = ingest_table(wh, table_source(root, ("*.csv", "sub/*/*.csv")), "run-1")
        configs = wh.query("records")["config_json"].to_list()
    assert len(configs) == 1
    assert "TOP-SECRET" not in "".join(configs)
    reasons = [r for _, r in report.quarantined]
    assert sum("outside the source folder" in r for r in reasons) == 2


def test_runs_adapter_never_reads_through_symlinks_out_of_its_folder(
    tmp_path: Path, outside: Path
) -> None:
    root = tmp_path / "runs"
    (root / "r1").mkdir(parents=True)
    (root / "r1" / "report.json").write_text('{"app": "fine", "runtime": 2.0}')
    (root / "r2").symlink_to(outside, target_is_directory=True)  # a whole run folder
    (root / "r3").mkdir()
    (root / "r3" / "report.json").symlink_to(outside / "report.json")  # one file
    with Warehouse(tmp_path / "wh.duckdb") as wh:
        report = ingest_runs(wh, runs_source(root), "run-1")
        records = wh.query("records")
    assert records["task"].to_list() == ["fine"]
    assert sum("outside" in r for _, r in report.quarantined) == 2


def test_fleet_adapter_never_reads_through_symlinks_out_of_its_folder(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    root = raw / "demo_fleet"
    generate_fleet(root, FleetSimConfig(seed=1, n_cells=2, n_days=2, samples_per_day=2))
    secret = tmp_path / "outside.yaml"
    secret.write_text("password: TOP-SECRET\n")
    (root / "cells" / "cell-zz.yaml").symlink_to(secret)
    with Warehouse(tmp_path / "wh.duckdb") as wh:
        ingest_fleet(wh, load_source_config("demo_fleet"), raw, "run-1")
        configs = wh.query("records")["config_json"].to_list()
    assert "TOP-SECRET" not in "".join(configs)
    with Warehouse(tmp_path / "wh.duckdb", read_only=True) as wh:
        known = wh.query("known_files", source="demo_fleet")["path"].to_list()
    assert "cells/cell-zz.yaml" not in known


def test_files_that_cannot_be_read_safely_are_quarantined_unread(tmp_path: Path) -> None:
    """A name that is not UTF-8, a directory or a dangling symlink where a file is expected, and a
    FIFO (reading it would block for ever) are refused unread: each is counted, lands in the
    quarantine table with its reason (once, however many runs see it), and the good files of the
    run are all ingested."""
    raw = tmp_path / "raw"
    root = raw / "demo_fleet"
    generate_fleet(root, FleetSimConfig(seed=1, n_cells=2, n_days=2, samples_per_day=2))
    with Warehouse(tmp_path / "clean.duckdb") as wh:
        clean = ingest_fleet(wh, load_source_config("demo_fleet"), raw, "run-0")
    cells = root / "cells"
    (cells / os.fsdecode(b"caf\xe9.yaml")).write_text("cell: cafe\n")
    (cells / "folder.yaml").mkdir()
    (cells / "ghost.yaml").symlink_to(tmp_path / "nowhere.yaml")
    os.mkfifo(next((root / "logs").iterdir()) / "2026-01-09.log")
    expected = {
        "cells/caf\\xe9.yaml": "the file name is not valid UTF-8",
        "cells/folder.yaml": "a directory, not a file",
        "cells/ghost.yaml": "a symlink to nothing",
        "2026-01-09.log": "not a regular file",
    }
    with Warehouse(tmp_path / "wh.duckdb") as wh:
        for run in ("run-1", "run-2"):
            report = ingest_fleet(wh, load_source_config("demo_fleet"), raw, run)
            rows = wh.con.sql("SELECT path, reason, ingest_run_id FROM quarantine").fetchall()
            assert len(rows) == len(expected), rows
            for path, reason in expected.items():
                assert any(p.endswith(path) and reason in r and i == run for p, r, i in rows)
        assert report.records == clean.records
    assert report.files_seen == clean.files_seen + len(expected)
    assert report.files_quarantined == len(expected)
    assert report.files_seen == sum(
        (report.files_ingested, report.files_quarantined, report.files_unchanged)
    )


def test_folders_a_bare_wildcard_passes_on_its_way_to_the_files_are_not_refused(
    tmp_path: Path,
) -> None:
    """`logs/**/*` matches every cell's log folder as well as its logs, and `cells/*` a folder
    kept beside the cell files: those folders are passed over, not quarantined one by one,
    and the run reads what the default globs read. A folder named like a file (`*.yaml`)
    is still refused (above)."""
    raw = tmp_path / "raw"
    root = raw / "demo_fleet"
    generate_fleet(root, FleetSimConfig(seed=1, n_cells=2, n_days=2, samples_per_day=2))
    source = load_source_config("demo_fleet")
    with Warehouse(tmp_path / "clean.duckdb") as wh:
        clean = ingest_fleet(wh, source, raw, "run-0")
    (root / "cells" / "archive").mkdir()
    wide = source.model_copy(update={"config_glob": "cells/*", "log_glob": "logs/**/*"})
    with Warehouse(tmp_path / "wh.duckdb") as wh:
        report = ingest_fleet(wh, wide, raw, "run-1")
        quarantined = wh.con.sql("SELECT path, reason FROM quarantine").fetchall()
    assert quarantined == []
    assert (report.records, report.files_seen) == (clean.records, clean.files_seen)
    assert report.files_quarantined == 0
    # A glob that matched folders alone reads nothing: its folders show in the quarantine.
    tally = Tally()
    assert safe_files(root, "logs/*/", tally) == []
    assert len(tally.refused) == 2  # the two cells' log folders
    assert all(reason.endswith("a directory, not a file; not read") for *_, reason in tally.refused)


def test_a_file_refused_unread_leaves_the_quarantine_once_it_can_be_read(tmp_path: Path) -> None:
    """Each run writes the refusals it finds afresh: a dangling symlink mended and a directory
    replaced by a file lose their rows (and are ingested), while another file's row-level
    quarantine rows stay."""
    raw = tmp_path / "raw"
    root = raw / "demo_fleet"
    generate_fleet(root, FleetSimConfig(seed=1, n_cells=2, n_days=2, samples_per_day=2))
    cells = root / "cells"
    (cells / "ghost.yaml").symlink_to(root / "spare.yaml")  # inside the folder, not there yet
    (cells / "folder.yaml").mkdir()
    with (root / "targets.csv").open("a") as targets:
        targets.write("cell-a01,2026-01-09,-5\n")  # an absurd target: a row-level quarantine

    def quarantined(wh: Warehouse) -> dict[str, str]:
        return dict(wh.con.sql("SELECT path, reason FROM quarantine").fetchall())

    with Warehouse(tmp_path / "wh.duckdb") as wh:
        ingest_fleet(wh, load_source_config("demo_fleet"), raw, "run-1")
        assert set(quarantined(wh)) == {"cells/ghost.yaml", "cells/folder.yaml", "targets.csv"}
        (root / "spare.yaml").write_text("cell: ghost\n")
        (cells / "folder.yaml").rmdir()
        (cells / "folder.yaml").write_text("cell: folder\n")
        report = ingest_fleet(wh, load_source_config("demo_fleet"), raw, "run-2")
        rows = quarantined(wh)
        tasks = {t for (t,) in wh.con.sql("SELECT task FROM configs").fetchall()}
    assert set(rows) == {"targets.csv"}
    assert "absurd" in rows["targets.csv"]
    assert {"ghost", "folder"} <= tasks
    assert report.files_quarantined == 0


SET_IN_A_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from regressor.sources.parsing import parse_mapping
text = "zones: !!set {eu-west: null, us-east: null, ap-south: null, 3: null}\\n"
print(json.dumps(parse_mapping(text, ".yaml")))
"""


def test_a_yaml_set_is_the_same_sorted_list_in_every_process() -> None:
    """Stored as Python's text of the set, whose order follows the process' hash seed: a
    clean ingest, or a parser bump, changed the config's text and the snapshot's hash."""
    root = str(Path(__file__).resolve().parents[1])
    outputs = {
        subprocess.run(
            [sys.executable, "-c", SET_IN_A_CHILD, root],
            env=os.environ | {"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3", "4")
    }
    assert len(outputs) == 1
    assert json.loads(outputs.pop()) == {"zones": ["ap-south", "eu-west", "us-east", 3]}  # as JSON


def test_a_repeated_key_among_many_in_a_json_object_is_named() -> None:
    """Refused as before, and in one pass over the keys: a count per key took 34 s on a flat
    object of 40,000 keys (a large report or config stalled the ingest)."""
    pairs = ", ".join(f'"k{i}": {i}' for i in range(40_000))
    assert len(parse_mapping("{" + pairs + "}", ".json")) == 40_000
    with pytest.raises(BadInputError, match="duplicate key 'k7' in a JSON object"):
        parse_mapping("{" + pairs + ', "k7": 0}', ".json")
