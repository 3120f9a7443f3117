"""Generic log summaries: timestamps, levels, templates, numeric fields; real loghub samples."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from regressor.serialize import approx_token_count
from regressor.sources.logs import (
    MAX_LINE_CHARS,
    ShapeCache,
    iso_prefixed,
    parse_lines,
    round_sig,
    shape_expr,
    shaped_lines,
    split_lines,
    stamped_lines,
    summarize_log,
    summarize_logs,
    template_of,
)
from regressor.sources.parsing import decode

pytest_plugins = ("conftest_data",)
LOGHUB_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "loghub_2k"


def test_variable_parts_are_masked():
    a = "2026-01-01T00:00:01 INFO sched: job j001-3fa2c on m-a01-0042 from 10.0.0.7:80 took 12.5 s"
    b = "2026-01-02T11:12:13 INFO sched: job j002-00b1f on m-b07-0001 from 10.2.3.4:9 took 7 s"
    assert template_of(a) == template_of(b) == "sched: job <ID> on <ID> from <IP> took <NUM> s"
    assert template_of("ERROR read /var/lib/x/y.dat failed at 0x7ffe12") == (
        "read <PATH> failed at <HEX>"
    )
    assert template_of("WARN id 38101a0b-2096-447d-96ea-a692162415ae gone") == "id <ID> gone"
    assert template_of("INFO util cpu=0.61 queue=12") == "util cpu=<NUM> queue=<NUM>"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2015-10-18 18:01:47,978 INFO [main] x", datetime(2015, 10, 18, 18, 1, 47)),
        ("2026-01-02T03:04:05.123Z WARN x", datetime(2026, 1, 2, 3, 4, 5)),
        (
            "- 1117838570 2005.06.03 R02 2005-06-03-15.42.50.675872 R02 RAS",
            datetime(2005, 6, 3, 15, 42, 50),
        ),
        ("081109 203615 148 INFO dfs.DataNode: x", datetime(2008, 11, 9, 20, 36, 15)),
        ("17/06/09 20:10:40 INFO spark.SecurityManager: x", datetime(2017, 6, 9, 20, 10, 40)),
        (
            "134681 node-246 unix.hw state_change 1077804742 1 Component",
            datetime(2004, 2, 26, 14, 12, 22),
        ),
        ("no timestamp here", None),
    ],
)
def test_timestamp_formats(line, expected):
    lines = parse_lines([line])
    assert lines["ts"].item() == expected
    assert not lines["template"].item().startswith("<NUM>-")  # the stamp itself was removed


def test_levels_are_found_and_normalised():
    text = "a WARNING x\nb ERR y\nc INFO z\nd nothing\ne INFO w\n"
    assert summarize_log(text)["levels"] == {"ERROR": 1, "INFO": 2, "WARN": 1}


def test_numeric_fields_are_summarised_with_a_trend_per_hour():
    text = "".join(
        f"2026-01-01T{h:02d}:00:00 INFO util cpu={2 * h} tag=v{h} size=3kb\n" for h in range(10)
    )
    s = summarize_log(text)
    assert set(s["values"]) == {"cpu"}  # `size=3kb` and `tag=v1` are not numbers
    cpu = s["values"]["cpu"]
    assert cpu == {"mean": 9.0, "p50": 9.0, "p95": 17.1, "max": 18.0, "trend": 2.0}
    assert s["span_h"] == 9.0
    assert s["lines"] == 10


def test_trend_is_none_without_timestamps():
    s = summarize_log("load=1\nload=3\n")
    assert s["values"]["load"]["trend"] is None
    assert s["span_h"] is None


def test_templates_are_capped_and_ordered_by_count():
    text = "".join(f"event kind{k:02d}x happened\n" * (k + 1) for k in range(5))
    text += "".join(f"other {word}\n" for word in ("alpha", "beta", "gamma"))
    s = summarize_log(text, top_templates=3)
    assert list(s["templates"].items()) == [
        ("event <ID> happened", 15),
        ("other alpha", 1),
        ("other beta", 1),
    ]
    assert s["n_templates"] == 4


def test_rounding_and_json_safety():
    assert round_sig(123456.0) == 123500.0
    assert round_sig(0.000123456) == 0.0001235
    assert round_sig(float("nan")) is None
    assert round_sig(float("inf")) is None
    s = summarize_log("x=1e308 y=-1e308\nx=1e308 y=1e308\n")
    json.dumps(s, allow_nan=False)


def test_a_value_beyond_float64_is_dropped_not_a_null_summary():
    """`x=1e400` reads as infinity; kept, one such value made x's mean, p95, max and trend
    null. Its summary now equals that of the log without those lines."""
    values = ["5", "1e400", "7", "-1e400", "9"]
    lines = [f"2026-01-01T00:00:0{i} INFO a x={v}\n" for i, v in enumerate(values)]
    finite = [line for line, v in zip(lines, values, strict=True) if "e" not in v]
    assert summarize_log("".join(lines))["values"] == summarize_log("".join(finite))["values"]
    assert summarize_log("".join(lines))["values"]["x"]["max"] == 9.0


def test_a_field_of_non_ascii_digits_is_no_sample():
    """The regex engine's digit class matched "３" and "٣", which the Float64 cast refused:
    the whole log, a day's record with it, was quarantined for one user-written note."""
    good = "2026-01-01T10:00:00 INFO latency_ms=12\n" * 5
    odd = "2026-01-01T11:00:00 WARN note: retries=３ n=٣ ok\n"
    summary = summarize_log(good + odd)
    assert set(summary["values"]) == {"latency_ms"}
    assert summary["values"] == summarize_log(good)["values"]


