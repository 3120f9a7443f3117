from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from regressor.serialize import (
    approx_token_count,
    flatten,
    format_number,
    serialize,
    shuffle_section_lines,
)

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
    # By words, the task and period sections (4) fit and the config section (5 more) does not;
    # the default counter (~4 characters a token) keeps the task alone.
    assert text == "\n".join(serialize(RECORD).split("\n")[:4])
    assert serialize(RECORD, budget_tokens=5) == "<task>\ncell-a01"


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_number_round_trips_to_four_significant_digits(x):
    back = float(format_number(x))
    assert abs(back - x) <= abs(x) * 5e-4 + 1e-300


def test_flatten_lists_of_scalars_inline():
    assert dict(flatten({"a": [1, 2.5, "x"]})) == {"a": "[1,2.5,x]"}


def test_truncation_to_8192_real_tokens_of_a_huge_record():
    """~50k log lines (megabytes of text): kept within 8,192 real tokens, as much as fits, and
    without ever tokenizing the whole text."""
    from regressor.vocab import InputTokenizer

    logs = {f"template_{i:05d}": {"count": i, "p95": i * 0.37} for i in range(50_000)}
    huge = {**RECORD, "logs": logs}
    tokenizer = InputTokenizer.train(
        [serialize({**RECORD, "logs": dict(list(logs.items())[:300])})], 1024
    )
    calls: list[int] = []

    def count(text: str) -> int:
        calls.append(len(text))
        return tokenizer.count_tokens(text)

    text = serialize(
        huge, budget_tokens=8192, count_tokens=count, max_chars_per_token=tokenizer.max_token_chars
    )
    assert tokenizer.count_tokens(text) <= 8192
    assert "scheduler.overcommit=1.25" in text  # config survives, logs are cut from the end
    full = serialize(huge)
    assert full.startswith(text)
    assert len(full) > 20 * len(text)
    one_more = full[: full.index("\n", len(text) + 1)]
    assert tokenizer.count_tokens(one_more) > 8192  # the longest prefix that fits
    assert len(calls) <= 25
    assert max(calls) <= 8192 * tokenizer.max_token_chars


@given(
    n_logs=st.integers(0, 60),
    n_config=st.integers(0, 20),
    budget=st.integers(1, 200),
)
def test_truncation_keeps_the_longest_prefix_that_fits(n_logs, n_config, budget):
    """Binary search agrees with dropping one line at a time from the least important section."""
    record = {
        "task": "t",
        "config": {f"k{i}": i * 1.5 for i in range(n_config)},
        "logs": {f"line{i}": "x" * (i % 7) for i in range(n_logs)},
    }
    text = serialize(record, budget_tokens=budget)
    lines = serialize(record).split("\n")
    fits = [
        k
        for k in range(len(lines) + 1)
        if (k == 0 or not lines[k - 1].startswith("<"))
        and approx_token_count("\n".join(lines[:k])) <= budget
    ]
    if max(fits) > 0:
        assert text == "\n".join(lines[: max(fits)])
    else:  # not even the first line fits: its start, not an empty text
        assert text == "\n".join(lines[:2])[: 4 * budget]


def test_a_first_line_over_the_budget_leaves_its_start_not_an_empty_text():
    """A task name, or a first config field, longer than the whole budget left the text empty,
    and the model predicted from nothing."""
    record = {"task": "t" * 2000, "config": {"a": 1}}
    text = serialize(record, budget_tokens=256)
    assert text == ("<task>\n" + "t" * 2000)[: 4 * 256]
    assert serialize(record, budget_tokens=256, max_chars_per_token=3) == text[: 3 * 256]


def test_serialize_is_deterministic_for_equal_records():
    assert serialize(RECORD, budget_tokens=30) == serialize(dict(RECORD), budget_tokens=30)
    # Keys in sorted order, whatever order they came in.
    record = {"task": "t", "config": {"gamma": 3, "alpha": 1, "beta": 2}}
    assert serialize(record) == "<task>\nt\n<config>\nalpha=1\nbeta=2\ngamma=3"


def test_serialize_is_the_same_in_every_process():
    """Training and serving processes must write the same text: nothing may depend on the
    hash seed (set or hash order)."""
    script = (
        "import json, sys; from regressor.serialize import serialize; "
        "print(json.dumps(serialize(json.loads(sys.argv[1]))))"
    )
    record = {**RECORD, "logs": {f"k{i}": {"x": i, "y": [i, f"v{i}"]} for i in range(40)}}
    texts = {
        subprocess.run(
            [sys.executable, "-c", script, json.dumps(record)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert texts == {json.dumps(serialize(record)) + "\n"}


@given(
    st.lists(st.integers(0, 99), max_size=6),
    st.lists(st.integers(0, 99), max_size=6),
    st.integers(0, 2**32 - 1),
)
def test_shuffled_sections_keep_every_line_under_its_own_header(config, logs, seed):
    record = {
        "task": "cell-a",
        "config": {f"k{i}": v for i, v in enumerate(config)},
        "logs": {f"m{i}": v for i, v in enumerate(logs)},
    }
    text = serialize(record)
    shuffled = shuffle_section_lines(text, np.random.default_rng(seed))

    def sections(t: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        header = ""
        for line in t.split("\n"):
            if line.startswith("<"):
                header = line
            out.setdefault(header, []).append(line)
        return {k: sorted(v) for k, v in out.items()}

    assert sections(shuffled) == sections(text)
    assert shuffled.split("\n")[0] == "<task>"


def test_shuffled_sections_change_the_order_and_repeat_with_the_seed():
    text = serialize({"task": "t", "config": {f"k{i}": i for i in range(8)}})
    orders = {shuffle_section_lines(text, np.random.default_rng(s)) for s in range(5)}
    assert len(orders) > 1
    again = shuffle_section_lines(text, np.random.default_rng(3))
    assert again == shuffle_section_lines(text, np.random.default_rng(3))


def test_a_line_break_in_a_key_stays_inside_its_one_line():
    """Values had their line breaks replaced, keys not: `{"d\\n<logs>\\ne": 2}` wrote a line
    `<logs>` of its own, a fake section that truncation and field shuffling took for one."""
    record = {"task": "t", "period": None, "config": {"a\nb": 1, "d\n<logs>\ne": 2}, "logs": {}}
    assert serialize(record).splitlines() == ["<task>", "t", "<config>", "a b=1", "d <logs> e=2"]
