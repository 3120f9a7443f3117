"""The MLflow pyfunc, logged as models-from-code: MLflow stores this file, not a pickle.

Input: a DataFrame of records, either ready `text` or the raw fields `task`, `period`, `config`,
`logs` (mappings or JSON strings). Output: one row per input with the median, mean, std and the
10% / 90% quantiles of the sampled decodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

OUTPUT_COLUMNS = ("median", "mean", "std", "p10", "p90")
DEFAULT_PARAMS: dict[str, Any] = {"num_samples": 32, "temperature": 1.0, "seed": 0}


def _as_mapping(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def texts_of(frame: pd.DataFrame, text_of) -> list[str]:
    """Ready texts when a `text` column is given, else serialize each row's raw fields."""
    if "text" in frame.columns and frame["text"].notna().all():
        return frame["text"].astype(str).tolist()
    missing = {"task", "config", "logs"} - set(frame.columns)
    if missing:
        raise ValueError(
            "input needs a 'text' column or the fields task, config, logs; "
            f"missing {sorted(missing)}"
        )
    records = [
        {
            "task": row["task"],
            "period": str(row.get("period", "")),
            "config": _as_mapping(row["config"]),
            "logs": _as_mapping(row["logs"]),
        }
        for row in frame.to_dict("records")
    ]
    return [text_of(record) for record in records]


class TextperfModel(PythonModel):
    def load_context(self, context) -> None:
        from regressor.predictor import Predictor  # imported here: MLflow loads this file by path

        self.predictor = Predictor.load(Path(context.artifacts["bundle"]))

    def predict(
        self, context, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        params = {**DEFAULT_PARAMS, **(params or {})}
        texts = texts_of(pd.DataFrame(model_input), self.predictor.text_of)
        summary = self.predictor.predict_texts(
            texts,
            num_samples=int(params["num_samples"]),
            temperature=float(params["temperature"]),
            quantiles=(0.1, 0.5, 0.9),
            seed=int(params["seed"]),
        )
        return pd.DataFrame(
            {
                "median": summary["median"],
                "mean": summary["mean"],
                "std": summary["std"],
                "p10": summary["q10"],
                "p90": summary["q90"],
            }
        ).astype(np.float64)


mlflow.models.set_model(TextperfModel())
