"""Hostile input through the `runs` adapter: report values no parser rule foresaw, targets of the
wrong type, baselines of zero, logs whose time column is not clock times, run folders that cannot
be read safely, files that are unreadable or vanish while the ingest runs. Each bad file gets a
reason naming it in the quarantine table, every good record is still there, and every file is
counted: files_seen == ingested + quarantined + unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_data import with_file_modes_binding

from regressor.config import RunsSourceConfig
from regressor.dataset import to_examples
from regressor.sources.fleet import IngestReport
from regressor.sources.runs import ingest_runs
from regressor.warehouse import Warehouse

PROJECT = Path(__file__).resolve().parents[1]
GOOD = {"a_good": 1.0, "z_good": 2.0}  # run folder -> target, in every test's root


def source(root: Path, **overrides: object) -> RunsSourceConfig:
    cfg = {
        "name": "runs",
        "adapter": "runs",
        "root": root,
        "run_glob": "*",
        "report_files": ["report.json", "report.yaml"],
        "target_field": "runtime",
        "task_field": "app",
        "config_fields": ["app", "note", "size"],
    }
    return RunsSourceConfig.model_validate(cfg | overrides)


def put(root: Path, run: str, name: str, data: str | bytes) -> Path:
    (root / run).mkdir(parents=True, exist_ok=True)
    path = root / run / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def good_runs(root: Path) -> None:
    for run, target in GOOD.items():
        put(root, run, "report.json", json.dumps({"app": run, "runtime": target}))
        put(root, run, "log.csv", "time,cpu\n00:00:01,5\n00:00:02,7\n")


def quarantine(wh: Warehouse) -> dict[str, tuple[str, str, str]]:
    """Quarantine table: path under the root -> (location, reason, file)."""
    rows = wh.con.sql("SELECT path, location, reason, file FROM quarantine").fetchall()
    return {path: (location, reason, file) for path, location, reason, file in rows}


def records(wh: Warehouse) -> dict[str, dict[str, object]]:
    rows = wh.query("records").rows(named=True)
    return {r["record_id"].removeprefix("runs/"): r for r in rows}


def assert_accounted(
    report: IngestReport, wh: Warehouse, bad: dict[str, str], good: dict[str, float] = GOOD
) -> None:
    """Every file counted; the quarantine table holds exactly `bad` (path -> reason fragment),
    each reason naming its file; the report lists the same files; every good record is there."""
    assert report.files_seen == (
        report.files_ingested + report.files_quarantined + report.files_unchanged
    )
    rows = quarantine(wh)
    assert rows.keys() == bad.keys(), rows
    for path, fragment in bad.items():
        _, reason, file = rows[path]
        assert fragment in reason, (path, reason)
        assert reason.startswith(f"{file}: ")  # the reason names the file
        assert file.endswith(path)
    assert sorted(f for f, _ in report.quarantined) == sorted(file for _, _, file in rows.values())
    got = records(wh)
    for run, target in good.items():
        assert got[run]["target"] == target


def ingest(tmp_path: Path, root: Path, **overrides: object) -> tuple[Warehouse, IngestReport]:
    wh = Warehouse(tmp_path / "wh.duckdb")
    return wh, ingest_runs(wh, source(root, **overrides), "run-1")


def test_a_renamed_run_folder_is_read_in_place_of_its_old_name(tmp_path: Path) -> None:
    """A renamed run folder's gone name kept its run: the run was a record twice, under both
    names, until `--forget-gone`. A gone folder with no twin still keeps its record (a share
    may be away for a run)."""
    root = tmp_path / "runs"
    good_runs(root)
    wh, _ = ingest(tmp_path, root)
    with wh:
        (root / "z_good").rename(root / "y_good")
        shutil.rmtree(root / "a_good")
        ingest_runs(wh, source(root), "run-2")
        assert sorted(records(wh)) == ["a_good", "y_good"]
        assert records(wh)["y_good"]["target"] == 2.0
        paths = [p for (p,) in wh.con.sql("SELECT path FROM files ORDER BY path").fetchall()]
        assert not any(p.startswith("z_good/") for p in paths), paths


# -- report values that parsers raise on (findings 1, 2 and 15) ---------------------------------

REFUSED = {  # case -> (report file, text, reason fragment, line of the quarantine location)
    "impossible_date": ("report.yaml", "app: m\nruntime: 1\nwhen: 2026-02-30\n", "day is out", 3),
    "json_integer_5000_digits": (
        "report.json",
        '{"app": "m", "runtime": 1, "size": ' + "9" * 5000 + "}",
        "an integer of 5000 digits",
        None,
    ),
    "yaml_integer_5000_digits": (
        "report.yaml",
        "app: m\nruntime: 1\nsize: " + "9" * 5000 + "\n",
        "4300 digits",
        3,
    ),
    "json_nested_100000_deep": (
        "report.json",
        '{"app": "m", "runtime": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "nested too deeply",
        None,
    ),
    # valid JSON in valid UTF-8, but no UTF-8 holds it: it stopped the whole source, each run
    "lone_surrogate": (
        "report.json",
        '{"app": "m", "runtime": 1, "note": "x\\ud800y"}',
        "a lone surrogate escape \\ud800 in a string",
        None,
    ),
    "unhashable_yaml_key": ("report.yaml", "app: m\nruntime: 1\n? [a, b]\n: 1\n", "unhashable", 3),
    # stored as its Python text ("{'name': 'm'}") before: a task is a name
    "mapping_task": ("report.json", '{"app": {"name": "m"}, "runtime": 1}', "is a dict", None),
    "boolean_task": ("report.yaml", "app: yes\nruntime: 1\n", "is a bool, not a name", None),
    # stored as the task "nan" or "inf" before
    "nan_task": ("report.json", '{"app": NaN, "runtime": 1}', "is nan, not a name", None),
    "infinite_task": ("report.yaml", "app: .inf\nruntime: 1\n", "is inf, not a name", None),
}


@pytest.mark.parametrize("case", REFUSED)
def test_report_values_a_parser_raises_on_are_quarantined_with_a_reason(
    tmp_path: Path, case: str
) -> None:
    """PyYAML's date and int constructors, Python's 4300-digit limit and the JSON decoder's
    recursion raise ValueError/TypeError/RecursionError: each is that report's reason (with its
    line where the parser knows it), never a crash of the whole ingest."""
    name, text, fragment, line = REFUSED[case]
    root = tmp_path / "runs"
    good_runs(root)
    put(root, "m", name, text)
    wh, report = ingest(tmp_path, root)
    with wh:
        assert_accounted(report, wh, {f"m/{name}": fragment})
        assert quarantine(wh)[f"m/{name}"][0] == (f"line {line}" if line else "file")
        assert "m" not in records(wh)


ACCEPTED = {  # case -> (report file, content, the record's config)
    "date_key": (
        "report.yaml",
        "app: m\nruntime: 3\nnote: x\n2026-01-01: maintenance\n",
        {"app": "m", "note": "x"},
    ),
    "bytes_key": ("report.yaml", "app: m\nruntime: 3\n? !!binary aGVsbG8=\n: 1\n", {"app": "m"}),
    "bom": (
        "report.json",
        b'\xef\xbb\xbf{"app": "m", "runtime": 3, "size": 5}',
        {"app": "m", "size": 5},
    ),
    "merge_key": (
        "report.yaml",
        "defaults: &d {note: merged, size: 1}\n<<: *d\napp: m\nruntime: 3\nsize: 4\n",
        {"app": "m", "note": "merged", "size": 4},  # the report's own key wins, as YAML says
    ),
    "nan_and_infinity": (
        "report.json",
        '{"app": "m", "runtime": 3, "size": NaN, "note": -Infinity}',
        {"app": "m", "note": "-Infinity", "size": "NaN"},  # text, as json_number keeps "1e999"
    ),
}


def strict_json(text: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("case", ACCEPTED)
def test_reports_with_odd_but_valid_content_are_ingested_as_standard_json(
    tmp_path: Path, case: str
) -> None:
    """Mapping keys that are not text (a YAML date, bytes) are stored as text instead of
    stopping json.dumps; a UTF-8 BOM is accepted as the fleet adapter accepts it; YAML merge keys
    are supported; NaN/Infinity config values are stored as text, so config_json stays standard
    JSON."""
    name, text, config = ACCEPTED[case]
    root = tmp_path / "runs"
    good_runs(root)
    put(root, "m", name, text)
    wh, report = ingest(tmp_path, root)
    with wh:
        assert_accounted(report, wh, {})
        record = records(wh)["m"]
        assert record["target"] == 3.0
        assert strict_json(str(record["config_json"])) == config
        [(fields,)] = wh.con.sql("SELECT fields_json FROM runs WHERE run_key = 'm'").fetchall()
        strict_json(fields)
    if case == "date_key":
        assert json.loads(fields)["2026-01-01"] == "maintenance"


# -- targets of the wrong type (finding 13) ------------------------------------------------------

WRONG_TARGETS = {  # case -> (report file, text, reason fragment): no target is a number
    "json_true": ("report.json", '{"app": "m", "runtime": true}', "runtime True (a boolean)"),
    "yaml_yes": ("report.yaml", "app: m\nruntime: yes\n", "runtime True (a boolean)"),
    "underscored": ("report.json", '{"app": "m", "runtime": "1_000"}', "runtime '1_000'"),
}


@pytest.mark.parametrize("case", WRONG_TARGETS)
def test_a_target_must_be_a_number_or_text_that_reads_as_one(tmp_path: Path, case: str) -> None:
    """`true` / YAML `yes` are not 1.0 and "1_000" is not 1000 (float() reads both): the table
    adapter's rule (FLOAT_RE) applies; a number written as text ("2.5") still counts."""
    name, text, fragment = WRONG_TARGETS[case]
    root = tmp_path / "runs"
    good_runs(root)
    put(root, "m", name, text)
    put(root, "quoted", "report.json", '{"app": "q", "runtime": " 2.5 "}')
    wh, report = ingest(tmp_path, root)
    with wh:
        assert_accounted(report, wh, {f"m/{name}": f"non-numeric target {fragment}"})
        assert records(wh)["quoted"]["target"] == 2.5


