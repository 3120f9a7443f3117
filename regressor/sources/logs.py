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
done on whole batches of files at once with polars; per-line Python would be ~50x slower. Tricks
that keep it near the speed of reading the bytes (see bench/ingest.py):

* the batch is joined, digit-folded (`str.translate`) and split into lines once;
* a line that starts with an ISO stamp and a space (the common case) is stamped by slicing that
  prefix, no regex; the other lines try the formats in order, each only on the lines no earlier
  format matched, so a file in one format pays for one format;
* templates are computed once per distinct *shape* of message (digits 1-9 folded to 0, which no
  mask can tell apart), not once per line, and a `ShapeCache` keeps them across batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

# Bump when the summary changes, so ingest re-summarises files whose bytes did not change.
# 4: lines cut to MAX_LINE_CHARS; a byte order mark no longer part of the first line.
# 5: key=value fields read ASCII digits only (logs quarantined for a "retries=３" are re-read).
# 6: a value running on past a separator (`1,234`, `2026-01-01`, `12:30`) is no sample; keys may
#    hold hyphens (`cpu-usage`); a 10-digit number is no time in a file stamped otherwise.
SUMMARY_VERSION = 6
SIGNIFICANT_DIGITS = 4
# A line's first characters are what is summarised: a dumped blob on one line would otherwise be
# one template as long as itself in the stored summary, and cost ~50x its size to mask.
MAX_LINE_CHARS = 4096

_FRACTION_TZ = r"(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
# (capture regex, strptime format or "epoch"); tried in order, the first that matches a line wins.
TIMESTAMP_FORMATS: tuple[tuple[str, str], ...] = (
    (r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})" + _FRACTION_TZ, "%Y-%m-%d %H:%M:%S"),
    (r"(\d{4}-\d{2}-\d{2}-\d{2}\.\d{2}\.\d{2})(?:\.\d+)?", "%Y-%m-%d-%H.%M.%S"),  # BGL
    (r"^(\d{6} \d{6})\b", "%y%m%d %H%M%S"),  # HDFS
    (r"^(\d{2}/\d{2}/\d{2} \d{2}:\d{2}:\d{2})", "%y/%m/%d %H:%M:%S"),  # Spark
    (r"\b(1\d{9})\b", "epoch"),  # Unix seconds (2001-2033), e.g. HPC
)
# The first format, at the start of a line and followed by a space: its shape (`shape_expr`).
ISO_LEN = 19
ISO_SHAPES = ("0000-00-00T00:00:00 ", "0000-00-00 00:00:00 ")
FOLD_DIGITS = str.maketrans("123456789", "000000000")
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
# ASCII digits: the regex engine's \d also matches "３" or "٣", which the Float64 cast then
# refused, and the whole log was quarantined.
_NUMBER = r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
# A pair ends at one character that cannot continue its number, or at a separator and a digit:
# `1,234`, `2026-01-01`, `12:30:05`, `1-5`, `3/4` are values that are no number, and such a
# pair (`RUN_ON`) is no sample (the regex engine has no lookahead to refuse it in one pattern).
FIELD_RE = r"\b[A-Za-z_][\w.\-]*=" + _NUMBER + r"(?:[,:/\-][0-9]|[^\w.]|$)"
RUN_ON = r"[0-9][,:/\-][0-9]$"


