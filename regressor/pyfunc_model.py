"""The MLflow pyfunc, logged as models-from-code: MLflow stores this file, not a pickle.

Input: a DataFrame of records, either ready `text` or the raw fields `task`, `period`, `config`,
`logs` (mappings or JSON strings). Output: one row per input with the median, mean and std of the
sampled decodes and one `p<percent>` column per requested quantile (default p10, p90); with
`return_samples` also a `samples` column holding each row's list of decoded values. The interval
and std are recalibrated by the conformal scale in the bundle: a row's `task`, when given, picks
that task's own scale if validation fitted one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.9)
DEFAULT_PARAMS: dict[str, Any] = {
    "num_samples": 32,
    "temperature": 1.0,
    "seed": 0,
    "quantiles": list(DEFAULT_QUANTILES),
    "return_samples": False,
}


def quantile_column(q: float) -> str:
    """0.1 -> 'p10', 0.025 -> 'p2.5': the output column of a requested quantile."""
    return f"p{q * 100:g}"


OUTPUT_COLUMNS = ("median", "mean", "std", *map(quantile_column, DEFAULT_QUANTILES))


def _as_mapping(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def _record_of(row: dict) -> dict:
    missing = [k for k in ("task", "config", "logs") if not _present(row.get(k))]
    if missing:
        raise ValueError(
            f"a record needs 'text' or the fields task, config, logs; missing {missing}"
        )
    return {
        "task": row["task"],
        "period": str(row["period"]) if _present(row.get("period")) else "",
        "config": _as_mapping(row["config"]),
        "logs": _as_mapping(row["logs"]),
    }


def texts_of(frame: pd.DataFrame, text_of: Callable[[dict], str]) -> list[str]:
    """Per row: its ready `text` when given, else its raw fields serialized."""
    return [
        str(row["text"]) if _present(row.get("text")) else text_of(_record_of(row))
        for row in frame.to_dict("records")
    ]


def scales_of(frame: pd.DataFrame, scale_of: Callable[[dict, str], float]) -> np.ndarray:
    """Per row the baseline a relative model's ratio is scaled by, read from the row's `config`
    (a row with only `text` cannot give one: the error names the row)."""
    scales = []
    for i, row in enumerate(frame.to_dict("records")):
        if not _present(row.get("config")):
            raise ValueError(
                f"row {i}: this model predicts relative to a config field: give config"
            )
        scales.append(scale_of({"config": _as_mapping(row["config"])}, f"row {i}"))
    return np.asarray(scales, dtype=np.float64)


def tasks_of(frame: pd.DataFrame) -> list[str | None] | None:
    """Per row its `task` (it picks the task's conformal scale), or None without the column."""
    if "task" not in frame.columns:
        return None
    return [str(t) if _present(t) else None for t in frame["task"]]


def checked_quantiles(values: Sequence[float]) -> tuple[float, ...]:
    quantiles = tuple(float(q) for q in values)
    if not all(0.0 <= q <= 1.0 for q in quantiles):
        raise ValueError(f"quantiles must lie in [0, 1], got {list(quantiles)}")
    return quantiles


def output_frame(
    summary: dict[str, np.ndarray], quantiles: Sequence[float], return_samples: bool
) -> pd.DataFrame:
    """The summary of `Predictor.predict_texts` -> the pyfunc's output columns."""
    columns: dict[str, Any] = {k: summary[k] for k in ("median", "mean", "std")}
    for q in quantiles:
        columns[quantile_column(q)] = summary[f"q{q * 100:g}"]
    out = pd.DataFrame(columns).astype(np.float64)
    if return_samples:
        # Plain lists, not arrays: the scoring server serializes the frame to JSON.
        out["samples"] = [row.tolist() for row in summary["samples"]]
    return out


class TextperfModel(PythonModel):
    def load_context(self, context) -> None:
        from regressor.predictor import Predictor  # imported here: MLflow loads this file by path

        self.predictor = Predictor.load(Path(context.artifacts["bundle"]))

    def predict(
        self, context, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        params = {**DEFAULT_PARAMS, **(params or {})}
        quantiles = checked_quantiles(params["quantiles"])
        frame = pd.DataFrame(model_input)
        texts = texts_of(frame, self.predictor.text_of)
        summary = self.predictor.predict_texts(
            texts,
            num_samples=int(params["num_samples"]),
            temperature=float(params["temperature"]),
            quantiles=quantiles,
            seed=int(params["seed"]),
            tasks=tasks_of(frame),
            scales=None
            if self.predictor.relative_to is None
            else scales_of(frame, self.predictor.scale_of),
        )
        return output_frame(summary, quantiles, bool(params["return_samples"]))


mlflow.models.set_model(TextperfModel())
