"""The nightly flow's adaptations side by side on Prefect's Dask task runner (processes)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.context import get_run_context
from prefect.logging.handlers import APILogHandler
from test_retrain_flow import TINY_APP

from flows.common import forward_library_logs, make_task_runner
from flows.retrain import adapt_all, retrain
from regressor import pipeline
from regressor.config import OrchestrationConfig, load_app_config, load_source_config

pytest.importorskip("prefect_dask")
DASK = OrchestrationConfig(task_runner="dask", max_workers=2)


@pytest.mark.slow
def test_due_adaptations_run_side_by_side_on_the_dask_runner(tmp_path: Path, prefect_harness):
    config = tmp_path / "app.yaml"
    # As a config file a user would pass (`--config`, a deployment's `config` parameter).
    config.write_text(yaml.safe_dump({**TINY_APP, "orchestration": DASK.model_dump()}))
    var = tmp_path / "var"
    retrain(config=config, var_dir=var, adapt=False)  # the champion, v1
    app = load_app_config(config, var)
    paths, source = app.paths.resolve(), load_source_config(app.source)
    data = pipeline.load_dataset(paths, app, source)
    tasks = sorted(set(data.splits["train"].tasks) - {data.holdout_task})[:1]
    due = [data.holdout_task, *tasks]
    seconds: dict[str, float] = {}

    @flow  # Prefect's default runner: the run's config, not the flow's, spreads the fits
    def adapt_due() -> list[pipeline.AdaptOutcome]:
        return adapt_all(due, app, paths, source, seconds)

    outcomes = adapt_due()
    assert sorted(o.task for o in outcomes) == sorted(due)
    assert list(seconds) == ["adapt 2 tasks side by side"]
    client = MlflowClient(tracking_uri=paths.tracking_uri, registry_uri=paths.tracking_uri)
    for outcome in outcomes:
        assert outcome.model_name == f"textperf-{outcome.task}"
        assert [
            str(v.version) for v in client.search_model_versions(f"name='{outcome.model_name}'")
        ] == ["1"]
    runs = [
        client.get_run(client.get_model_version(o.model_name, "1").run_id).info for o in outcomes
    ]
    first, second = sorted(runs, key=lambda run: run.start_time)
    assert second.start_time < first.end_time  # the two were adapting at the same time


@pytest.mark.slow
def test_library_warnings_from_a_dask_worker_reach_the_flow_runs_log(prefect_harness):
    @task
    def warn_in_worker() -> None:
        forward_library_logs()
        logging.getLogger("regressor.test").warning("warned on a Dask worker")
        APILogHandler().flush()  # the handler sends in batches, from the worker's process

    @flow(task_runner=make_task_runner(DASK))
    def warns() -> str:
        warn_in_worker.submit().result()
        return str(get_run_context().flow_run.id)

    flow_run_id = warns()
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    assert [log for log in logs if log.message == "warned on a Dask worker"]
