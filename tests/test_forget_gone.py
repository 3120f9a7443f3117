"""`--forget-gone`: rows of input files deleted for good are dropped, in all three adapters.

By default a gone file keeps its rows (a folder that is away for a night must not empty the
training set). With `forget_gone`, the warehouse afterwards equals a clean ingest of the files
that are there: nothing of a gone file is left, and what depended on a gone file (the report of a
run whose log went, a row that repeated a gone file's key) is read again. A file the system cannot
tell about (a folder that cannot be searched) is never counted gone, and a missing source folder
stops the run before anything is dropped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest_data import with_file_modes_binding
from typer.testing import CliRunner

from flows.ingest import ingest
from regressor.cli import app
from regressor.config import (
    FleetSimConfig,
    RunsSourceConfig,
    SourceConfig,
    TableSourceConfig,
    load_source_config,
)
from regressor.fleetsim import generate_fleet
from regressor.sources.dispatch import ingest_source
from regressor.sources.fleet import IngestReport
from regressor.sources.forget import SourceFolderMissingError
from regressor.warehouse import Warehouse

pytest_plugins = ("conftest_data",)

PROJECT = Path(__file__).resolve().parents[1]
FLEET = load_source_config("demo_fleet")


def state(wh: Warehouse) -> dict[str, list[tuple[Any, ...]]]:
    """Everything an ingest leaves that does not name the run: records, runs, quarantine, files."""
    sql = {
        "records": "SELECT record_id, config_json, logs_json, target FROM records",
        "runs": "SELECT source, run_key, path, log_path, content_hash, log_hash, target FROM runs",
        "quarantine": "SELECT source, path, location, reason FROM quarantine",
        "files": "SELECT source, path, content_hash, parser, status FROM files",
    }
    return {name: sorted(wh.con.sql(q).fetchall()) for name, q in sql.items()}


def run(db: Path, source: SourceConfig, raw: Path, run_id: str, forget: bool) -> IngestReport:
    with Warehouse(db) as wh:
        report = ingest_source(wh, source, raw, run_id, forget=forget)
    counted = report.files_ingested + report.files_quarantined + report.files_unchanged
    assert report.files_seen == counted, report
    return report


def clean_state(tmp: Path, source: SourceConfig, raw: Path) -> dict[str, list[tuple[Any, ...]]]:
    """What a fresh warehouse holds after one ingest of the files there are now."""
    db = tmp / "clean.duckdb"
    run(db, source, raw, "clean", forget=False)
    with Warehouse(db, read_only=True) as wh:
        return state(wh)


def stored(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    with Warehouse(db, read_only=True) as wh:
        return state(wh)


def assert_forgets(
    tmp: Path, source: SourceConfig, raw: Path, delete: list[Path], gone: list[str]
) -> IngestReport:
    """Ingest, delete `delete`; without forgetting nothing is dropped; with it, the warehouse
    equals a clean ingest and the report names `gone`; a second forgetting run drops nothing."""
    db = tmp / "wh.duckdb"
    run(db, source, raw, "r1", forget=False)
    before = stored(db)
    for path in delete:
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    kept = run(db, source, raw, "r2", forget=False)
    assert kept.files_forgotten == []
    assert stored(db)["records"] == before["records"]  # the old rule: gone files keep rows

    report = run(db, source, raw, "r3", forget=True)
    assert sorted(report.files_forgotten) == sorted(gone)
    after = stored(db)
    assert after == clean_state(tmp, source, raw)
    assert report.records_added == len(after["records"]) - len(before["records"])
    assert not any(path in gone for _, path, *_ in after["files"] + after["quarantine"])

    again = run(db, source, raw, "r4", forget=True)
    assert again.files_forgotten == []
    assert again.records_added == 0
    assert stored(db) == after
    return report


# -- fleet -------------------------------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """The raw folder of 3 cells x 2 days of the demo fleet: 3 configs, 6 logs, targets."""
    raw = tmp_path / "raw"
    generate_fleet(raw / "demo_fleet", FleetSimConfig(seed=3, n_cells=3, n_days=2))
    return raw


def test_a_fleet_config_and_log_deleted_for_good_lose_their_records(
    tmp_path: Path, fleet: Path
) -> None:
    root = fleet / "demo_fleet"
    cells = sorted((root / "cells").iterdir())
    logs = sorted((root / "logs" / cells[1].stem).iterdir())
    delete = [cells[0], logs[0]]
    gone = [p.relative_to(root).as_posix() for p in delete]
    report = assert_forgets(tmp_path, FLEET, fleet, delete, gone)
    assert report.records_added == -3  # cell 0's two days, and cell 1's first day
    assert report.records == 3


def test_a_missing_source_folder_stops_the_run_and_drops_nothing(
    tmp_path: Path, fleet: Path
) -> None:
    """A source folder that is not there, or empty (an unmounted share), would make every file
    gone."""
    db = tmp_path / "wh.duckdb"
    run(db, FLEET, fleet, "r1", forget=False)
    before = stored(db)
    (fleet / "demo_fleet").rename(tmp_path / "elsewhere")
    with pytest.raises(SourceFolderMissingError, match="not mounted"):
        run(db, FLEET, fleet, "r2", forget=True)
    assert stored(db) == before
    (fleet / "demo_fleet").mkdir()  # what an unmounted share leaves: its empty mount point
    with pytest.raises(SourceFolderMissingError, match="is empty"):
        run(db, FLEET, fleet, "r3", forget=True)
    assert stored(db) == before


# -- runs --------------------------------------------------------------------------------------

REFERENCE = {"field": "vm", "value": "ref", "match": ["job"], "pair_on": "run"}


def runs_source(root: Path, **overrides: object) -> RunsSourceConfig:
    cfg = {
        "name": "runs",
        "adapter": "runs",
        "root": root,
        "run_glob": "*",
        "report_files": ["report.json"],
        "target_field": "runtime",
        "task_field": "job",
        "config_fields": ["vm", "job"],
    }
    return RunsSourceConfig.model_validate(cfg | overrides)


def put_runs(root: Path, runtimes: dict[str, float]) -> None:
    """Run folders `<vm>_<job>_<run>`, each with a report and a log."""
    for name, runtime in runtimes.items():
        vm, job, n = name.split("_")
        (root / name).mkdir(parents=True)
        report = {"vm": vm, "job": job, "run": n, "runtime": runtime}
        (root / name / "report.json").write_text(json.dumps(report))
        (root / name / "log.csv").write_text(f"time,cpu\n00:00:01,{runtime}\n00:00:02,7\n")


def test_a_deleted_run_folder_and_a_deleted_log_are_forgotten(tmp_path: Path) -> None:
    """The whole run `big_sort_2` goes, and so does its record. The log of the reference run
    `ref_sort_1` goes: its report is read again (a run without a log, so no reference now), and
    `big_sort_1`, paired with it before, is paired with `ref_sort_2`, as a clean ingest pairs it."""
    root = tmp_path / "runs"
    runs = {"ref_sort_1": 30, "ref_sort_2": 31, "big_sort_1": 10, "big_sort_2": 11}
    put_runs(root, runs)
    source = runs_source(root, reference=REFERENCE)
    delete = [root / "big_sort_2", root / "ref_sort_1" / "log.csv"]
    gone = ["big_sort_2/log.csv", "big_sort_2/report.json", "ref_sort_1/log.csv"]
    report = assert_forgets(tmp_path, source, tmp_path, delete, gone)
    assert report.records_added == -1
    with Warehouse(tmp_path / "wh.duckdb", read_only=True) as wh:
        pairs = wh.con.sql("SELECT record_key, ref_path FROM row_records").fetchall()
    assert pairs == [("big_sort_1", "ref_sort_2/report.json")]


# -- table -------------------------------------------------------------------------------------


def repeated_key_table(tmp_path: Path) -> tuple[Path, TableSourceConfig, Path]:
    """A keyed table whose b.csv repeats a.csv's key 2, ingested once: (root, source, db)."""
    root = tmp_path / "table"
    root.mkdir()
    (root / "a.csv").write_text("id,x,y\n1,5,10\n2,6,11\n")
    (root / "b.csv").write_text("id,x,y\n2,7,12\n3,8,13\n")
    table = {"name": "t", "adapter": "table", "root": root, "files": ["*.csv"], "task": "bench"}
    source = TableSourceConfig.model_validate(
        table | {"target_columns": ["y"], "key_columns": ["id"]}
    )
    db = tmp_path / "wh.duckdb"
    run(db, source, tmp_path, "r0", forget=False)
    return root, source, db


