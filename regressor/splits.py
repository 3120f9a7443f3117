"""Seeded splits by group (a distinct configuration, a workload, ...), written out to repeat a run.

Repeated runs of one configuration share its group, so they all land on one side: a model is never
scored on a configuration it has seen measured. Validation (for early stopping) is carved out of
the training groups only, never out of the test part.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from regressor.dataset import configuration_of

SIDES = ("train", "val", "test")


def split_groups(
    groups: Sequence[str], test_fraction: float, val_fraction: float, seed: int
) -> np.ndarray:
    """One side per row ("train" | "val" | "test"); every row of a group gets the group's side.

    The distinct groups are shuffled with `seed`; the first `test_fraction` of them are test, the
    next `val_fraction` (a share of the *remaining* training groups) are val. Each side that has a
    positive fraction gets at least one group, as long as one is left for training.
    """
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1):
        raise ValueError("fractions must lie in (0, 1) for test and [0, 1) for val")
    distinct = np.array(sorted(set(groups)))
    if len(distinct) < 2:
        raise ValueError(f"need at least 2 distinct groups to split, got {len(distinct)}")
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_test = min(len(distinct) - 1, max(1, round(len(distinct) * test_fraction)))
    rest = len(distinct) - n_test
    n_val = min(rest - 1, max(1, round(rest * val_fraction))) if val_fraction > 0 else 0
    side_of = {}
    for rank, i in enumerate(order):
        side_of[distinct[i]] = (
            "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        )
    return np.array([side_of[g] for g in groups])


def config_group(task: str, config_json: str) -> str:
    """A distinct configuration: the same config (`dataset.configuration_of`: without a paired
    reference run) under the same task (jobs are pooled)."""
    config = json.loads(configuration_of(config_json))
    return f"{task}|{json.dumps(config, sort_keys=True)}"


def field_group(config_json: str, field: str) -> str:
    """A group by one config field, e.g. lumos' `workload`."""
    return str(json.loads(config_json).get(field))


def save_split(path: Path, record_ids: Sequence[str], sides: Sequence[str], meta: dict) -> Path:
    """The record ids of each side, plus how the split was made, as JSON."""
    sides = np.asarray(sides)
    ids = np.asarray(record_ids)
    payload = {"meta": meta} | {side: sorted(ids[sides == side].tolist()) for side in SIDES}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path


def load_split(path: Path, record_ids: Sequence[str]) -> np.ndarray:
    """Sides of `record_ids` as written by `save_split`; every id must be on exactly one side."""
    payload = json.loads(Path(path).read_text())
    listed = [(rid, side) for side in SIDES for rid in payload.get(side, [])]
    side_of = dict(listed)
    if len(side_of) < len(listed):  # an edited file: the last side listed won, unsaid
        twice = [rid for rid, n in Counter(rid for rid, _ in listed).items() if n > 1]
        raise ValueError(f"{path}: records listed on more than one side, e.g. {twice[:3]}")
    missing = [rid for rid in record_ids if rid not in side_of]
    if missing:
        raise ValueError(f"{len(missing)} records are not in the split file, e.g. {missing[:3]}")
    return np.array([side_of[rid] for rid in record_ids])
