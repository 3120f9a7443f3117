"""Retrieval in the input text: each record followed by its nearest known records of the same task.

On a few dozen measured configurations the model has to learn what every option does before it
can predict; a tabular learner reads that from the table. Appending to each record's text the
targets of its `k` nearest reference records (fewest differing options, within its task) and the
options on which each differs turns the task into "start from a measured neighbour, adjust for
the differences": a skill a model can learn once, on generated systems (`regressor.configprior`),
and bring to a system it has never seen. A reference record is never its own neighbour, nor
are the other runs of its configuration (c3o measures each about five times), so training texts
look like the texts of records the model has not measured: with its repeats, every training text
began with a copy of its own target, which no text of an unmeasured configuration has.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from regressor.dataset import Examples
from regressor.splits import config_group

HEADER = "<neighbours>"


def option_matrix(configs: Sequence[dict], keys: Sequence[str]) -> np.ndarray:
    """object [N, len(keys)]: each configuration's option values as comparable keys, in `keys`'
    order: a number (or bool) as its float, anything else (text, a list, an object) as its
    canonical JSON, an absent option None. Text options were NaN, the same value on every
    side: a neighbour on another machine type read as identical."""
    options = np.empty((len(configs), len(keys)), dtype=object)  # filled cell by cell: numpy
    for i, config in enumerate(configs):  # would unpack each (kind, value) pair into an axis
        for j, key in enumerate(keys):
            options[i, j] = _option(config, key)
    return options


def _option(config: dict, key: str) -> object:
    if key not in config or config[key] is None:
        return None
    value = config[key]
    if isinstance(value, int | float):
        return ("number", float(value))
    return ("text", json.dumps(value, sort_keys=True, ensure_ascii=False))


def differing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Where option values differ, broadcast: two absent values are the same value."""
    return np.not_equal(a, b)


def _codes(options: np.ndarray) -> np.ndarray:
    """int64 [R, O]: each option value numbered within its column (absent values alike)."""
    codes = np.empty(options.shape, dtype=np.int64)
    for j in range(options.shape[1]):
        numbering: dict[object, int] = {}
        codes[:, j] = [numbering.setdefault(v, len(numbering)) for v in options[:, j]]
    return codes


def nearest(
    query: np.ndarray, reference: np.ndarray, k: int, excluded: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` reference rows with the fewest differing options for each query row.

    query [N, O], reference [M, O] (`option_matrix`); `excluded` bool [N, M] marks the
    reference rows each query row must not pick (itself and its repeats). Returns (indices
    [N, k'], differing counts [N, k']) with k' = min(k, M), ties broken by reference order so
    the result is deterministic; an excluded row that had to be taken counts inf.
    """
    codes = _codes(np.concatenate([query, reference]))  # int64 [N + M, O]: compared as ints
    query_codes, ref_codes = codes[: len(query)], codes[len(query) :]
    differ = query_codes[:, None, :] != ref_codes[None, :, :]  # [N, M, O]
    distance = differ.sum(axis=2).astype(np.float64)  # [N, M]
    distance[excluded] = np.inf
    order = np.argsort(distance, axis=1, kind="stable")[:, : min(k, reference.shape[0])]
    return order, np.take_along_axis(distance, order, axis=1)


def _value(option: object) -> str:
    """An option as a neighbour line writes it: a number as `%g`, text as its JSON."""
    if option is None:
        return "nan"  # absent here, present on the query's side
    kind, value = option  # type: ignore[misc]
    if kind == "number":
        return f"{value:g}"
    return value.strip('"') if value.startswith('"') else value


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


def repeats(
    examples: Examples, query_idx: list[int], reference: Examples, ref_idx: list[int]
) -> np.ndarray:
    """bool [len(query_idx), len(ref_idx)]: for a query that is itself a reference record, the
    reference records of its configuration (itself and its repeats); none for other queries (a
    measured run of a configuration is what an unmeasured one should read)."""
    groups = [config_group(reference.tasks[j], reference.config_json[j]) for j in ref_idx]
    group_of = dict(zip((reference.record_ids[j] for j in ref_idx), groups, strict=True))
    mask = np.zeros((len(query_idx), len(ref_idx)), dtype=bool)
    ref_groups = np.array(groups, dtype=object)
    for q, i in enumerate(query_idx):
        group = group_of.get(examples.record_ids[i])
        if group is not None:
            mask[q] = ref_groups == group
    return mask


def with_neighbours(examples: Examples, reference: Examples, k: int) -> Examples:
    """`examples` whose texts end with a `<neighbours>` section: the `k` nearest records of
    `reference` in the same task (never the record itself, nor its repeats: `repeats`) with
    their targets; a task with no other reference record gets an empty section."""
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
        excluded = repeats(examples, query_idx, reference, ref_idx)
        order, distance = nearest(query, ref, k, excluded)
        ref_targets = reference.targets[ref_idx]
        for q, i in enumerate(query_idx):
            picked = order[q][np.isfinite(distance[q])]  # never the record or its repeats
            lines = neighbour_lines(query[q], ref[picked], ref_targets[picked], keys)
            texts[i] = "\n".join([examples.texts[i], HEADER, *lines])
    return dataclasses.replace(examples, texts=texts)
