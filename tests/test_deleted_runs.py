"""A registered version outlives the MLflow run that logged it.

Operators delete old runs and reclaim their space with `mlflow gc`; the registered versions
keep their logged models and still serve. The next nightly run must then reuse (or gate) such
a version from what the registry holds, not fail on the missing run. These tests train and
adapt for real on a temp store, stop each before its gate (the registry refusing the gate
call), delete the run, collect it with the real `mlflow gc`, and run again.
"""

from __future__ import annotations

import json

import mlflow
import pytest
from conftest_data import mlflow_gc
from mlflow import MlflowClient
from test_adaptation import LORA_APP, _cell_z, _registered_base, untrained_base
from test_reliability_training import prepare, tiny_app

from regressor import pipeline, registry, report
from regressor.config import ResolvedPaths


class GateUnreachableError(RuntimeError):
    """What the registry raised at the gate: the run stops between registering and gating."""


def refuse(*args: object, **kwargs: object) -> None:
    raise GateUnreachableError("registry unreachable")


def collect(paths: ResolvedPaths, run_id: str) -> None:
    """Delete the run and garbage-collect it, as an operator reclaiming space would."""
    MlflowClient().delete_run(run_id)
    mlflow_gc(paths.tracking_uri, "--run-ids", run_id)
    assert registry.existing_run(run_id) is None


def test_a_version_whose_run_was_collected_is_gated_then_reused(tmp_path, monkeypatch) -> None:
    """Registered, then stopped before its gate; its run collected: the next run gates it from
    its tags (no champion yet: it takes the alias), the one after reuses it with the full
    report; nothing trains again and the version still predicts."""
    app = tiny_app(tmp_path / "var")
    paths, data = prepare(app)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(registry, "gate", refuse)
            with pytest.raises(GateUnreachableError):
                pipeline.train_and_register(app, paths, data)
        client = MlflowClient()
        (stopped,) = client.search_model_versions("name='textperf'")
        assert "gate_decision" not in stopped.tags
        collect(paths, stopped.run_id)

        gated = pipeline.train_and_register(app, paths, data)
        again = pipeline.train_and_register(app, paths, data)
        versions = client.search_model_versions("name='textperf'")
        runs = mlflow.search_runs(search_all_experiments=True)
        predictor = registry.load_predictor("models:/textperf@champion")
    finally:
        mlflow.set_tracking_uri(None)
    assert len(versions) == 1
    assert len(runs) == 0  # nothing trained again, no run started
    assert (gated.version, gated.reused, gated.promoted) == ("1", True, True)
    assert gated.reason.startswith("no champion yet")
    assert gated.reason.endswith("stopped before its gate")
    assert (again.version, again.reused, again.promoted) == ("1", True, True)
    tagged = registry.metrics_from_json(stopped.tags[pipeline.TEST_REPORT_TAG])
    assert {"textperf", "mean", "lightgbm"} <= set(again.metrics) == set(tagged)
    assert json.dumps(again.metrics) == json.dumps(tagged)  # NaN equals NaN as JSON text
    assert again.fit.steps > 0
    assert again.n_parameters == predictor.model.num_parameters()
    summary = report.training_summary(again)
    assert "not retrained" in summary["model"]
    assert summary["MLflow run"].endswith("since deleted from the tracking store)")
    medians = predictor.predict_texts(data.splits["test"].texts[:2], num_samples=2)["median"]
    assert len(medians) == 2


def test_an_adaptation_whose_run_was_collected_is_gated_then_reused(tmp_path, monkeypatch) -> None:
    """The same for an adapted variant: its gate reads the validation scores tagged on it,
    and a later adaptation reports it (fit and scores) from the registry alone."""
    try:
        paths, data = _registered_base(untrained_base(), tmp_path)
        with monkeypatch.context() as patch:
            patch.setattr(registry, "gate_variant", refuse)
            with pytest.raises(GateUnreachableError):
                pipeline.adapt_version(LORA_APP, paths, data, "1")
        client = MlflowClient()
        (stopped,) = client.search_model_versions("name='textperf-cell-z'")
        collect(paths, stopped.run_id)

        gated = pipeline.adapt_version(LORA_APP, paths, _cell_z(), "1")
        again = pipeline.adapt_version(LORA_APP, paths, _cell_z(), "1")
        versions = client.search_model_versions("name='textperf-cell-z'")
        adapt_runs = mlflow.search_runs(
            search_all_experiments=True, filter_string="attributes.run_name LIKE 'adapt-%'"
        )
    finally:
        mlflow.set_tracking_uri(None)
    assert len(versions) == 1
    assert len(adapt_runs) == 0
    assert (gated.version, gated.reused, again.version, again.reused) == ("1", True, "1", True)
    validation = registry.metrics_from_json(stopped.tags[pipeline.VALIDATION_TAG])
    decision = registry.read_decision(versions[0].tags["gate_decision"])
    assert decision["reason"].endswith("stopped before its gate")
    assert json.dumps(decision["challenger"]) == json.dumps(validation["adapted"])
    assert json.dumps(again.validation) == json.dumps(validation)
    assert again.fit.steps == json.loads(stopped.tags[pipeline.FIT_TAG])["steps"] > 0
    assert again.promoted == gated.promoted
