"""Retrieval in the input (`regressor.neighbours`): which records a text reads, and how."""

from __future__ import annotations

import json

import numpy as np

from regressor.dataset import Examples
from regressor.neighbours import HEADER, nearest, option_matrix, with_neighbours


def examples(configs: list[dict], targets: list[float], task: str = "S", prefix: str = "r"):
    n = len(configs)
    return Examples(
        record_ids=[f"{prefix}{i}" for i in range(n)],
        tasks=[task] * n,
        texts=[f"text {prefix}{i}" for i in range(n)],
        targets=np.array(targets, dtype=np.float64),
        config_json=[json.dumps(c) for c in configs],
    )


def neighbour_section(text: str) -> list[str]:
    before, _, after = text.partition(f"\n{HEADER}\n")
    assert before.startswith("text ")
    return after.splitlines() if after else []


def test_a_record_reads_its_nearest_known_records_never_itself() -> None:
    known = examples(
        [{"a": 0, "b": 0, "c": 0}, {"a": 1, "b": 0, "c": 0}, {"a": 1, "b": 1, "c": 0}],
        [10.0, 20.0, 40.0],
    )
    texts = with_neighbours(known, known, 2).texts
    # r0 differs from r1 in a, from r2 in a and b: r1 first; its own 10 never appears
    assert neighbour_section(texts[0]) == ["20 | a=1", "40 | a=1 b=1"]
    # r1: r0 and r2 both differ in one option; the tie goes to the earlier record
    assert neighbour_section(texts[1]) == ["10 | a=0", "40 | b=1"]


def test_an_unseen_record_reads_the_reference_and_ties_keep_reference_order() -> None:
    known = examples([{"a": 0, "b": 1}, {"a": 1, "b": 0}, {"a": 1, "b": 1}], [1.5, 2.25, 3e6])
    query = examples([{"a": 1, "b": 1}], [0.0], prefix="q")
    (text,) = with_neighbours(query, known, 5).texts  # k beyond the reference: all three
    assert neighbour_section(text) == ["3e+06 |", "1.5 | a=0", "2.25 | b=0"]


def test_records_read_only_their_own_task() -> None:
    known = examples([{"a": 0}], [5.0], task="S")
    other = examples([{"a": 0}], [7.0], task="T", prefix="t")
    reference = Examples(
        known.record_ids + other.record_ids,
        known.tasks + other.tasks,
        known.texts + other.texts,
        np.concatenate([known.targets, other.targets]),
        known.config_json + other.config_json,
    )
    query = examples([{"a": 1}], [0.0], task="T", prefix="q")
    assert neighbour_section(with_neighbours(query, reference, 3).texts[0]) == ["7 | a=0"]
    lonely = examples([{"a": 1}], [0.0], task="U", prefix="u")  # no known record of its task
    assert neighbour_section(with_neighbours(lonely, reference, 3).texts[0]) == []


def test_nearest_counts_differing_options_and_a_missing_one_on_one_side() -> None:
    keys = ["a", "b", "c"]
    query = option_matrix([{"a": 0, "b": 1}], keys)
    reference = option_matrix([{"a": 0, "b": 1}, {"a": 0, "b": 1, "c": 2}, {"a": 1, "b": 0}], keys)
    order, distance = nearest(query, reference, 3, np.zeros((1, 3), dtype=bool))
    assert order.tolist() == [[0, 1, 2]]
    assert distance.tolist() == [[0.0, 1.0, 2.0]]
    itself = np.array([[True, False, False]])  # row 0 is the query itself
    order, distance = nearest(query, reference, 3, itself)
    assert order.tolist() == [[1, 2, 0]]
    assert np.isinf(distance[0, 2])


def test_text_options_differ_and_a_records_repeats_are_not_its_neighbours() -> None:
    """A text option was NaN on every side, so a neighbour on another machine type read as
    identical; and c3o measures each configuration about five times, so every training text
    read a repeat of its own configuration (its own target, nearly) where no text of an
    unmeasured configuration can: the model learnt to copy it."""
    configs = [
        {"vm": "c4", "n": 2},
        {"vm": "c4", "n": 2},  # a repeat of r0
        {"vm": "m4", "n": 2},
        {"vm": "c4", "n": 4},
    ]
    known = examples(configs, [10.0, 11.0, 20.0, 5.0])
    texts = with_neighbours(known, known, 3).texts
    assert neighbour_section(texts[0]) == ["20 | vm=m4", "5 | n=4"]
    assert neighbour_section(texts[1]) == ["20 | vm=m4", "5 | n=4"]
    query = examples([{"vm": "c4", "n": 2}], [0.0], prefix="q")  # unmeasured: reads the runs
    assert neighbour_section(with_neighbours(query, known, 2).texts[0]) == ["10 |", "11 |"]
