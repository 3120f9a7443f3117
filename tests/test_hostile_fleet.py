"""Hostile input through the fleet adapter: config values and keys Python cannot build or JSON
cannot hold, repeated keys, log names that are dates in another form, a second log for one day,
broken rows in the targets CSV, and files that vanish or cannot be read. Each bad file (or row)
lands in the quarantine table with a reason naming it; every good record is still stored, once;
files seen == ingested + quarantined + unchanged.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest_data import with_file_modes_binding

import regressor
from regressor.config import FleetSimConfig, FleetSourceConfig, load_source_config
from regressor.fleetsim import generate_fleet
from regressor.report import render_ingest
from regressor.sources.common import Tally, known_files, safe_files
from regressor.sources.fleet import (
    PARSER_VERSION,
    IngestReport,
    build_report,
    changed,
    count_records,
    ingest_configs,
    ingest_fleet,
    ingest_logs,
    ingest_targets,
    prepare_logs,
)
from regressor.warehouse import Warehouse

SOURCE = load_source_config("demo_fleet")
ANY_CONFIG = SOURCE.model_copy(update={"config_glob": "cells/*.*"})  # YAML and JSON
PROJECT = Path(regressor.__file__).resolve().parents[1]  # the code under test, for subprocesses
Records = list[tuple[Any, ...]]


@dataclass
class Fleet:
    raw: Path
    root: Path
    tmp: Path

    def ingest(
        self, db: str, run_id: str, source: FleetSourceConfig = SOURCE
    ) -> tuple[IngestReport, Records, Records]:
        """(report, records, quarantine rows as (path, location, reason)) of one ingest run."""
        with Warehouse(self.tmp / db) as wh:
            report = ingest_fleet(wh, source, self.raw, run_id)
            return report, records(wh), quarantine(wh)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    """2 cells x 2 days of the demo fleet: 2 configs, 4 logs, a targets CSV; 4 records."""
    raw = tmp_path / "raw"
    root = raw / "demo_fleet"
    generate_fleet(root, FleetSimConfig(seed=1, n_cells=2, n_days=2, samples_per_day=2))
    return Fleet(raw, root, tmp_path)


def records(wh: Warehouse) -> Records:
    sql = "SELECT record_id, config_json, logs_json, target FROM records ORDER BY ALL"
    return wh.con.sql(sql).fetchall()


def quarantine(wh: Warehouse) -> Records:
    return wh.con.sql("SELECT path, location, reason FROM quarantine ORDER BY ALL").fetchall()


def balanced(report: IngestReport) -> bool:
    counted = report.files_ingested + report.files_quarantined + report.files_unchanged
    return report.files_seen == counted


def assert_only_quarantined(
    rows: Records, fleet: Fleet, expected: dict[str, tuple[str, str]]
) -> None:
    """The quarantine table is `expected`: path -> (location, reason fragment); each reason names
    its file."""
    assert {path: location for path, location, _ in rows} == {
        path: location for path, (location, _) in expected.items()
    }
    for path, _, reason in rows:
        assert str(fleet.root / path) in reason
        assert expected[path][1] in reason, reason


# -- configs ---------------------------------------------------------------------------------

# file name, its text, (location, a fragment of the reason)
BAD_CONFIG_VALUES = {
    "impossible date": (
        "cell-zz.yaml",
        "cell: cell-zz\nlast_reboot: 2026-02-30\n",
        ("line 2", "not valid YAML: cannot read '2026-02-30': day is out of range for month"),
    ),
    # The reason was PyYAML's context alone ("while scanning a simple key"), not the problem.
    "YAML key without its colon": (
        "cell-zz.yaml",
        "cell: cell-zz\nhosts: 4\nrack a\nzone: 1\n",
        ("line 4", "not valid YAML: could not find expected ':' (while scanning a simple key)"),
    ),
    "YAML integer of 5000 digits": (
        "cell-zz.yaml",
        "cell: cell-zz\nhosts: " + "9" * 5000 + "\n",
        ("line 2", "Exceeds the limit (4300 digits) for integer string conversion"),
    ),
    "JSON integer of 5000 digits": (
        "cell-zz.json",
        '{"cell": "cell-zz", "hosts": ' + "9" * 5000 + "}",
        ("file", "absurd value: an integer of 5000 digits"),
    ),
    "JSON lone surrogate key": (
        "cell-zz.json",
        '{"cell": "cell-zz", "x\\udfff": 1}',
        ("file", "a lone surrogate escape \\udfff in a string: not text"),
    ),
    "JSON nested 100,000 deep": (
        "cell-zz.json",
        '{"cell": ' + "[" * 100_000 + "]" * 100_000 + "}",
        ("file", "refused: JSON nested too deeply"),
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIG_VALUES))
def test_config_values_python_or_json_cannot_hold_are_quarantined(case: str, fleet: Fleet) -> None:
    """PyYAML's date and int constructors raise ValueError, json recursion RecursionError:
    each used to stop the whole run."""
    name, text, expected = BAD_CONFIG_VALUES[case]
    _, clean, _ = fleet.ingest("clean.duckdb", "run-0", ANY_CONFIG)
    (fleet.root / "cells" / name).write_text(text)
    report, stored, rows = fleet.ingest("wh.duckdb", "run-1", ANY_CONFIG)
    assert balanced(report)
    assert report.files_quarantined == 1
    assert stored == clean
    assert_only_quarantined(rows, fleet, {f"cells/{name}": expected})
    assert report.quarantined == [(str(fleet.root / "cells" / name), rows[0][2])]
    again, stored, rows_again = fleet.ingest("wh.duckdb", "run-2", ANY_CONFIG)
    assert again.files_unchanged == again.files_seen
    assert (stored, rows_again) == (clean, rows)


def test_keys_and_values_json_has_no_type_for_are_stored_as_text(fleet: Fleet) -> None:
    """A date or bytes key made json.dumps raise TypeError and stop the whole run; NaN and
    infinity were refused. Now each is stored as text (as the runs and table adapters do), and
    the stored JSON stays standard."""
    cells = fleet.root / "cells"
    (cells / "cell-zz.yaml").write_text(
        "cell: cell-zz\nmaintenance:\n  2026-01-01: kernel upgrade\n"
        "? !!binary aGVsbG8=\n: 1\nheadroom: .nan\nlimit: -.inf\n"
    )
    report, _, rows = fleet.ingest("wh.duckdb", "run-1")
    assert balanced(report)
    assert rows == []
    with Warehouse(fleet.tmp / "wh.duckdb", read_only=True) as wh:
        sql = "SELECT config_json FROM configs WHERE task = 'cell-zz'"
        (config,) = wh.con.sql(sql).fetchall()[0]

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    assert json.loads(config, parse_constant=refuse) == {
        "cell": "cell-zz",
        "maintenance": {"2026-01-01": "kernel upgrade"},
        "b'hello'": 1,
        "headroom": "NaN",
        "limit": "-Infinity",
    }


def test_repeated_config_keys_are_refused_and_merge_keys_still_work(fleet: Fleet) -> None:
    """A repeated key used to keep its last value silently (as JSON `1` and YAML `"1"` would
    become one key); now refused as the runs adapter refuses it. `<<: *base` is no repetition."""
    _, clean, _ = fleet.ingest("clean.duckdb", "run-0", ANY_CONFIG)
    cells = fleet.root / "cells"
    (cells / "cell-zz.yaml").write_text("cell: cell-zz\nregion: eu-west\nregion: us-east\n")
    (cells / "cell-zy.json").write_text('{"cell": "cell-zy", "cell": "HIJACKED"}')
    (cells / "cell-zx.yaml").write_text("cell: cell-zx\nquota:\n  1: small\n  '1': large\n")
    base = "base: &base {bin_packing: best_fit, cpu: 1.2}\n"
    (cells / "cell-zw.yaml").write_text(base + "scheduler:\n  <<: *base\n  cpu: 1.5\n")
    report, stored, rows = fleet.ingest("wh.duckdb", "run-1", ANY_CONFIG)
    assert balanced(report)
    assert report.files_quarantined == 3
    assert stored == clean
    expected = {
        "cells/cell-zz.yaml": ("line 3", "duplicate key 'region'"),
        "cells/cell-zy.json": ("file", "duplicate key 'cell'"),
        "cells/cell-zx.yaml": ("file", "duplicate key '1' (keys are compared as text)"),
    }
    assert_only_quarantined(rows, fleet, expected)
    with Warehouse(fleet.tmp / "wh.duckdb", read_only=True) as wh:
        sql = "SELECT config_json FROM configs WHERE task = 'cell-zw'"
        (config,) = wh.con.sql(sql).fetchall()[0]
    assert json.loads(config)["scheduler"] == {"bin_packing": "best_fit", "cpu": 1.5}


def test_hidden_config_files_name_no_task(fleet: Fleet) -> None:
    """`cells/*.yaml` also lists hidden files: a bare `.yaml` was refused as an "unsupported
    format ''" and an editor's `.#cell-a01.yaml` lock became the task '.#cell-a01'."""
    _, clean, _ = fleet.ingest("clean.duckdb", "run-0")
    config = (fleet.root / "cells" / "cell-a01.yaml").read_bytes()
    for name in (".yaml", ".#cell-a01.yaml"):
        (fleet.root / "cells" / name).write_bytes(config)
    report, stored, rows = fleet.ingest("wh.duckdb", "run-1")
    assert balanced(report)
    assert stored == clean
    expected = {
        f"cells/{name}": ("file", f"hidden file {name!r}: a config's name before its extension")
        for name in (".yaml", ".#cell-a01.yaml")
    }
    assert_only_quarantined(rows, fleet, expected)


