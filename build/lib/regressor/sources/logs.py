"""Generic log text -> a compact, JSON-serialisable summary (not tied to any one log format).

Per line: a timestamp (the first of several common formats that matches), a level, and a template:
the message with the timestamp and level removed and variable parts masked (`<IP>`, `<PATH>`,
`<HEX>`, `<ID>`, `<NUM>`). Per file (one window for now):

* `lines`: non-blank lines; `span_h`: hours from the first to the last timestamp (None if < 2);
* `levels`: lines per level (lines without a level are not counted here);
* `templates`: the `top_templates` most frequent templates with their line counts, most frequent
  first, and `n_templates`: how many distinct templates the file had;
* `values`: every numeric `key=value` series (the `max_fields` most frequent keys) summarised as
  mean, p50, p95, max and `trend`, the least-squares slope of the value against the line's time in
  units per hour (None when the series has fewer than two distinct timestamps).
  (Named `values` so that, in sorted-key text, template counts come first and survive truncation.)

Floats are rounded to 4 significant digits so a day of logs costs a few hundred tokens. The work is
done on whole batches of files at once with polars; per-line Python would be ~50x slower. Two tricks
keep it near the speed of reading the bytes (see bench/ingest.py):

* timestamp formats are tried in order on the lines no earlier format matched (not every format on
  every line), so a file in one format pays for one format;
* templates are computed once per distinct *shape* of message (digits 1-9 folded to 0, which no
  mask can tell apart), not once per line: a day's thousands of lines have a few dozen shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import polars as pl

# Bump when the summary changes, so ingest re-summarises files whose bytes did not change.
SUMMARY_VERSION = 2
SIGNIFICANT_DIGITS = 4

_FRACTION_TZ = r"(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
# (capture regex, strptime format or "epoch"); tried in order, the first that matches a line wins.
TIMESTAMP_FORMATS: tuple[tuple[str, str], ...] = (
    (r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})" + _FRACTION_TZ, "%Y-%m-%d %H:%M:%S"),
    (r"(\d{4}-\d{2}-\d{2}-\d{2}\.\d{2}\.\d{2})(?:\.\d+)?", "%Y-%m-%d-%H.%M.%S"),  # BGL
    (r"^(\d{6} \d{6})\b", "%y%m%d %H%M%S"),  # HDFS
    (r"^(\d{2}/\d{2}/\d{2} \d{2}:\d{2}:\d{2})", "%y/%m/%d %H:%M:%S"),  # Spark
    (r"\b(1\d{9})\b", "epoch"),  # Unix seconds (2001-2033), e.g. HPC
)
LEVEL_RE = r"\b(TRACE|DEBUG|INFO|NOTICE|WARNING|WARN|ERROR|ERR|SEVERE|FATAL|CRITICAL|CRIT)\b"
LEVEL_ALIASES = {"WARNING": "WARN", "ERR": "ERROR", "SEVERE": "ERROR", "CRIT": "CRITICAL"}
# Masks applied in order: specific shapes first (an IP is not four numbers), then any token mixing
# letters and digits (ids, hosts, hex hashes, UUIDs) is one <ID>, then the remaining numbers.
MASKS: tuple[tuple[str, str], ...] = (
    (r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<IP>"),
    (r"(?:/[\w.\-]+){2,}/?", "<PATH>"),
    (r"\b0[xX][0-9a-fA-F]+\b", "<HEX>"),
    (r"\b[A-Za-z_][\w\-:.]*\d[\w\-:.]*|\b\d[\w\-:.]*[A-Za-z_][\w\-:.]*", "<ID>"),
    (r"-?\b\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b", "<NUM>"),
)
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
FIELD_RE = r"\b[A-Za-z_][\w.]*=" + _NUMBER + r"(?:[^\w.]|$)"


def round_sig(value: float | None, digits: int = SIGNIFICANT_DIGITS) -> float | None:
    """4 significant digits; NaN and infinities become None so the result stays valid JSON."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def split_lines(texts: Sequence[str]) -> pl.DataFrame:
    """One row per non-blank line: file (index into `texts`), line (1-based), text."""
    frame = pl.DataFrame(
        {
            "file": pl.Series(range(len(texts)), dtype=pl.UInt32),
            "text": pl.Series(texts, dtype=pl.String),
        }
    )
    return (
        frame.with_columns(pl.col("text").str.split("\n"))
        .explode("text")
        .with_columns(
            pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).over("file").alias("line"),
            pl.col("text").str.strip_chars_end("\r"),
        )
        .filter(pl.col("text").str.strip_chars() != "")
    )


