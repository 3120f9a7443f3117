"""Pointing MLflow at a store: for this process's calls, not for the next run's choice."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from regressor.config import PathsConfig
from regressor.tracking import configure_mlflow


@pytest.fixture(autouse=True)
def _forget_store():
    yield
    mlflow.set_tracking_uri(None)


def test_a_second_run_in_one_process_uses_its_own_var_dir(tmp_path: Path):
    """MLflow exports MLFLOW_TRACKING_URI on `set_tracking_uri`, which `PathsConfig.resolve`
    reads as the user's choice: a notebook's second run on another var dir logged to the
    first run's store."""
    first = PathsConfig(var_dir=tmp_path / "a").resolve()
    configure_mlflow(first, "tracking-test")
    second = PathsConfig(var_dir=tmp_path / "b").resolve()
    assert second.tracking_uri == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    configure_mlflow(second, "tracking-test")
    with mlflow.start_run() as run:
        pass
    assert MlflowClient(second.tracking_uri).get_run(run.info.run_id)


def test_a_users_tracking_server_stays_the_choice(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    local = PathsConfig(var_dir=tmp_path).resolve().model_copy(update={"mlflow_server": None})
    configure_mlflow(local, "tracking-test")
    assert mlflow.get_tracking_uri() == local.tracking_uri
    assert PathsConfig(var_dir=tmp_path).resolve().mlflow_server == "http://mlflow.example:5000"