# -- logs ------------------------------------------------------------------------------------


def test_log_names_must_be_exactly_yyyy_mm_dd(fleet: Fleet) -> None:
    """`date.fromisoformat` also reads 20260101 and 2026-W01-4 as 2026-01-01: beside the day's
    log, either used to store the day twice."""
    _, clean, _ = fleet.ingest("clean.duckdb", "run-0")
    day = fleet.root / "logs" / "cell-a01" / "2026-01-01.log"
    for other in ("20260101", "2026-W01-4", "2026W014"):
        shutil.copy(day, day.with_stem(other))
    report, stored, rows = fleet.ingest("wh.duckdb", "run-1")
    assert balanced(report)
    assert report.files_quarantined == 3
    assert stored == clean
    expected = {
        f"logs/cell-a01/{other}.log": ("file", f"log file name '{other}' is not an ISO date")
        for other in ("20260101", "2026-W01-4", "2026W014")
    }
    assert_only_quarantined(rows, fleet, expected)


def test_a_second_log_for_a_day_is_quarantined_not_stored_twice(fleet: Fleet) -> None:
    """With a glob that lets two files name one (cell, day), the first by name is the day's log
    and the other is quarantined; once the first is gone, the other takes the day over (the gone
    file's rows go, so the day is never held twice)."""
    source = SOURCE.model_copy(update={"log_glob": "logs/*/*.*"})
    _, clean, _ = fleet.ingest("clean.duckdb", "run-0", source)
    logs = fleet.root / "logs" / "cell-a01"
    (logs / "2026-01-01.txt").write_bytes((logs / "2026-01-02.log").read_bytes())
    report, stored, rows = fleet.ingest("wh.duckdb", "run-1", source)
    assert balanced(report)
    assert report.files_quarantined == 1
    assert stored == clean
    first = str(logs / "2026-01-01.log")
    reason = f"duplicate log for (cell-a01, 2026-01-01); using {first}"
    assert_only_quarantined(rows, fleet, {"logs/cell-a01/2026-01-01.txt": ("file", reason)})
    again, stored, rows_again = fleet.ingest("wh.duckdb", "run-2", source)
    assert again.files_unchanged == again.files_seen
    assert (stored, rows_again) == (clean, rows)
    (logs / "2026-01-01.log").unlink()
    taken, stored, rows = fleet.ingest("wh.duckdb", "run-3", source)
    assert balanced(taken)
    assert rows == []
    assert [r[0] for r in stored] == [r[0] for r in clean]  # each record once
    day = "demo_fleet/cell-a01/2026-01-01"
    next_day = "demo_fleet/cell-a01/2026-01-02"
    logs_of = {r[0]: r[2] for r in stored}
    assert logs_of[day] == logs_of[next_day]  # the .txt (a copy of the next day's log) serves