def _timestamp(line: pl.Expr, pattern: str, fmt: str) -> pl.Expr:
    raw = line.str.extract(pattern, 1)
    if fmt == "epoch":
        return pl.from_epoch(raw.cast(pl.Int64, strict=False), time_unit="s")
    return raw.str.replace("T", " ").str.to_datetime(fmt, strict=False, time_unit="ms")


def stamped_lines(lines: pl.DataFrame) -> pl.DataFrame:
    """Add `ts` and `message` (the line without its timestamp): each format is tried only on the
    lines that no earlier format matched, so the common one-format file costs one pass."""
    text = pl.col("text")
    parts, rest = [], lines
    for pattern, fmt in TIMESTAMP_FORMATS:
        if rest.is_empty():
            break
        rest = rest.with_columns(_timestamp(text, pattern, fmt).cast(pl.Datetime("ms")).alias("ts"))
        hit = rest.filter(pl.col("ts").is_not_null())
        parts.append(hit.with_columns(text.str.replace(pattern, "").alias("message")))
        rest = rest.filter(pl.col("ts").is_null()).drop("ts")
    none = pl.lit(None, pl.Datetime("ms"))
    parts.append(rest.with_columns(none.alias("ts"), text.alias("message")))
    parts = [part for part in parts if part.height] or parts[-1:]
    return parts[0] if len(parts) == 1 else pl.concat(parts).sort("file", "line")


def mask_expr(message: pl.Expr) -> pl.Expr:
    for pattern, token in MASKS:
        message = message.str.replace_all(pattern, token)
    return message.str.replace_all(r"\s+", " ").str.strip_chars()


def shape_expr(message: pl.Expr) -> pl.Expr:
    """Digits 1-9 folded to 0: every mask sees the same digit classes, so a shape has one template
    (the literal 0 of `0x` hex is kept, and 1-9 never start a hex literal)."""
    return message.str.replace_all(r"[1-9]", "0")


def shaped_lines(texts: Sequence[str]) -> pl.DataFrame:
    """Lines of every text with file, line, text, ts (datetime|null), shape (see `shape_expr`).

    The shape keeps the level word (levels have no digits), so level and template are both
    functions of the shape and are computed per distinct shape (`shape_table`).
    """
    lines = stamped_lines(split_lines(texts))
    return lines.with_columns(shape_expr(pl.col("message")).alias("shape")).drop("message")


def shape_table(shapes: pl.Series) -> pl.DataFrame:
    """shape -> level (str|null) and template, computed once per distinct shape."""
    unique = shapes.unique().to_frame("shape")
    level = pl.col("shape").str.extract(LEVEL_RE, 1).replace(LEVEL_ALIASES)
    message = pl.col("shape").str.replace(LEVEL_RE + r":?\s*", "")
    return unique.with_columns(level.alias("level"), mask_expr(message).alias("template"))


def parse_lines(texts: Sequence[str]) -> pl.DataFrame:
    """Lines of every text with file, line, text, ts (datetime|null), level (str|null), template."""
    lines = shaped_lines(texts)
    table = shape_table(lines["shape"])
    return lines.join(table, on="shape", how="left", maintain_order="left").drop("shape")


def template_of(line: str) -> str:
    """The template of a single line (for tests and debugging)."""
    return parse_lines([line])["template"].item()


def field_values(lines: pl.DataFrame) -> pl.DataFrame:
    """One row per numeric `key=value` occurrence: file, ts, key, value."""
    pairs = (
        lines.filter(pl.col("text").str.contains("=", literal=True))
        .select("file", "ts", pl.col("text").str.extract_all(FIELD_RE).alias("pair"))
        .explode("pair")
        .drop_nulls("pair")
    )
    # A pair is `key=<number>` plus at most one non-word character: split at the first '=' and
    # drop that character when the text does not end in a digit (cheaper than two regexes).
    split = pl.col("pair").str.split_exact("=", 1)
    raw = split.struct.field("field_1")
    ends_in_digit = raw.str.slice(-1).is_in(list("0123456789"))
    number = pl.when(ends_in_digit).then(raw).otherwise(raw.str.head(-1))
    return pairs.select(
        "file",
        "ts",
        split.struct.field("field_0").alias("key"),
        number.cast(pl.Float64).alias("value"),
    )