def round_sig(value: float | None, digits: int = SIGNIFICANT_DIGITS) -> float | None:
    """4 significant digits; NaN and infinities become None so the result stays valid JSON."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def split_lines(texts: Sequence[str]) -> pl.DataFrame:
    """One row per non-blank line: row (order), file (index into `texts`), text, and `fold`, the
    text with digits 1-9 folded to 0 (see `shape_expr`), each cut to `MAX_LINE_CHARS`.

    The texts are joined, folded with `str.translate` and split once: ~10x faster than splitting
    per file and folding with a regex per line.
    """
    if not texts:
        texts = [""]  # one blank line, filtered below: the frame keeps its columns
    big = "\n".join(texts)
    files = np.repeat(
        np.arange(len(texts), dtype=np.uint32), [t.count("\n") + 1 for t in texts]
    )  # each text adds its newlines + 1 pieces: the joins add exactly one separator each
    text, fold = pl.Series([big, big.translate(FOLD_DIGITS)], dtype=pl.String).str.split("\n")
    frame = pl.DataFrame(
        {"file": pl.Series(files, dtype=pl.UInt32), "text": text, "fold": fold}
    ).with_row_index("row")
    if "\r" in big:
        frame = frame.with_columns(pl.col("text", "fold").str.strip_chars_end("\r"))
    if (frame["text"].str.len_bytes().max() or 0) > MAX_LINE_CHARS:  # offsets only: no scan
        frame = frame.with_columns(cut_line(pl.col(c)) for c in ("text", "fold"))
    return frame.filter(pl.col("text").str.contains(r"\S"))


def cut_line(line: pl.Expr) -> pl.Expr:
    """`line`'s first `MAX_LINE_CHARS` characters, less the token the cut ran through (unless it
    is the only one: the line stays a line): a field cut mid-number (`dur_s=123456` to
    `dur_s=12`) would be a sample it never was."""
    cut = line.str.head(MAX_LINE_CHARS).str.replace(r"(\s)\S+$", "${1}")
    return pl.when(line.str.len_chars() > MAX_LINE_CHARS).then(cut).otherwise(line)


def _timestamp(line: pl.Expr, pattern: str, fmt: str) -> pl.Expr:
    raw = line.str.extract(pattern, 1)
    if fmt == "epoch":
        return pl.from_epoch(raw.cast(pl.Int64, strict=False), time_unit="s")
    return raw.str.replace("T", " ").str.to_datetime(fmt, strict=False, time_unit="ms")


def stamped_lines(lines: pl.DataFrame, clocked: pl.Series | None = None) -> pl.DataFrame:
    """Add `ts` and `message` (the line without its timestamp): each format is tried only on the
    lines that no earlier format matched, so the common one-format file costs one pass.

    Unix seconds are tried only in files no line of which has a clock stamp (an earlier format,
    or `clocked`, the files already stamped so): there a 10-digit number starting with 1 on an
    unstamped line is a value (`bytes=1234567890`), and was read as a time in 2009."""
    text = pl.col("text")
    parts, rest, held = [], lines, lines.clear()
    stamped = lines.clear()["file"] if clocked is None else clocked
    for pattern, fmt in TIMESTAMP_FORMATS:
        if fmt == "epoch":
            stamped = pl.concat([stamped, *(part["file"] for part in parts)])
            held = rest.filter(pl.col("file").is_in(stamped.implode()))
            rest = rest.filter(~pl.col("file").is_in(stamped.implode()))
        if rest.is_empty():
            break
        rest = rest.with_columns(_timestamp(text, pattern, fmt).cast(pl.Datetime("ms")).alias("ts"))
        hit = rest.filter(pl.col("ts").is_not_null())
        parts.append(hit.with_columns(text.str.replace(pattern, "").alias("message")))
        rest = rest.filter(pl.col("ts").is_null()).drop("ts")
    none = pl.lit(None, pl.Datetime("ms"))
    rest = pl.concat([rest, held.select(rest.columns)]) if held.height else rest
    parts.append(rest.with_columns(none.alias("ts"), text.alias("message")))
    parts = [part for part in parts if part.height] or parts[-1:]
    return parts[0] if len(parts) == 1 else pl.concat(parts).sort("row")


def iso_prefixed(lines: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(lines that start with a valid `YYYY-MM-DD[T ]HH:MM:SS` and a space, with `ts` and `shape`;
    the other lines). For the first kind the first format's leftmost match is that prefix, so
    slicing it off gives exactly what `stamped_lines` would, without a regex."""
    stamp = pl.col("text").str.head(ISO_LEN).str.replace("T", " ", literal=True)
    ts = stamp.str.to_datetime(TIMESTAMP_FORMATS[0][1], strict=False, time_unit="ms")
    head = pl.col("fold").str.head(ISO_LEN + 1)
    lines = lines.with_columns(pl.when(head.is_in(ISO_SHAPES)).then(ts).alias("ts"))
    fast = lines.filter(pl.col("ts").is_not_null())
    fast = fast.with_columns(pl.col("fold").str.slice(ISO_LEN).alias("shape"))
    return fast.drop("fold"), lines.filter(pl.col("ts").is_null()).drop("ts", "fold")


def mask_expr(message: pl.Expr) -> pl.Expr:
    for pattern, token in MASKS:
        message = message.str.replace_all(pattern, token)
    return message.str.replace_all(r"\s+", " ").str.strip_chars()


def shape_expr(message: pl.Expr) -> pl.Expr:
    """Digits 1-9 folded to 0: every mask sees the same digit classes, so a shape has one template
    (the literal 0 of `0x` hex is kept, and 1-9 never start a hex literal)."""
    return message.str.replace_all(r"[1-9]", "0")


def shaped_lines(texts: Sequence[str]) -> pl.DataFrame:
    """Lines of every text with row, file, text, ts (datetime|null), shape (see `shape_expr`).

    The shape keeps the level word (levels have no digits), so level and template are both
    functions of the shape and are computed per distinct shape (`shape_table`).
    """
    fast, rest = iso_prefixed(split_lines(texts))
    if rest.is_empty():
        return fast
    slow = stamped_lines(rest, fast["file"].unique())
    slow = slow.with_columns(shape_expr(pl.col("message")).alias("shape"))
    slow = slow.drop("message").select(fast.columns)
    return slow if fast.is_empty() else pl.concat([fast, slow]).sort("row")