def test_a_renamed_config_takes_its_task_over(fleet: Fleet) -> None:
    """A config renamed from YAML to JSON: the gone file's rows used to stay beside the new
    file's, so every record of the cell was given twice. Now the new file takes the task over."""
    _, clean, _ = fleet.ingest("wh.duckdb", "run-0", ANY_CONFIG)
    old = fleet.root / "cells" / "cell-a01.yaml"
    config = yaml.safe_load(old.read_text())
    old.unlink()
    (fleet.root / "cells" / "cell-a01.json").write_text(json.dumps(config, default=str))
    report, stored, rows = fleet.ingest("wh.duckdb", "run-1", ANY_CONFIG)
    assert balanced(report)
    assert rows == []
    assert stored == clean
    with Warehouse(fleet.tmp / "wh.duckdb", read_only=True) as wh:
        paths = wh.con.sql("SELECT path FROM configs WHERE task = 'cell-a01'").fetchall()
    assert paths == [("cells/cell-a01.json",)]


def test_a_duplicate_configs_reason_names_the_file_that_serves_now(fleet: Fleet) -> None:
    """Unchanged bytes kept their quarantine row, so once the serving config was deleted the
    other duplicates went on saying "using" the deleted file, while a third one served."""
    cells = fleet.root / "cells"
    config = (cells / "cell-a01.yaml").read_text()
    (cells / "cell-a01.json").write_text(json.dumps(yaml.safe_load(config), default=str))
    (cells / "cell-a01.yml").write_text(config)
    fleet.ingest("wh.duckdb", "run-0", ANY_CONFIG)
    (cells / "cell-a01.json").unlink()
    report, _, rows = fleet.ingest("wh.duckdb", "run-1", ANY_CONFIG)
    assert balanced(report)
    expected = {"cells/cell-a01.yml": ("file", f"using {cells / 'cell-a01.yaml'}")}
    assert_only_quarantined(rows, fleet, expected)