def trend_expr() -> pl.Expr:
    """Least-squares slope of value against hours since the file's first stamp, over the timed
    values; None with fewer than two distinct times, exactly 0.0 when those values are flat."""
    hours = pl.col("ms") / 3.6e6
    timed = hours.is_not_null()
    h, y = hours.filter(timed), pl.col("value").filter(timed)
    dh = h - h.mean()
    slope = (dh * (y - y.mean())).sum() / (dh * dh).sum()
    return (
        pl.when(h.n_unique() < 2)
        .then(None)
        .when((y.max() - y.min()) == 0)
        .then(0.0)
        .otherwise(slope)
    )


def field_series(lines: pl.DataFrame, max_fields: int) -> pl.DataFrame:
    """Per (file, key) of the `max_fields` most frequent keys: n, mean, p50, p95, max, trend.

    One group-by for the whole batch; a group's statistics depend only on its own values in line
    order, so a file's summary is the same whichever files share its batch.
    """
    start = lines.group_by("file").agg(pl.col("ts").min().alias("t0"))
    value = pl.col("value")
    series = (
        field_values(lines)
        .join(start, on="file", how="left")
        .with_columns((pl.col("ts") - pl.col("t0")).dt.total_milliseconds().alias("ms"))
        .group_by("file", "key")
        .agg(
            pl.len().alias("n"),
            value.mean().alias("mean"),
            value.median().alias("p50"),
            value.quantile(0.95, "linear").alias("p95"),
            value.max().alias("max"),
            trend_expr().alias("trend"),
        )
    )
    return top_per_file(series, "n", "key", max_fields)


def top_per_file(frame: pl.DataFrame, count: str, name: str, k: int) -> pl.DataFrame:
    """The k rows with the largest `count` per file, ties broken by `name` for stable output."""
    return (
        frame.sort(["file", count, name], descending=[False, True, False])
        .group_by("file", maintain_order=True)
        .head(k)
    )


def file_stats(lines: pl.DataFrame) -> pl.DataFrame:
    span_ms = (pl.col("ts").max() - pl.col("ts").min()).dt.total_milliseconds()  # exact integers
    return lines.group_by("file").agg(
        pl.len().alias("lines"),
        pl.when(pl.col("ts").drop_nulls().n_unique() > 1).then(span_ms).alias("span_ms"),
    )


def shape_counts(lines: pl.DataFrame) -> pl.DataFrame:
    """Lines per (file, shape) with each shape's level and template: masks run once per shape."""
    shapes = lines.group_by("file", "shape").len()
    return shapes.join(shape_table(shapes["shape"]), on="shape")


def summarize_logs(
    texts: Sequence[str], top_templates: int = 30, max_fields: int = 12
) -> list[dict[str, Any]]:
    """One summary dict per text, in order (see the module docstring for the layout)."""
    lines = shaped_lines(texts)
    summaries: list[dict[str, Any]] = [
        {"lines": 0, "span_h": None, "levels": {}, "n_templates": 0, "templates": {}, "values": {}}
        for _ in texts
    ]
    for row in file_stats(lines).iter_rows(named=True):
        summary = summaries[row["file"]]
        summary["lines"] = row["lines"]
        summary["span_h"] = None if row["span_ms"] is None else round_sig(row["span_ms"] / 3.6e6)
    shapes = shape_counts(lines)
    levels = shapes.drop_nulls("level").group_by("file", "level").agg(pl.col("len").sum())
    for file, level, n in levels.sort("file", "level").iter_rows():
        summaries[file]["levels"][level] = n
    counts = shapes.group_by("file", "template").agg(pl.col("len").sum())
    for file, n in counts.group_by("file").len().iter_rows():
        summaries[file]["n_templates"] = n
    for file, template, n in top_per_file(counts, "len", "template", top_templates).iter_rows():
        summaries[file]["templates"][template] = n
    stats = ("mean", "p50", "p95", "max", "trend")
    for row in field_series(lines, max_fields).sort("file", "key").iter_rows(named=True):
        summaries[row["file"]]["values"][row["key"]] = {k: round_sig(row[k]) for k in stats}
    return summaries


def summarize_log(text: str, top_templates: int = 30, max_fields: int = 12) -> dict[str, Any]:
    return summarize_logs([text], top_templates, max_fields)[0]
