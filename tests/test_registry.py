"""Registry conventions on a real MLflow SQLite store: register, gate, aliases."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from regressor import registry
from regressor.config import CodecConfig, PromotionRule, ResolvedPaths, load_model_config
from regressor.predictor import Predictor
from regressor.tracking import configure_mlflow
from regressor.vocab import InputTokenizer

RECORD = {"task": "cell-a", "period": "2026-01-01", "config": {"n": 3}, "logs": {"lines": 10}}


@pytest.fixture
def store(tmp_path: Path) -> ResolvedPaths:
    paths = ResolvedPaths(var_dir=tmp_path)
    configure_mlflow(paths, "registry-test")
    yield paths
    mlflow.set_tracking_uri(None)


def _register(tmp_path: Path, tag: str) -> object:
    texts = [f"<task>\ncell-{i}\n<config>\nn={i}" for i in range(20)]
    predictor = Predictor.create(
        load_model_config("tiny"),
        CodecConfig(exponent_min=-3, exponent_max=3),
        InputTokenizer.train(texts, 300),
    )
    bundle = predictor.save(tmp_path / f"bundle-{tag}")
    with mlflow.start_run():
        return registry.log_and_register(
            bundle, "textperf", registry.input_example(RECORD), {"data_hash": tag}
        )


def test_first_version_takes_champion_and_a_worse_one_does_not(store, tmp_path: Path):
    rule = PromotionRule()
    good = {"spearman": 0.8, "mape": 10.0}
    worse = {"spearman": 0.5, "mape": 12.0}
    v1 = _register(tmp_path, "a")
    assert registry.gate("textperf", v1, good, None, rule).promoted
    v2 = _register(tmp_path, "b")
    decision = registry.gate("textperf", v2, worse, good, rule)
    assert not decision.promoted
    assert "spearman" in decision.reason
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("textperf", "champion").version) == str(v1.version)
    assert str(client.get_model_version_by_alias("textperf", "challenger").version) == str(
        v2.version
    )
    logged = json.loads(client.get_model_version("textperf", str(v2.version)).tags["gate_decision"])
    assert logged["champion"] == good
    assert logged["challenger"] == worse


def test_a_better_version_takes_champion(store, tmp_path: Path):
    rule = PromotionRule()
    v1 = _register(tmp_path, "a")
    registry.gate("textperf", v1, {"spearman": 0.5, "mape": 12.0}, None, rule)
    v2 = _register(tmp_path, "b")
    assert registry.gate(
        "textperf", v2, {"spearman": 0.6, "mape": 11.0}, {"spearman": 0.5, "mape": 12.0}, rule
    ).promoted
    assert str(registry.alias_version("textperf", "champion").version) == str(v2.version)


def test_version_tags_carry_data_hash_and_commit(store, tmp_path: Path):
    version = _register(tmp_path, "abc")
    tags = MlflowClient().get_model_version("textperf", str(version.version)).tags
    assert tags["data_hash"] == "abc"
    assert tags["git_commit"]


def test_nan_metric_never_wins():
    ok, _ = registry.beats(
        {"spearman": float("nan"), "mape": 1.0}, {"spearman": 0.1, "mape": 2.0}, PromotionRule()
    )
    assert not ok


def test_model_uri_forms():
    assert registry.model_uri("textperf", 3) == "models:/textperf/3"
    assert registry.model_uri("textperf", "champion") == "models:/textperf@champion"
