from __future__ import annotations

import json

import numpy as np

from regressor.baselines import flatten_configs, lightgbm_baseline, mean_baseline


def _configs(n: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    sizes = rng.integers(1, 100, n)
    kinds = rng.choice(["a", "b"], n)
    y = sizes * np.where(kinds == "a", 1.0, 3.0)
    return [
        json.dumps({"m": {"size": int(s), "kind": str(k)}})
        for s, k in zip(sizes, kinds, strict=True)
    ], y


def test_flatten_makes_numeric_and_categorical_columns():
    frame = flatten_configs(['{"a": {"b": 1, "c": "x"}}', '{"a": {"b": 2, "c": "y"}}'])
    assert list(frame.columns) == ["a.b", "a.c"]
    assert frame["a.b"].dtype.kind in "if"
    assert str(frame["a.c"].dtype) == "category"


def test_lightgbm_learns_config_signal_and_beats_mean():
    rng = np.random.default_rng(0)
    train_x, train_y = _configs(400, rng)
    test_x, test_y = _configs(100, rng)
    gbm = lightgbm_baseline(train_x, train_y, test_x)
    mean = mean_baseline(train_y, len(test_x))
    assert np.mean((gbm - test_y) ** 2) < 0.2 * np.mean((mean - test_y) ** 2)


def test_unseen_category_does_not_crash():
    rng = np.random.default_rng(1)
    train_x, train_y = _configs(50, rng)
    preds = lightgbm_baseline(train_x, train_y, [json.dumps({"m": {"size": 5, "kind": "zzz"}})])
    assert preds.shape == (1,)