# -- targets ---------------------------------------------------------------------------------


def test_a_broken_targets_row_is_quarantined_alone(fleet: Fleet) -> None:
    """An unclosed quote, or a quoted line break, used to quarantine the whole targets file (no
    record left); now only its own lines go. A byte order mark before the header is no column."""
    _, clean, _ = fleet.ingest("clean.duckdb", "run-0")
    targets = fleet.root / "targets.csv"
    header, *rows = targets.read_bytes().splitlines(keepends=True)
    broken = [b'"cell-a01,2026-01-09,0.5\n', b'cell-a02,"2026-01-09\n', b'",0.5\n']
    targets.write_bytes(b"\xef\xbb\xbf" + header + rows[0] + b"".join(broken) + b"".join(rows[1:]))
    report, stored, found = fleet.ingest("wh.duckdb", "run-1")
    assert balanced(report)
    assert report.files_quarantined == 0
    assert stored == clean
    expected = {"line 3": "unclosed quote", "line 4": "unclosed quote", "line 5": "unclosed quote"}
    assert {location: reason for _, location, reason in found}.keys() == expected.keys()
    for path, location, reason in found:
        assert path == "targets.csv"
        assert str(targets) in reason
        assert expected[location] in reason


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: text.replace(b"efficiency", b"efficienc\xe9"),
        lambda text: text.decode().encode("utf-16"),
    ],
    ids=["latin-1 byte in the header", "utf-16"],
)
def test_a_targets_header_with_bad_bytes_is_named_as_such(fleet: Fleet, encode) -> None:
    """The header line was skipped as undecodable and the first data row taken for it: the
    reason read "line 2: missing column(s) ...; header is ['cell-a01', ...]"."""
    targets = fleet.root / "targets.csv"
    targets.write_bytes(encode(targets.read_bytes()))
    report, stored, rows = fleet.ingest("wh.duckdb", "run-1")
    assert balanced(report)
    assert stored == []
    reason = "header: not valid UTF-8"
    assert_only_quarantined(rows, fleet, {"targets.csv": ("line 1", reason)})


