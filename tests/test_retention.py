"""Retention (`textperf models prune`) on a real MLflow store, reclaimed by the real `mlflow gc`."""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
from conftest_data import RECORD, mlflow_gc, register_tiny_version
from mlflow import MlflowClient
from typer.testing import CliRunner

from regressor import cli, jobs, pipeline, registry, retention
from regressor.config import ResolvedPaths, load_app_config
from regressor.tracking import configure_mlflow


@pytest.fixture
def store(tmp_path: Path) -> ResolvedPaths:
    """`textperf` v1-v5 (champion v2, challenger v5), its variant `textperf-cell-a` v1-v3,
    adapted from textperf v1, v2 and v3 (champion v1), and `textperf-experimental` v1-v2."""
    paths = ResolvedPaths(var_dir=tmp_path / "var")
    configure_mlflow(paths, "retention-test")
    client = MlflowClient()
    for i in range(1, 6):
        register_tiny_version(tmp_path, f"v{i}")
    client.set_registered_model_alias("textperf", "champion", "2")
    client.set_registered_model_alias("textperf", "challenger", "5")
    bundle = registry.load_predictor("models:/textperf/1").save(tmp_path / "variant")
    for base in (1, 2, 3):
        tags = {"task": "cell-a", "base_model": f"models:/textperf/{base}"}
        with mlflow.start_run():
            registry.log_and_register(
                bundle, "textperf-cell-a", registry.input_example(RECORD), tags
            )
    client.set_registered_model_alias("textperf-cell-a", "champion", "1")
    for _ in range(2):  # a model of its own that only shares the prefix: never pruned here
        with mlflow.start_run():
            registry.log_and_register(
                bundle, "textperf-experimental", registry.input_example(RECORD), {}
            )
    yield paths
    mlflow.set_tracking_uri(None)


