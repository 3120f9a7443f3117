"""Splits by group: seeded, never a group on two sides, val carved out of train, and repeatable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from regressor.config import PROJECT_ROOT, load_source_config
from regressor.sources.dispatch import ingest_source
from regressor.splits import config_group, field_group, load_split, save_split, split_groups
from regressor.warehouse import Warehouse


def _groups(n_groups: int, repeats: int) -> list[str]:
    return [f"g{i}" for i in range(n_groups) for _ in range(repeats)]


def _sides_per_group(groups: list[str], sides: np.ndarray) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for g, s in zip(groups, sides, strict=True):
        seen.setdefault(g, set()).add(str(s))
    return seen


def test_every_group_on_one_side_with_the_asked_shares():
    groups = _groups(100, 5)
    sides = split_groups(groups, 0.2, 0.1, seed=3)
    assert all(len(s) == 1 for s in _sides_per_group(groups, sides).values())
    per_group = {g: s.pop() for g, s in _sides_per_group(groups, sides).items()}
    counts = {side: list(per_group.values()).count(side) for side in ("train", "val", "test")}
    assert counts == {"test": 20, "val": 8, "train": 72}  # val: 10% of the 80 training groups


def test_seed_changes_the_split_and_same_seed_repeats_it():
    groups = _groups(50, 3)
    a = split_groups(groups, 0.2, 0.1, seed=0)
    assert np.array_equal(a, split_groups(list(groups), 0.2, 0.1, seed=0))
    assert not np.array_equal(a, split_groups(groups, 0.2, 0.1, seed=1))


def test_small_group_counts_still_leave_training_groups():
    sides = split_groups(["a", "b", "c"], 0.3, 0.3, seed=0)
    assert sorted(sides) == ["test", "train", "val"]
    assert sorted(split_groups(["a", "b"], 0.5, 0.5, seed=0)) == ["test", "train"]  # no room
    with pytest.raises(ValueError, match="2 distinct groups"):
        split_groups(["a", "a"], 0.2, 0.1, seed=0)


def test_config_group_ignores_key_order_but_not_task():
    a = config_group("sort", json.dumps({"x": 1, "y": 2}))
    assert a == config_group("sort", json.dumps({"y": 2, "x": 1}))
    assert a != config_group("grep", json.dumps({"x": 1, "y": 2}))
    assert field_group(json.dumps({"workload": "join", "vm": "m5"}), "workload") == "join"


def test_saved_split_reloads_for_the_same_records_and_rejects_others(tmp_path: Path):
    ids = [f"r{i}" for i in range(30)]
    sides = split_groups(_groups(10, 3), 0.2, 0.1, seed=0)
    path = save_split(tmp_path / "split.json", ids, sides, {"seed": 0})
    assert np.array_equal(load_split(path, list(reversed(ids))), sides[::-1])
    with pytest.raises(ValueError, match="not in the split"):
        load_split(path, [*ids, "new"])
    edited = json.loads(path.read_text())
    edited["test"].append(edited["train"][0])  # one id on two sides: the last side won
    path.write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="listed on more than one side"):
        load_split(path, ids)


def test_real_c3o_repeats_never_straddle_the_split(tmp_path: Path):
    root = PROJECT_ROOT.parent / "shared" / "datasets" / "c3o_spark"
    if not root.is_dir():
        pytest.skip(f"dataset c3o_spark not found at {root} (expected beside the project)")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        ingest_source(wh, load_source_config("c3o"), tmp_path, "t")
        rows = wh.con.sql("SELECT task, config_json FROM records").fetchall()
    groups = [config_group(task, config) for task, config in rows]
    sides = split_groups(groups, 0.2, 0.1, seed=0)
    assert all(len(s) == 1 for s in _sides_per_group(groups, sides).values())
    assert len(set(groups)) == 126 + 162 + 180 + 180 + 282  # distinct configs, README.txt
    assert 0.15 < np.mean(sides == "test") < 0.25