def test_a_targets_header_naming_a_column_twice_is_refused(fleet: Fleet) -> None:
    """`cell,day,efficiency,efficiency` took the first copy without a word; the table adapter
    refuses repeated names already."""
    targets = fleet.root / "targets.csv"
    header, *rows = targets.read_text().splitlines(keepends=True)
    targets.write_text(header.rstrip("\n") + ",efficiency\n" + "".join(rows))
    report, stored, rows = fleet.ingest("wh.duckdb", "run-1")
    assert balanced(report)
    assert stored == []
    reason = "column(s) ['efficiency'] named twice"
    assert_only_quarantined(rows, fleet, {"targets.csv": ("line 1", reason)})


def test_targets_of_a_task_no_config_names_are_reported(fleet: Fleet) -> None:
    """Target rows of `CELL-A02` (cased unlike its config and logs) are good rows, stored, but
    join no record; the report used to say nothing of them."""
    _, clean, _ = fleet.ingest("clean.duckdb", "run-0")
    targets = fleet.root / "targets.csv"
    targets.write_bytes(targets.read_bytes().replace(b"cell-a02,", b"CELL-A02,"))
    report, stored, _ = fleet.ingest("wh.duckdb", "run-1")
    assert balanced(report)
    assert stored == [r for r in clean if "/cell-a02/" not in r[0]]
    assert report.unmatched_targets == {"CELL-A02": 2}
    assert "- `CELL-A02`: 2 rows" in render_ingest(report)


def test_a_targets_row_with_an_extra_field_is_quarantined(fleet: Fleet) -> None:
    """An extra field used to be dropped silently (which field was the target?)."""
    _, clean, _ = fleet.ingest("clean.duckdb", "run-0")
    targets = fleet.root / "targets.csv"
    header, first, *rest = targets.read_bytes().splitlines(keepends=True)
    assert first.startswith(b"cell-a01,2026-01-01,")
    targets.write_bytes(header + first.rstrip(b"\n") + b",0.99\n" + b"".join(rest))
    report, stored, rows = fleet.ingest("wh.duckdb", "run-1")
    assert balanced(report)
    assert stored == [r for r in clean if r[0] != "demo_fleet/cell-a01/2026-01-01"]
    assert len(stored) == len(clean) - 1
    reason = "4 fields but the header has 3"
    assert_only_quarantined(rows, fleet, {"targets.csv": ("line 2", reason)})


def outside_the_folder(fleet: Fleet) -> str:
    outside = fleet.tmp / "outside.csv"
    (fleet.root / "targets.csv").replace(outside)
    (fleet.root / "targets.csv").symlink_to(outside)
    return "resolves outside the source folder"


def a_directory(fleet: Fleet) -> str:
    (fleet.root / "targets.csv").unlink()
    (fleet.root / "targets.csv").mkdir()
    return "a directory, not a file"


def dangling(fleet: Fleet) -> str:
    (fleet.root / "targets.csv").unlink()
    (fleet.root / "targets.csv").symlink_to(fleet.tmp / "nowhere.csv")
    return "a symlink to nothing"


