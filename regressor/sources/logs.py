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
done on whole batches of files at once with polars; per-line Python would be ~50x slower.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

# Bump when the summary changes, so ingest re-summarises files whose bytes did not change.
SUMMARY_VERSION = 1
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
NUMBER_AFTER_EQ = "=(" + _NUMBER + ")"


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


def timestamp_expr(line: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(timestamp, index of the format that matched) for each line; null when none matched."""
    stamps = [_timestamp(line, pat, fmt) for pat, fmt in TIMESTAMP_FORMATS]
    which = pl.coalesce(
        [pl.when(ts.is_not_null()).then(pl.lit(i, pl.Int8)) for i, ts in enumerate(stamps)]
    )
    return pl.coalesce(stamps).alias("ts"), which.alias("fmt")


def message_expr(line: pl.Expr, fmt: pl.Expr) -> pl.Expr:
    """The line without its timestamp (the matched format only) and its first level word."""
    stripped = pl.when(fmt.is_null()).then(line)
    for i, (pattern, _) in enumerate(TIMESTAMP_FORMATS):
        stripped = stripped.when(fmt == i).then(line.str.replace(pattern, ""))
    return stripped.otherwise(line).str.replace(LEVEL_RE + r":?\s*", "")


def mask_expr(message: pl.Expr) -> pl.Expr:
    for pattern, token in MASKS:
        message = message.str.replace_all(pattern, token)
    return message.str.replace_all(r"\s+", " ").str.strip_chars()


def parse_lines(texts: Sequence[str]) -> pl.DataFrame:
    """Lines of every text with file, line, text, ts (datetime|null), level (str|null), template."""
    lines = split_lines(texts)
    ts, fmt = timestamp_expr(pl.col("text"))
    level = pl.col("text").str.extract(LEVEL_RE, 1)
    return (
        lines.with_columns(ts, fmt, level.replace(LEVEL_ALIASES).alias("level"))
        .with_columns(mask_expr(message_expr(pl.col("text"), pl.col("fmt"))).alias("template"))
        .drop("fmt")
    )


def template_of(line: str) -> str:
    """The template of a single line (for tests and debugging)."""
    return parse_lines([line])["template"].item()


def field_values(lines: pl.DataFrame) -> pl.DataFrame:
    """One row per numeric `key=value` occurrence: file, ts, key, value."""
    pairs = (
        lines.select("file", "ts", pl.col("text").str.extract_all(FIELD_RE).alias("pair"))
        .explode("pair")
        .drop_nulls("pair")
    )
    return pairs.select(
        "file",
        "ts",
        pl.col("pair").str.extract(r"^([^=]+)=", 1).alias("key"),
        pl.col("pair").str.extract(NUMBER_AFTER_EQ, 1).cast(pl.Float64).alias("value"),
    )


def field_series(lines: pl.DataFrame, max_fields: int) -> pl.DataFrame:
    """Per (file, key): n, the values in line order, and their ms since the file's first stamp."""
    start = lines.group_by("file").agg(pl.col("ts").min().alias("t0"))
    series = (
        field_values(lines)
        .join(start, on="file", how="left")
        .with_columns((pl.col("ts") - pl.col("t0")).dt.total_milliseconds().alias("ms"))
        .group_by("file", "key")
        .agg(pl.len().alias("n"), pl.col("ms"), pl.col("value"))
    )
    return top_per_file(series, "n", "key", max_fields)


def series_summary(ms: list[int | None], values: list[float]) -> dict[str, float | None]:
    """mean, p50, p95, max and trend (slope per hour) of one series.

    Computed per series with numpy rather than in a polars group-by, so a file's numbers never
    depend on which other files shared its batch (float sums in different orders can round a
    4-digit result differently).
    """
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # huge values: inf, reported as None
        stats = {
            "mean": v.mean(),
            "p50": np.median(v),
            "p95": np.percentile(v, 95),
            "max": v.max(),
            "trend": slope_per_hour(ms, v),
        }
    return {k: round_sig(None if x is None else float(x)) for k, x in stats.items()}


def slope_per_hour(ms: list[int | None], v: np.ndarray) -> float | None:
    timed = np.array([t is not None for t in ms])
    hours = np.array([t for t in ms if t is not None], dtype=np.float64) / 3.6e6
    y = v[timed]
    if np.unique(hours).size < 2:
        return None
    if np.ptp(y) == 0:
        return 0.0  # exactly flat; the formula would leave rounding dust
    dh = hours - hours.mean()
    return float(dh @ (y - y.mean()) / (dh @ dh))


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
        pl.col("template").n_unique().alias("n_templates"),
    )


def summarize_logs(
    texts: Sequence[str], top_templates: int = 30, max_fields: int = 12
) -> list[dict[str, Any]]:
    """One summary dict per text, in order (see the module docstring for the layout)."""
    lines = parse_lines(texts)
    summaries: list[dict[str, Any]] = [
        {"lines": 0, "span_h": None, "levels": {}, "n_templates": 0, "templates": {}, "values": {}}
        for _ in texts
    ]
    for row in file_stats(lines).iter_rows(named=True):
        summary = summaries[row["file"]]
        summary.update(lines=row["lines"], n_templates=row["n_templates"])
        summary["span_h"] = None if row["span_ms"] is None else round_sig(row["span_ms"] / 3.6e6)
    levels = lines.drop_nulls("level").group_by("file", "level").len().sort("file", "level")
    for file, level, n in levels.iter_rows():
        summaries[file]["levels"][level] = n
    templates = top_per_file(
        lines.group_by("file", "template").len(), "len", "template", top_templates
    )
    for file, template, n in templates.iter_rows():
        summaries[file]["templates"][template] = n
    for file, key, _, ms, values in field_series(lines, max_fields).sort("file", "key").iter_rows():
        summaries[file]["values"][key] = series_summary(ms, values)
    return summaries


def summarize_log(text: str, top_templates: int = 30, max_fields: int = 12) -> dict[str, Any]:
    return summarize_logs([text], top_templates, max_fields)[0]
