"""Record -> text: the model's whole view of a system state.

A record is `{"task": str, "period": str, "config": dict, "logs": dict}`. The text is
deterministic (same record, same text): keys are sorted, nested mappings are flattened to dotted
paths, numbers are written compactly, and each part sits under a section marker. When the text
exceeds a token budget, whole lines are dropped from the end of the least important section first,
so the most important fields survive truncation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_PRIORITY = ("task", "period", "config", "logs")
SIGNIFICANT_DIGITS = 4


def format_number(value: float | int) -> str:
    """Compact, stable number text: ints as is, floats to 4 significant digits."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.{SIGNIFICANT_DIGITS}g}"
    if math.isinf(float(text)):  # rounding up past float64's largest value
        text = repr(value)
    return text.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def format_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool | int | float):
        return format_number(value)
    # Newlines would break the one-field-per-line layout that truncation relies on.
    return str(value).replace("\n", " ")


def flatten(
    value: Any, prefix: str = "", scalar: Callable[[Any], Any] = format_scalar
) -> Iterator[tuple[str, Any]]:
    """Yield `(dotted.path, text)` pairs in sorted-key order; lists index as `path[i]`, a list
    of scalars is one text field. `scalar` writes a lone scalar (the tabular peers keep
    numbers exact and nulls missing)."""
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            yield from flatten(value[key], f"{prefix}.{key}" if prefix else str(key), scalar)
    elif isinstance(value, list | tuple):
        if all(not isinstance(v, Mapping | list | tuple) for v in value):
            yield prefix, "[" + ",".join(format_scalar(v) for v in value) + "]"
        else:
            for i, item in enumerate(value):
                yield from flatten(item, f"{prefix}[{i}]", scalar)
    else:
        yield prefix, scalar(value)


def section_lines(record: Mapping[str, Any], section: str) -> list[str]:
    value = record.get(section)
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [format_scalar(value)]
    # A key's line break is a space, as a value's is (`format_scalar`): a key `"d\n<logs>"`
    # wrote a section marker of its own into the text.
    return [f"{path.replace(chr(10), ' ')}={text}" for path, text in flatten(value)]


APPROX_CHARS_PER_TOKEN = 4


def approx_token_count(text: str) -> int:
    """A cheap upper-bound-ish estimate used when no tokenizer is at hand (~4 chars a token)."""
    return len(text) // APPROX_CHARS_PER_TOKEN + 1


def serialize(
    record: Mapping[str, Any],
    priority: Sequence[str] = DEFAULT_PRIORITY,
    budget_tokens: int | None = None,
    count_tokens: Callable[[str], int] = approx_token_count,
    max_chars_per_token: int | None = None,
) -> str:
    """Render a record as sectioned text, truncated to `budget_tokens` by section priority.

    Sections appear in `priority` order (the first is the most important). Extra keys of the record
    that `priority` does not name come last, i.e. they are the first to be dropped.

    `count_tokens` may be the real tokenizer's (`InputTokenizer.count_tokens`); it is called
    O(log lines) times. `max_chars_per_token` (`InputTokenizer.max_token_chars`) bounds how much
    text can possibly fit, so a huge record is never tokenized whole.
    """
    order = list(priority) + sorted(k for k in record if k not in priority)
    lines, cuts = render_lines({name: section_lines(record, name) for name in order})
    if budget_tokens is None:
        return "\n".join(lines)
    return truncate(lines, cuts, budget_tokens, count_tokens, max_chars_per_token)


def render_lines(sections: Mapping[str, list[str]]) -> tuple[list[str], list[int]]:
    """The text's lines, and the line counts where it may be cut (never right after a header).

    Sections are rendered most important first and each drops its own lines from the end, so
    every truncation the priority allows is a prefix of these lines: truncation is choosing a cut.
    """
    lines, cuts = [], [0]
    for name, body in sections.items():
        if body:
            lines.append(f"<{name}>")
            for line in body:
                lines.append(line)
                cuts.append(len(lines))
    return lines, cuts


def truncate(
    lines: list[str],
    cuts: list[int],
    budget_tokens: int,
    count_tokens: Callable[[str], int],
    max_chars_per_token: int | None = None,
) -> str:
    """The longest allowed prefix of `lines` within the budget, by binary search over `cuts`.

    Assumes a longer prefix never has fewer tokens (true of BPE and of the approximation).
    When not even the first line fits, its start: the text was empty, and the model predicted
    from nothing (the tokenizer cuts inside that line to the budget, `vocab.line_cut`).
    """
    ends = np.cumsum([len(line) + 1 for line in lines])  # chars of each prefix, with its "\n"
    hi = len(cuts) - 1
    if max_chars_per_token is not None:  # a prefix longer than this is surely over budget
        fits = [c == 0 or ends[c - 1] - 1 <= budget_tokens * max_chars_per_token for c in cuts]
        hi = int(np.flatnonzero(fits)[-1])

    def text(i: int) -> str:
        return "\n".join(lines[: cuts[i]])

    if hi > 0 and count_tokens(text(hi)) <= budget_tokens:  # the common case: one call
        return text(hi)
    lo, hi = 0, hi - 1  # invariant: cuts[lo] fits (the empty text does), cuts[hi + 1] does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(text(mid)) <= budget_tokens:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0 and len(cuts) > 1:
        return text(1)[: budget_tokens * (max_chars_per_token or APPROX_CHARS_PER_TOKEN)]
    return text(lo)


def render(sections: Mapping[str, list[str]]) -> str:
    return "\n".join(render_lines(sections)[0])


def shuffle_section_lines(text: str, rng: np.random.Generator) -> str:
    """The same text with the field lines of each section in a random order (headers stay).

    Training augmentation (`TrainConfig.shuffle_fields`): the order of a section's fields is
    an artefact of sorting keys, so the model should read what a line says, not where it sits;
    every epoch then shows each record in a new order, which a small dataset needs more than
    another pass over the same text.
    """
    out: list[str] = []
    block: list[str] = []
    for line in [*text.split("\n"), "<>"]:  # a sentinel header flushes the last section
        if line.startswith("<") and line.endswith(">"):
            out += [block[i] for i in rng.permutation(len(block))]
            block = []
            out.append(line)
        else:
            block.append(line)
    return "\n".join(out[:-1])