# -- baselines of zero (finding 12) --------------------------------------------------------------

REFERENCE = {"field": "vm", "value": "ref", "match": ["job"], "pair_on": "run"}


def put_pair_runs(root: Path, runtimes: dict[str, float]) -> None:
    """Run folders `<vm>_<job>_<run>` with the given runtimes."""
    for run, runtime in runtimes.items():
        vm, job, n = run.split("_")
        report = {"app": run, "vm": vm, "job": job, "run": n, "runtime": runtime}
        put(root, run, "report.json", json.dumps(report))
        put(root, run, "log.csv", "time,cpu\n00:00:01,5\n00:00:02,7\n")


def test_a_reference_run_of_zero_seconds_is_quarantined_not_a_baseline(tmp_path: Path) -> None:
    """With `target_relative_to: reference.runtime`, a reference run that took 0 s would give its
    paired records a ratio to zero, and the dataset build would stop with MissingScaleError.
    Ingest quarantines it with regressor.targets' own rule; its runs pair with another reference
    run instead, and the dataset builds."""
    root = tmp_path / "runs"
    put_pair_runs(root, {"ref_sort_1": 0, "ref_sort_2": 30, "big_sort_1": 10, "big_sort_2": 11})
    relative = {"reference": REFERENCE, "target_relative_to": "reference.runtime"}
    wh, report = ingest(tmp_path, root, target_min=0.0, **relative)
    with wh:
        bad = {"ref_sort_1/report.json": "'reference.runtime' is 0.0, not a positive"}
        assert_accounted(report, wh, bad, good={"big_sort_1": 10.0, "big_sort_2": 11.0})
        frame = wh.query("records").sort("record_id")
        pairs = wh.con.sql("SELECT record_key, ref_path FROM row_records").fetchall()
    assert sorted(pairs) == [
        ("big_sort_1", "ref_sort_2/report.json"),
        ("big_sort_2", "ref_sort_2/report.json"),
    ]
    examples = to_examples(frame, relative_to="reference.runtime")
    assert list(examples.scale_values) == [30.0, 30.0]


