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


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Yield `(dotted.path, text)` pairs in sorted-key order; lists index as `path[i]`."""
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            yield from flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple):
        if all(not isinstance(v, Mapping | list | tuple) for v in value):
            yield prefix, "[" + ",".join(format_scalar(v) for v in value) + "]"
        else:
            for i, item in enumerate(value):
                yield from flatten(item, f"{prefix}[{i}]")
    else:
        yield prefix, format_scalar(value)


def section_lines(record: Mapping[str, Any], section: str) -> list[str]:
    value = record.get(section)
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [format_scalar(value)]
    return [f"{path}={text}" for path, text in flatten(value)]


def approx_token_count(text: str) -> int:
    """A cheap upper-bound-ish estimate used when no tokenizer is at hand (~4 chars a token)."""
    return len(text) // 4 + 1


def serialize(
    record: Mapping[str, Any],
    priority: Sequence[str] = DEFAULT_PRIORITY,
    budget_tokens: int | None = None,
    count_tokens: Callable[[str], int] = approx_token_count,
) -> str:
    """Render a record as sectioned text, truncated to `budget_tokens` by section priority.

    Sections appear in `priority` order (the first is the most important). Extra keys of the record
    that `priority` does not name come last, i.e. they are the first to be dropped.
    """
    order = list(priority) + sorted(k for k in record if k not in priority)
    sections = {name: section_lines(record, name) for name in order}
    text = render(sections)
    if budget_tokens is None:
        return text
    for name in reversed(order):  # least important section first
        lines = sections[name]
        while lines and count_tokens(text) > budget_tokens:
            # Drop a large chunk at once when far over budget, then one line at a time.
            excess = count_tokens(text) - budget_tokens
            drop = max(1, min(len(lines), excess // 16))
            del lines[-drop:]
            text = render(sections)
        if count_tokens(text) <= budget_tokens:
            break
    return text


def render(sections: Mapping[str, list[str]]) -> str:
    parts = []
    for name, lines in sections.items():
        if lines:
            parts.append(f"<{name}>\n" + "\n".join(lines))
    return "\n".join(parts)
