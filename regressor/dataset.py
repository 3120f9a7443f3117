"""Warehouse records -> model-ready examples, and the time-based splits the demo evaluates on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

import numpy as np
import polars as pl

from regressor.config import SplitConfig
from regressor.serialize import DEFAULT_PRIORITY, serialize
from regressor.targets import target_scales

SplitName = Literal["train", "val", "test", "adapt_pool", "adapt_test"]
SPLITS: tuple[str, ...] = get_args(SplitName)


@dataclass(frozen=True)
class Examples:
    """Parallel arrays: one text and one target per record.

    `scales` is each record's baseline when the source's target is relative
    (`regressor.targets`): the model learns `model_targets` = targets / scales.
    """

    record_ids: list[str]
    tasks: list[str]
    texts: list[str]
    targets: np.ndarray  # float64 [N]
    config_json: list[str]
    scales: np.ndarray | None = None  # float64 [N]; None: absolute targets
    # Records without periods (tables of configurations, repeated runs): a cut of these keeps
    # each configuration's records on one side (`adaptation.hold_out_gate`), as the splits do.
    by_configuration: bool = False

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def scale_values(self) -> np.ndarray:
        """float64 [N]: the baselines, ones for absolute targets."""
        return np.ones(len(self.texts)) if self.scales is None else self.scales

    @property
    def model_targets(self) -> np.ndarray:
        """What the decoder learns to write: the target, or its ratio to the baseline."""
        return self.targets / self.scale_values

    def take(self, index: Sequence[int] | np.ndarray) -> Examples:
        idx = list(np.asarray(index, dtype=int))
        return Examples(
            record_ids=[self.record_ids[i] for i in idx],
            tasks=[self.tasks[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            targets=self.targets[idx],
            config_json=[self.config_json[i] for i in idx],
            scales=None if self.scales is None else self.scales[idx],
            by_configuration=self.by_configuration,
        )


def record_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A warehouse records row -> the dict `serialize` renders."""
    return {
        "task": row["task"],
        # Tables of configurations have no period: the section is then left out of the text.
        "period": None if row["period"] is None else str(row["period"]),
        "config": json.loads(row["config_json"]),
        "logs": json.loads(row["logs_json"]),
    }


def holdout_task_of(records: pl.DataFrame, split: SplitConfig) -> str:
    tasks = sorted(records["task"].unique().to_list())
    if split.holdout_task is None:
        return tasks[-1]
    if split.holdout_task not in tasks:
        raise ValueError(f"holdout task {split.holdout_task!r} is not among the records' tasks")
    return split.holdout_task


def assign_splits(records: pl.DataFrame, split: SplitConfig) -> pl.DataFrame:
    """Add a `split` column: held-out records are test, one task is kept out for adaptation.

    - test / val: later periods when records have them (`by_time`), else a seeded share of the
      distinct configurations (`by_configuration`);
    - adapt_pool / adapt_test: the holdout task's records outside / inside the test part.
    """
    holdout = holdout_task_of(records, split)
    undated = split_by_configuration(records)
    in_test, in_val = by_configuration(split) if undated else by_time(records, split)
    is_holdout = pl.col("task") == holdout
    return records.with_columns(
        pl.when(is_holdout & in_test)
        .then(pl.lit("adapt_test"))
        .when(is_holdout)
        .then(pl.lit("adapt_pool"))
        .when(in_test)
        .then(pl.lit("test"))
        .when(in_val)
        .then(pl.lit("val"))
        .otherwise(pl.lit("train"))
        .alias("split")
    )


def split_by_configuration(records: pl.DataFrame) -> bool:
    """Whether a source's records are split by configuration: any of them lacks a period."""
    return records["period"].null_count() > 0


