"""The walking skeleton end to end: the real flow, DuckDB file, MLflow store and Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from conftest_data import TINY_APP
from mlflow import MlflowClient

from flows.retrain import retrain
from regressor import pipeline
from regressor.config import load_app_config, load_train_config
from regressor.environment import code_digest
from regressor.warehouse import Warehouse


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, prefect_harness) -> dict:
    root = tmp_path_factory.mktemp("demo")
    config = root / "app.yaml"
    config.write_text(yaml.safe_dump(TINY_APP))
    var = root / "var"
    first = retrain(config=config, var_dir=var)
    rows_after_first = _record_count(var)
    # What a run killed after registering, before removing its checkpoints, leaves behind.
    key = _client(var).get_model_version("textperf", "1").tags["training_key"]
    left = var / "checkpoints" / f"train-{key}"
    left.mkdir(parents=True)
    (left / "last.ckpt").write_bytes(b"left by a killed run")
    second = retrain(config=config, var_dir=var)  # nothing changed
    after_second = {
        "versions": len(_client(var).search_model_versions("name='textperf'")),
        "runs": _train_runs(var),
        "checkpoint_dirs": list((var / "checkpoints").glob("train-*")),
    }
    third = retrain(config=config, var_dir=var, force_train=True)
    return {
        "var": var,
        "config": config,
        "reports": (first, second, third),
        "rows_after_first": rows_after_first,
        "after_second": after_second,
    }


def _train_runs(var: Path) -> list[str]:
    client = _client(var)
    experiment = client.get_experiment_by_name("textperf").experiment_id
    runs = client.search_runs([experiment], "attributes.run_name LIKE 'train-%'")
    return sorted(r.info.run_id for r in runs)


def _record_count(var: Path) -> int:
    with Warehouse(var / "warehouse.duckdb", read_only=True) as wh:
        return wh.query("records").height


def _client(var: Path) -> MlflowClient:
    uri = f"sqlite:///{var / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_report_names_every_step_and_the_uris(demo_run):
    report = demo_run["reports"][0]
    for needle in (
        "Held-out later days",
        "lightgbm",
        "mean",
        "textperf",
        "Few-shot adaptation",
        "12 shots: 8 trained, 2 stopped the fine-tuning, 2 for the gate",
        "Gate, on the latest shots, kept out of fine-tuning and of its early stopping",
        "models:/textperf@champion",
        # The store it trained into, not the default var/ (copied, the command read another).
        f"`textperf predict --model models:/textperf@champion --var-dir {demo_run['var']} ",
    ):
        assert needle in report


def test_report_saved_as_prefect_artifact(demo_run):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-report"]))
        )
    # Every retrain of the test session saves under this key: each of this fixture's three runs
    # saved its own report (they name its temp store, so no other run's can match).
    saved = [artifact.data for artifact in found]
    for text in demo_run["reports"]:
        assert text in saved
    assert "Held-out later days" in demo_run["reports"][0]


def test_the_training_run_records_its_settings_code_and_report(demo_run):
    """Everything behind the run's figures is on the run: split, eval and gate settings, the
    source, the code, and the report itself (`report.md`, the first run's)."""
    client = _client(demo_run["var"])
    version = client.get_model_version("textperf", "1")
    params = client.get_run(version.run_id).data.params
    app = load_app_config(demo_run["config"], demo_run["var"])
    assert params["split.test_days"] == str(app.split.test_days)
    assert params["eval.num_samples"] == str(app.eval.num_samples)
    assert params["promotion.lower_is_better"] == str(app.registry.promotion.lower_is_better)
    assert (params["source"], params["code_digest"]) == (app.source, code_digest())
    assert params["git_commit"] == version.tags["git_commit"]
    assert version.tags[pipeline.HOLDOUT_TAG] == params["holdout_task"]  # what adaptation reads
    # What it trained and was scored on: the Datasets tab, one input per split.
    inputs = client.get_run(version.run_id).inputs.dataset_inputs
    contexts = {
        tag.value: i.dataset for i in inputs for tag in i.tags if tag.key == "mlflow.data.context"
    }
    assert set(contexts) == {"train", "val", "test"}
    test_split = contexts["test"]
    assert test_split.name == f"{app.source}/test"
    # The train config once; Lightning's copy under bare names doubled each of its params.
    assert params["train.lr"] == str(load_train_config(app.train).lr)
    assert not {"lr", "batch_size", "max_steps"} & params.keys()
    # Per-record predictions of the held-out split, as served (conformal 10-90%).
    mlflow.set_tracking_uri(f"sqlite:///{demo_run['var'] / 'mlflow.db'}")
    try:
        table = mlflow.load_table("predictions/test.json", run_ids=[version.run_id])
    finally:
        mlflow.set_tracking_uri(None)
    test = json.loads(version.tags["test_metrics"])
    assert np.isfinite(table["median"]).sum() == test["n"]  # `n` counts finite medians
    # Standard JSON, which jq, JavaScript and Go read: the mean baseline's NaN Spearman was a
    # bare `NaN` in the report's table and its artifact.
    for text in (version.tags[pipeline.TEST_REPORT_TAG], version.tags["gate_decision"]):
        strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in a tag"))
    assert strict["challenger"]["n"] == test["n"]
    assert json.loads(version.tags[pipeline.TEST_REPORT_TAG])["mean"]["spearman"] is None
    # Counted as `interval_coverage` counts: a finite truth and median, neither bound missing
    # (an infinite bound covers its truth; an untrained model's std overflows to inf, which the
    # JSON table writes as null, so the std column is no filter here).
    scored = table[
        np.isfinite(table[["actual", "median"]]).all(axis=1)
        & table[["q10", "q90"]].notna().all(axis=1)
    ]
    covered = (scored["q10"] <= scored["actual"]) & (scored["actual"] <= scored["q90"])
    assert covered.mean() == pytest.approx(test["interval_coverage"])
    assert json.loads(test_split.profile)["num_rows"] == len(table)
    local = client.download_artifacts(version.run_id, pipeline.REPORT_ARTIFACT)
    assert Path(local).read_text() == demo_run["reports"][0]


def test_each_mlflow_run_names_the_prefect_flow_run_that_started_it(demo_run):
    """The run context provider (`flows/mlflow_context.py`, an entry point) tags the training
    and adaptation runs with their flow run, which Prefect knows by the same id."""
    from prefect import get_client

    client = _client(demo_run["var"])
    experiment = client.get_experiment_by_name("textperf").experiment_id
    runs = client.search_runs([experiment])
    assert {r.info.run_name.split("-")[0] for r in runs} >= {"train", "adapt"}
    for run in runs:  # named by the snapshot too: each night's runs have names of their own
        assert run.info.run_name.endswith(f"-{run.data.params['data_hash'][:8]}")
    with get_client(sync_client=True) as prefect:
        for run in runs:
            tags = run.data.tags
            flow_run = prefect.read_flow_run(tags["prefect.flow_run_id"])
            assert tags["prefect.flow_run_name"] == flow_run.name
            assert tags["prefect.flow_name"] == "retrain"
            # A link only where Prefect knows its UI's address, never "None/flow-runs/...".
            url = tags.get("prefect.flow_run_url")
            assert url is None or url.startswith("http"), url


def test_champion_and_adapted_variant_registered_with_lineage(demo_run):
    client = _client(demo_run["var"])
    champion = client.get_model_version_by_alias("textperf", "champion")
    assert champion.tags["data_hash"]
    adapted = [m for m in client.search_registered_models() if m.name.startswith("textperf-")]
    assert len(adapted) == 1
    version = client.search_model_versions(f"name='{adapted[0].name}'")[0]
    assert version.tags["base_model"].startswith("models:/textperf/")
    assert int(version.tags["n_shots"]) == 12
    decision = json.loads(version.tags["gate_decision"])  # gated against its base zero-shot
    assert set(decision["champion"]) == set(decision["challenger"]) >= {"spearman", "mape"}
    challenger = client.get_model_version_by_alias(adapted[0].name, "challenger")
    assert challenger.version == version.version


def test_a_rerun_on_unchanged_data_trains_nothing_and_reports_the_earlier_version(demo_run):
    var = demo_run["var"]
    assert _record_count(var) == demo_run["rows_after_first"] > 0
    after = demo_run["after_second"]
    assert after["versions"] == 1  # no duplicate version of the same training
    (run_id,) = after["runs"]  # the second run started no training run
    assert after["checkpoint_dirs"] == []
    first, second, _ = demo_run["reports"]
    assert "**not retrained**" in second
    assert "**not retrained**" not in first
    assert f"{run_id} (the run that trained it)" in second
    assert "models:/textperf/1" in second
    # the earlier run's table, its baselines included
    assert (
        first.split("## Held-out later days")[1].split("- **model**")[0]
        == second.split("## Held-out later days")[1].split("- **model**")[0]
    )


def test_no_checkpoint_outlives_its_run(demo_run):
    """Trainings and adaptations (three runs, at least one adaptation) leave nothing behind."""
    assert list((demo_run["var"] / "checkpoints").iterdir()) == []


def test_a_forced_run_on_unchanged_data_registers_a_new_challenger(demo_run):
    var = demo_run["var"]
    client = _client(var)
    assert len(_train_runs(var)) == 2
    assert len(client.search_model_versions("name='textperf'")) == 2
    assert str(client.get_model_version_by_alias("textperf", "challenger").version) == "2"
    decision = json.loads(client.get_model_version("textperf", "2").tags["gate_decision"])
    assert decision["champion"] is not None  # the gate compared against the first run's champion


def test_champion_loads_and_predicts_in_a_fresh_process(demo_run):
    var = demo_run["var"]
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri('sqlite:///{var / 'mlflow.db'}')\n"
        "m = mlflow.pyfunc.load_model('models:/textperf@champion')\n"
        "df = pd.DataFrame([{'text': '<task>\\ncell-x\\n<config>\\na=1'}])\n"
        "out = m.predict(df, params={'num_samples': 5})\n"
        "print(json.dumps(out.iloc[0].to_dict()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(row) == {"median", "mean", "std", "p10", "p90", "finite_fraction"}
    assert row["p10"] <= row["median"] <= row["p90"]


def test_cli_predict_prints_median_and_interval(demo_run, tmp_path: Path):
    var = demo_run["var"]
    cell = sorted((var / "raw" / "demo_fleet" / "cells").glob("*.yaml"))[0]
    record = {
        "task": cell.stem,
        "period": "2026-02-01",
        "config": yaml.safe_load(cell.read_text()),
        "logs": {},
    }
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    textperf = Path(sys.executable).with_name("textperf")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{var / 'mlflow.db'}"}
    done = subprocess.run(
        [
            str(textperf),
            "predict",
            "--model",
            "models:/textperf@champion",
            "--num-samples",
            "8",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert "median" in done.stdout
    assert "10-90%" in done.stdout


def test_a_forced_training_is_not_retried_into_a_second_version(
    tmp_path: Path, prefect_harness, monkeypatch
):
    """Forced, the retry skipped the key lookup that finds what the first attempt registered:
    a gate failing on a restarting store after registration gave two versions of one training
    (the first ungated). Now the forced run fails once, with one version to gate again."""
    from mlflow.exceptions import MlflowException

    import flows.retrain as flow_module
    from regressor import registry

    def restarting_store(*_args: object, **_kwargs: object) -> None:
        raise MlflowException("the tracking server is restarting")

    monkeypatch.setattr(registry, "gate", restarting_store)
    quick = flow_module.train_task.with_options(retry_delay_seconds=1)  # a retry would be quick
    monkeypatch.setattr(flow_module, "train_task", quick)
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump(TINY_APP))
    var = tmp_path / "var"
    state = retrain(config=config, var_dir=var, adapt=False, force_train=True, return_state=True)
    assert state.is_failed()
    assert [str(v.version) for v in _client(var).search_model_versions("name='textperf'")] == ["1"]


def test_an_adaptation_that_crashes_fails_the_run_after_its_report(tmp_path: Path, prefect_harness):
    """A due adaptation failing on anything but missing data (here the store lost part of the
    champion's files) ended the nightly run at once: no report, and the tasks after it never
    adapted. Now the report is saved and printed, naming the failure, and the run fails."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from typer.testing import CliRunner

    from regressor import cli

    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump(TINY_APP))
    var = tmp_path / "var"
    retrain(config=config, var_dir=var, adapt=False)
    (tokenizer,) = (var / "mlartifacts").rglob("tokenizer.json")
    tokenizer.write_text(tokenizer.read_text()[:-10])  # truncated
    result = CliRunner().invoke(cli.app, ["retrain", "-c", str(config), "--var-dir", str(var)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    holdout = load_app_config(config, var).split.holdout_task or "cell-"
    assert "# textperf retraining report" in result.output  # printed before the error
    assert "## Adaptations failed" in result.output
    assert f"- `{holdout}" in result.output
    assert "ModelLoadError: " in result.output
    assert "Error: 1 adaptation(s) failed (" in result.output
    # The run itself ends Failed with that message (what the Prefect UI shows).
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="")), limit=200
        )
    (latest,) = [r for r in runs if r.parameters.get("var_dir") == str(var) and r.state.is_failed()]
    assert latest.state.message.startswith("1 adaptation(s) failed (")
    assert str(_client(var).get_model_version_by_alias("textperf", "champion").version) == "1"