@pytest.mark.parametrize("spoil", [outside_the_folder, a_directory, dangling])
def test_a_targets_file_that_must_not_be_read_is_in_the_quarantine_table(
    spoil: Callable[[Fleet], str], fleet: Fleet
) -> None:
    """Used to be named in the report only (or called "not found"), never in the table."""
    reason = spoil(fleet)
    for run in ("run-1", "run-2"):
        report, stored, rows = fleet.ingest("wh.duckdb", run)
        assert balanced(report)
        assert report.files_seen == 7
        assert report.files_quarantined == 1
        assert stored == []  # no targets, no records
        assert_only_quarantined(rows, fleet, {"targets.csv": ("file", reason)})


# -- files that vanish or cannot be read -----------------------------------------------------


def test_a_log_batch_with_a_vanished_file_still_parses_the_others(fleet: Fleet) -> None:
    """`prepare_logs` (a worker's batch) used to raise FileNotFoundError for the whole batch."""
    logs = safe_files(fleet.root, SOURCE.log_glob, Tally())
    logs[1].unlink()  # gone between listing and reading
    parser = f"log-{PARSER_VERSION}"
    staged, unchanged = prepare_logs(logs, fleet.root, parser, {}, SOURCE.name, "run-1")
    assert unchanged == 0
    assert [s.path for s in staged] == logs
    gone = staged.pop(1)
    assert not gone.read
    assert gone.row is None
    assert str(gone.problem) == "vanished since the folder was listed"
    assert all(s.read and s.problem is None and s.row is not None for s in staged)


def test_a_targets_file_that_vanished_is_refused(fleet: Fleet) -> None:
    """`changed` (the targets file's read) used to raise FileNotFoundError."""
    targets = fleet.root / "targets.csv"
    targets.unlink()
    tally = Tally()
    assert changed([targets], fleet.root, "targets", "targets-x", {}, tally) == []
    assert (tally.seen, tally.quarantined) == (1, 1)
    reason = f"{targets}: vanished since the folder was listed; not read"
    assert tally.refused == [("targets.csv", str(targets), reason)]


def test_files_gone_between_listing_and_reading_are_quarantined_and_keep_their_rows(
    fleet: Fleet,
) -> None:
    """The run's steps as `ingest_fleet` takes them, with a config and a log deleted after they
    were listed: each is quarantined as unreadable, the run goes on, and the rows from an
    earlier read stay (as for any file that disappears)."""
    _, clean, _ = fleet.ingest("wh.duckdb", "run-1")
    with Warehouse(fleet.tmp / "wh.duckdb") as wh:
        known, tally = known_files(wh, SOURCE.name), Tally()
        before = count_records(wh, SOURCE.name)
        configs = safe_files(fleet.root, SOURCE.config_glob, tally)
        logs = safe_files(fleet.root, SOURCE.log_glob, tally)
        configs[0].unlink()
        logs[-1].unlink()
        ingest_configs(wh, SOURCE, fleet.root, configs, "run-2", known, tally, 256)
        ingest_logs(wh, SOURCE, fleet.root, logs, "run-2", known, tally, 256)
        ingest_targets(wh, SOURCE, fleet.root, "run-2", known, tally)
        report = build_report(wh, SOURCE.name, "run-2", tally, before)
        stored, rows = records(wh), quarantine(wh)
    assert balanced(report)
    assert (report.files_seen, report.files_quarantined, report.files_unchanged) == (7, 2, 5)
    assert stored == clean
    gone = "vanished since the folder was listed"
    expected = {
        "cells/cell-a01.yaml": ("file", gone),
        "logs/cell-a02/2026-01-02.log": ("file", gone),
    }
    assert_only_quarantined(rows, fleet, expected)