def test_a_match_value_that_is_a_list_pairs_as_a_value_and_stops_no_ingest(tmp_path: Path) -> None:
    """`reference.match` values were dict keys: a report giving a list there raised TypeError
    after its batch was stored, so this ingest and every later one of the source failed."""
    root = tmp_path / "runs"
    put_pair_runs(root, {"ref_sort_1": 30, "big_sort_1": 10})
    odd = {"app": "big_odd_1", "vm": "big", "job": ["sort", "x"], "run": "1", "runtime": 12}
    put(root, "big_odd_1", "report.json", json.dumps(odd))
    put(root, "big_odd_1", "log.csv", "time,cpu\n00:00:01,5\n00:00:02,7\n")
    wh, report = ingest(tmp_path, root, reference=REFERENCE)
    with wh:
        pairs = sorted(wh.con.sql("SELECT record_key, ref_path FROM row_records").fetchall())
        again = ingest_runs(wh, source(root, reference=REFERENCE), "run-2")
    assert report.files_quarantined == 0
    assert pairs == [("big_sort_1", "ref_sort_1/report.json")]  # no reference ran job [sort, x]
    assert again.files_unchanged == again.files_seen


def test_match_values_pair_as_the_config_shows_them(tmp_path: Path) -> None:
    """Raw values as keys: Python's `True == 1 == 1.0` paired a `run: true` reference with
    `run: 1` and `run: 1.0` runs, while `run: "1"` (which the config shows as 1) paired with
    nothing."""
    root = tmp_path / "runs"
    runs = {
        "ref_sort_t": True,
        "ref_sort_1": 1,
        "big_sort_a": 1.0,
        "big_sort_b": "1",
        "big_sort_c": True,
    }
    for folder, value in runs.items():
        vm, job, _ = folder.split("_")
        report = {"app": folder, "vm": vm, "job": job, "run": value, "runtime": 30}
        put(root, folder, "report.json", json.dumps(report))
        put(root, folder, "log.csv", "time,cpu\n00:00:01,5\n00:00:02,7\n")
    pairings = [REFERENCE | {"match": ["run"], "pair_on": None}, REFERENCE]  # both ways
    for i, reference in enumerate(pairings):
        wh, report = ingest(tmp_path / str(i), root, reference=reference)
        with wh:
            pairs = sorted(wh.con.sql("SELECT record_key, ref_path FROM row_records").fetchall())
        assert report.files_quarantined == 0
        assert pairs == [
            ("big_sort_a", "ref_sort_1/report.json"),
            ("big_sort_b", "ref_sort_1/report.json"),
            ("big_sort_c", "ref_sort_t/report.json"),
        ]