def test_a_number_that_runs_on_past_a_separator_is_no_sample():
    """A value was cut at its first `,`, `-`, `:` or `/` and kept: `bytes=1,234` read 1,
    `day=2026-01-01` 2026 and `at=12:30:05` 12. A separator before a letter or a space still
    ends a field (`a=1,b=2`, `took=12, rows=5`)."""
    line = "2026-01-01T10:00:00 INFO bytes=1,234 day=2026-01-01 at=12:30:05 r=1-5 q=3/4 "
    summary = summarize_log(line + "a=1,b=2 took=12, rows=5 cpu-usage=55 neg=-5 e=1e-3\n")
    assert set(summary["values"]) == {"a", "b", "took", "rows", "cpu-usage", "neg", "e"}
    assert summary["values"]["b"]["mean"] == 2.0
    assert (summary["values"]["neg"]["mean"], summary["values"]["e"]["mean"]) == (-5.0, 0.001)


def test_a_ten_digit_number_is_no_time_in_a_file_stamped_otherwise():
    """An unstamped line's 10-digit number starting with 1 was read as Unix seconds: a
    continuation line `bytes=1234567890 copied` between two lines an hour apart made the
    day span 148,000 hours (2009-02-13). A file stamped only so (HPC's) still reads them."""
    text = (
        "2026-01-01T10:00:00 INFO start\n  bytes=1234567890 copied\n2026-01-01T11:00:00 INFO done\n"
    )
    summary = summarize_log(text)
    assert summary["span_h"] == 1.0
    assert summary["values"]["bytes"]["mean"] == 1.235e9
    hpc = "1077804742 node-1 state ok\n1077808342 node-1 state ok\n"
    assert summarize_log(hpc)["span_h"] == 1.0


def test_batch_equals_one_by_one_and_empty_is_fine():
    texts = ["a=1\nINFO b\n", "", "2026-01-01T00:00:00 ERROR c=2\n\n\n"]
    assert summarize_logs(texts) == [summarize_log(t) for t in texts]
    assert summarize_logs([]) == []
    assert summarize_log("")["lines"] == 0
    assert summarize_logs(texts)[2]["lines"] == 1  # blank lines do not count


def test_a_line_as_long_as_a_dumped_blob_is_summarised_by_its_head():
    """An 8 MB line used to be one 8 MB template in the stored summary (and cost ~50x its size
    to mask); cut to MAX_LINE_CHARS, the summary stays small, and short lines are untouched."""
    short = "2026-01-01T00:00:00 INFO job done dur_s=12\n"
    blob = "2026-01-01T00:00:01 INFO dump " + "k=1 " * 2_000_000 + "\n"
    alone, with_blob = summarize_log(short), summarize_log(short + blob)
    assert with_blob["lines"] == 2
    assert max(len(t) for t in with_blob["templates"]) <= MAX_LINE_CHARS
    assert len(json.dumps(with_blob)) < 3 * MAX_LINE_CHARS
    assert (
        with_blob["templates"]["job done dur_s=<NUM>"] == alone["templates"]["job done dur_s=<NUM>"]
    )
    assert split_lines([short])["text"].to_list() == [short.strip()]
    assert split_lines([blob])["text"].str.len_chars().max() <= MAX_LINE_CHARS
    assert summarize_log("x" * (2 * MAX_LINE_CHARS) + "\n")["lines"] == 1  # one token: kept


def test_a_field_the_cut_runs_through_is_no_sample():
    """Cut at MAX_LINE_CHARS, `dur_s=123456` would read as a sample of 12."""
    head = "2026-01-01T00:00:00 INFO " + "a" * (MAX_LINE_CHARS - 34)
    line = head + " dur_s=123456 wait_s=1\n"
    assert len(head + " dur_s=12") == MAX_LINE_CHARS
    assert "dur_s" not in summarize_log(line)["values"]
    within = head[:-20] + " dur_s=123456\n"  # the same field, the line short enough to keep it
    assert summarize_log(within)["values"]["dur_s"]["max"] == 123500  # 4 significant digits


