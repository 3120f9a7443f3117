"""Flows on the session Prefect server: ingest cache, one warehouse writer, adapt, evaluate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from prefect import flow
from test_retrain_flow import TINY_APP

from flows.adapt import adapt
from flows.common import ensure_writer_limit, make_task_runner, side_by_side_runner
from flows.evaluate import evaluate
from flows.retrain import retrain
from flows.tasks import ingest_task
from regressor import pipeline, registry
from regressor.config import (
    AppConfig,
    FleetSourceConfig,
    OrchestrationConfig,
    ResolvedPaths,
    load_app_config,
    load_source_config,
)
from regressor.sources.fleet import IngestReport
from regressor.warehouse import Warehouse

TEXTPERF = Path(sys.executable).with_name("textperf")
SLOT = re.compile(r"warehouse writer slot (acquired|released) at (\S+)")


def _tiny(root: Path) -> tuple[Path, Path]:
    config = root / "app.yaml"
    config.write_text(yaml.safe_dump(TINY_APP))
    return config, root / "var"


def _generate(config: Path, var: Path) -> tuple[ResolvedPaths, FleetSourceConfig]:
    app = load_app_config(config, var)
    paths, source = app.paths.resolve(), load_source_config(app.source)
    pipeline.generate(paths, app, source)
    return paths, source


@flow
def ingest_report(paths: ResolvedPaths, source: FleetSourceConfig, run_id: str) -> IngestReport:
    return ingest_task(paths, source, run_id)


def _content(paths: ResolvedPaths) -> tuple[str, list[tuple]]:
    with Warehouse(paths.warehouse, read_only=True) as wh:
        records = wh.con.sql("SELECT record_id, target FROM records ORDER BY ALL").fetchall()
        return wh.content_hash("demo_fleet"), records


def test_every_ingest_reads_the_warehouse_it_writes(tmp_path: Path, prefect_harness):
    """The flows' ingest was cached on the input files: targets changed and changed back, or a
    warehouse re-created by another writer, got "unchanged" (a cached report) while the
    warehouse held other data. The adapter's own content-hash skip consults the warehouse."""
    paths, source = _generate(*_tiny(tmp_path))
    first = ingest_report(paths, source, "r1")
    stored = _content(paths)
    again = ingest_report(paths, source, "r2")
    assert first.files_ingested == again.files_unchanged == again.files_seen > 0
    targets = pipeline.source_root(paths, source) / source.targets_file
    original = targets.read_text()
    header, *rows = original.splitlines()
    halved = [",".join([*r.split(",")[:-1], str(float(r.split(",")[-1]) / 2)]) for r in rows]
    targets.write_text("\n".join([header, *halved]) + "\n")
    assert ingest_report(paths, source, "r3").files_ingested == 1
    assert _content(paths) != stored
    targets.write_text(original)
    assert ingest_report(paths, source, "r4").files_ingested == 1
    assert _content(paths) == stored
    paths.warehouse.unlink()  # re-created empty by another writer, before this ingest
    Warehouse(paths.warehouse).close()
    assert ingest_report(paths, source, "r5").records_added == len(stored[1])
    assert _content(paths) == stored


def _slot_times(output: str) -> tuple[float, float]:
    found = {kind: datetime.fromisoformat(t).timestamp() for kind, t in SLOT.findall(output)}
    return found["acquired"], found["released"]


