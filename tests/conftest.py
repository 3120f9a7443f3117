"""Shared fixtures. Prefect's home points at a temp dir before Prefect is ever imported."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="textperf-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests use their own stores: a developer's exported team server must never receive test runs.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("TEXTPERF_VAR_DIR", None)  # nor a developer's own state directory


PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for the whole session (it takes ~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri() -> Iterator[None]:
    """`mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI; without this, one test's store
    would leak into later tests' default paths, module-scoped fixtures included (they are set up
    between tests, so the variable is cleared after each test too, never restored)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
