from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from regressor.serialize import flatten, format_number, serialize

RECORD = {
    "task": "cell-a01",
    "period": "2026-01-02",
    "config": {
        "scheduler": {"overcommit": 1.25, "policy": "bestfit"},
        "machines": [{"n": 10}, {"n": 3}],
    },
    "logs": {"lines": 1200, "levels": {"ERROR": 3, "INFO": 1197}, "cpu": {"mean": 0.61234567}},
}


def test_same_record_same_text_whatever_the_key_order():
    shuffled = {
        "logs": dict(reversed(list(RECORD["logs"].items()))),
        "config": {
            "machines": RECORD["config"]["machines"],
            "scheduler": RECORD["config"]["scheduler"],
        },
        "period": RECORD["period"],
        "task": RECORD["task"],
    }
    assert serialize(RECORD) == serialize(shuffled)


def test_sections_in_priority_order_and_numbers_compact():
    text = serialize(RECORD)
    assert text.index("<task>") < text.index("<config>") < text.index("<logs>")
    assert "scheduler.overcommit=1.25" in text
    assert "machines[1].n=3" in text
    assert "cpu.mean=0.6123" in text


def test_truncation_drops_least_important_section_first():
    big = {**RECORD, "logs": {f"template_{i:03d}": i for i in range(400)}}
    text = serialize(big, budget_tokens=60)
    assert "scheduler.overcommit=1.25" in text  # config survives
    assert len(text) // 4 + 1 <= 60
    assert "template_399" not in text


def test_budget_respected_with_custom_counter():
    text = serialize(RECORD, budget_tokens=5, count_tokens=lambda t: len(t.split()))
    assert len(text.split()) <= 5 or text.count("\n") <= 2


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_number_round_trips_to_four_significant_digits(x):
    back = float(format_number(x))
    assert abs(back - x) <= abs(x) * 5e-4 + 1e-300


def test_flatten_lists_of_scalars_inline():
    assert dict(flatten({"a": [1, 2.5, "x"]})) == {"a": "[1,2.5,x]"}