def test_a_byte_order_mark_is_not_part_of_the_first_line(tiny_fleet, fleet_source):
    """A log saved by a Windows editor starts with U+FEFF: its first line got a template of its
    own. Decoded as ingest decodes, it summarises as the same log without it."""
    raw_dir, _ = tiny_fleet
    data = (raw_dir / fleet_source.root / "logs" / "cell-a02" / "2026-01-03.log").read_bytes()
    assert summarize_log(decode(b"\xef\xbb\xbf" + data)) == summarize_log(decode(data))


def test_a_fleet_day_summary_is_compact(tiny_fleet, fleet_source):
    raw_dir, _ = tiny_fleet
    log = raw_dir / fleet_source.root / "logs" / "cell-a02" / "2026-01-03.log"
    s = summarize_log(log.read_text())
    assert s["lines"] == len(log.read_text().splitlines())
    assert "monitor: util cpu=<NUM> mem=<NUM> queue=<NUM>" in s["templates"]
    assert {"cpu", "mem", "queue", "dur_s", "wait_s"} <= set(s["values"])
    assert approx_token_count(json.dumps(s)) < 400


def loghub_files() -> list[Path]:
    return sorted(LOGHUB_DIR.glob("*/*.log")) if LOGHUB_DIR.is_dir() else []


@pytest.mark.parametrize(
    "path", loghub_files() or [None], ids=lambda p: p.parent.name if p else "absent"
)
def test_loghub_samples_parse_into_good_templates(path):
    if path is None:
        pytest.skip(f"{LOGHUB_DIR} is absent: the loghub 2k samples are not available here")
    lines = parse_lines([path.read_text(encoding="utf-8")])
    assert lines.height == 2000
    assert lines["ts"].null_count() == 0  # every system's timestamp format is recognised
    truth = Path(f"{path}_structured.csv")
    if truth.is_file():  # loghub's hand-made templates: ours should group the same lines
        events = lines.with_columns(pl.read_csv(truth)["EventId"].alias("event"))
        majority = (
            events.group_by("template", "event").len().group_by("template").agg(pl.col("len").max())
        )
        assert majority["len"].sum() / lines.height > 0.95  # a template rarely mixes two events
        assert lines["template"].n_unique() <= 1.5 * events["event"].n_unique()  # nor over-splits
    summary = summarize_log(path.read_text(encoding="utf-8"))
    assert len(summary["templates"]) <= 30
    json.dumps(summary, allow_nan=False)


MIXED_STAMPS = [
    "2026-01-02T03:04:05 INFO a=1 job j001-2c7c7\r\n",  # the sliced prefix (CRLF)
    "2026-01-02 03:04:05 WARN b=2.5e3\n",  # the sliced prefix, space form
    "2026-01-02T03:04:05.250Z ERROR c=3\n",  # fraction and zone: the regex path
    "2026-13-02T03:04:05 INFO bad month 1077804742 d=4\n",  # invalid: later formats decide
    "2026-01-02T03:04:05\n",  # a stamp alone
    "  \t\n",  # blank
    "x 2026-01-02T03:04:05 late stamp e=5\n",
    "081109 203615 148 INFO dfs.DataNode: f=6\n",
    "caf\u00e9=7 2026-01-02T03:04:05 g=8\n",
]


def test_sliced_stamps_equal_the_regex_path():
    texts = ["".join(MIXED_STAMPS), "".join(reversed(MIXED_STAMPS)), ""]
    fast = shaped_lines(texts)
    slow = stamped_lines(split_lines(texts).drop("fold"))
    slow = slow.with_columns(shape_expr(pl.col("message")).alias("shape")).drop("message")
    assert fast.select(slow.columns).equals(slow)
    sliced, rest = iso_prefixed(split_lines(texts))
    assert (sliced.height, rest.height) == (4, 12)  # both paths ran; the blank lines are gone


def test_a_shared_shape_cache_changes_nothing():
    texts = ["".join(MIXED_STAMPS)] + [
        f"2026-01-0{d}T00:00:0{d} INFO n=12{d} on h{d}x\n" for d in range(1, 8)
    ]
    alone = [summarize_log(t) for t in texts]
    for max_shapes in (1_000, 2):  # 2: the cache is cleared on most calls
        cache = ShapeCache(max_shapes)
        assert [summarize_logs([t], cache=cache)[0] for t in texts] == alone
        assert cache.table.height <= max(max_shapes, 20)