def test_a_record_without_its_own_baseline_is_quarantined(tmp_path: Path) -> None:
    """Without a reference, `target_relative_to` names a field of the run's own config: a run
    whose `size` is 0 is quarantined at ingest rather than failing the dataset build."""
    root = tmp_path / "runs"
    good_runs(root)
    for run, target in GOOD.items():
        put(root, run, "report.json", json.dumps({"app": run, "runtime": target, "size": 2}))
    put(root, "m", "report.json", '{"app": "m", "runtime": 4, "size": "0"}')
    wh, report = ingest(tmp_path, root, target_relative_to="size")
    with wh:
        assert_accounted(report, wh, {"m/report.json": "'size' is 0, not a positive"})
        to_examples(wh.query("records"), relative_to="size")


def test_a_pairing_that_changed_since_ingest_is_left_out_with_a_reason(tmp_path: Path) -> None:
    """The `reference` rules do not re-parse stored runs, so a run checked as an ordinary run can
    become a reference: the records are rebuilt, and a pairing whose baseline is 0 is left out
    with a reason in the report instead of failing the dataset build."""
    root = tmp_path / "runs"
    put_pair_runs(root, {"ref_sort_1": 30, "big_sort_1": 0, "small_sort_1": 12})
    relative = {"target_relative_to": "reference.runtime", "target_min": 0.0}
    with Warehouse(tmp_path / "wh.duckdb") as wh:
        ingest_runs(wh, source(root, reference=REFERENCE, **relative), "run-1")
        big_ref = REFERENCE | {"value": "big"}
        report = ingest_runs(wh, source(root, reference=big_ref, **relative), "run-2")
        assert report.files_unchanged == report.files_seen
        (reason,) = [r for f, r in report.quarantined if f == str(root / "ref_sort_1/report.json")]
        assert "'reference.runtime' is 0.0" in reason
        assert "small_sort_1" not in records(wh)
        to_examples(wh.query("records"), relative_to="reference.runtime")