INGEST = """
import sys
from pathlib import Path
from regressor.config import load_source_config
from regressor.sources.fleet import ingest_fleet
from regressor.warehouse import Warehouse
with Warehouse(Path(sys.argv[1])) as wh:
    report = ingest_fleet(wh, load_source_config("demo_fleet"), Path(sys.argv[2]), sys.argv[3])
print(report.model_dump_json())
"""


def test_unreadable_files_are_quarantined_and_keep_their_rows(fleet: Fleet) -> None:
    """A config, a log and the targets file without read permission used to stop the run with
    PermissionError. Now each is quarantined with the reason, and the rows from the last run
    that could read them are kept: no record is lost."""
    _, clean, _ = fleet.ingest("wh.duckdb", "run-1")
    unreadable = ["cells/cell-a01.yaml", "logs/cell-a02/2026-01-02.log", "targets.csv"]
    for rel in unreadable:
        (fleet.root / rel).chmod(0)
    command = with_file_modes_binding([sys.executable, "-c", INGEST])
    done = subprocess.run(
        [*command, str(fleet.tmp / "wh.duckdb"), str(fleet.raw), "run-2"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = IngestReport.model_validate_json(done.stdout.splitlines()[-1])
    assert balanced(report)
    assert (report.files_seen, report.files_quarantined, report.files_unchanged) == (7, 3, 4)
    assert report.records == len(clean)
    with Warehouse(fleet.tmp / "wh.duckdb", read_only=True) as wh:
        stored, rows = records(wh), quarantine(wh)
    assert stored == clean
    denied = "unreadable: Permission denied"
    assert_only_quarantined(rows, fleet, dict.fromkeys(unreadable, ("file", denied)))


def _ingest_bound_by_file_modes(fleet: Fleet, db: str, run_id: str) -> IngestReport:
    command = with_file_modes_binding([sys.executable, "-c", INGEST])
    done = subprocess.run(
        [*command, str(fleet.tmp / db), str(fleet.raw), run_id],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return IngestReport.model_validate_json(done.stdout.splitlines()[-1])


def test_a_folder_that_cannot_be_listed_is_quarantined_not_passed_over(fleet: Fleet) -> None:
    """`Path.glob` skips a folder it may not list without a word: its logs were neither read
    nor quarantined ("files seen" just fell). Now the folder is quarantined with the reason,
    and the rows of the logs it holds, stored by the last run that could read them, stay. The
    source folder itself, unlistable, is quarantined with the targets file (whose lookup used
    to crash the run), and every record stays."""
    _, clean, _ = fleet.ingest("wh.duckdb", "run-1")
    folder = fleet.root / "logs" / "cell-a02"
    hidden = len(list(folder.iterdir()))
    folder.chmod(0)
    try:
        report = _ingest_bound_by_file_modes(fleet, "wh.duckdb", "run-2")
    finally:
        folder.chmod(0o755)
    with Warehouse(fleet.tmp / "wh.duckdb", read_only=True) as wh:
        stored, rows = records(wh), quarantine(wh)
    fleet.root.chmod(0)
    try:
        whole = _ingest_bound_by_file_modes(fleet, "wh.duckdb", "run-3")
    finally:
        fleet.root.chmod(0o755)
    fleet.root.chmod(0o311)  # searchable, not listable: the globs' literal parts need no listing
    try:
        searchable = _ingest_bound_by_file_modes(fleet, "wh.duckdb", "run-4")
    finally:
        fleet.root.chmod(0o755)
    assert balanced(report)
    assert report.files_seen == 7 - hidden + 1  # the folder in place of its logs
    assert (report.files_quarantined, report.records) == (1, len(clean))
    assert stored == clean
    reason = "a folder the glob searches cannot be listed (Permission denied)"
    assert_only_quarantined(rows, fleet, {"logs/cell-a02": ("file", reason)})
    assert (whole.files_seen, whole.files_quarantined, whole.records) == (2, 2, len(clean))
    assert "targets.csv: cannot be looked up (Permission denied)" in whole.quarantined[1][1]
    assert (searchable.files_quarantined, searchable.records) == (0, len(clean))