def by_time(records: pl.DataFrame, split: SplitConfig) -> tuple[pl.Expr, pl.Expr]:
    """Test: the last `test_days` periods; val: the `test_days // 3` periods just before them."""
    test_start = records["period"].max() - timedelta(days=split.test_days - 1)
    val_start = test_start - timedelta(days=max(1, split.test_days // 3))
    return pl.col("period") >= test_start, pl.col("period") >= val_start


def by_configuration(split: SplitConfig) -> tuple[pl.Expr, pl.Expr]:
    """A seeded hash of the configuration picks its side, the same for all its repeated runs.

    sha256, not polars' `Expr.hash`, which polars keeps stable within one version only: an
    upgrade within the pinned range reshuffled which configurations were test, so a champion
    could be scored on records it trained on."""
    bucket = pl.col("config_json").map_elements(
        lambda text: config_bucket(configuration_of(text), split.seed), return_dtype=pl.Float64
    )
    return bucket < split.test_fraction, bucket < split.test_fraction + split.val_fraction


# The part of a runs source's config that names the reference run a run was paired with
# (`sources.runs.reference_part`): its runtime differs for each repetition of a configuration.
PAIRED_RUN = "reference"


def configuration_of(config_json: str) -> str:
    """A record's configuration, the same text for every run of it: its config without the
    reference run it was paired with. Each repetition of a lumos configuration pairs with
    another reference run and holds that run's runtime, so each was a configuration of its own:
    229 of 306 test records had a repeat of their configuration in training. A config without
    that part is its own text (the sides of existing splits stay)."""
    config = json.loads(config_json)
    if not isinstance(config, dict) or PAIRED_RUN not in config:
        return config_json
    return json.dumps({k: v for k, v in config.items() if k != PAIRED_RUN}, sort_keys=True)


def config_bucket(config_json: str, seed: int) -> float:
    """Where a configuration falls in [0, 1), by a seeded sha256 of its text."""
    digest = hashlib.sha256(f"{seed}\x1f{config_json}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 10_000


def to_examples(
    records: pl.DataFrame,
    priority: Sequence[str] = DEFAULT_PRIORITY,
    budget_tokens: int | None = None,
    relative_to: str | None = None,
    by_configuration: bool | None = None,
) -> Examples:
    """Texts and targets of warehouse records; with `relative_to` (a dotted config path) also
    each record's baseline, a `MissingScaleError` naming the record where it has none.
    `by_configuration`: how the source was split (`assign_splits`); None: from these records."""
    if by_configuration is None:
        by_configuration = split_by_configuration(records)
    rows = records.to_dicts()
    configs = [r["config_json"] for r in rows]
    ids = [r["record_id"] for r in rows]
    return Examples(
        record_ids=ids,
        tasks=[r["task"] for r in rows],
        texts=[serialize(record_from_row(r), priority, budget_tokens) for r in rows],
        targets=records["target"].cast(pl.Float64).to_numpy(),
        config_json=configs,
        scales=None if relative_to is None else target_scales(configs, relative_to, ids),
        by_configuration=by_configuration,
    )


def examples_by_split(
    records: pl.DataFrame,
    split: SplitConfig,
    priority: Sequence[str] = DEFAULT_PRIORITY,
    budget_tokens: int | None = None,
    relative_to: str | None = None,
) -> dict[str, Examples]:
    return examples_of_labelled(assign_splits(records, split), priority, budget_tokens, relative_to)


def examples_of_labelled(
    labelled: pl.DataFrame,
    priority: Sequence[str] = DEFAULT_PRIORITY,
    budget_tokens: int | None = None,
    relative_to: str | None = None,
) -> dict[str, Examples]:
    """Examples per split of records `assign_splits` labelled. A split's records may all have
    periods in a source split by configuration (one task's runs dated, another's not): each
    split is cut as the whole source was."""
    by_configuration = split_by_configuration(labelled)  # as `assign_splits` decided
    return {
        name: to_examples(
            labelled.filter(pl.col("split") == name),
            priority,
            budget_tokens,
            relative_to,
            by_configuration,
        )
        for name in SPLITS
    }