def _wait_for(logs: list[Path], needle: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(needle in log.read_text() for log in logs):
        assert time.monotonic() < deadline, f"no {needle!r} in every log after {timeout_s} s"
        time.sleep(0.5)


def _start_retrain(config: Path, var: Path, mlflow_db: Path, log: Path) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        # One Prefect server, hence one writer slot, shared with this test process.
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        # One warehouse; separate SQLite MLflow stores (not built for concurrent trainings).
        "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}",
    }
    cmd = [str(TEXTPERF), "retrain", "--config", str(config), "--var-dir", str(var)]
    cmd += ["--no-generate-fleet", "--no-adapt"]
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_two_concurrent_retrains_wait_for_the_writer_then_take_turns(
    tmp_path: Path, prefect_harness
):
    from prefect.concurrency.sync import concurrency

    config, var = _tiny(tmp_path)
    _generate(config, var)
    limit = OrchestrationConfig().writer_limit
    ensure_writer_limit(limit)
    logs = [tmp_path / f"retrain-{name}.log" for name in ("a", "b")]
    dbs = [tmp_path / f"mlflow-{name}.db" for name in ("a", "b")]
    # Hold the slot, as a long write would: both runs must reach it and wait.
    with concurrency(limit, occupy=1, strict=True):
        procs = [_start_retrain(config, var, db, log) for db, log in zip(dbs, logs, strict=True)]
        _wait_for(logs, "waiting for the warehouse writer slot", 180)
        time.sleep(2)
        released = time.time()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=400) == 0, log.read_text()[-4000:]
    first, second = sorted(_slot_times(log.read_text()) for log in logs)
    assert released <= first[0], "a run wrote while the slot was held"
    assert first[1] <= second[0], "the second writer entered before the first had left"
    for db in dbs:
        assert MlflowClient(tracking_uri=f"sqlite:///{db}").search_model_versions("name='textperf'")
    with Warehouse(var / "warehouse.duckdb", read_only=True) as wh:
        records = wh.query("records")
    assert records.height == records["record_id"].n_unique() > 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, prefect_harness) -> tuple[Path, Path]:
    config, var = _tiny(tmp_path_factory.mktemp("adhoc"))
    text = retrain(config=config, var_dir=var, adapt=False)
    # Nothing was checked: "No adaptation due: every variant is adapted from the current
    # champion" was a claim the run never made sure of.
    assert "Adaptation off for this run" in text
    assert "No adaptation due" not in text
    return config, var


def test_evaluate_flow_scores_a_registered_uri_and_reports_links(trained):
    config, var = trained
    metrics = evaluate(config=config, var_dir=var)  # the config's champion, on its test split
    assert {"spearman", "mape"} <= set(metrics)
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluate-report"]))
        )
    assert "models:/textperf/1" in found[0].data
    assert "| model | Spearman | Kendall | MAPE % |" in found[0].data


