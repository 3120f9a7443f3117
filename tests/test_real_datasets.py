"""The shipped source configs ingest `../shared/datasets` in place, with the row counts their
README.txt files state. Skipped, with the reason, when the datasets are not on this machine."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from regressor.config import PROJECT_ROOT, load_source_config
from regressor.sources.dispatch import ingest_source
from regressor.sources.fleet import IngestReport
from regressor.warehouse import Warehouse

DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"


def readme(name: str) -> str:
    path = DATASETS / name / "README.txt"
    if not path.is_file():
        pytest.skip(f"dataset {name} not found at {path.parent} (expected beside the project)")
    return path.read_text(encoding="utf-8")


def stated_rows(text: str, suffix: str) -> dict[str, int]:
    """'sort.tsv     630 rows' -> {'sort': 630}: the counts as the README states them."""
    pattern = rf"^\s*(\w+){re.escape(suffix)}\s+([\d,]+) rows"
    return {m[1]: int(m[2].replace(",", "")) for m in re.finditer(pattern, text, re.M)}


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    with Warehouse(tmp_path_factory.mktemp("real") / "w.duckdb") as wh:
        yield wh


def ingest(wh: Warehouse, name: str, unpaired: int = 0) -> IngestReport:
    """Ingest a real source: no file quarantined, and only `unpaired` runs named in the report
    as stored without a record (no reference run to pair with)."""
    report = ingest_source(wh, load_source_config(name), Path("unused"), "real-1")
    assert report.files_seen == report.files_ingested + report.files_quarantined
    assert report.files_quarantined == 0
    said = [reason for _, reason in report.quarantined]
    assert len(said) == unpaired, said[:3]
    assert all("run with a usable log for" in reason for reason in said), said[:3]
    return report


def counts_by_task(wh: Warehouse, source: str) -> dict[str, int]:
    sql = f"SELECT task, count(*) FROM records WHERE source = '{source}' GROUP BY task"
    return dict(wh.con.sql(sql).fetchall())


def test_c3o_all_five_jobs(warehouse):
    stated = stated_rows(readme("c3o_spark"), ".tsv")
    assert set(stated) == {"sort", "grep", "sgd", "kmeans", "pagerank"}
    report = ingest(warehouse, "c3o")
    assert counts_by_task(warehouse, "c3o") == stated
    assert report.records == sum(stated.values()) == 4650
    row = warehouse.con.sql(
        "SELECT config_json FROM records WHERE task = 'sort' LIMIT 1"
    ).fetchall()[0]
    assert set(json.loads(row[0])) == {
        "instance_count",
        "machine_type",
        "slots",
        "memory",
        "data_size_MB",
        "line_length",
        "lines",
    }


def test_deepperf_nine_systems(warehouse):
    stated = stated_rows(readme("deepperf"), "_AllNumeric.csv")
    assert len(stated) == 9
    ingest(warehouse, "deepperf")
    got = counts_by_task(warehouse, "deepperf")
    assert {task.removesuffix("_AllNumeric"): n for task, n in got.items()} == stated


def test_lumos_runs_and_reference_records(warehouse):
    text = readme("lumos_aws")
    stated = int(re.search(r"([\d,]+) runs", text)[1].replace(",", ""))
    report = ingest(warehouse, "lumos", unpaired=6)  # the README's 6 runs without a reference
    runs = warehouse.con.sql("SELECT count(*) FROM runs WHERE source = 'lumos'").fetchall()[0][0]
    assert runs == stated == 1882
    assert report.files_seen == 2 * stated  # report.json + sar.csv per run
    # A record per run on a non-reference VM type whose workload+size ran on the reference.
    expected = warehouse.con.sql(
        """
        WITH f AS (SELECT run_key, fields_json::JSON AS j FROM runs WHERE source = 'lumos'),
        k AS (SELECT run_key, j->>'vm_type' AS vm,
                     concat_ws('|', j->>'framework', j->>'workload', j->>'datasize') AS w FROM f)
        SELECT count(*) FROM k
        WHERE vm <> 'm5.large' AND w IN (SELECT w FROM k WHERE vm = 'm5.large')
        """
    ).fetchall()[0][0]
    assert report.records == expected > 1600
    assert set(counts_by_task(warehouse, "lumos")) == {
        f"{family}5.{size}" for family in "cmr" for size in ("large", "xlarge", "2xlarge")
    } - {"m5.large"}


def test_lumos_records_never_hold_their_own_log(warehouse):
    readme("lumos_aws")  # skips, with the reason, when the dataset is absent
    warehouse.migrate()  # the tables exist even when this test runs on its own
    if not warehouse.con.sql("SELECT count(*) FROM runs").fetchall()[0][0]:
        ingest(warehouse, "lumos", unpaired=6)
    leaks = warehouse.con.sql(
        """
        SELECT count(*) FROM row_records AS r JOIN runs AS own ON own.path = r.path
        WHERE r.source = 'lumos' AND (r.logs_json = own.logs_json OR r.ref_path = r.path
              OR r.config_json LIKE '%throughput%' OR r.config_json LIKE '%end_time%')
        """
    ).fetchall()[0][0]
    assert leaks == 0
    paired = warehouse.con.sql(
        """
        SELECT count(*) FROM row_records AS r JOIN runs AS ref ON ref.path = r.ref_path
        WHERE r.source = 'lumos' AND r.logs_json = ref.logs_json
          AND ref.fields_json::JSON->>'vm_type' = 'm5.large'
        """
    ).fetchall()[0][0]
    assert paired == counts_total(warehouse, "lumos")


def counts_total(wh: Warehouse, source: str) -> int:
    return sum(counts_by_task(wh, source).values())
