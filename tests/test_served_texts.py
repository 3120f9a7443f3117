"""A registered model is scored and adapted on texts as it serves them (`pipeline.served_by`),
not as the current configs would write them: an older champion or a base of another size may
have been trained with another section order, token budget or target baseline."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, timedelta
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
import torch

from regressor import pipeline, registry
from regressor.config import (
    AdaptConfig,
    AppConfig,
    CodecConfig,
    EvalConfig,
    ResolvedPaths,
    SplitConfig,
    load_model_config,
)
from regressor.dataset import assign_splits, examples_of_labelled, record_from_row
from regressor.predictor import Predictor
from regressor.targets import MissingScaleError
from regressor.tracking import configure_mlflow
from regressor.vocab import InputTokenizer

CONFIGURED = ("task", "period", "config", "logs")  # the source's order today
SPLIT = SplitConfig(test_days=3, holdout_task="cell-z")


def _records() -> pl.DataFrame:
    """Two tasks over 24 days; the logs are long enough for a 64-token budget to cut."""
    rows = [
        {
            "record_id": f"s/{task}/{day}",
            "source": "s",
            "task": task,
            "period": date(2026, 1, 1) + timedelta(days=day),
            "config_json": json.dumps({"threads": day % 5, "ref": 1.0 + day % 3}),
            "logs_json": json.dumps({"lines": [f"gc pause {day * i} ms" for i in range(40)]}),
            "target": 0.2 + 0.03 * (day % 5) + 0.1 * i,
        }
        for i, task in enumerate(("cell-a", "cell-z"))
        for day in range(24)
    ]
    return pl.DataFrame(rows)


def _dataset(budget: int | None = None, priority: tuple[str, ...] = CONFIGURED) -> pipeline.Dataset:
    """What `load_dataset` builds from `_records` with the `priority` order and `budget`."""
    records = _records()
    labelled = assign_splits(records, SPLIT)
    return pipeline.Dataset(
        examples_of_labelled(labelled, priority, budget),
        "cell-z",
        "hash-1",
        record_from_row(records.row(0, named=True)),
        section_priority=priority,
        budget_tokens=budget,
        labelled=labelled,
    )


def _model(priority: tuple[str, ...], relative_to: str | None = None) -> Predictor:
    """An untrained tiny model that reads `priority` first and cuts at 64 tokens."""
    texts = _dataset().splits["train"].texts
    torch.manual_seed(0)
    predictor = Predictor.create(
        load_model_config("tiny").model_copy(update={"max_input_tokens": 64}),
        CodecConfig(exponent_min=-3, exponent_max=3),
        InputTokenizer.train(texts, 300),
        priority,
        relative_to,
    )
    predictor.model.eval()
    return predictor


def _texts_it_serves(predictor: Predictor, data: pipeline.Dataset, split: str) -> list[str]:
    assert data.labelled is not None
    rows = data.labelled.filter(pl.col("split") == split).to_dicts()
    return [predictor.text_of(record_from_row(row)) for row in rows]


@pytest.fixture(scope="module")
def logs_first() -> Predictor:
    return _model(("logs", "config", "task", "period"))


def test_a_model_of_another_order_and_budget_gets_the_texts_it_serves(logs_first: Predictor):
    data = _dataset()
    served = pipeline.served_by(data, logs_first)
    for split in ("train", "test", "adapt_pool", "adapt_test"):
        expected = _texts_it_serves(logs_first, data, split)
        assert served.splits[split].texts == expected
        assert served.splits[split].record_ids == data.splits[split].record_ids
    assert served.splits["test"].texts != data.splits["test"].texts
    assert (served.section_priority, served.budget_tokens) == (logs_first.priority, 64)


def test_texts_are_made_once_when_the_model_reads_them_as_configured():
    data = _dataset(budget=64)
    configured = _model(CONFIGURED)
    assert pipeline.served_by(data, configured) is data
    texts_only = pipeline.Dataset(data.splits, "cell-z", "hash-1", {})  # no records to redo
    assert pipeline.served_by(texts_only, _model(("logs",))) is texts_only


def test_a_model_with_a_target_baseline_gets_the_scales_it_serves_with():
    data = _dataset(budget=64)
    relative = _model(CONFIGURED, relative_to="ref")
    served = pipeline.served_by(data, relative)
    test = served.splits["test"]
    expected = [relative.scale_of(record_from_row(r)) for r in data.labelled.to_dicts()]
    ids = list(data.labelled["record_id"])
    assert test.scales is not None
    assert data.splits["test"].scales is None
    assert list(test.scales) == [expected[ids.index(i)] for i in test.record_ids]
    assert served.relative_to == "ref"


def _register(predictor: Predictor, tmp_path: Path) -> ResolvedPaths:
    paths = ResolvedPaths(var_dir=tmp_path)
    configure_mlflow(paths, "served-texts")
    example = registry.input_example(record_from_row(_records().row(0, named=True)))
    with mlflow.start_run():
        registry.log_and_register(predictor.save(tmp_path / "bundle"), "textperf", example, {})
    return paths


def test_a_registered_model_is_scored_on_the_texts_it_serves(logs_first, tmp_path: Path):
    """A champion faced at the gate, or the evaluate flow, with an older section order."""
    data, cfg = _dataset(budget=256), EvalConfig(num_samples=8)
    try:
        _register(logs_first, tmp_path)
        scored = pipeline.score_registered("models:/textperf/1", data, "test", cfg)
    finally:
        mlflow.set_tracking_uri(None)
    served = pipeline.served_by(data, logs_first).splits["test"]
    on_served = pipeline.evaluate_model(logs_first, served, cfg)[0]
    on_configured = pipeline.evaluate_model(logs_first, data.splits["test"], cfg)[0]
    assert scored == pytest.approx(on_served, nan_ok=True)
    assert scored != pytest.approx(on_configured, nan_ok=True)


def test_a_base_of_another_order_adapts_on_the_texts_it_serves(logs_first, tmp_path: Path):
    """`textperf adapt --base N` of a version trained under other configs: its zero-shot
    scores, and so the gate and the fine-tuning, read the task's records as it serves them."""
    adapt = AdaptConfig(n_shots=12, max_steps=2, method="lora", lora_rank=2)
    app = AppConfig(
        model="tiny",
        train="tiny",
        split=SPLIT,
        eval=EvalConfig(num_samples=4),
        adapt=adapt.model_copy(update={"from_scratch_reference": False}),
    )
    data = _dataset(budget=256)
    try:
        paths = _register(logs_first, tmp_path)
        outcome = pipeline.adapt_version(app, paths, data, "1")
    finally:
        mlflow.set_tracking_uri(None)
    served = pipeline.served_by(data, logs_first).splits["adapt_test"]
    on_served = pipeline.evaluate_model(logs_first, served, app.eval)[0]
    on_configured = pipeline.evaluate_model(logs_first, data.splits["adapt_test"], app.eval)[0]
    assert outcome.zero_shot == pytest.approx(on_served, nan_ok=True)
    assert outcome.zero_shot != pytest.approx(on_configured, nan_ok=True)
    assert np.isfinite(outcome.adapted["mape"])


