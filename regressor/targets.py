"""Relative targets: the model learns target / a baseline the record itself carries.

Where each record holds a baseline of its own target (lumos: the runtime of the same workload on
a reference VM type), what the configuration and logs decide is the *ratio* to that baseline,
which varies over one decade where the runtime spans four. The decoder then writes the ratio and
predictions are scaled back by the baseline: the model no longer has to multiply a number it
read digit by digit. A source turns this on with `target_relative_to` (`SourceText`); a bundle
remembers the field so the pyfunc scales back whatever records it is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class MissingScaleError(ValueError):
    """A record lacks the baseline its relative target is measured against."""


def config_value(config: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path of a nested config (`reference.elapsed_time`), or None."""
    value: Any = config
    for key in path.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def scale_of(config: Mapping[str, Any], path: str, record: str = "a record") -> float:
    """The positive, finite baseline at `path` of one config, or a `MissingScaleError` naming
    the record and the reason (a ratio to zero, a missing or non-numeric field means nothing)."""
    value = config_value(config, path)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MissingScaleError(f"{record}: the target is relative to {path!r}, found {value!r}")
    try:
        scale = float(value)
    except OverflowError:  # an int beyond float64 (JSON keeps any integer): no baseline either
        raise MissingScaleError(
            f"{record}: {path!r} is an integer of {len(str(abs(value)))} digits, beyond float64"
        ) from None
    if not (math.isfinite(scale) and scale > 0):
        raise MissingScaleError(f"{record}: {path!r} is {value}, not a positive finite number")
    return scale


def target_scales(
    config_json: Sequence[str], relative_to: str | None, record_ids: Sequence[str] | None = None
) -> np.ndarray:
    """Per record the baseline its target is divided by: float64 [N], ones when not relative."""
    if relative_to is None:
        return np.ones(len(config_json))
    names = record_ids or [f"record {i}" for i in range(len(config_json))]
    return np.array(
        [
            scale_of(json.loads(text), relative_to, name)
            for text, name in zip(config_json, names, strict=True)
        ]
    )
