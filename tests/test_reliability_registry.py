"""Registry faults: an artifact missing or corrupted on load, a champion that cannot be loaded
during a retrain, and the MLflow server stopped in the middle of a run.

Every failure is an error that names the model version; none moves `champion`.
"""

from __future__ import annotations

import os
import shutil
from contextlib import suppress
from pathlib import Path

import mlflow
import pytest
from conftest_data import RECORD, register_tiny_version
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from test_reliability_training import prepare, tiny_app
from test_server_stack import free_port, mlflow_server_cmd, start, stop, wait_healthy

from regressor import pipeline, registry
from regressor.config import PromotionRule, ResolvedPaths
from regressor.tracking import configure_mlflow


def register_champion(tmp_path: Path, tag: str) -> str:
    """An untrained tiny model registered as a new version and made champion; its version."""
    version = register_tiny_version(tmp_path, tag)
    registry.gate("textperf", version, {"spearman": 0.5, "mape": 1.0}, None, PromotionRule())
    return str(version.version)


def bundle_file(paths: ResolvedPaths, name: str) -> Path:
    (found,) = paths.mlflow_artifacts.rglob(name)
    return found


def champion(client: MlflowClient | None = None) -> str:
    return str(
        (client or MlflowClient()).get_model_version_by_alias("textperf", "champion").version
    )


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite file with its schema made once (creating it costs ~5 s); no experiment,
    so each copy creates its own with artifacts under its own var dir."""
    paths = ResolvedPaths(var_dir=tmp_path_factory.mktemp("empty-store"))
    MlflowClient(tracking_uri=paths.tracking_uri).search_experiments()
    return paths.mlflow_db


@pytest.fixture
def store(tmp_path: Path, empty_store: Path):
    paths = ResolvedPaths(var_dir=tmp_path / "var")
    paths.var_dir.mkdir()
    shutil.copyfile(empty_store, paths.mlflow_db)
    configure_mlflow(paths, "textperf")
    yield paths
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("fault", ["missing", "corrupted"])
def test_unloadable_artifact_is_a_clear_error_naming_the_version(
    tmp_path: Path, store: ResolvedPaths, fault: str
) -> None:
    version = register_champion(tmp_path, "v1")
    weights = bundle_file(store, "weights.pt")
    if fault == "missing":
        weights.unlink()
    else:  # same size, a few bytes flipped in the middle: torch alone might not notice
        data = bytearray(weights.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
        weights.write_bytes(bytes(data))
    with pytest.raises(registry.ModelLoadError) as err:
        registry.load_predictor("models:/textperf@champion")
    message = str(err.value)
    assert f"'textperf' version {version}" in message
    assert ("missing" if fault == "missing" else "corrupted") in message
    assert champion() == version


def test_retrain_meeting_a_corrupted_champion_fails_and_leaves_the_alias(
    tmp_path: Path, store: ResolvedPaths
) -> None:
    app = tiny_app(store.var_dir)
    paths, data = prepare(app)
    configure_mlflow(paths, app.registry.experiment)
    try:
        version = register_champion(tmp_path, "v1")
        tokenizer = bundle_file(paths, "tokenizer.json")
        tokenizer.write_text(tokenizer.read_text()[:-10])  # truncated
        with pytest.raises(registry.ModelLoadError, match=f"version {version}"):
            pipeline.train_and_register(app, paths, data)
        client = MlflowClient()
        assert champion(client) == version
        # The challenger is never registered when the champion cannot be compared with it.
        assert [str(v.version) for v in client.search_model_versions("name='textperf'")] == [
            version
        ]
    finally:
        mlflow.set_tracking_uri(None)


def start_server(root: Path, port: int):
    cmd = mlflow_server_cmd(root, port)
    log = root / f"server-{port}.log"
    proc = start(cmd, {**os.environ}, log)
    wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, 90)
    return proc


def test_server_stopped_mid_run_raises_and_leaves_the_registry_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fail fast instead of MLflow's default 7 retries with backoff (minutes).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    paths = ResolvedPaths(var_dir=tmp_path / "var", mlflow_server=uri)
    try:
        configure_mlflow(paths, "textperf")
        version = register_champion(tmp_path, "v1")
        bundle = registry.load_predictor("models:/textperf/1").save(tmp_path / "b2")
        mlflow.start_run()
        stop(server)  # the store goes away in the middle of the run
        # An unreachable store is an error, never "no champion" (that would promote unchecked).
        with pytest.raises(MlflowException):
            registry.alias_version("textperf", "champion")
        with pytest.raises(MlflowException):
            registry.log_and_register(bundle, "textperf", registry.input_example(RECORD), {})
        with suppress(MlflowException):
            mlflow.end_run()  # cannot reach the store either: the run stays RUNNING, like a kill
    finally:
        stop(server)
        mlflow.set_tracking_uri(None)
    # What the server had stored: the champion untouched, no version from the broken run.
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=db, registry_uri=db)
    assert champion(client) == version
    assert [str(v.version) for v in client.search_model_versions("name='textperf'")] == [version]


def test_a_version_is_created_with_its_tags_in_one_call(tmp_path: Path, monkeypatch) -> None:
    """Tags set one by one after the version existed: a store lost midway left a version
    without its `registration_key`, which the retry could not find, so it registered another.
    Here no tag may be set after creation, and the version still carries them all."""
    configure_mlflow(ResolvedPaths(var_dir=tmp_path), "textperf")

    def refused(*_args: object) -> None:
        raise MlflowException("the store went away")

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", refused)
    try:
        version = register_tiny_version(tmp_path, "d1")
        stored = MlflowClient().get_model_version("textperf", version.version)
    finally:
        mlflow.set_tracking_uri(None)
    assert stored.tags["data_hash"] == "d1"
    assert "git_commit" in stored.tags