# -- logs whose time column is not clock times on every row (finding 8) -----------------------

ODD_CLOCKS = {  # run -> log; the time column is not clock times on every row
    "sar_average_row": "time,cpu\n00:00:01,5\nAverage:,6\n",
    "seconds": "time,cpu\n1,5\n2,6\n",
    "no_value_column": "time\n1\n2\n",
}


def test_a_log_whose_times_are_not_clock_times_is_summarised_per_sample(tmp_path: Path) -> None:
    """polars cannot infer a datetime format from `1` or `Average:` and raises; the module's
    promise holds instead: time falls back to the sample index (one sample per second) when no
    stamp parses. A row whose stamp does not parse beside clock times (sar's `Average:` line) is
    no sample (series v3): it used to switch the whole file to sample indices."""
    root = tmp_path / "runs"
    good_runs(root)
    for run, log in ODD_CLOCKS.items():
        put(root, run, "report.json", json.dumps({"app": run, "runtime": 9}))
        put(root, run, "log.csv", log)
    wh, report = ingest(tmp_path, root, own_log=True)
    with wh:
        assert_accounted(report, wh, {})
        got = records(wh)
    for run in ODD_CLOCKS:
        logs = json.loads(str(got[run]["logs_json"]))
        expected = (1, 0.0) if run == "sar_average_row" else (2, round(1 / 3600, 7))
        assert (logs["samples"], logs["span_h"]) == expected, run
    assert json.loads(str(got["seconds"]["logs_json"]))["windows"]["all"]["cpu"]["mean"] == 5.5


def test_a_log_the_batch_summary_chokes_on_is_quarantined_alone(tmp_path: Path) -> None:
    """A batch's logs are summarised in one polars pass. A log column named like the pass's own
    columns (`value`) is summarised like any other; one the pass still cannot take (a header
    holding NUL) is quarantined alone, its run keeps its record, and the batch's other logs keep
    their summaries."""
    root = tmp_path / "runs"
    good_runs(root)
    logs = {
        "named_value": "time,value\n00:00:01,1\n00:00:02,3\n",
        "nul": "time,\0col\n00:00:01,2\n",
    }
    for run, log in logs.items():
        put(root, run, "report.json", json.dumps({"app": run, "runtime": 9}))
        put(root, run, "log.csv", log)
    wh, report = ingest(tmp_path, root, own_log=True)
    with wh:
        assert_accounted(report, wh, {"nul/log.csv": "could not be parsed (DuplicateError"})
        got = records(wh)
    assert json.loads(str(got["named_value"]["logs_json"]))["windows"]["all"]["value"]["max"] == 3
    assert json.loads(str(got["a_good"]["logs_json"]))["samples"] == 2
    assert got["nul"]["logs_json"] == "{}"


# -- run folders refused unread (findings 5 and 14) ---------------------------------------------


