"""Numeric time-series CSV logs (sar and the like) -> per-window summaries per column.

The sibling of `logs.summarize_logs` for logs that are already tables: one row per sample, a time
column first, then numeric columns. Each kept column gets, per window, mean, p50, p95, max and
`trend` (least-squares slope per hour of elapsed time). Non-numeric columns (interface names) are
dropped. A whole batch of files is summarised in one polars group-by: per-file Python loops over
samples would dominate the ingest time.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import polars as pl

from regressor.sources.common import BadInputError
from regressor.sources.logs import round_sig

# 3: a row whose stamp does not parse is dropped, not the whole file's times; a clock wraps past
#    midnight only on a step back of more than 12 hours; times count from the earliest sample;
#    fractional and AM/PM clocks; a centred trend, None for a column of one time; header names
#    stripped of spaces (`time, %user` matched no `log_columns: ["%user"]`).
SERIES_VERSION = 3
CLOCK_FORMATS = ("%H:%M:%S", "%H:%M:%S%.f", "%I:%M:%S %p")
MIDNIGHT_STEP_S = 12 * 3600  # a clock stepping back further has passed midnight
ROUNDING = 1e-12  # a trend's change over its window below this share of its values is nil
STATS = ("mean", "p50", "p95", "max", "trend")
# The long frame's column-name and value columns: unlike "col" or "value", no log header
# clashes with them (polars refuses an unpivot whose new columns repeat a name).
COL, VALUE = "\0col", "\0value"


def read_series(text: str, columns: Sequence[str] | None) -> pl.DataFrame:
    """One file's samples: `t` (seconds since the first sample) and one Float64 per column."""
    try:
        frame = pl.read_csv(io.StringIO(text), infer_schema=False, truncate_ragged_lines=False)
    except pl.exceptions.PolarsError as exc:
        raise BadInputError(f"not a readable CSV: {str(exc).splitlines()[0]}") from exc
    if frame.height == 0:
        raise BadInputError("no samples after the header")
    names = [name.strip() for name in frame.columns]  # `time, %user`: the values are stripped
    if len(set(names)) == len(names):  # unless two would then share a name
        frame.columns = names
    time_col, *rest = frame.columns
    seconds = elapsed_seconds(frame[time_col])
    if seconds.null_count():  # `Average:`, a repeated header: rows that are no sample
        frame, seconds = frame.filter(seconds.is_not_null()), seconds.drop_nulls()
    wanted = [c for c in (columns or rest) if c in rest and c != "t"]  # `t` is ours
    # `t` in the same select: a log without value columns still has its samples. NaN, and a
    # number beyond float64 (`1e400` reads as infinity), count as missing like text does: one
    # such sample would turn the column's mean, p95, max and trend into nulls.
    numbers = pl.col(wanted).str.strip_chars().cast(pl.Float64, strict=False)
    numeric = frame.select(
        pl.when(numbers.is_finite()).then(numbers),
        pl.lit(seconds).alias("t"),
    )
    return numeric.select(
        [c for c in numeric.columns if c == "t" or numeric[c].null_count() < frame.height]
    )


def elapsed_seconds(stamps: pl.Series) -> pl.Series:
    """Seconds since the earliest sample, from clock times or datetimes, whichever reads more
    stamps; null where a stamp does not parse while others do (sar's `Average:` line, a header
    repeated mid-file), a row `read_series` drops: one such row made the whole file fall back to
    sample indices. The sample index when no stamp parses (one sample per second is the common
    case). A clock wraps past midnight only on a step back of more than 12 hours: a smaller one
    (a stray sample, a DST change) was read as a day passing."""
    stripped = stamps.str.strip_chars()
    clock = stripped.str.to_time(CLOCK_FORMATS[0], strict=False)
    for fmt in CLOCK_FORMATS[1:]:  # only where the common format leaves a stamp unread
        if clock.null_count() == 0:
            break
        other = stripped.str.to_time(fmt, strict=False)
        clock = other if other.null_count() < clock.null_count() else clock
    when = None if clock.null_count() == 0 else datetimes(stamps)  # every stamp read: done
    if clock.null_count() < len(clock) and (
        when is None or clock.null_count() <= when.null_count()
    ):
        secs = clock.cast(pl.Int64) / 1e9
        read = secs.drop_nulls()
        wraps = (read.diff().fill_null(0) < -MIDNIGHT_STEP_S).cum_sum() * 86400.0
        times = pl.Series([None] * len(secs), dtype=pl.Float64)
        times = times.scatter(secs.is_not_null().arg_true(), read + wraps)
        return times - times.min()
    if when is not None and when.null_count() < len(when):
        ms = when.dt.epoch("ms").cast(pl.Float64)
        return (ms - ms.min()) / 1e3
    return pl.Series(range(len(stamps)), dtype=pl.Float64)


def datetimes(stamps: pl.Series) -> pl.Series | None:
    """The stamps as datetimes in the one format polars infers from them, or None when no format
    fits (`1`, `Average:`): polars raises then rather than giving nulls."""
    try:
        return stamps.str.strip_chars().str.to_datetime(strict=False, time_unit="ms")
    except pl.exceptions.PolarsError:
        return None


def summarize_frames(
    frames: Sequence[pl.DataFrame], window_s: int | None = None
) -> list[dict[str, Any]]:
    """One summary per frame: `{"samples", "span_h", "windows": {window: {column: stats}}}`."""
    summaries: list[dict[str, Any]] = [
        {"samples": f.height, "span_h": round_sig(f["t"].max() / 3600.0), "windows": {}}
        for f in frames
    ]
    long = [
        f.unpivot(index=["t"], variable_name=COL, value_name=VALUE).with_columns(
            pl.lit(n, pl.UInt32).alias("file")
        )
        for n, f in enumerate(frames)
        if f.width > 1
    ]
    if not long:
        return summaries
    window = (pl.col("t") // window_s).cast(pl.Int64) if window_s else pl.lit(0, pl.Int64)
    stats = aggregate(pl.concat(long).drop_nulls(VALUE).with_columns(window.alias("w")))
    for row in stats.sort("file", "w", COL).iter_rows(named=True):
        key = f"{row['w'] * window_s}s" if window_s else "all"
        cell = summaries[row["file"]]["windows"].setdefault(key, {})
        cell[row[COL]] = {s: round_sig(row[s]) for s in STATS}
    return summaries


def aggregate(long: pl.DataFrame) -> pl.DataFrame:
    """Per (file, window, column): the stats; trend = cov(t, v) / var(t) in units per hour,
    centred (E[tv] - E[t]E[v] lost a counter near 1e12's slope to rounding), None without two
    distinct times (as the log summary's), 0.0 for a flat column or one whose fitted change
    over the window is below float64's rounding of its values (`ROUNDING`): the centred sums
    leave a residue of ~1e-13 where the slope is nil."""
    t, v = pl.col("t") / 3600.0, pl.col(VALUE)
    dt = t - t.mean()
    var_t = (dt * dt).mean()
    slope = (dt * (v - v.mean())).mean() / var_t
    nil = slope.abs() * (t.max() - t.min()) <= ROUNDING * v.abs().max()
    return long.group_by("file", "w", COL).agg(
        v.mean().alias("mean"),
        v.median().alias("p50"),
        v.quantile(0.95, "linear").alias("p95"),
        v.max().alias("max"),
        pl.when(var_t <= 1e-12)
        .then(None)
        .when((v.n_unique() == 1) | nil)
        .then(0.0)
        .otherwise(slope)
        .alias("trend"),
    )
