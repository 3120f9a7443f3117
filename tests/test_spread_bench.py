"""bench/spread.py's reference bounds: what a spread constant within a task, or a model whose
samples are exactly right, could score on the spread-error check."""

from __future__ import annotations

import sys

import numpy as np

from regressor.config import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "bench"))  # the bench scripts import each other flat
import spread


def test_task_oracle_is_perfect_when_tasks_alone_set_the_error() -> None:
    tasks = ["a"] * 50 + ["b"] * 50 + ["c"] * 50
    errors = np.repeat([0.1, 0.2, 0.3], 50) + np.linspace(0, 0.01, 150)
    assert spread.task_oracle(errors, tasks) > 0.9
    same = np.random.default_rng(0).exponential(1.0, 150)  # every task alike: nothing to rank
    assert abs(spread.task_oracle(same, tasks)) < 0.25


def test_self_consistent_bound_follows_how_much_the_spread_varies() -> None:
    rng = np.random.default_rng(1)
    centre = rng.uniform(1, 2, (400, 1))
    varied = centre + rng.uniform(0.01, 1.0, (400, 1)) * rng.standard_normal((400, 64))
    flat = centre + 0.3 * rng.standard_normal((400, 64))
    assert spread.self_consistent(varied, np.random.default_rng(2)) > 0.4
    assert abs(spread.self_consistent(flat, np.random.default_rng(2))) < 0.1


def test_self_consistent_bound_mixes_an_ensembles_members() -> None:
    """An ensemble's samples come member by member (`Predictor.sample_texts`). Halved as they
    were, the spread was read from member 0 and the truth drawn from member 1, whose offset
    has nothing to do with member 0's spread: the bound read about 0 for a model whose pooled
    samples are exactly right."""
    rng = np.random.default_rng(3)
    centre = rng.uniform(1, 2, (400, 1))
    offset = rng.uniform(0.0, 2.0, (400, 1))  # how far the members disagree, per record
    noise = 0.05 * rng.standard_normal((400, 64))
    laid_out = centre + noise + np.where(np.arange(64) < 32, -offset, offset)
    assert spread.self_consistent(laid_out, np.random.default_rng(2)) > 0.4