def test_a_row_that_repeated_a_gone_files_key_is_stored_once_that_file_is_forgotten(
    tmp_path: Path,
) -> None:
    root, source, db = repeated_key_table(tmp_path)
    assert [path for _, path, *_ in stored(db)["quarantine"]] == ["b.csv"]  # key 2, from a.csv

    report = assert_forgets(tmp_path, source, tmp_path, [root / "a.csv"], ["a.csv"])
    assert report.records == 2
    assert stored(tmp_path / "wh.duckdb")["quarantine"] == []


def test_a_forgetting_run_stopped_before_its_ingest_loses_no_good_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forgetting deleted every row of the files holding a repeat of a gone file's key, good
    rows too, in its own transaction, and left them to the ingest after it: a run stopped in
    between (the adapter failing, a kill) had lost `b.csv`'s key 3, which repeated nothing. Now
    those files are only marked to be read again; their rows stay until they are."""
    from regressor.sources import dispatch

    root, source, db = repeated_key_table(tmp_path)
    (root / "a.csv").unlink()

    def stopped(*args: object) -> None:
        raise RuntimeError("stopped after forgetting")

    monkeypatch.setattr(dispatch, "adapter_ingest", stopped)
    with pytest.raises(RuntimeError), Warehouse(db) as wh:
        ingest_source(wh, source, tmp_path, "r1", forget=True)
    assert [target for *_, target in stored(db)["records"]] == [13.0]  # key 3 of b.csv kept
    monkeypatch.undo()
    run(db, source, tmp_path, "r2", forget=False)
    assert stored(db) == clean_state(tmp_path, source, tmp_path)


# -- a folder that cannot be searched ----------------------------------------------------------

CHILD = """
import json, sys
from pathlib import Path
from regressor.config import RunsSourceConfig
from regressor.sources.dispatch import ingest_source
from regressor.warehouse import Warehouse