def test_run_folders_and_files_refused_unread_reach_the_quarantine_table(tmp_path: Path) -> None:
    """A run folder whose name is not UTF-8, one without report or log, one that is a symlink out
    of the root, a report that is a symlink out of it or a directory, a log that is a FIFO, a
    file or a dangling symlink where a run folder belongs: each is refused unread, counted, and
    in the quarantine table with its reason (replaced, not repeated, by the next ingest); the
    good runs are all ingested."""
    root = tmp_path / "runs"
    good_runs(root)
    outside = tmp_path / "outside"
    put(tmp_path, "outside", "report.json", '{"app": "TOP-SECRET", "runtime": 1}')
    put(root, os.fsdecode(b"caf\xe9"), "report.json", '{"app": "cafe", "runtime": 1}')
    (root / "empty").mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "leaky").mkdir()
    (root / "leaky" / "report.json").symlink_to(outside / "report.json")
    (root / "dir_report" / "report.json").mkdir(parents=True)
    put(root, "fifo_log", "report.json", '{"app": "f", "runtime": 4}')
    os.mkfifo(root / "fifo_log" / "log.csv")
    # Matches of `run_glob` that are no folder were passed over, neither ingested nor refused.
    (root / "notes.txt").write_text("a stray file")
    (root / "gone").symlink_to(tmp_path / "nowhere")
    (root / "loop").symlink_to(root / "loop")
    put(root, "two", "report.json", '{"app": "two", "runtime": 10}')
    put(root, "two", "report.yaml", "app: two\nruntime: 99\n")  # ignored unsaid before
    (root / "latest").symlink_to(root / "two", target_is_directory=True)  # stored twice before
    bad = {
        "latest": "the same run folder as two (a symlink)",
        "two/report.yaml": "a second report: report.json is the one read",
        "notes.txt": "a file where a run folder is expected",
        "gone": "a symlink to nothing",
        "loop": "a symlink to nothing (dangling, or a loop)",
        "caf\\xe9": "name is not valid UTF-8",
        "empty": "a run folder without report or log",
        "linked": "resolves outside the source folder",
        "leaky/report.json": "resolves outside the source folder",
        "dir_report/report.json": "a directory, not a file",
        "fifo_log/log.csv": "not a regular file",
    }
    with Warehouse(tmp_path / "wh.duckdb") as wh:
        for run_id in ("run-1", "run-2"):
            report = ingest_runs(wh, source(root), run_id)
            assert_accounted(report, wh, bad)
            assert report.files_quarantined == len(bad)
        assert records(wh)["fifo_log"]["target"] == 4.0  # its report is fine
        assert records(wh)["two"]["target"] == 10.0
        assert "TOP-SECRET" not in str(wh.query("records")["config_json"].to_list())


def test_a_run_reached_through_symlinks_is_read_once_where_it_lies(tmp_path: Path) -> None:
    """A linked run folder (`latest -> run_2`) or a linked parent (`us -> eu`) stored the run
    twice, under two keys that could sit on both sides of a split; a link that is a run's only
    way in (`current/r7 -> ../archive/r7`) is read. Rows an earlier ingest stored from a folder
    now found to be an alias are dropped (the link still resolves: never "gone")."""
    root = tmp_path / "runs"
    for run, target in {"eu/run_1": 1.0, "eu/run_2": 2.0, "archive/r7": 7.0}.items():
        put(root, run, "report.json", json.dumps({"app": run.split("/")[1], "runtime": target}))
        put(root, run, "log.csv", "time,cpu\n00:00:01,5\n00:00:02,7\n")
    (root / "current").mkdir()
    (root / "current" / "r7").symlink_to(root / "archive" / "r7", target_is_directory=True)
    shutil.copytree(root / "eu", root / "us")  # a copy at first: stored as runs of its own
    with Warehouse(tmp_path / "wh.duckdb") as wh:
        glob = {"run_glob": "[!a]*/*"}  # not archive/: current/r7 is its run's only way in
        first = ingest_runs(wh, source(root, **glob), "run-1")
        assert set(records(wh)) == {"eu/run_1", "eu/run_2", "us/run_1", "us/run_2", "current/r7"}
        shutil.rmtree(root / "us")
        (root / "us").symlink_to(root / "eu", target_is_directory=True)
        (root / "eu" / "latest").symlink_to(root / "eu" / "run_2", target_is_directory=True)
        again = ingest_runs(wh, source(root, **glob), "run-2")
        reasons = {path: reason for path, (_, reason, _) in quarantine(wh).items()}
        assert set(records(wh)) == {"eu/run_1", "eu/run_2", "current/r7"}
    assert first.files_quarantined == 0
    assert set(reasons) == {"eu/latest", "us/latest", "us/run_1", "us/run_2"}
    assert "the same run folder as eu/run_2 (a symlink)" in reasons["us/run_2"]
    assert "the same run folder as eu/run_2 (a symlink)" in reasons["eu/latest"]
    counted = again.files_ingested + again.files_quarantined + again.files_unchanged
    assert again.files_seen == counted


# -- unreadable and vanished files (findings 3 and 4) -------------------------------------------

