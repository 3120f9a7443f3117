"""Concurrency: two retrains at once on one warehouse and one registry, and many parallel
`predict` calls on one loaded pyfunc.

Both retrains (e.g. the nightly run and an ad-hoc one) finish: DuckDB's one-writer lock makes
the second ingest wait, the checkpoint directory lock gives the second training a private
directory, and each registers its own version. Parallel predictions equal sequential ones.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from test_reliability_registry import register_champion
from test_reliability_training import child_env, local_paths, prepare, start_child, tiny_app

from regressor import pipeline, registry
from regressor.config import ResolvedPaths, load_source_config
from regressor.tracking import configure_mlflow
from regressor.warehouse import Warehouse


def child_retrain(var: str, run_id: str) -> None:
    """One retrain's steps after the fleet exists: ingest, dataset, train, register, gate."""
    torch.set_num_threads(1)
    app = tiny_app(Path(var))
    paths = local_paths(app)
    source = load_source_config(app.source)
    pipeline.ingest(paths, source, run_id)
    data = pipeline.load_dataset(paths, app, source)
    # force: the second must train beside the first, not report the first's version, were
    # that one registered before the second looks (the reuse is tested in test_retrain_flow).
    outcome = pipeline.train_and_register(app, paths, data, force=True)
    print(f"registered {outcome.version}", flush=True)


def test_two_retrains_at_once_on_one_warehouse_and_registry_both_finish(tmp_path: Path) -> None:
    var = tmp_path / "var"
    app = tiny_app(var)
    paths, _ = prepare(app, "first")  # the fleet exists and was ingested once already
    configure_mlflow(paths, app.registry.experiment)
    mlflow.set_tracking_uri(None)
    with Warehouse(paths.warehouse, read_only=True) as wh:
        records_before = wh.query("records").height
    assert child_env()["OMP_NUM_THREADS"] == "1"
    procs = [
        start_child(
            "from test_concurrency import child_retrain\n"
            f"        child_retrain({str(var)!r}, {name!r})"
        )
        for name in ("nightly", "ad-hoc")
    ]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    versions = sorted(int(out.split("registered ")[-1].split()[0]) for out in outputs)
    assert versions == [1, 2]
    client = MlflowClient(tracking_uri=paths.tracking_uri, registry_uri=paths.tracking_uri)
    assert str(client.get_model_version_by_alias("textperf", "champion").version) in {"1", "2"}
    runs = client.search_runs([client.get_experiment_by_name("textperf").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    with Warehouse(paths.warehouse, read_only=True) as wh:
        assert wh.query("records").height == records_before  # nothing ingested twice
    assert list(paths.checkpoints.glob("train-*/last.ckpt")) == []  # both cleaned up


@pytest.fixture
def loaded_pyfunc(tmp_path: Path):
    paths = ResolvedPaths(var_dir=tmp_path / "var")
    configure_mlflow(paths, "textperf")
    try:
        register_champion(tmp_path, "v1")
        yield mlflow.pyfunc.load_model(registry.model_uri("textperf", "champion"))
    finally:
        mlflow.set_tracking_uri(None)


def test_parallel_predict_calls_equal_sequential_ones(loaded_pyfunc) -> None:
    frames = [
        pd.DataFrame(
            [
                {
                    "task": f"cell-{i}",
                    "period": "2026-01-01",
                    "config": f'{{"n": {i}, "name": "c{j}"}}',
                    "logs": f'{{"lines": {i * 7 + j}}}',
                }
                for j in range(1 + i % 3)
            ]
        )
        for i in range(12)
    ]
    params = [{"seed": i, "num_samples": 8, "return_samples": True} for i in range(len(frames))]

    def call(i: int) -> pd.DataFrame:
        return loaded_pyfunc.predict(frames[i], params=params[i])

    sequential = [call(i) for i in range(len(frames))]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(call, [*range(len(frames))] * 2))
    for i, got in enumerate(parallel):
        pd.testing.assert_frame_equal(got, sequential[i % len(frames)])
