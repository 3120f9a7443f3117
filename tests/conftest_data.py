"""Data fixtures: a tiny demo fleet on disk and a warehouse holding it.

Load them with `pytest_plugins = ("conftest_data",)` in a test module, or import them in
conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from regressor.config import FleetSimConfig, FleetSourceConfig, load_source_config
from regressor.fleetsim import FleetSummary, generate_fleet
from regressor.sources.fleet import IngestReport, ingest_fleet
from regressor.warehouse import Warehouse

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
