"""The MLflow pyfunc, logged as models-from-code: MLflow stores this file, not a pickle.

Input: a DataFrame of records, either ready `text` or the raw fields `task`, `period`, `config`,
`logs` (mappings or JSON strings). Output: one row per input with the median, mean and std of the
sampled decodes, one `p<percent>` column per requested quantile (default p10, p90) and
`finite_fraction`, the share of the draws that decoded to a number (the rest are left out); with
`return_samples` also a `samples` column holding each row's list of decoded values. The interval
and std are recalibrated by the conformal scale in the bundle: a row's `task`, when given, picks
that task's own scale if validation fitted one.

Bad input fails the whole call with an `InvalidInputError` naming the row (its position in the
frame) and the reason, before any decoding: a batch never comes back part predicted, part NaN,
since a NaN row would read as "the model does not know" rather than "this row is broken".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.9)
DEFAULT_PARAMS: dict[str, Any] = {
    "num_samples": 32,
    "temperature": 1.0,
    "seed": 0,
    "quantiles": list(DEFAULT_QUANTILES),
    "return_samples": False,
}
# 16x the most samples any accuracy study here found useful (README "Samples per prediction"):
# a batch of 32 rows then decodes 32k sequences at once, within a server's memory for the demo
# models; 10^7 would try to allocate tens of GB and take the server down instead.
MAX_NUM_SAMPLES = 1024


class InvalidInputError(MlflowException, ValueError):
    """Bad rows or params. A ValueError for Python callers; an MlflowException with
    INVALID_PARAMETER_VALUE so `mlflow models serve` answers 400 with this message (a plain
    ValueError reaches its client as a generic "unexpected error" and a stack trace). `row` is
    the frame position of the bad row, None for a bad param: the CLI names the file by it."""

    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self.row = row


def quantile_column(q: float) -> str:
    """0.1 -> 'p10', 0.025 -> 'p2.5': the output column of a requested quantile."""
    from regressor.calibration import percent_label  # here: MLflow loads this file by path

    return f"p{percent_label(q)}"


OUTPUT_COLUMNS = (
    "median",
    "mean",
    "std",
    *map(quantile_column, DEFAULT_QUANTILES),
    "finite_fraction",
)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def _given(value: Any) -> bool:
    """Present and not blank: an empty `text` or `period` is a cell left empty, not content (an
    empty `text` beside a row's fields was predicted from nothing)."""
    return _present(value) and not (isinstance(value, str) and not value.strip())


def json_kind(value: Any) -> str:
    """What a value is, in JSON's words (numpy's and Python's own kinds as the JSON they
    stand for: a tuple or array is an array, `np.bool_` a boolean)."""
    kinds = (
        (type(None), "null"),
        (bool | np.bool_, "a boolean"),
        (Mapping, "an object"),
        (str, "a string"),
        (list | tuple | np.ndarray, "an array"),
        (int | float | np.number, "a number"),
    )
    return next((kind for t, kind in kinds if isinstance(value, t)), type(value).__name__)


def json_object(value: Any, name: str) -> Mapping:
    """A record's `config` or `logs`: a mapping, or the JSON text of one; else a ValueError
    saying why. Training only ever saw mappings, so a list, number or string would be serialized
    into text the model cannot read."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name} is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise ValueError(f"{name} is nested too deeply") from exc
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{name} must be a JSON object (a mapping of fields), got {json_kind(value)}"
        )
    return value


def _mapping(value: Any, row: int, name: str) -> Mapping:
    try:
        return json_object(value, name)
    except ValueError as exc:
        raise InvalidInputError(f"row {row}: {exc}", row) from exc


def _record_of(row: dict, i: int) -> dict:
    """The row's fields as the record training serialized (`dataset.record_from_row`): no
    period is None, whose section the text leaves out. It was "", an empty section no record
    of a period-less source (a table) trained with."""
    missing = [k for k in ("config", "logs") if not _present(row.get(k))]  # "": not JSON
    missing = ["task"] * (not _given(row.get("task"))) + missing
    if missing:
        raise InvalidInputError(
            f"row {i}: a record needs 'text' or the fields task, config, logs; missing {missing}",
            i,
        )
    return {
        "task": _label(row["task"], i, "task"),
        "period": _label(row["period"], i, "period") if _given(row.get("period")) else None,
        "config": _as_stored(row["config"], i, "config"),
        "logs": _as_stored(row["logs"], i, "logs"),
    }


def _label(value: Any, row: int, name: str) -> str:
    """A task or period as text; a number is read as its text (as `textperf predict` does), a
    mapping, list or boolean is refused: it was served its Python repr (`['cell-a']`, `True`)."""
    if isinstance(value, Mapping | list | tuple | np.ndarray | bool | np.bool_):
        raise InvalidInputError(f"row {row}: {name} must be a string, got {json_kind(value)}", row)
    return str(value)


def _as_stored(value: Any, row: int, name: str) -> Mapping:
    """A config or logs cell (a mapping, or its JSON text) as ingest stores it, so its text is
    the one training read: JSON's types (a mapping's numpy scalar or array as the number or
    list it holds, keys as text, tuples as lists; JSON text has them already) and NaN or
    infinity as the text JSON writers use (`parsing.nan_as_text`). A mapping of numpy values
    was served `x=1234.5677` and `flag=True` where the same record sent as JSON reads
    `x=1235` and `flag=true`; a NaN was `nan`, where ingest stores `NaN`."""
    from regressor.sources.parsing import nan_as_text  # here: MLflow loads this file by path

    mapping = _mapping(value, row, name)
    if isinstance(value, str):  # parsed from JSON: no round trip needed
        return nan_as_text(mapping)
    try:
        return nan_as_text(json.loads(json.dumps(mapping, default=_numpy_value)))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"row {row}: {name} is not JSON data: {exc}", row) from exc
    except RecursionError as exc:
        raise InvalidInputError(f"row {row}: {name} is nested too deeply", row) from exc


def _numpy_value(value: Any) -> Any:
    """`json.dumps`' fallback: numpy's scalars and arrays as the Python values they hold."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"a {type(value).__name__} is not a JSON value")