def test_a_champion_is_scored_on_its_split_made_alone():
    """Scoring a champion on the test records made every record's text again, and a train
    record without the champion's baseline failed the scoring of test records that have it."""
    data = _dataset(budget=64)
    relative = _model(CONFIGURED, relative_to="ref")
    whole = pipeline.served_by(data, relative)
    for split in ("test", "adapt_pool"):
        alone = pipeline.served_split(data, relative, split)
        assert alone.texts == whole.splits[split].texts
        assert list(alone.scales) == list(whole.splits[split].scales)
    assert data.labelled is not None
    train_id = data.splits["train"].record_ids[0]
    no_baseline = pl.when(pl.col("record_id") == train_id).then(pl.lit("{}"))
    spoiled = dataclasses.replace(
        data,
        labelled=data.labelled.with_columns(
            no_baseline.otherwise("config_json").alias("config_json")
        ),
    )
    with pytest.raises(MissingScaleError, match=train_id):
        pipeline.served_by(spoiled, relative)
    assert len(pipeline.served_split(spoiled, relative, "test")) == len(data.splits["test"])


def test_a_model_the_pipeline_trains_reads_the_sources_section_order():
    """The pipeline made every model with the default order (task, period, config, logs): a
    source ordering its sections otherwise (lumos) trained on its texts and served others, and
    was gated and adapted on those (`served_by` made them again in the default order)."""
    data = _dataset(budget=64, priority=("task", "config", "logs"))
    model_cfg = load_model_config("tiny").model_copy(update={"max_input_tokens": 64})
    tokenizer = InputTokenizer.train(data.splits["train"].texts, 300)
    codec = CodecConfig(exponent_min=-3, exponent_max=3)
    fresh = pipeline.fresh_predictor(data, model_cfg, codec, tokenizer, seed=0)
    assert tuple(fresh.priority) == ("task", "config", "logs")
    assert pipeline.served_by(data, fresh) is data  # it serves the texts it trains on
    row = data.labelled.filter(pl.col("split") == "test").row(0, named=True)
    assert fresh.text_of(record_from_row(row)) == data.splits["test"].texts[0]