CHILD = """
import json, sys
from pathlib import Path
from regressor.config import RunsSourceConfig
from regressor.sources.runs import ingest_runs
from regressor.warehouse import Warehouse
root, db = Path(sys.argv[1]), Path(sys.argv[2])
run_glob = sys.argv[3] if len(sys.argv) > 3 else "*"
cfg = dict(name="runs", adapter="runs", root=root, run_glob=run_glob, target_field="runtime",
           report_files=["report.json", "report.yaml"], task_field="app",
           config_fields=["app", "note", "size"])
with Warehouse(db) as wh:
    print(ingest_runs(wh, RunsSourceConfig.model_validate(cfg), "run-1").model_dump_json())
"""


def ingest_locked(root: Path, db: Path, locked: list[Path], run_glob: str = "*") -> IngestReport:
    """Ingest in a child process that file modes bind, with `locked` at mode 000 meanwhile."""
    for path in locked:
        path.chmod(0)
    cmd = [sys.executable, "-c", CHILD, str(root), str(db), run_glob]
    try:
        done = subprocess.run(
            with_file_modes_binding(cmd), cwd=PROJECT, capture_output=True, text=True, check=False
        )
    finally:
        for path in locked:
            path.chmod(0o755)
    assert done.returncode == 0, done.stderr[-3000:]
    return IngestReport.model_validate_json(done.stdout.splitlines()[-1])


def test_a_folder_of_run_folders_that_cannot_be_listed_is_quarantined(tmp_path: Path) -> None:
    """With `run_glob: "*/*"` (lumos: `aws/*/*`), a group folder glob may not list used to hide
    its runs without a word; it is quarantined, and the other group's run is ingested."""
    root = tmp_path / "runs"
    put(root, "a/run1", "report.json", '{"app": "x", "runtime": 2}')
    put(root, "b/run2", "report.json", '{"app": "y", "runtime": 3}')
    report = ingest_locked(root, tmp_path / "wh.duckdb", [root / "b"], run_glob="*/*")
    assert report.files_seen == report.files_ingested + report.files_quarantined
    assert report.records == 1
    [(file, reason)] = report.quarantined
    assert file == str(root / "b")
    assert "a folder the glob searches cannot be listed (Permission denied)" in reason


def test_unreadable_files_and_folders_are_quarantined_and_the_run_goes_on(tmp_path: Path) -> None:
    """chmod 000 on a report, a log and a run folder (read for real: the ingest runs in a child
    process without root's DAC override). Each is quarantined as unreadable, and so is the file
    beside an unreadable one: the run is left as stored. The good runs are all there; once
    readable, every run is ingested and the quarantine empties; a stored run whose log turns
    unreadable keeps its record."""
    root = tmp_path / "runs"
    db = tmp_path / "wh.duckdb"
    good_runs(root)
    locked = [
        put(root, "bad_report", "report.json", '{"app": "r", "runtime": 3}'),
        put(root, "bad_log", "log.csv", "time,cpu\n00:00:01,5\n"),
        root / "bad_folder",
    ]
    put(root, "bad_log", "report.json", '{"app": "l", "runtime": 4}')
    put(root, "bad_folder", "report.json", '{"app": "f", "runtime": 5}')
    report = ingest_locked(root, db, locked)
    with Warehouse(db) as wh:
        assert_accounted(
            report,
            wh,
            {
                "bad_report/report.json": "unreadable: Permission denied",
                "bad_log/log.csv": "unreadable: Permission denied",
                "bad_log/report.json": "left as stored: log.csv beside it is unreadable",
                "bad_folder": "the run folder cannot be read (Permission denied)",
            },
        )
        assert "bad_log" not in records(wh)
        ingest_runs(wh, source(root), "run-2")
        assert {"bad_report", "bad_log", "bad_folder"} <= set(records(wh))
        assert quarantine(wh) == {}
    again = ingest_locked(root, db, [root / "bad_log" / "log.csv"])
    assert again.files_quarantined == 2
    with Warehouse(db) as wh:
        assert records(wh)["bad_log"]["target"] == 4.0


class DeleteOnWarning(logging.Handler):
    """Deletes a file when the adapter logs a warning naming `trigger`: a file vanishing at a
    real, fixed point of the ingest (after its run folder was listed, before it is read)."""

    def __init__(self, victims: dict[str, Path]) -> None:
        super().__init__(logging.WARNING)
        self.victims = victims

    def emit(self, record: logging.LogRecord) -> None:
        for trigger, victim in self.victims.items():
            if trigger in record.getMessage() and victim.exists():
                victim.unlink()


