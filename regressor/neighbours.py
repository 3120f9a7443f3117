"""Retrieval in the input text: each record followed by its nearest known records of the same task.

On a few dozen measured configurations the model has to learn what every option does before it
can predict; a tabular learner reads that from the table. Appending to each record's text the
targets of its `k` nearest reference records (fewest differing options, within its task) and the
options on which each differs turns the task into "start from a measured neighbour, adjust for
the differences": a skill a model can learn once, on generated systems (`regressor.configprior`),
and bring to a system it has never seen. A record is never its own neighbour (by record id), so
training texts look like the texts of records the model has not measured.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from regressor.dataset import Examples

HEADER = "<neighbours>"


def option_matrix(configs: Sequence[dict], keys: Sequence[str]) -> np.ndarray:
    """float64 [N, len(keys)]: each configuration's option values (NaN where absent or not a
    number), in `keys`' order."""
    return np.array(
        [[_number(config.get(key)) for key in keys] for config in configs], dtype=np.float64
    ).reshape(len(configs), len(keys))


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def differing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Where option values differ, broadcast: two missing values (NaN) are the same value."""
    return (a != b) & ~(np.isnan(a) & np.isnan(b))


def nearest(
    query: np.ndarray, reference: np.ndarray, k: int, excluded: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` reference rows with the fewest differing options for each query row.

    query [N, O], reference [M, O]; `excluded` [N] is the reference row each query row must not
    pick (itself), or -1. Returns (indices [N, k'], differing counts [N, k']) with k' = min(k,
    M), ties broken by reference order so the result is deterministic; an excluded row that had
    to be taken counts inf.
    """
    differ = differing(query[:, None, :], reference[None, :, :])  # [N, M, O]
    distance = differ.sum(axis=2).astype(np.float64)  # [N, M]
    rows = np.flatnonzero(excluded >= 0)
    distance[rows, excluded[rows]] = np.inf
    order = np.argsort(distance, axis=1, kind="stable")[:, : min(k, reference.shape[0])]
    return order, np.take_along_axis(distance, order, axis=1)


def _value(x: float) -> str:
    return "nan" if np.isnan(x) else f"{x:g}"


def neighbour_lines(
    query_row: np.ndarray, rows: np.ndarray, targets: np.ndarray, keys: Sequence[str]
) -> list[str]:
    """One line per neighbour: its target (4 significant digits), then its options that differ
    from the query's, as `key=value` in `keys`' order (an identical neighbour lists none)."""
    lines = []
    for row, target in zip(rows, targets, strict=True):
        differs = [f"{keys[j]}={_value(row[j])}" for j in np.flatnonzero(differing(query_row, row))]
        lines.append(" ".join([f"{target:.4g}", "|", *differs]).rstrip())
    return lines


def with_neighbours(examples: Examples, reference: Examples, k: int) -> Examples:
    """`examples` whose texts end with a `<neighbours>` section: the `k` nearest records of
    `reference` in the same task (never the record itself) with their targets; a task with no
    other reference record gets an empty section."""
    by_task: dict[str, list[int]] = defaultdict(list)
    for j, task in enumerate(reference.tasks):
        by_task[task].append(j)
    texts = list(examples.texts)
    for task in set(examples.tasks):
        query_idx = [i for i, t in enumerate(examples.tasks) if t == task]
        ref_idx = by_task.get(task, [])
        query_configs = [json.loads(examples.config_json[i]) for i in query_idx]
        ref_configs = [json.loads(reference.config_json[j]) for j in ref_idx]
        keys = sorted({key for config in query_configs + ref_configs for key in config})
        query = option_matrix(query_configs, keys)
        ref = option_matrix(ref_configs, keys)
        position = {reference.record_ids[j]: p for p, j in enumerate(ref_idx)}
        excluded = np.array([position.get(examples.record_ids[i], -1) for i in query_idx])
        order, distance = nearest(query, ref, k, excluded)
        ref_targets = reference.targets[ref_idx]
        for q, i in enumerate(query_idx):
            picked = order[q][np.isfinite(distance[q])]  # never the record itself
            lines = neighbour_lines(query[q], ref[picked], ref_targets[picked], keys)
            texts[i] = "\n".join([examples.texts[i], HEADER, *lines])
    return dataclasses.replace(examples, texts=texts)
