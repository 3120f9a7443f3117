from __future__ import annotations

import hashlib
import json
from datetime import date, timedelta

import polars as pl

from regressor.config import SplitConfig
from regressor.dataset import assign_splits, configuration_of, examples_by_split
from regressor.splits import config_group


def _records(tasks=("a", "b", "c"), days=12) -> pl.DataFrame:
    rows = [
        {
            "record_id": f"s/{t}/{d}",
            "source": "s",
            "task": t,
            "period": date(2026, 1, 1) + timedelta(days=d),
            "config_json": json.dumps({"size": i + 1}),
            "logs_json": json.dumps({"errors": d}),
            "target": float(i * 10 + d),
        }
        for i, t in enumerate(tasks)
        for d in range(days)
    ]
    return pl.DataFrame(rows)


def test_splits_are_disjoint_in_time_and_task():
    labelled = assign_splits(_records(), SplitConfig(test_days=3))
    counts = dict(labelled.group_by("split").len().iter_rows())
    assert counts == {"train": 2 * 8, "val": 2 * 1, "test": 2 * 3, "adapt_pool": 9, "adapt_test": 3}
    train_end = labelled.filter(pl.col("split") == "train")["period"].max()
    assert train_end < labelled.filter(pl.col("split") == "test")["period"].min()
    assert set(labelled.filter(pl.col("split").str.starts_with("adapt"))["task"]) == {"c"}


def test_named_holdout_task():
    labelled = assign_splits(_records(), SplitConfig(test_days=3, holdout_task="a"))
    assert set(labelled.filter(pl.col("split") == "adapt_pool")["task"]) == {"a"}


def test_examples_carry_text_and_targets():
    splits = examples_by_split(_records(), SplitConfig(test_days=3))
    test = splits["test"]
    assert len(test) == 6
    assert all(text.startswith("<task>") for text in test.texts)
    assert "size=" in test.texts[0]
    assert test.targets.dtype.kind == "f"


def test_records_without_periods_split_by_distinct_configuration():
    rows = [
        {
            "record_id": f"t/{c}/{r}",
            "source": "t",
            "task": "job-a" if c % 2 else "job-b",
            "period": None,
            "config_json": json.dumps({"size": c}),
            "logs_json": "{}",
            "target": float(c),
        }
        for c in range(200)
        for r in range(3)  # three repeated runs of every configuration
    ]
    records = pl.DataFrame(rows, schema_overrides={"period": pl.Date})
    labelled = assign_splits(records, SplitConfig(holdout_task="job-b", test_fraction=0.2))
    sides = labelled.group_by("config_json").agg(pl.col("split").n_unique().alias("n"))
    assert sides["n"].max() == 1  # repeats of a configuration never straddle splits
    counts = dict(labelled.group_by("split").len().iter_rows())
    assert 0.1 < counts["test"] / (counts["test"] + counts["train"] + counts["val"]) < 0.3
    assert counts["adapt_pool"] > counts["adapt_test"] > 0
    # The side is a seeded sha256 of the configuration's text, whatever polars' version (its
    # `Expr.hash` is stable within one version only).
    for config_json, side in labelled.select("config_json", "split").unique().iter_rows():
        digest = hashlib.sha256(f"0\x1f{config_json}".encode()).digest()
        in_test = int.from_bytes(digest[:8], "big") % 10_000 / 10_000 < 0.2
        assert in_test == (side in ("test", "adapt_test")), config_json
    # Their examples say so, for the adaptation's cuts (`adaptation.hold_out_gate`).
    pool = examples_by_split(records, SplitConfig(holdout_task="job-b"))["adapt_pool"]
    assert pool.by_configuration
    assert pool.take([0, 1]).by_configuration
    assert not examples_by_split(_records(), SplitConfig(test_days=3))["test"].by_configuration
    # The holdout task's runs all dated, another task's one run not: the source is split by
    # configuration, and so are the holdout task's shots (they were cut by position).
    dated = _records().with_columns(
        pl.when(pl.col("record_id") == "s/a/0")
        .then(None)
        .otherwise(pl.col("period"))
        .alias("period")
    )
    pool = examples_by_split(dated, SplitConfig(holdout_task="c"))["adapt_pool"]
    assert len(pool) > 0
    assert pool.by_configuration


def test_repeated_runs_paired_with_other_reference_runs_stay_on_one_side():
    """A runs source pairs each run with a reference run and writes that run's runtime into the
    config (`reference`): every repetition of a lumos configuration held another one, so each
    was a configuration of its own and its repeats landed on both sides (229 of 306 test
    records had a repeat in training). The configuration leaves the pairing out."""
    rows = [
        {
            "record_id": f"r/{c}/{r}",
            "source": "r",
            "task": "job-a" if c % 2 else "job-b",
            "period": None,
            "config_json": json.dumps(
                {"vm": f"m{c}", "reference": {"vm": "base", "elapsed_time": 100.0 + r}}
            ),
            "logs_json": "{}",
            "target": float(c),
        }
        for c in range(100)
        for r in range(4)
    ]
    records = pl.DataFrame(rows, schema_overrides={"period": pl.Date})
    labelled = assign_splits(records, SplitConfig(holdout_task="job-b", test_fraction=0.3))
    runs = labelled.with_columns(pl.col("record_id").str.split("/").list.get(1).alias("c"))
    assert runs.group_by("c").agg(pl.col("split").n_unique())["split"].max() == 1
    assert set(labelled["split"]) >= {"train", "test", "adapt_pool", "adapt_test"}
    groups = {config_group("job-a", text) for text in records["config_json"][:4]}
    assert len(groups) == 1
    # A config without the pairing is its own text: the sides of existing splits stay.
    assert configuration_of('{"size": 3,  "b": 1}') == '{"size": 3,  "b": 1}'
