"""Relative targets: baselines read from configs, examples, the bundle and the pyfunc."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from regressor.config import CodecConfig, load_model_config, load_source_config
from regressor.dataset import to_examples
from regressor.predictor import Predictor
from regressor.pyfunc_model import TextperfModel, scales_of
from regressor.targets import MissingScaleError, config_value, target_scales
from regressor.vocab import InputTokenizer

FIELD = "reference.elapsed_time"


def config(reference: object) -> dict:
    return {"vm_type": "c5.large", "reference": {"vm_type": "m5.large", "elapsed_time": reference}}


def test_config_value_follows_dotted_paths():
    assert config_value(config(280.4), FIELD) == 280.4
    assert config_value(config(280.4), "reference.missing") is None
    assert config_value({"reference": 3}, FIELD) is None  # a scalar has no children


def test_scales_are_ones_for_absolute_targets():
    np.testing.assert_array_equal(target_scales(["{}", "{}"], None), [1.0, 1.0])


@pytest.mark.parametrize("bad", [None, 0, -5.0, float("nan"), "280", True, 10**400])
def test_a_record_without_a_usable_baseline_is_named(bad):
    configs = [json.dumps(config(10.0)), json.dumps(config(bad))]
    with pytest.raises(MissingScaleError, match="run-b"):
        target_scales(configs, FIELD, ["run-a", "run-b"])


def test_examples_learn_the_ratio_and_keep_the_target():
    records = pl.DataFrame(
        {
            "record_id": ["a", "b"],
            "task": ["c5.large", "c5.large"],
            "period": [None, None],
            "config_json": [json.dumps(config(100.0)), json.dumps(config(4.0))],
            "logs_json": ["{}", "{}"],
            "target": [50.0, 8.0],
        }
    )
    examples = to_examples(records, relative_to=FIELD)
    np.testing.assert_array_equal(examples.targets, [50.0, 8.0])
    np.testing.assert_allclose(examples.model_targets, [0.5, 2.0])
    np.testing.assert_allclose(examples.take([1]).model_targets, [2.0])
    absolute = to_examples(records)
    np.testing.assert_array_equal(absolute.model_targets, absolute.targets)


def test_the_sources_target_forms_are_the_ones_validation_chose():
    lumos, c3o = load_source_config("lumos"), load_source_config("c3o")
    assert (lumos.target_relative_to, lumos.mixed_target_forms) == (FIELD, False)
    assert (c3o.target_relative_to, c3o.mixed_target_forms) == ("data_size_MB", True)


@pytest.fixture
def relative_predictor() -> Predictor:
    texts = [f"<task>\nc5.large\n<config>\nreference.elapsed_time={i}" for i in range(20)]
    return Predictor.create(
        load_model_config("tiny"),
        CodecConfig(exponent_min=-3, exponent_max=3),
        InputTokenizer.train(texts, 300),
        relative_to=FIELD,
    )


def test_samples_are_scaled_back_by_each_records_baseline(relative_predictor: Predictor):
    texts = ["<task>\nc5.large", "<task>\nr5.large"]
    with pytest.raises(ValueError, match="scale"):
        relative_predictor.sample_texts(texts, 4)
    ratios = relative_predictor.sample_texts(texts, 16, seed=1, scales=np.ones(2))
    scaled = relative_predictor.sample_texts(texts, 16, seed=1, scales=np.array([3.0, 0.5]))
    assert np.isfinite(ratios).any()  # an untrained decoder also writes inf now and then
    np.testing.assert_allclose(scaled, ratios * np.array([[3.0], [0.5]]))


def test_the_bundle_remembers_the_baseline_field(relative_predictor: Predictor, tmp_path: Path):
    loaded = Predictor.load(relative_predictor.save(tmp_path / "bundle"))
    assert loaded.relative_to == FIELD
    assert loaded.scale_of({"config": config(7.5)}) == 7.5


def test_the_pyfunc_reads_each_rows_baseline_from_its_config(
    relative_predictor: Predictor, tmp_path: Path
):
    model = TextperfModel()
    model.predictor = Predictor.load(relative_predictor.save(tmp_path / "bundle"))
    text = "<task>\nc5.large"
    rows = pd.DataFrame({"text": [text], "config": [json.dumps(config(2.0))]})
    doubled = pd.DataFrame({"text": [text], "config": [json.dumps(config(20.0))]})
    median = model.predict(None, rows)["median"]
    assert np.isfinite(median).all()
    np.testing.assert_allclose(model.predict(None, doubled)["median"], 10 * median)
    np.testing.assert_allclose(scales_of(rows, model.predictor.scale_of), [2.0])
    with pytest.raises(ValueError, match="row 0"):
        model.predict(None, pd.DataFrame({"text": [text]}))


def test_mixed_target_forms_need_a_relative_form():
    source = load_source_config("lumos")
    with pytest.raises(ValueError, match="mixed_target_forms needs target_relative_to"):
        type(source).model_validate(
            source.model_dump() | {"target_relative_to": None, "mixed_target_forms": True}
        )
