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


MAKE_STORE = """
import sys, time
from pathlib import Path
from regressor.config import ResolvedPaths
from regressor.tracking import configure_mlflow
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.005)
print(configure_mlflow(ResolvedPaths(var_dir=Path(sys.argv[1])), "textperf"))
"""


def test_two_processes_make_a_new_store_at_once(tmp_path: Path):
    """MLflow's SQLite schema setup is not safe from two processes: one of two commands
    starting on a new var dir failed ("table _alembic_tmp_params already exists")."""
    import os
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    start = str(time.time() + 8)  # both past their imports, then at once
    children = [
        subprocess.Popen(
            [sys.executable, "-c", MAKE_STORE, str(tmp_path / "var"), start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    done = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err[-800:] for _, err in done]
    assert done[0][0] == done[1][0]  # one experiment