def _versions(name: str) -> list[int]:
    return sorted(int(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'"))


def _weights_dir(version) -> Path:
    location = MlflowClient().get_logged_model(retention.logged_model_id(version)).artifact_location
    return Path(urlparse(location).path)


def test_prune_keeps_the_newest_the_aliased_and_the_bases_in_use(store: ResolvedPaths) -> None:
    """With keep=1: the variant keeps v3 (newest) and v1 (champion) and loses v2; the model
    keeps v5 (newest, challenger), v2 (champion), v1 and v3 (bases of kept variant versions)
    and loses v4. A dry run deletes nothing; the real one deletes the versions and their
    weights (gone for good after `mlflow gc`), and the rest still load."""
    dry = CliRunner().invoke(
        cli.app, ["models", "prune", "--keep", "1", "--dry-run", "--var-dir", str(store.var_dir)]
    )
    assert dry.exit_code == 0, dry.output
    assert "Would delete 2 versions" in dry.output
    assert "- `textperf/4`\n- `textperf-cell-a/2`\n" in dry.output
    assert (_versions("textperf"), _versions("textperf-cell-a")) == ([1, 2, 3, 4, 5], [1, 2, 3])

    doomed = retention.prunable("textperf", keep=1)
    weights = [_weights_dir(v) for v in doomed]
    assert all(path.is_dir() for path in weights)
    deleted = retention.prune("textperf", keep=1)
    assert [(v.name, v.version) for v in deleted] == [(v.name, v.version) for v in doomed]
    assert (_versions("textperf"), _versions("textperf-cell-a")) == ([1, 2, 3, 5], [1, 3])
    assert _versions("textperf-experimental") == [1, 2]
    mlflow_gc(store.tracking_uri)
    assert not any(path.exists() for path in weights)
    for uri in ("models:/textperf@champion", "models:/textperf-cell-a@champion"):
        assert registry.load_predictor(uri).model.num_parameters() > 0
    assert retention.prunable("textperf", keep=1) == []


def test_a_fallback_and_the_refused_version_it_stands_in_for_go_together(
    store: ResolvedPaths, tmp_path: Path
) -> None:
    """`textperf-cell-b`: v1 refused with v2 its zero-shot fallback, v3 adapted alone, v4
    refused with v5 its fallback; the champion is v2. With keep=1 the newest adaptation (v4, v5)
    stays whole, the champion keeps the version it stands in for (v1), and only v3 goes.
    Counting versions would have deleted v1 (v2 naming a version gone), v3 and v4 (its
    fallback kept, it rebuilt by the next run reusing v4)."""
    bundle = registry.load_predictor("models:/textperf/1").save(tmp_path / "cell-b")
    stands_in = {2: "1", 5: "4"}
    for number in range(1, 6):
        tags = {"task": "cell-b", "base_model": "models:/textperf/2"}
        if number in stands_in:
            tags[registry.FALLBACK_FOR] = stands_in[number]
        with mlflow.start_run():
            registry.log_and_register(
                bundle, "textperf-cell-b", registry.input_example(RECORD), tags
            )
    MlflowClient().set_registered_model_alias("textperf-cell-b", "champion", "2")
    deleted = retention.prune("textperf", keep=1)
    assert ("textperf-cell-b", 3) in [(v.name, int(v.version)) for v in deleted]
    assert _versions("textperf-cell-b") == [1, 2, 4, 5]
    assert retention.prunable("textperf", keep=1) == []


def test_a_prune_stopped_between_weights_and_version_is_finished_by_the_next(
    store: ResolvedPaths,
) -> None:
    """A prune stopped after deleting `textperf/4`'s weights but before the version (the state
    it leaves, made here by hand), then `mlflow gc`: the version is still listed, and the next
    prune deletes it, its weights already gone for good, and goes on. Deleting the version
    first would have left weights that no version names."""
    (stopped,) = [v for v in retention.prunable("textperf", keep=1) if v.name == "textperf"]
    weights = _weights_dir(stopped)
    MlflowClient().delete_logged_model(retention.logged_model_id(stopped))
    mlflow_gc(store.tracking_uri)
    assert not weights.exists()
    assert _versions("textperf") == [1, 2, 3, 4, 5]
    deleted = retention.prune("textperf", keep=1)
    assert [(v.name, int(v.version)) for v in deleted] == [("textperf", 4), ("textperf-cell-a", 2)]
    assert (_versions("textperf"), _versions("textperf-cell-a")) == ([1, 2, 3, 5], [1, 3])
    assert retention.prunable("textperf", keep=1) == []


def test_prune_of_a_store_without_the_model_deletes_nothing(tmp_path: Path) -> None:
    configure_mlflow(ResolvedPaths(var_dir=tmp_path), "retention-test")
    try:
        assert retention.prune("textperf", keep=1) == []
    finally:
        mlflow.set_tracking_uri(None)


def test_a_version_promoted_or_deleted_after_the_listing_is_not_deleted(store) -> None:
    """Between the prune's listing and its deletes, an operator rolls back `@champion` to
    `textperf/4`, and another prune deletes `textperf-cell-a/2`: before, this prune deleted v4,
    leaving the model without a champion, and failed on the version gone."""
    doomed = retention.prunable("textperf", keep=1)
    assert [(v.name, int(v.version)) for v in doomed] == [("textperf", 4), ("textperf-cell-a", 2)]
    MlflowClient().set_registered_model_alias("textperf", "champion", "4")
    MlflowClient().delete_model_version("textperf-cell-a", "2")
    assert retention.delete_versions(doomed) == []
    assert _versions("textperf") == [1, 2, 3, 4, 5]
    assert str(registry.alias_version("textperf", "champion").version) == "4"


def test_prune_with_room_for_every_version_deletes_nothing(store: ResolvedPaths) -> None:
    assert retention.prune("textperf", keep=5) == []
    assert (_versions("textperf"), _versions("textperf-cell-a")) == ([1, 2, 3, 4, 5], [1, 2, 3])


def test_the_prune_flow_deletes_and_reports_as_an_artifact(
    store, prefect_harness, tmp_path: Path
) -> None:
    """Without `keep`, the flow keeps the config's `schedule.prune_keep` (a scheduled run)."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.prune import prune

    config = tmp_path / "app.yaml"
    config.write_text("schedule:\n  prune_keep: 1\n")
    weights = [_weights_dir(v) for v in retention.prunable("textperf", keep=1)]
    text = prune(config=config, var_dir=store.var_dir)
    assert "Deleted 2 versions" in text
    assert (_versions("textperf"), _versions("textperf-cell-a")) == ([1, 2, 3, 5], [1, 3])
    # The `mlflow gc` the report says to run reclaims the weights as printed, in a shell without
    # MLFLOW_TRACKING_URI (given only --backend-store-uri it failed: "Tracking URL is not set").
    (command,) = re.findall(r"Reclaim their space: `(mlflow gc [^`]+)`", text)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    argv = [sys.executable, "-m", *shlex.split(command)]
    done = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert weights
    assert not any(path.exists() for path in weights)
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["prune-report"]))
        )
    assert found[0].data == text


def test_a_prune_waits_for_a_run_adapting_and_runs_wait_for_a_prune(store, caplog) -> None:
    """An adaptation of `textperf/4` holds its lock for the whole fit, and no variant names
    that base until it registers: a prune beside it deleted `textperf/4`, and the variant
    named a version gone. A prune now waits for every run gating or adapting."""
    app = load_app_config(None, store.var_dir)
    reports: list[str] = []
    prune = threading.Thread(target=lambda: reports.append(jobs.prune(app, store, keep=1)))
    with caplog.at_level(logging.WARNING, logger="regressor.pipeline"):
        with pipeline.adaptation_lock(store, "textperf-cell-b"):
            prune.start()
            waiting = "another run is gating or adapting a version: waiting for it"
            deadline = time.monotonic() + 120
            while waiting not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            assert waiting in caplog.text
            assert _versions("textperf") == [1, 2, 3, 4, 5]  # nothing deleted meanwhile
        prune.join(120)
    assert "Deleted 2 versions" in reports[0]
    assert _versions("textperf") == [1, 2, 3, 5]
