"""Data fixtures: a tiny demo fleet on disk and a warehouse holding it; a tiny registered model.

Load them with `pytest_plugins = ("conftest_data",)` in a test module, or import them in
conftest.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from regressor import registry
from regressor.config import (
    CodecConfig,
    FleetSimConfig,
    FleetSourceConfig,
    load_model_config,
    load_source_config,
)
from regressor.fleetsim import FleetSummary, generate_fleet
from regressor.predictor import Predictor
from regressor.sources.fleet import IngestReport, ingest_fleet
from regressor.vocab import InputTokenizer
from regressor.warehouse import Warehouse

RECORD = {"task": "cell-a", "period": "2026-01-01", "config": {"n": 3}, "logs": {"lines": 10}}
# The tiny app of the end-to-end flow tests: 4 cells x 24 days, the last 6 days held out; the
# tiny model and recipe, a few samples, a few adaptation steps.
TINY_APP = {
    "fleet": {"seed": 3, "n_cells": 4, "n_days": 24, "samples_per_day": 6, "jobs_per_day": 5},
    "split": {"test_days": 6},
    "model": "tiny",
    "train": "tiny",
    "eval": {"num_samples": 6},
    "adapt": {"n_shots": 12, "max_steps": 4, "max_minutes": 1.0},
}
LOGHUB_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "loghub_2k"


@pytest.fixture(scope="session")
def tiny_fleet_cfg() -> FleetSimConfig:
    """3 cells x 5 days with short logs: generates and ingests in well under a second."""
    return FleetSimConfig(seed=3, n_cells=3, n_days=5, samples_per_day=8, jobs_per_day=6)


@pytest.fixture(scope="session")
def fleet_source() -> FleetSourceConfig:
    """The real `conf/sources/demo_fleet.yaml`: root `demo_fleet` under the raw directory."""
    return load_source_config("demo_fleet")


@pytest.fixture
def tiny_fleet(
    tmp_path: Path, tiny_fleet_cfg: FleetSimConfig, fleet_source: FleetSourceConfig
) -> tuple[Path, FleetSummary]:
    """(raw_dir, summary): a fresh tiny fleet written to `raw_dir / fleet_source.root`."""
    raw_dir = tmp_path / "raw"
    return raw_dir, generate_fleet(raw_dir / fleet_source.root, tiny_fleet_cfg)


@pytest.fixture
def tiny_warehouse(
    tmp_path: Path, tiny_fleet: tuple[Path, FleetSummary], fleet_source: FleetSourceConfig
) -> Iterator[tuple[Warehouse, IngestReport]]:
    """(open warehouse, report) with the tiny fleet ingested once."""
    raw_dir, _ = tiny_fleet
    with Warehouse(tmp_path / "warehouse.duckdb") as wh:
        yield wh, ingest_fleet(wh, fleet_source, raw_dir, run_id="run-1")


def register_tiny_version(tmp_path: Path, tag: str) -> object:
    """An untrained tiny model logged and registered as a new `textperf` version (tagged with
    `data_hash=tag`) in the current MLflow store; the ModelVersion."""
    texts = [f"<task>\ncell-{i}\n<config>\nn={i}" for i in range(20)]
    predictor = Predictor.create(
        load_model_config("tiny"),
        CodecConfig(exponent_min=-3, exponent_max=3),
        InputTokenizer.train(texts, 300),
    )
    bundle = predictor.save(tmp_path / f"bundle-{tag}")
    with mlflow.start_run():
        return registry.log_and_register(
            bundle, "textperf", registry.input_example(RECORD), {"data_hash": tag}
        )


def mlflow_gc(tracking_uri: str, *options: str) -> None:
    """The real `mlflow gc` on the store, as an operator reclaiming space runs it: deleted runs
    and logged models, and their artifacts, go for good."""
    command = [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", tracking_uri]
    command += ["--tracking-uri", tracking_uri]  # to delete logged models (`jobs.gc_command`)
    subprocess.run([*command, *options], check=True, capture_output=True)


# As root, file modes do not stop reads: these capabilities let root read anything.
NO_READ_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def with_file_modes_binding(cmd: list[str]) -> list[str]:
    """`cmd` run so that a `chmod 000` file really cannot be read: as is for a user; for root,
    under setpriv without the capabilities that override file modes. Skips the test where that
    cannot be done here (root without setpriv)."""
    if os.geteuid() != 0:
        return cmd
    probe = subprocess.run([*NO_READ_OVERRIDE, "true"], capture_output=True, check=False)
    if shutil.which("setpriv") is None or probe.returncode != 0:
        pytest.skip("running as root without setpriv: file modes cannot stop reads here")
    return [*NO_READ_OVERRIDE, *cmd]