@pytest.fixture
def deleting() -> Iterator[dict[str, Path]]:
    victims: dict[str, Path] = {}
    handler = DeleteOnWarning(victims)
    logger = logging.getLogger("regressor.sources.common")  # where `Tally.refuse` logs
    logger.addHandler(handler)
    try:
        yield victims
    finally:
        logger.removeHandler(handler)


def test_files_that_vanish_while_the_ingest_runs_are_quarantined(
    tmp_path: Path, deleting: dict[str, Path]
) -> None:
    """`b/report.json` is deleted after its folder was examined, before it is hashed (when the
    FIFO beside it is refused); `c/log.csv` after it was hashed, before it is read (when the next
    folder, a symlink out of the root, is refused). Both are quarantined as vanished; c keeps its
    record; nothing stops the run."""
    root = tmp_path / "runs"
    good_runs(root)
    put(root, "b", "report.json", '{"app": "b", "runtime": 3}')
    os.mkfifo(root / "b" / "log.csv")
    put(root, "c", "report.json", '{"app": "c", "runtime": 4}')
    put(root, "c", "log.csv", "time,cpu\n00:00:01,5\n")
    (tmp_path / "elsewhere").mkdir()
    (root / "d").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    deleting |= {"b/log.csv": root / "b/report.json", f"{root / 'd'}:": root / "c/log.csv"}
    wh, report = ingest(tmp_path, root)
    with wh:
        assert_accounted(
            report,
            wh,
            {
                "b/log.csv": "not a regular file",
                "b/report.json": "vanished",
                "c/log.csv": "vanished",
                "d": "resolves outside the source folder",
            },
        )
        assert records(wh)["c"]["target"] == 4.0


def test_the_snapshot_hash_names_each_records_task_and_period(tmp_path: Path) -> None:
    """A run record's id is `source/run_key`: moving a run to another task or day left the
    data hash, and so the training key, as it was, and a model trained on the old labels was
    reused."""
    root = tmp_path / "runs"
    when = {"period_field": "when"}
    for run, target in GOOD.items():
        put(
            root,
            run,
            "report.json",
            json.dumps({"app": "m", "runtime": target, "when": "2024-05-01"}),
        )
    wh, _ = ingest(tmp_path, root, **when)
    with wh:
        hashes = [wh.content_hash("runs")]
        for changed in ({"app": "n", "when": "2024-05-01"}, {"app": "n", "when": "2025-01-09"}):
            put(root, "a_good", "report.json", json.dumps({"runtime": 1.0, **changed}))
            ingest_runs(wh, source(root, **when), f"run-{len(hashes) + 1}")
            hashes.append(wh.content_hash("runs"))
    assert len(set(hashes)) == 3


def test_a_run_left_without_a_reference_is_said_not_silently_dropped(tmp_path: Path) -> None:
    """A run whose workload's only reference run has a truncated log (or that no reference run
    ran) was stored with every file `ok` and got no record, and nothing said so."""
    root = tmp_path / "runs"
    put_pair_runs(root, {"ref_sort_1": 30, "big_sort_1": 10, "ref_scan_1": 5, "big_scan_1": 8})
    put(root, "ref_scan_1", "log.csv", "time,cpu\n00:00:01,5\n00:00:02,7")  # cut short
    put_pair_runs(root, {"big_join_1": 4})  # no reference run of `join` at all
    wh, report = ingest(tmp_path, root, reference=REFERENCE)
    with wh:
        assert sorted(records(wh)) == ["big_sort_1"]
    said = {Path(file).relative_to(root).parts[0]: reason for file, reason in report.quarantined}
    assert said.keys() == {"ref_scan_1", "big_scan_1", "big_join_1"}
    assert "truncated" in said["ref_scan_1"]  # the log itself, quarantined
    for run, job in (("big_scan_1", "scan"), ("big_join_1", "join")):
        expected = f"no vm=ref run with a usable log for job='{job}' to pair with"
        assert expected in said[run], said[run]