def _text_of_row(row: dict, i: int, text_of: Callable[[dict], str]) -> str:
    text = row.get("text")
    if _given(text):
        if not isinstance(text, str):  # a JSON array, bytes: not predicted from their repr
            raise InvalidInputError(f"row {i}: text must be a string, got {json_kind(text)}", i)
        return _utf8(text, i)
    record = _record_of(row, i)
    try:
        return _utf8(text_of(record), i)
    except RecursionError as exc:  # parsed, but too deep for the serializer's flattening
        raise InvalidInputError(f"row {i}: config or logs is nested too deeply", i) from exc


def _utf8(text: str, i: int) -> str:
    """`text`, refused when it holds a lone surrogate (a JSON `\\udcff` escape alone), which
    no tokenizer reads: it failed deep in the tokenizer, with no row named."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        escape = f"\\u{ord(text[exc.start]):04x}"
        raise InvalidInputError(f"row {i}: a lone surrogate {escape} in its text", i) from exc
    return text


def texts_of(frame: pd.DataFrame, text_of: Callable[[dict], str]) -> list[str]:
    """Per row: its ready `text` when given, else its raw fields serialized (`text_of`, which
    truncates to the model's input budget)."""
    return [_text_of_row(row, i, text_of) for i, row in enumerate(frame.to_dict("records"))]


def scales_of(frame: pd.DataFrame, scale_of: Callable[[dict, str], float]) -> np.ndarray:
    """Per row the baseline a relative model's ratio is scaled by, read from the row's `config`
    (a row with only `text` cannot give one: the error names the row)."""
    scales = []
    for i, row in enumerate(frame.to_dict("records")):
        if not _present(row.get("config")):
            raise InvalidInputError(
                f"row {i}: this model predicts relative to a config field: give config", i
            )
        config = _mapping(row["config"], i, "config")
        try:
            scales.append(scale_of({"config": config}, f"row {i}"))
        except ValueError as exc:  # no positive finite baseline: the message names the row
            raise InvalidInputError(str(exc), i) from exc
    return np.asarray(scales, dtype=np.float64)


def tasks_of(frame: pd.DataFrame) -> list[str | None] | None:
    """Per row its `task` (it picks the task's conformal scale), or None without the column."""
    if "task" not in frame.columns:
        return None
    return [_label(t, i, "task") if _present(t) else None for i, t in enumerate(frame["task"])]


def require_columns(frame: pd.DataFrame) -> None:
    """Refuse a frame with no column at all. MLflow's schema enforcement drops the columns the
    signature lacks, and with them every row when none is known (`{"txt": ...}` came back as
    0 predictions for 1 row, with only MLflow's warning); an empty request arrives the same
    way."""
    if frame.shape[1] == 0:
        raise InvalidInputError(
            "no column this model reads: give `text`, or `task`, `period`, `config` and `logs` "
            "(MLflow drops unknown columns; an input with none of these, or no rows, has "
            "nothing to predict)"
        )


def checked_quantiles(values: Any) -> tuple[float, ...]:
    """The distinct quantiles in [0, 1], in the order asked (one output column each, named by
    `quantile_column`: two that would share a name are refused, not silently merged)."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
        raise InvalidInputError(f"quantiles must be a list of numbers, got {values!r}")
    try:
        # + 0.0: -0.0 (valid JSON) would be column `p-0`, which no summary key matches.
        quantiles = tuple(dict.fromkeys(float(q) + 0.0 for q in values))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"quantiles must be numbers, got {list(values)!r}") from exc
    if not all(0.0 <= q <= 1.0 for q in quantiles):  # NaN fails this too
        raise InvalidInputError(f"quantiles must lie in [0, 1], got {list(values)}")
    names = [quantile_column(q) for q in quantiles]
    if len(set(names)) < len(names):
        raise InvalidInputError(f"quantiles {list(quantiles)} give the same column twice")
    return quantiles


def _whole(value: Any, name: str) -> int:
    number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if not number or not float(value).is_integer():  # 2.5, NaN and inf too
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def checked_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The defaults overridden by `params`, each checked: a bad one is refused with its name,
    never passed on to fail deep in torch, decode silently greedy or give NaN."""
    merged = {**DEFAULT_PARAMS, **(params or {})}
    num_samples = _whole(merged["num_samples"], "num_samples")
    if not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise InvalidInputError(
            f"num_samples must be between 1 and {MAX_NUM_SAMPLES}, got {num_samples}"
        )
    temperature = merged["temperature"]
    if isinstance(temperature, bool) or not isinstance(temperature, int | float | np.number):
        raise InvalidInputError(f"temperature must be a number, got {temperature!r}")
    from regressor.sampling import check_sampling  # here: MLflow loads this file by path

    try:  # the predictor's own rule (finite, >= 0), refused as a bad param
        check_sampling(num_samples, float(temperature))
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc
    return {
        "num_samples": num_samples,
        "temperature": float(temperature),
        "seed": _whole(merged["seed"], "seed"),
        "quantiles": checked_quantiles(merged["quantiles"]),
        "return_samples": bool(merged["return_samples"]),
    }


def output_frame(
    summary: dict[str, np.ndarray], quantiles: Sequence[float], return_samples: bool
) -> pd.DataFrame:
    """The summary of `Predictor.predict_texts` -> the pyfunc's output columns."""
    columns: dict[str, Any] = {k: summary[k] for k in ("median", "mean", "std")}
    for q in quantiles:
        columns[quantile_column(q)] = summary["q" + quantile_column(q)[1:]]
    # The share of draws that decoded to a number, which every statistic above rests on: one
    # finite draw of 32 gave p10 = p90 = median and std 0, a row that looked sure of itself.
    columns["finite_fraction"] = summary["finite_fraction"]
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
        params = checked_params(params)
        frame = pd.DataFrame(model_input)
        require_columns(frame)
        texts = texts_of(frame, self.predictor.text_of)
        scales = (
            None
            if self.predictor.relative_to is None
            else scales_of(frame, self.predictor.scale_of)
        )
        summary = self.predictor.predict_texts(
            texts,
            num_samples=params["num_samples"],
            temperature=params["temperature"],
            quantiles=params["quantiles"],
            seed=params["seed"],
            tasks=tasks_of(frame),
            scales=scales,
        )
        out = output_frame(summary, params["quantiles"], params["return_samples"])
        out.index = frame.index  # row for row: a caller joins it back onto a filtered frame
        return out


mlflow.models.set_model(TextperfModel())
