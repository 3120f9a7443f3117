"""Tabular peers beyond `baselines`: XGBoost, hand-made log-summary columns, and ratio models.

For a reference-VM task (lumos) the strong tabular recipe is to predict the *ratio* of the target
runtime to the reference run's runtime, on the log scale, from the config plus the reference run's
log summary as columns; the rule "reference runtime x median train ratio of the target VM type"
is the simplest such model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xgboost as xgb

from regressor.baselines import align, flatten_configs, lightgbm_regressor, text_columns, typed

# Before every log column's name: no config path's `feature_name` starts so (it writes `_` as
# `__` or `_<hex>_`), so a config field `log.lines` no longer shares a column with the log's.
LOG_PREFIX = "log_."


def log_summary_columns(logs_json: Sequence[str]) -> pd.DataFrame:
    """One numeric column per summary statistic of the log (`log_.windows.all._25_user.mean`
    for `windows.all.%user.mean`)."""
    return typed(_log_text_columns(logs_json))


def _log_text_columns(logs_json: Sequence[str]) -> pd.DataFrame:
    frame = text_columns([text or "{}" for text in logs_json])
    frame.columns = [LOG_PREFIX + name for name in frame.columns]
    return frame


def features(
    config_json: Sequence[str],
    logs_json: Sequence[str] | None = None,
    like: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Flattened config fields, plus the log summary's columns (`log_summary_columns`) when
    `logs_json` is given; test rows pass the training frame as `like` (`baselines.typed`)."""
    frame = text_columns(config_json)
    if logs_json is not None:
        logs = _log_text_columns(logs_json)
        frame = pd.concat([frame.reset_index(drop=True), logs.reset_index(drop=True)], axis=1)
        frame = frame.loc[:, ~frame.columns.duplicated()]  # a config key `log` meets the logs'
    return typed(frame, like)


# LightGBM splitting on categories of a few rows (`baselines.lightgbm_regressor`).
SMALL_CATEGORIES = "lightgbm_smallcat"


def _model(kind: str, seed: int):
    """Both peers sized alike for a few thousand rows (the project's LightGBM defaults)."""
    if kind in ("lightgbm", SMALL_CATEGORIES):
        return lightgbm_regressor(seed, small_categories=kind == SMALL_CATEGORIES)
    if kind == "xgboost":
        return xgb.XGBRegressor(
            n_estimators=300,
            learning_rate=0.05,
            max_depth=6,
            tree_method="hist",
            enable_categorical=True,
            random_state=seed,
            n_jobs=1,
        )
    raise ValueError(f"unknown tabular model {kind!r}")


def fit_predict(
    kind: str,
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_test: pd.DataFrame,
    seed: int = 0,
    log_target: bool = False,
) -> np.ndarray:
    """Fit `kind` on `x_train` and predict `x_test` (aligned to the training columns).

    With `log_target` the model fits log(y) and returns exp of its prediction: errors then weigh
    relatively, which is what MAPE measures on targets spanning orders of magnitude.
    """
    y = np.asarray(y_train, dtype=float)
    model = _model(kind, seed)
    model.fit(x_train, np.log(y) if log_target else y)
    pred = np.asarray(model.predict(align(x_train, x_test)), dtype=float)
    return np.exp(pred) if log_target else pred


def xgboost_baseline(
    train_configs: Sequence[str], y_train: np.ndarray, test_configs: Sequence[str], seed: int = 0
) -> np.ndarray:
    """XGBoost on flattened config fields: the peer of `baselines.lightgbm_baseline`."""
    x_train = flatten_configs(train_configs)
    x_test = flatten_configs(test_configs, like=x_train)
    return fit_predict("xgboost", x_train, y_train, x_test, seed)


def reference_runtime(
    config_json: Sequence[str], field: str = "reference.elapsed_time"
) -> np.ndarray:
    """The reference run's runtime each record carries in its config (dotted path)."""
    out = []
    for text in config_json:
        value = json.loads(text)
        for key in field.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        out.append(np.nan if value is None else float(value))
    return np.asarray(out, dtype=float)


def ratio_model(
    kind: str,
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    ref_train: np.ndarray,
    x_test: pd.DataFrame,
    ref_test: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """Fit log(target / reference runtime); predict reference x exp(fitted log ratio)."""
    log_ratio = np.log(np.asarray(y_train, dtype=float) / ref_train)
    model = _model(kind, seed)
    model.fit(x_train, log_ratio)
    return ref_test * np.exp(np.asarray(model.predict(align(x_train, x_test)), dtype=float))


def median_ratio_rule(
    group_train: Sequence[str],
    y_train: np.ndarray,
    ref_train: np.ndarray,
    group_test: Sequence[str],
    ref_test: np.ndarray,
) -> np.ndarray:
    """Reference runtime x the median train ratio of the test record's group (e.g. VM type).

    A group unseen in training falls back to the overall median ratio.
    """
    ratio = pd.Series(np.asarray(y_train, dtype=float) / ref_train)
    by_group = ratio.groupby(np.asarray(group_train)).median()
    overall = float(ratio.median())
    factor = np.array([by_group.get(g, overall) for g in group_test], dtype=float)
    return np.asarray(ref_test, dtype=float) * factor