def test_the_evaluate_flow_fails_at_once_on_a_misspelt_alias_or_split(trained):
    """Both were retried for 70 s and ended in a traceback: a mistake retrying cannot fix."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    config, var = trained
    typo = "models:/textperf@champoin"
    state = evaluate(model=typo, config=config, var_dir=var, return_state=True)
    assert state.is_failed()
    assert "no version of 'textperf' holds @champoin" in state.message
    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        assert [run.run_count for run in client.read_task_runs(flow_run_filter=flow_run)] == [1]
    state = evaluate(split="tset", config=config, var_dir=var, return_state=True)
    assert state.is_failed()
    assert "split" in state.message


def test_adapt_flow_registers_a_variant_of_the_given_version(trained):
    config, var = trained
    uri = adapt(config=config, var_dir=var, version="1")
    name = uri.removeprefix("models:/").split("/")[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{var / 'mlflow.db'}")
    version = client.search_model_versions(f"name='{name}'")[0]
    assert version.tags["base_model"] == "models:/textperf/1"
    assert "gate_decision" in version.tags


def test_the_ad_hoc_flows_refuse_a_state_directory_without_a_store(trained, tmp_path: Path):
    """A misspelt `var_dir` made a fresh empty store there: prune "deleted 0 versions" and
    succeeded. Each of evaluate, adapt and prune now fails at once, naming it, and makes
    nothing (the name of a version given as a number, as `--param version=3` sends it, is
    read as text)."""
    from flows.prune import prune

    config, _ = trained
    typo = tmp_path / "var-typo"
    for run in (
        lambda: prune(config=config, var_dir=typo, return_state=True),
        lambda: evaluate(config=config, var_dir=typo, return_state=True),
        lambda: adapt(version=1, config=config, var_dir=typo, return_state=True),
    ):
        state = run()
        assert state.is_failed()
        assert f"no MLflow store in {typo}" in state.message
    assert not (typo / "mlflow.db").exists()
    read = adapt.validate_parameters({"version": 3, "task": 7})
    assert (read["version"], read["task"]) == ("3", "7")


def test_cli_adapt_prints_the_gate_and_the_model_to_predict_the_task_with(trained):
    from typer.testing import CliRunner

    from regressor import cli

    config, var = trained
    args = ["adapt", "--base", "1", "--shots", "12", "--config", str(config), "--var-dir", str(var)]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"from_scratch +spearman", result.output), result.output
    # Without the reference, nothing is trained or printed for it.
    quick = CliRunner().invoke(cli.app, [*args, "--no-from-scratch", "--force"])
    assert quick.exit_code == 0, quick.output
    assert re.search(r"adapted +spearman", quick.output), quick.output
    assert "from_scratch" not in quick.output
    assert re.search(r"gate: (promoted|refused) \(.+\); predict \S+ with \S+", result.output)
    # The newest version is the second command's: its line names what to predict with now.
    gate = re.search(r"gate: (promoted|refused) \(.+\); predict (\S+) with (\S+)", quick.output)
    assert gate, quick.output
    client = MlflowClient(tracking_uri=f"sqlite:///{var / 'mlflow.db'}")
    variant = f"textperf-{gate.group(2)}"
    newest = max(client.search_model_versions(f"name='{variant}'"), key=lambda v: int(v.version))
    assert (gate.group(1) == "promoted") == json.loads(newest.tags["gate_decision"])["promoted"]
    # The variant's champion if it has one (promoted now or earlier), else the model's.
    mlflow.set_tracking_uri(f"sqlite:///{var / 'mlflow.db'}")
    try:
        held = registry.alias_version(variant, "champion")
        main = registry.alias_version("textperf", "champion")
    finally:
        mlflow.set_tracking_uri(None)
    assert held is not None or gate.group(1) == "refused"
    if held is not None:
        assert gate.group(3) == f"models:/{variant}@champion"
    else:
        assert gate.group(3) == registry.model_uri("textperf", main.version)


def test_dask_task_runner_runs_mapped_tasks(prefect_harness):
    pytest.importorskip("prefect_dask")
    from prefect import task

    @task
    def square(x: int) -> int:
        return x * x

    runner = make_task_runner(OrchestrationConfig(task_runner="dask", max_workers=2))

    @flow(task_runner=runner)
    def squares() -> int:
        return sum(square.map(range(6)).result())

    assert squares() == 55


def test_each_run_spreads_its_fits_on_its_own_configs_runner():
    """The runner comes from the run's config (`--config`, a deployment's `config` parameter),
    not from whatever conf/default.yaml said when the flow module was imported; threads, or a
    single task, never spread fits over one process."""
    pytest.importorskip("prefect_dask")
    from prefect_dask import DaskTaskRunner

    dask = AppConfig(orchestration=OrchestrationConfig(task_runner="dask", max_workers=3))
    runner = side_by_side_runner(dask, 2)
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_kwargs["n_workers"] == 3
    assert side_by_side_runner(dask, 1) is None
    threads = AppConfig(orchestration=OrchestrationConfig(task_runner="threads"))
    assert side_by_side_runner(threads, 5) is None


def test_fits_across_nodes_run_one_at_a_time_on_any_runner(prefect_harness):
    """The other nodes join one fit at a time, on one MASTER_PORT: two adaptations at once on
    Dask would collide there. The run's log says why they are not side by side."""
    pytest.importorskip("prefect_dask")
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.context import get_run_context
    from prefect.logging.handlers import APILogHandler

    dask = OrchestrationConfig(task_runner="dask", max_workers=2)

    @flow
    def runner_for(train: str) -> tuple[str, str]:
        runner = side_by_side_runner(AppConfig(orchestration=dask, train=train), 2)
        return type(runner).__name__, str(get_run_context().flow_run.id)

    assert runner_for("tiny")[0] == "DaskTaskRunner"
    picked, run_id = runner_for("tiny_two_nodes")
    assert picked == "NoneType"
    APILogHandler().flush()  # the handler sends in batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    assert [log for log in logs if "each spans 2 nodes" in log.message]