def shape_table(shapes: pl.Series) -> pl.DataFrame:
    """shape -> level (str|null) and template, computed once per distinct shape."""
    unique = shapes.unique().to_frame("shape")
    level = pl.col("shape").str.extract(LEVEL_RE, 1).replace(LEVEL_ALIASES)
    message = pl.col("shape").str.replace(LEVEL_RE + r":?\s*", "")
    template = mask_expr(message).str.head(MAX_LINE_CHARS)  # a mask may be longer than its text
    return unique.with_columns(level.alias("level"), template.alias("template"))


def parse_lines(texts: Sequence[str]) -> pl.DataFrame:
    """Lines of every text with row, file, text, ts (datetime|null), level (str|null), template."""
    lines = shaped_lines(texts)
    table = shape_table(lines["shape"])
    return lines.join(table, on="shape", how="left", maintain_order="left").drop("shape")


def template_of(line: str) -> str:
    """The template of a single line (for tests and debugging)."""
    return parse_lines([line])["template"].item()


def field_values(lines: pl.DataFrame) -> pl.DataFrame:
    """One row per numeric `key=value` occurrence: file, ts, key, value. A value beyond float64
    (`x=1e400` reads as infinity) is dropped like a non-number: one such sample would turn the
    key's mean, p95, max and trend into nulls."""
    pairs = (
        lines.filter(pl.col("text").str.contains("=", literal=True))
        .select("file", "ts", pl.col("text").str.extract_all(FIELD_RE).alias("pair"))
        .explode("pair")
        .drop_nulls("pair")
        .filter(~pl.col("pair").str.contains(RUN_ON))
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
    ).filter(pl.col("value").is_finite())


def trend_expr(all_timed: bool = False) -> pl.Expr:
    """Least-squares slope of value against hours since the file's first stamp, over the timed
    values; None with fewer than two distinct times, exactly 0.0 when those values are flat.
    `all_timed`: every value has a time, so the (then identity) filter is skipped: ~30% faster."""
    h, y = pl.col("ms") / 3.6e6, pl.col("value")
    if not all_timed:
        timed = h.is_not_null()
        h, y = h.filter(timed), y.filter(timed)
    dh = h - h.mean()
    slope = (dh * (y - y.mean())).sum() / (dh * dh).sum()
    return (
        pl.when((h.max() == h.min()).fill_null(True))  # fewer than two distinct times
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
    values = (
        field_values(lines)
        .join(start, on="file", how="left")
        .with_columns((pl.col("ts") - pl.col("t0")).dt.total_milliseconds().alias("ms"))
    )
    all_timed = values["ms"].null_count() == 0
    series = values.group_by("file", "key").agg(
        pl.len().alias("n"),
        value.mean().alias("mean"),
        value.median().alias("p50"),
        value.quantile(0.95, "linear").alias("p95"),
        value.max().alias("max"),
        trend_expr(all_timed).alias("trend"),
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


class ShapeCache:
    """`shape_table` rows kept across batches: a fleet's days share most shapes, so later batches
    mask only the shapes not seen before. Bounded: cleared when it would pass `max_shapes`."""

    def __init__(self, max_shapes: int = 200_000) -> None:
        self.max_shapes = max_shapes
        self.table = shape_table(pl.Series("shape", [], dtype=pl.String))

    def lookup(self, shapes: pl.Series) -> pl.DataFrame:
        """level and template of every distinct shape in `shapes` (and of others seen before)."""
        unique = shapes.unique().to_frame("shape")
        new = unique.join(self.table, on="shape", how="anti")
        if new.height:
            if self.table.height + new.height > self.max_shapes:
                self.table = self.table.clear()
                new = unique
            self.table = pl.concat([self.table, shape_table(new["shape"])])
        return self.table


def shape_counts(lines: pl.DataFrame, cache: ShapeCache | None = None) -> pl.DataFrame:
    """Lines per (file, shape) with each shape's level and template: masks run once per shape."""
    shapes = lines.group_by("file", "shape").len()
    table = (cache or ShapeCache()).lookup(shapes["shape"])
    return shapes.join(table, on="shape")


def summarize_logs(
    texts: Sequence[str],
    top_templates: int = 30,
    max_fields: int = 12,
    cache: ShapeCache | None = None,
) -> list[dict[str, Any]]:
    """One summary dict per text, in order (see the module docstring for the layout); pass the
    same `cache` to successive calls to reuse their templates."""
    lines = shaped_lines(texts)
    summaries: list[dict[str, Any]] = [
        {"lines": 0, "span_h": None, "levels": {}, "n_templates": 0, "templates": {}, "values": {}}
        for _ in texts
    ]
    for row in file_stats(lines).iter_rows(named=True):
        summary = summaries[row["file"]]
        summary["lines"] = row["lines"]
        summary["span_h"] = None if row["span_ms"] is None else round_sig(row["span_ms"] / 3.6e6)
    shapes = shape_counts(lines, cache)
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
