"""Decoding and parsing one input file's text, shared by the fleet and runs adapters: UTF-8 with
the first bad byte named, YAML through a safe loader that refuses repeated keys, JSON that refuses
them too, and a parsed mapping brought to what JSON holds as it is (`plain`, `nan_as_text`).

Every refusal is a BadInputError whose reason says what is wrong, and where when the parser
knows; the caller quarantines the file with it.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from regressor.sources.common import BadInputError, load_yaml_limited

YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster
MAX_DEPTH = 100  # nesting levels a document may have; a real config or report has a handful
MERGE_TAG = "tag:yaml.org,2002:merge"
FORMATS = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}


def decode(data: bytes) -> str:
    """UTF-8 text without a byte order mark (Windows editors and Excel write one: it is not part
    of the first line), or BadInputError naming the first bad byte and its line."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BadInputError(
            f"not valid UTF-8 ({exc.reason})", f"byte {exc.start} (line {line})"
        ) from exc


def count_lines(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") else 1)


class UniqueKeyLoader(YAML_LOADER):  # type: ignore[misc, valid-type]
    """A safe YAML loader that refuses repeated mapping keys instead of keeping the last, merges
    `<<: *anchor` keys (the mapping's own keys win, as YAML says), and reports a scalar its
    constructor cannot build (a date `2026-02-30`, an integer of 5000 digits) with its line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # raised by a constructor, without a line
            detail = str(exc).split(";")[0]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {str(node.value)[:40]!r}: {detail}", node.start_mark
            ) from exc

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue  # merged by the base class, before the mapping's own keys
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError as exc:  # `? [a, b]`: a list or mapping as a key
                raise yaml.constructor.ConstructorError(
                    None, None, f"unhashable key {str(key)[:40]}", key_node.start_mark
                ) from exc
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, loader: type = UniqueKeyLoader) -> Any:
    """YAML text through a safe `loader` (alias bombs refused), or BadInputError with the line."""
    try:
        return load_yaml_limited(text, loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "file"
        raise BadInputError(f"not valid YAML: {yaml_problem(exc)}", where) from exc


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's problem, then its context: the first line of its message is the context alone
    ("while scanning a simple key"), without what was wrong ("could not find expected ':'")."""
    problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
    if not problem:
        return str(exc).splitlines()[0]
    return f"{problem} ({context})" if context else problem


def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict, refused on a repeated key (in linear time: a count per
    key took 34 s on a flat object of 40,000 keys)."""
    out = dict(pairs)
    if len(out) < len(pairs):
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise BadInputError(f"duplicate key {repeated!r} in a JSON object")
    return out


def json_int(text: str) -> int:
    """A JSON integer; one Python will not read (over 4300 digits) is an absurd value, said so."""
    try:
        return int(text)
    except ValueError as exc:
        raise BadInputError(f"absurd value: an integer of {len(text)} digits") from exc


def parse_json(text: str) -> Any:
    """JSON text with repeated keys refused, or BadInputError with the line."""
    try:
        return json.loads(text, object_pairs_hook=unique_pairs, parse_int=json_int)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"not valid JSON: {exc.msg}", f"line {exc.lineno}") from exc
    except RecursionError as exc:
        raise BadInputError("refused: JSON nested too deeply") from exc


def parse_mapping(text: str, suffix: str) -> dict[str, Any]:
    """A YAML or JSON document (by `suffix`) that must be a mapping, as `plain` values. A leading
    byte order mark (Windows editors write one) is not content."""
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise BadInputError("empty file")
    kind = FORMATS.get(suffix)
    if kind is None:
        raise BadInputError(f"unsupported format {suffix!r} (expected .yaml, .yml or .json)")
    value = parse_yaml(text) if kind == "YAML" else parse_json(text)
    if not isinstance(value, dict):
        raise BadInputError(f"expected a mapping at the top level, got {type(value).__name__}")
    return plain(value)


def plain(value: Any, depth: int = 0) -> Any:
    """A parsed value as JSON holds it: mapping keys as text (a YAML date or bytes key would
    stop `json.dumps`), values JSON has no type for (dates, bytes) as text, like
    `json.dumps(default=str)`. Nesting past MAX_DEPTH and keys that clash as text are refused."""
    if depth > MAX_DEPTH:
        raise BadInputError(f"refused: nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            text = utf8_text(key) if isinstance(key, str) else key_text(key)
            if text in out:
                raise BadInputError(f"duplicate key {text!r} (keys are compared as text)")
            out[text] = plain(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [plain(item, depth + 1) for item in value]
    if isinstance(value, set | frozenset):  # YAML's `!!set`: its str() order is per process
        return sorted((plain(item, depth + 1) for item in value), key=json.dumps)
    if isinstance(value, str):
        return utf8_text(value)
    if value is None or isinstance(value, int | float):
        return value
    return str(value)


def utf8_text(text: str) -> str:
    """`text`, refused when it holds a lone surrogate: JSON's `"\ud800"` escape decodes to one,
    valid JSON in valid UTF-8, but no UTF-8 can store it, so the whole batch (a polars frame,
    a DuckDB insert) failed on it, the source's good files with it, on every ingest."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        escape = f"\\u{ord(text[exc.start]):04x}"
        raise BadInputError(f"a lone surrogate escape {escape} in a string: not text") from exc
    return text


def key_text(key: Any) -> str:
    """A key as `json.dumps` writes it (1 -> "1", True -> "true"); others (dates) via str."""
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)
    return str(key)


def nan_as_text(value: Any) -> Any:
    """NaN and infinity as the text JSON writers use ("NaN", "Infinity"): standard JSON has no
    such number, so they stay text, as a too-large number in a table cell stays its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, dict):
        return {k: nan_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_as_text(v) for v in value]
    return value


def standard_json(value: Any) -> str:
    """`value` (plain) as standard JSON text: non-finite numbers as text, never NaN/Infinity."""
    return json.dumps(nan_as_text(value), ensure_ascii=False, allow_nan=False)
