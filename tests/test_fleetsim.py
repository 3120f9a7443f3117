"""The demo fleet generator: layout, determinism, stable re-runs, and a learnable target."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from regressor.config import FleetSimConfig
from regressor.fleetsim import GENERATED_MARK, FleetSummary, cell_name, generate_fleet
from regressor.sources.logs import summarize_logs

pytest_plugins = ("conftest_data",)


def digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_targets(root: Path) -> list[dict[str, str]]:
    with (root / "targets.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_layout_matches_the_summary(tiny_fleet, tiny_fleet_cfg, fleet_source):
    raw_dir, summary = tiny_fleet
    root = raw_dir / fleet_source.root
    cells = sorted(p.stem for p in (root / "cells").glob("*.yaml"))
    logs = sorted(root.glob("logs/*/*.log"))
    assert len(cells) == tiny_fleet_cfg.n_cells
    assert len(logs) == tiny_fleet_cfg.n_cells * tiny_fleet_cfg.n_days
    assert {p.parent.name for p in logs} == set(cells)
    assert (root / GENERATED_MARK).is_file()  # beside the fleet, not part of it
    files = {rel: sha for rel, sha in digest(root).items() if rel != GENERATED_MARK}
    assert summary.n_files == len(files)
    data = [p for p in root.rglob("*") if p.is_file() and p.name != GENERATED_MARK]
    assert summary.n_bytes == sum(p.stat().st_size for p in data)
    assert summary == FleetSummary(3, 5, len(files), summary.n_bytes, len(files))


def test_configs_are_nested_mappings(tiny_fleet, fleet_source):
    raw_dir, _ = tiny_fleet
    for path in (raw_dir / fleet_source.root / "cells").glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        assert config["cell"] == path.stem
        scheduler = config["scheduler"]
        assert {"bin_packing", "overcommit", "preemption", "quota", "priority_bands"} <= set(
            scheduler
        )
        assert scheduler["overcommit"]["cpu"] >= 1.0
        assert all({"platform", "cores", "mem_gb", "count"} <= set(m) for m in config["machines"])
        assert sum(config["job_mix"].values()) == pytest.approx(1.0, abs=0.02)


def test_logs_are_sorted_timestamped_lines(tiny_fleet, tiny_fleet_cfg, fleet_source):
    raw_dir, _ = tiny_fleet
    log = raw_dir / fleet_source.root / "logs" / "cell-a01" / "2026-01-02.log"
    lines = log.read_text().splitlines()
    stamps = [line.split(" ", 1)[0] for line in lines]
    assert stamps == sorted(stamps)
    assert all(s.startswith("2026-01-02T") for s in stamps)
    assert {line.split(" ")[1] for line in lines} <= {"DEBUG", "INFO", "WARN", "ERROR"}
    util = [line for line in lines if " util cpu=" in line]
    assert len(util) == tiny_fleet_cfg.samples_per_day


def test_targets_cover_every_cell_day_in_the_unit_interval(
    tiny_fleet, tiny_fleet_cfg, fleet_source
):
    raw_dir, _ = tiny_fleet
    rows = read_targets(raw_dir / fleet_source.root)
    assert list(rows[0]) == ["cell", "day", "efficiency"]
    assert (
        len({(r["cell"], r["day"]) for r in rows}) == tiny_fleet_cfg.n_cells * tiny_fleet_cfg.n_days
    )
    assert all(0.0 < float(r["efficiency"]) < 1.0 for r in rows)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, tiny_fleet_cfg):
    generate_fleet(tmp_path / "a", tiny_fleet_cfg)
    generate_fleet(tmp_path / "b", tiny_fleet_cfg)
    generate_fleet(tmp_path / "c", tiny_fleet_cfg.model_copy(update={"seed": 99}))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_rerun_leaves_identical_files_untouched(tmp_path, tiny_fleet_cfg):
    root = tmp_path / "fleet"
    generate_fleet(root, tiny_fleet_cfg)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = generate_fleet(root, tiny_fleet_cfg)
    assert again.files_written == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == mtimes
    (root / "targets.csv").write_text("tampered\n")
    assert generate_fleet(root, tiny_fleet_cfg).files_written == 1


def test_a_smaller_or_shifted_regeneration_leaves_only_its_own_files(tmp_path):
    """Regenerating 3 cells x 5 days as 2 cells x 3 days from a later day left 20 files where
    the summary said 9, and the next ingest read the stale ones as part of the fleet."""
    root = tmp_path / "fleet"
    generate_fleet(root, FleetSimConfig(n_cells=3, n_days=5, samples_per_day=4, jobs_per_day=2))
    smaller = FleetSimConfig(
        n_cells=2, n_days=3, start_date="2026-01-03", samples_per_day=4, jobs_per_day=2
    )
    summary = generate_fleet(root, smaller)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert len(files) == summary.n_files + 1  # and the generator's mark
    assert GENERATED_MARK in files
    assert not (root / "logs" / cell_name(2, 3)).exists()  # a cell it no longer writes
    assert sorted(p.name for p in (root / "logs" / cell_name(0, 2)).iterdir()) == [
        "2026-01-03.log",
        "2026-01-04.log",
        "2026-01-05.log",
    ]


def test_default_fleet_fits_the_size_budget(tmp_path):
    # Two cells at default settings, scaled to the default 24: must stay under ~60 MB.
    default = FleetSimConfig()
    summary = generate_fleet(tmp_path, default.model_copy(update={"n_cells": 2}))
    assert summary.n_bytes / 2 * default.n_cells < 60e6


def log_features(root: Path, cells: list[str], days: list[str]) -> np.ndarray:
    """Compact log summaries -> [cpu mean, machine failures, preemptions, incidents] per row."""
    texts = [(root / "logs" / c / f"{d}.log").read_text() for c, d in zip(cells, days, strict=True)]
    rows = []
    for s in summarize_logs(texts):
        counts = s["templates"]
        rows.append(
            [
                s["values"]["cpu"]["mean"],
                sum(n for t, n in counts.items() if " down " in t),
                sum(n for t, n in counts.items() if " preempted " in t),
                sum(n for t, n in counts.items() if "incident" in t),
            ]
        )
    return np.array(rows)


def test_target_has_a_large_day_to_day_part_that_log_summaries_explain(tmp_path):
    cfg = FleetSimConfig(seed=11, n_cells=6, n_days=60, samples_per_day=12, jobs_per_day=5)
    generate_fleet(tmp_path, cfg)
    rows = read_targets(tmp_path)
    cells = [r["cell"] for r in rows]
    y = np.array([float(r["efficiency"]) for r in rows])
    cell_index = np.unique(cells, return_inverse=True)[1]

    def within(a: np.ndarray) -> np.ndarray:  # remove each cell's mean: what the config can't say
        means = np.array([a[cell_index == k].mean(axis=0) for k in range(cell_index.max() + 1)])
        return a - means[cell_index]

    y_within = within(y)
    assert y_within.var() / y.var() > 0.3  # a config-only model cannot explain this share
    x = within(log_features(tmp_path, cells, [r["day"] for r in rows]))
    x = np.column_stack([x, np.ones(len(x))])
    residual = y_within - x @ np.linalg.lstsq(x, y_within, rcond=None)[0]
    assert 1 - residual.var() / y_within.var() > 0.6  # even a linear fit on counts/means learns it


def test_cell_names_sort_in_generation_order():
    for n in (3, 24, 500):
        names = [cell_name(i, n) for i in range(n)]
        assert names == sorted(names)
        assert len(set(names)) == n
    assert cell_name(0, 24) == "cell-a01"
    assert cell_name(17, 24) == "cell-b02"


def test_summary_is_json_friendly(tiny_fleet):
    _, summary = tiny_fleet
    assert json.loads(json.dumps(vars(summary)))["n_cells"] == 3