with Warehouse(Path(sys.argv[2])) as wh:
    source = RunsSourceConfig.model_validate_json(sys.argv[1])
    report = ingest_source(wh, source, Path("."), "locked", forget=True)
print(json.dumps(report.files_forgotten))
"""


def test_files_in_a_folder_that_cannot_be_searched_are_not_counted_gone(tmp_path: Path) -> None:
    """`lstat` of a file in a folder without search permission fails with EACCES, not "no such
    file": the system cannot tell, so the run keeps the rows (it refuses the folder for the run)."""
    root = tmp_path / "runs"
    put_runs(root, {"ref_sort_1": 30, "big_sort_1": 10})
    source = runs_source(root)
    db = tmp_path / "wh.duckdb"
    run(db, source, tmp_path, "r1", forget=False)
    before = stored(db)["records"]
    (root / "big_sort_1").chmod(0)
    try:
        cmd = with_file_modes_binding(
            [sys.executable, "-c", CHILD, source.model_dump_json(), str(db)]
        )
        done = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True, check=False)
    finally:
        (root / "big_sort_1").chmod(0o755)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []
    assert stored(db)["records"] == before


# -- the flow and the CLI ----------------------------------------------------------------------


def test_the_ingest_flow_forgets_even_when_the_same_files_were_ingested_before(
    prefect_harness, tiny_fleet
) -> None:
    """The ingest task is cached on the files there are: a forgetting run after an ordinary run
    of the same files must not be answered from that cache."""
    raw, summary = tiny_fleet
    var = raw.parent
    ingest(var_dir=var)
    config = sorted((raw / "demo_fleet" / "cells").iterdir())[0]
    config.unlink()
    kept = ingest(var_dir=var)
    assert kept.records == summary.n_cells * summary.n_days  # still there

    forgot = ingest(var_dir=var, forget_gone=True)
    assert forgot.files_forgotten == [f"cells/{config.name}"]
    assert forgot.records == (summary.n_cells - 1) * summary.n_days


def test_the_cli_names_each_forgotten_file(tmp_path: Path, tiny_fleet) -> None:
    raw, _ = tiny_fleet
    var = raw.parent
    cli = CliRunner()
    first = cli.invoke(app, ["ingest", "--var-dir", str(var)])
    assert first.exit_code == 0
    records = int(first.output.split("; ")[1].split()[0])
    assert f"; {records} records (+{records} this run)" in first.output  # what it added
    log = sorted((raw / "demo_fleet" / "logs").glob("*/*.log"))[0]
    log.unlink()
    done = cli.invoke(app, ["ingest", "--forget-gone", "--var-dir", str(var)])
    assert done.exit_code == 0, done.output
    assert f"forgot {log.relative_to(raw / 'demo_fleet').as_posix()} (gone" in done.output
    assert f"; {records - 1} records (-1 this run)" in done.output


def test_the_cli_says_in_one_line_that_a_missing_source_folder_forgot_nothing(
    tmp_path: Path, tiny_fleet
) -> None:
    """With or without --forget-gone: plain ingest used to read nothing and exit 0 ("files
    seen 0"), so a cron job ingesting from an unmounted share reported success."""
    raw, _ = tiny_fleet
    var = raw.parent
    cli = CliRunner()
    assert cli.invoke(app, ["ingest", "--var-dir", str(var)]).exit_code == 0
    before = stored(var / "warehouse.duckdb")
    (raw / "demo_fleet").rename(tmp_path / "elsewhere")
    for flags in (["--forget-gone"], []):
        done = cli.invoke(app, ["ingest", *flags, "--var-dir", str(var)])
        assert done.exit_code == 1, done.output
        assert isinstance(done.exception, SystemExit)
        assert "not mounted?); nothing was read and the stored rows stay" in done.output
        assert "written by `textperf retrain`" in done.output
    assert stored(var / "warehouse.duckdb") == before
    # A var dir with no warehouse yet gets none (an empty one was made before the check).
    fresh = tmp_path / "fresh-var"
    done = cli.invoke(app, ["ingest", "--var-dir", str(fresh)])
    assert done.exit_code == 1, done.output
    assert not (fresh / "warehouse.duckdb").exists()
