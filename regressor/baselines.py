"""Tabular baselines on flattened config fields: what text-to-text regression has to beat."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from regressor.serialize import flatten, format_scalar


def feature_text(value: Any) -> str | None:
    """A config value as a feature's text: a number exact (the serializer's 4 significant
    digits made 12345.6 and 12351 one value), null and NaN missing (as "null" / "nan" they
    made a whole column of numbers categorical), anything else as the serializer writes it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return format_scalar(value)


def text_columns(config_json: Sequence[str]) -> pd.DataFrame:
    """One column per dotted config path (`feature_text` values), in sorted order (in the order
    the rows first named them, the columns, and so the ties between equal splits, changed with
    the order of the training rows), named by `feature_name`."""
    rows = [dict(flatten(json.loads(text), scalar=feature_text)) for text in config_json]
    frame = pd.DataFrame(rows, dtype=object)
    frame = frame[sorted(frame.columns, key=str)]
    frame.columns = [feature_name(str(name)) for name in frame.columns]
    return frame


def feature_name(path: str) -> str:
    """A path as a feature name LightGBM accepts (letters, digits, `_` and `.`; no JSON-special
    characters), one to one: `_` is written `__` and any other character `_<hex code>_`, so two
    paths never share a name (`disk full: /var` and `disk full; /var` were one column, then
    `..` and `..__2` by the order they came in, which differs between training and test rows:
    a test row's value landed in another path's column)."""
    return "".join(
        c if c.isascii() and (c.isalnum() or c == ".") else "__" if c == "_" else f"_{ord(c):x}_"
        for c in path
    )


def typed(frame: pd.DataFrame, like: pd.DataFrame | None = None) -> pd.DataFrame:
    """`text_columns` typed: a column of numbers numeric, any other categorical. With `like`
    (the training frame), its columns and types, whatever these rows hold: typed on their own,
    test rows holding only numbers in a column training had mixed with text came out numeric,
    and matched none of training's categories, so a prediction depended on the other test
    rows (`align`)."""
    if like is not None:
        return align(like, frame)  # a new frame: `reindex` copies
    frame = frame.copy()
    for column in frame.columns:
        numeric = pd.to_numeric(frame[column], errors="coerce")
        if numeric.notna().sum() == frame[column].notna().sum():
            frame[column] = numeric
        else:
            frame[column] = frame[column].astype("category")
    return frame


def flatten_configs(config_json: Sequence[str], like: pd.DataFrame | None = None) -> pd.DataFrame:
    """One column per dotted config path; text fields become pandas categoricals. Test rows
    pass the training frame as `like` (`typed`)."""
    return typed(text_columns(config_json), like)


def align(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Give `test` the training columns and categories (unseen categories become missing).
    Exact for a `test` of `text_columns`; a typed one loses, in a column it read as numbers,
    the text training's categories are spelt in (`typed`'s `like`)."""
    test = test.reindex(columns=train.columns)
    for column in train.columns:
        if isinstance(train[column].dtype, pd.CategoricalDtype):
            test[column] = pd.Categorical(test[column], categories=train[column].cat.categories)
        else:
            test[column] = pd.to_numeric(test[column], errors="coerce")
    return test


def mean_baseline(y_train: np.ndarray, n_test: int) -> np.ndarray:
    return np.full(n_test, float(np.mean(y_train)))


def lightgbm_regressor(seed: int = 0, small_categories: bool = False) -> lgb.LGBMRegressor:
    """The project's LightGBM, sized for a few thousand rows.

    One thread: LightGBM ignores OMP_NUM_THREADS and starts a thread per core, which on a
    shared machine oversubscribes the cores (fits of 0.03 s took 6-95 s under load).
    `small_categories` splits on a category once it has as many rows as a leaf may hold:
    LightGBM's defaults (`min_data_per_group=100`, `cat_smooth=10`) cannot tell apart
    categories of fewer rows (4 machine types in 80 rows: MAPE 0.51, XGBoost's 0.04). Neither
    setting wins on the real datasets (the README's Accuracy section), so the benchmarks run
    both as peers and the default stays LightGBM's.
    """
    categories = {"min_data_per_group": 5, "cat_smooth": 1.0} if small_categories else {}
    return lgb.LGBMRegressor(
        **categories,
        n_estimators=300,
        learning_rate=0.05,
        num_leaves=15,
        min_child_samples=5,
        random_state=seed,
        n_jobs=1,
        verbose=-1,
    )


def lightgbm_baseline(
    train_configs: Sequence[str], y_train: np.ndarray, test_configs: Sequence[str], seed: int = 0
) -> np.ndarray:
    """LightGBM on flattened config fields, with defaults sized for a few thousand rows."""
    x_train = flatten_configs(train_configs)
    x_test = flatten_configs(test_configs, like=x_train)
    model = lightgbm_regressor(seed)
    model.fit(x_train, np.asarray(y_train, dtype=float))
    return np.asarray(model.predict(x_test), dtype=float)
