"""Registry conventions on a real MLflow SQLite store: register, gate, aliases."""

from __future__ import annotations

import getpass
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest_data import RECORD, register_tiny_version
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from regressor import cli, registry
from regressor.config import PromotionRule, ResolvedPaths
from regressor.evaluation import point_metrics
from regressor.pyfunc_model import DEFAULT_PARAMS
from regressor.tracking import configure_mlflow


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite file with its schema and experiment made once: creating them costs ~5 s."""
    paths = ResolvedPaths(var_dir=tmp_path_factory.mktemp("empty-store"))
    configure_mlflow(paths, "registry-test")
    mlflow.set_tracking_uri(None)
    return paths.mlflow_db


@pytest.fixture
def store(tmp_path: Path, empty_store: Path) -> ResolvedPaths:
    """A fresh, empty registry per test: a copy of the prepared file."""
    paths = ResolvedPaths(var_dir=tmp_path)
    shutil.copyfile(empty_store, paths.mlflow_db)
    configure_mlflow(paths, "registry-test")
    yield paths
    mlflow.set_tracking_uri(None)


def test_first_version_takes_champion_and_a_worse_one_does_not(store, tmp_path: Path):
    rule = PromotionRule()
    good = {"spearman": 0.8, "mape": 10.0}
    worse = {"spearman": 0.5, "mape": 12.0}
    v1 = register_tiny_version(tmp_path, "a")
    assert registry.gate("textperf", v1, good, None, rule).promoted
    v2 = register_tiny_version(tmp_path, "b")
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
    v1 = register_tiny_version(tmp_path, "a")
    registry.gate("textperf", v1, {"spearman": 0.5, "mape": 12.0}, None, rule)
    v2 = register_tiny_version(tmp_path, "b")
    assert registry.gate(
        "textperf", v2, {"spearman": 0.6, "mape": 11.0}, {"spearman": 0.5, "mape": 12.0}, rule
    ).promoted
    assert str(registry.alias_version("textperf", "champion").version) == str(v2.version)


def test_version_tags_carry_data_hash_and_commit(store, tmp_path: Path):
    version = register_tiny_version(tmp_path, "abc")
    tags = MlflowClient().get_model_version("textperf", str(version.version)).tags
    assert tags["data_hash"] == "abc"
    # The checkout's own commit ("unknown" only outside a git checkout, which tests never are).
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert tags["git_commit"] == head


def test_keyed_versions_are_the_newest_gated_and_ungated_under_the_key(store, tmp_path: Path):
    rule, metrics = PromotionRule(), {"spearman": 0.8, "mape": 10.0}
    client = MlflowClient()

    def trained(name: str, key: str):  # the newest version gated under the registration key
        return registry.keyed_versions(name, registry.REGISTRATION_KEY, key)[0]

    versions = [register_tiny_version(tmp_path, str(i)) for i in range(4)]
    for version, key in zip(versions, ("k", "k", "other", "k"), strict=True):
        client.set_model_version_tag("textperf", version.version, registry.REGISTRATION_KEY, key)
    assert trained("textperf", "k") is None  # none gated yet
    for version in versions[:3]:
        registry.gate("textperf", version, metrics, None, rule)
    # v4 has the key but no gate decision: a run killed between registering and gating it
    assert str(trained("textperf", "k").version) == str(versions[1].version)
    stopped = registry.keyed_versions("textperf", registry.REGISTRATION_KEY, "k")[1]
    assert str(stopped.version) == str(versions[3].version)
    assert str(trained("textperf", "other").version) == str(versions[2].version)
    assert trained("textperf", "nosuch") is None
    assert trained("nosuch-model", "k") is None


def test_nan_metric_never_wins():
    ok, _ = registry.beats(
        {"spearman": float("nan"), "mape": 1.0}, {"spearman": 0.1, "mape": 2.0}, PromotionRule()
    )
    assert not ok


def test_a_refusal_shows_the_digits_that_tell_the_scores_apart():
    """At 4 significant digits a refusal read "spearman 0.8912 < champion's 0.8912"."""
    ok, reason = registry.beats(
        {"spearman": 0.891199, "mape": 1.0}, {"spearman": 0.891201, "mape": 1.0}, PromotionRule()
    )
    assert not ok
    assert reason == "spearman 0.891199 < champion's 0.891201"


def test_a_champion_without_a_number_is_beaten_by_any_number():
    """A base predicting one value for a new cell has no Spearman (NaN): NaN lost on either side,
    so no variant could ever pass its gate. A challenger must still show a number."""
    nan = float("nan")
    rule = PromotionRule()
    collapsed = {"spearman": nan, "mape": 63.0, "n": 5.0}
    assert registry.beats({"spearman": 0.99, "mape": 1.0, "n": 5.0}, collapsed, rule)[0]
    ok, reason = registry.beats({"spearman": 0.99, "mape": 70.0, "n": 5.0}, collapsed, rule)
    assert not ok
    assert reason == "mape 70 > champion's 63"
    ok, reason = registry.beats({"spearman": nan, "mape": 70.0, "n": 5.0}, collapsed, rule)
    assert not ok
    assert reason == "mape 70 > champion's 63"


def test_shots_of_one_target_value_are_gated_on_the_other_metrics():
    """Over shots whose targets are all one value neither side has a Spearman: NaN against NaN
    lost, so no variant could pass its gate, whatever its MAPE. It is a tie now."""
    truth = np.full(6, 40.0)
    close = point_metrics(truth, np.array([39.0, 41.0, 40.5, 39.5, 40.0, 40.2]))
    far = point_metrics(truth, np.array([30.0, 55.0, 47.0, 33.0, 52.0, 28.0]))
    assert math.isnan(close["spearman"])
    assert math.isnan(far["spearman"])
    ok, reason = registry.beats(close, far, PromotionRule(), against="base zero-shot")
    assert ok
    assert reason.endswith("(spearman: NaN on both sides, a tie)")
    ok, reason = registry.beats(far, close, PromotionRule(), against="base zero-shot")
    assert not ok
    assert reason.startswith("mape ")


def test_fewer_records_scored_never_wins():
    """A record whose draws held no number is in no metric: failing on the hard records would
    score better on what is left."""
    champion = {"spearman": 0.80, "mape": 30.0, "n": 200.0}
    challenger = {"spearman": 0.99, "mape": 3.0, "n": 160.0}
    ok, reason = registry.beats(challenger, champion, PromotionRule(), "base zero-shot")
    assert not ok
    assert reason.startswith("scored 160 records, base zero-shot 200")
    assert registry.beats(challenger | {"n": 200.0}, champion, PromotionRule())[0]
    assert registry.beats(challenger, champion, PromotionRule(fewer_scored_is_worse=False))[0]


def test_model_uri_forms():
    assert registry.model_uri("textperf", 3) == "models:/textperf/3"
    assert registry.model_uri("textperf", "champion") == "models:/textperf@champion"


def test_manual_promote_moves_champion_and_logs_who_and_what(store, tmp_path: Path):
    v1, v2 = register_tiny_version(tmp_path, "a"), register_tiny_version(tmp_path, "b")
    registry.gate("textperf", v1, {"spearman": 0.5, "mape": 12.0}, None, PromotionRule())
    started = datetime.now(UTC).replace(microsecond=0)  # the tag keeps whole seconds
    decision = registry.promote("textperf", v2.version, reason="hotfix")
    assert decision["previous"] == str(v1.version)
    assert str(registry.resolve("textperf@champion").version) == str(v2.version)
    tag = json.loads(registry.resolve("textperf/2").tags["manual_champion"])
    assert tag["reason"] == "hotfix"
    assert tag["by"] == getpass.getuser()
    assert started <= datetime.fromisoformat(tag["at"]) <= datetime.now(UTC)  # when, in UTC
    with pytest.raises(MlflowException):
        registry.promote("textperf", 99)


def test_champion_by_alias_predicts_in_a_fresh_process_with_params(store, tmp_path: Path):
    version = register_tiny_version(tmp_path, "a")
    registry.promote("textperf", version.version)
    script = (
        "import json, mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/textperf@champion')\n"
        f"df = pd.DataFrame([{json.dumps(registry.input_example(RECORD).iloc[0].to_dict())}])\n"
        "p = {'num_samples': 4, 'quantiles': [0.05, 0.5, 0.95], 'return_samples': True}\n"
        "print(json.dumps(m.predict(df, params=p).iloc[0].to_dict()))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.tracking_uri}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(row) == {"median", "mean", "std", "p5", "p50", "p95", "finite_fraction", "samples"}
    assert len(row["samples"]) == 4
    # An untrained model may decode NaN (a valid number token) for every sample of a row.
    summary = [row["p5"], row["p50"], row["p95"]]
    assert all(map(math.isnan, summary)) or summary == sorted(summary)
    assert row["p50"] == row["median"] or math.isnan(row["median"])


def test_a_logged_model_requires_this_project_at_its_installed_version(store, tmp_path: Path):
    """Not a bare `textperf`, which pip could resolve to anything an index calls so."""
    v1 = register_tiny_version(tmp_path, "a")
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/textperf/{v1.version}"))
    pinned = f"textperf=={importlib.metadata.version('textperf')}"
    assert pinned in requirements.read_text().splitlines()


def test_signature_declares_list_quantiles_and_samples_switch():
    params = {p.name: p for p in registry.signature().params.params}
    assert params["quantiles"].shape == (-1,)
    assert params["quantiles"].default == [0.1, 0.9]
    assert params["return_samples"].default is False


def test_cli_models_list_show_promote(store, tmp_path: Path, monkeypatch):
    v1, v2 = register_tiny_version(tmp_path, "a"), register_tiny_version(tmp_path, "b")
    registry.promote("textperf", v1.version)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    runner = CliRunner()
    listed = runner.invoke(cli.app, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    assert "textperf" in listed.output
    assert f"v{v1.version} @champion" in listed.output
    promote = ["models", "promote", "textperf", str(v2.version), "--var-dir", str(tmp_path)]
    promoted = runner.invoke(cli.app, promote)  # its locks under the store's var dir
    assert promoted.exit_code == 0, promoted.output
    shown = runner.invoke(cli.app, ["models", "show", "textperf@champion"])
    assert shown.exit_code == 0, shown.output
    described = json.loads(shown.output)
    assert described["version"] == str(v2.version)
    assert described["tags"]["data_hash"] == "b"
    assert described["tags"]["manual_champion"]["previous"] == str(v1.version)
    missing = runner.invoke(cli.app, ["models", "show", "textperf/42"])
    assert missing.exit_code != 0
    not_a_version = runner.invoke(cli.app, ["models", "show", "textperf/abc"])  # "no @abc"
    assert not_a_version.exit_code != 0
    assert "'abc' is not a version number" in not_a_version.output
    # A bare name is its latest version, with its aliases; a NaN metric is null, not `NaN`.
    nan_metrics = json.dumps({"spearman": float("nan"), "mape": 12.5})
    MlflowClient().set_model_version_tag("textperf", str(v2.version), "test_metrics", nan_metrics)
    bare = runner.invoke(cli.app, ["models", "show", "textperf"])
    assert bare.exit_code == 0, bare.output
    strict = json.loads(bare.output, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert (strict["version"], strict["aliases"]) == (str(v2.version), ["champion"])
    assert strict["tags"]["test_metrics"] == {"spearman": None, "mape": 12.5}
    record = tmp_path / "record.json"
    record.write_text(json.dumps(RECORD))
    MlflowClient().set_model_version_tag("textperf", str(v2.version), "target", "efficiency")
    args = ["models", "predict", "--model", "textperf@champion", "--num-samples", "4"]
    loaded = []
    load = cli._load_model
    monkeypatch.setattr(cli, "_load_model", lambda uri: loaded.append(uri) or load(uri))
    predicted = runner.invoke(cli.app, [*args, "-q", "0.25", "-q", "0.75", str(record)])
    assert loaded == [f"models:/textperf/{v2.version}"]  # pinned before loading
    assert predicted.exit_code == 0, predicted.output
    assert "median" in predicted.output
    assert "25-75%" in predicted.output
    # The alias is pinned to the version it names now, which the stderr line gives.
    pinned = f"models:/textperf@champion = models:/textperf/{v2.version}"
    assert f"{pinned}, predicts `efficiency`: 4 samples per record" in predicted.stderr
    # Without --num-samples, the model's own default: what the served model and evaluation use.
    default = runner.invoke(
        cli.app, ["models", "predict", "--model", "textperf@champion", str(record)]
    )
    assert default.exit_code == 0, default.output
    assert f"{DEFAULT_PARAMS['num_samples']} samples per record" in default.stderr
    # An alias the model lacks (a refused variant's champion, say): the aliases it has.
    no_alias = runner.invoke(
        cli.app, ["models", "predict", "--model", "textperf@best", str(record)]
    )
    assert no_alias.exit_code == 1
    assert f"textperf's aliases: @champion (v{v2.version})" in no_alias.output
    # A base model: a refused variant's advice (predict with the base) would mislead.
    assert "models promote textperf VERSION` sets one" in no_alias.output
    assert "adapted variant" not in no_alias.output
    MlflowClient().set_model_version_tag("textperf", str(v1.version), "base_model", "models:/b/1")
    as_variant = runner.invoke(
        cli.app, ["models", "predict", "--model", "textperf@best", str(record)]
    )
    assert "An adapted variant the gate refused has no champion" in as_variant.output


def test_cli_predict_and_promote_default_to_the_configs_names(store, tmp_path: Path, monkeypatch):
    """Without --model or --alias, the config's `registry.champion_alias` (and model name), as
    the pipeline gates: `textperf@champion` and `champion` were fixed, so a team naming its own
    alias predicted with no model, and a rollback moved an alias the pipeline never reads."""
    v1 = register_tiny_version(tmp_path, "a")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    config = tmp_path / "team.yaml"
    config.write_text("registry:\n  model_name: textperf\n  champion_alias: best\n")
    given = ["-c", str(config), "--var-dir", str(tmp_path)]
    runner = CliRunner()
    promoted = runner.invoke(cli.app, ["models", "promote", "textperf", str(v1.version), *given])
    assert promoted.exit_code == 0, promoted.output
    assert f"textperf/{v1.version} is now @best (was unset)" in promoted.output  # not None
    aliases = MlflowClient().get_registered_model("textperf").aliases
    assert aliases == {"best": int(v1.version)}
    # The model's description names the alias to predict with: it said @champion.
    description = MlflowClient().get_registered_model("textperf").description
    assert "models:/textperf@best" in description
    assert "@champion" not in description
    record = tmp_path / "record.json"
    record.write_text(json.dumps(RECORD))
    predicted = runner.invoke(cli.app, ["predict", str(record), "--num-samples", "2", *given])
    assert predicted.exit_code == 0, predicted.output
    assert f"models:/textperf@best = models:/textperf/{v1.version}" in predicted.stderr


def test_a_gated_version_and_its_model_are_described_and_listed_with_scores(
    store, tmp_path: Path, monkeypatch
):
    """The gate writes what the registry UI shows first: what the model predicts and how to
    ask it, and each version's data, scores and verdict; `models list` shows them in a line."""
    v1 = register_tiny_version(tmp_path, "a" * 40)
    client = MlflowClient()
    test = {"spearman": 0.8912, "mape": 19.04, "interval_coverage": 0.855, "n": 690.0}
    tags = {"source": "demo_fleet", "target": "efficiency", "test_metrics": json.dumps(test)}
    for key, value in tags.items():
        client.set_model_version_tag("textperf", str(v1.version), key, value)
    registry.gate("textperf", v1, test, None, PromotionRule())
    model = client.get_registered_model("textperf")
    assert "Predicts `efficiency` of a `demo_fleet` record" in model.description
    assert "textperf predict --model models:/textperf@champion RECORD.json" in model.description
    version = client.get_model_version("textperf", str(v1.version))
    assert f"on data `{'a' * 12}` at commit `{registry.git_commit()[:10]}`" in (version.description)
    scores = "Spearman 0.891, MAPE 19.0%, 10-90% coverage 0.85 (n=690)"
    assert f"Held-out test: {scores}." in version.description
    assert "Gate: promoted (no champion yet)." in version.description
    v2 = register_tiny_version(tmp_path, "b")
    worse = {"spearman": 0.5, "mape": 30.0}
    client.set_model_version_tag("textperf", str(v2.version), "test_metrics", json.dumps(worse))
    registry.gate("textperf", v2, worse, test, PromotionRule())
    assert "Gate: not promoted (spearman 0.5 < champion's 0.8912)." in (
        client.get_model_version("textperf", str(v2.version)).description
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    listed = CliRunner().invoke(cli.app, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    created = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC)
    assert f"v{v1.version} @champion  {created:%Y-%m-%d %H:%M}  " in listed.output
    assert f"  {scores}  gate: promoted  run {v1.run_id}" in listed.output
    assert "Spearman 0.500, MAPE 30.0%  gate: not promoted" in listed.output
    shown = CliRunner().invoke(cli.app, ["models", "show", "textperf@champion"])
    assert json.loads(shown.output)["description"] == version.description
    # Moved by hand, a version says so beside the gate's verdict.
    registry.promote("textperf", v2.version, reason="the old one broke")
    by_hand = client.get_model_version("textperf", str(v2.version)).description
    assert f"Made @champion by hand by {getpass.getuser()} (the old one broke)." in by_hand
    listed = CliRunner().invoke(cli.app, ["models", "list"])
    assert "MAPE 30.0%  gate: not promoted, @champion by hand" in listed.output
    # Rolled back, the marker says it was: it read as if v2 still held the alias.
    registry.promote("textperf", v1.version, reason="roll back")
    listed = CliRunner().invoke(cli.app, ["models", "list"])
    assert "MAPE 30.0%  gate: not promoted, was @champion by hand" in listed.output
    assert f"  {scores}  gate: promoted, @champion by hand  run" in listed.output


def test_parse_ref_forms():
    assert registry.parse_ref("textperf@champion") == ("textperf", "champion")
    assert registry.parse_ref("models:/textperf-cell-b08/3") == ("textperf-cell-b08", "3")
    assert registry.parse_ref("textperf") == ("textperf", None)
    # A task from the data may hold an `@` (MLflow refuses only `/` and `:` in a name), and an
    # alias never does: it splits on the last `@`, as MLflow's own URIs do.
    assert registry.parse_ref("models:/textperf-job@host@champion") == (
        "textperf-job@host",
        "champion",
    )
    assert registry.parse_ref("textperf-job@host/2") == ("textperf-job@host", "2")


GATED = json.dumps({"promoted": True, "challenger": {}, "champion": None})


def test_variants_due_are_missing_or_adapted_from_an_older_champion(store, tmp_path: Path):
    client = MlflowClient()
    client.create_registered_model("textperf-cell-a")
    client.create_model_version(
        "textperf-cell-a",
        source=(tmp_path / "weights").as_uri(),
        tags={"task": "cell-a", "base_model": "models:/textperf/1", "gate_decision": GATED},
    )
    assert registry.variants_due("textperf", "1", ["cell-b"]) == ["cell-b"]
    assert registry.variants_due("textperf", "2", ["cell-b"]) == ["cell-a", "cell-b"]
    assert registry.variants_due("textperf", "1") == []


def test_a_variant_its_run_left_unfinished_is_due_on_the_same_champion(store, tmp_path: Path):
    """A run stopped between registering and gating a variant, or between registering its
    fallback and promoting it, left a version of the champion's lineage: its task was never due
    again, so it stayed so until the champion changed. A refused version without a fallback is
    not due: its gate shots may fit none, and it would be due every night."""
    client = MlflowClient()
    base = {"base_model": "models:/textperf/1"}
    refused = json.dumps({"promoted": False, "challenger": {}, "champion": {}})
    for task, tags in (
        ("cell-a", {}),  # registered, never gated
        ("cell-b", {"gate_decision": refused}),  # refused, no fallback
        ("cell-c", {"gate_decision": GATED}),  # done
    ):
        client.create_registered_model(f"textperf-{task}")
        client.create_model_version(
            f"textperf-{task}", str(tmp_path), tags={"task": task, **base, **tags}
        )
    assert registry.variants_due("textperf", "1") == ["cell-a"]
    # cell-b's fallback registered, not yet promoted: due; promoted: done.
    fallback = {"task": "cell-b", **base, registry.FALLBACK_FOR: "1"}
    client.create_model_version("textperf-cell-b", str(tmp_path), tags=fallback)
    assert registry.variants_due("textperf", "1") == ["cell-a", "cell-b"]
    client.set_model_version_tag("textperf-cell-b", "1", registry.FALLBACK, "{}")
    assert registry.variants_due("textperf", "1") == ["cell-a"]
    # A fallback whose refused version someone deleted: nothing to finish, and no error.
    client.create_registered_model("textperf-cell-d")
    orphan = {"task": "cell-d", **base, registry.FALLBACK_FOR: "7"}
    client.create_model_version("textperf-cell-d", str(tmp_path), tags=orphan)
    assert registry.variants_due("textperf", "1") == ["cell-a"]


def test_another_models_variants_are_not_this_models(store, tmp_path: Path):
    """`textperf-big`'s variant `textperf-big-cell-a` (and, `_` being LIKE's wildcard, any
    `textXperf-...`) matched `textperf-%`: prune kept `textperf`'s count of them, and the
    nightly run re-adapted `textperf` to their tasks."""
    client = MlflowClient()
    for name, task, base in (
        ("textperf-big-cell-a", "cell-a", "models:/textperf-big/1"),
        ("text_perf-cell-c", "cell-c", "models:/text_perf/1"),
        ("textperf-cell-b", "cell-b", "models:/textperf/1"),
    ):
        client.create_registered_model(name)
        client.create_model_version(
            name,
            source=(tmp_path / "w").as_uri(),
            tags={"task": task, "base_model": base, "gate_decision": GATED},
        )
    assert [m.name for m, _ in registry.variant_models("textperf")] == ["textperf-cell-b"]
    assert [m.name for m, _ in registry.variant_models("text_perf")] == ["text_perf-cell-c"]
    assert registry.variants_due("textperf", "2") == ["cell-b"]


def test_more_variants_than_one_search_page_are_all_found(store, tmp_path: Path):
    """MLflow returns at most 100 registered models a search: a fleet of more adapted cells
    lost the rest to `models list`, prune and the nightly re-adaptation."""
    client = MlflowClient()
    tasks = [f"cell-{i:03d}" for i in range(101)]
    for task in tasks:
        client.create_registered_model(f"textperf-{task}")
        client.create_model_version(
            f"textperf-{task}",
            source=(tmp_path / "w").as_uri(),
            tags={"task": task, "base_model": "models:/textperf/1"},
        )
    assert registry.variants_due("textperf", "2") == tasks
    assert len({row.name for row in registry.list_versions()}) == 101


GOOD, WORSE = {"spearman": 0.8, "mape": 10.0}, {"spearman": 0.7, "mape": 9.0}


def _variant(tmp_path: Path, base: str):
    """A version of the adapted variant `textperf-cell-a`, adapted from `base`."""
    client = MlflowClient()
    if not client.search_registered_models("name='textperf-cell-a'"):
        client.create_registered_model("textperf-cell-a")
    return client.create_model_version(
        "textperf-cell-a",
        source=(tmp_path / "weights").as_uri(),
        tags={"task": "cell-a", "base_model": base},
    )


def _champion_of_variant() -> str | None:
    holder = registry.alias_version("textperf-cell-a", "champion")
    return None if holder is None else str(holder.version)


def test_an_adapted_variant_not_worse_than_its_base_takes_the_tasks_champion(store, tmp_path):
    v1 = _variant(tmp_path, "models:/textperf/1")
    decision = registry.gate_variant(
        "textperf-cell-a", v1, "models:/textperf/1", GOOD, GOOD, PromotionRule()
    )
    assert decision.promoted
    assert _champion_of_variant() == str(v1.version)
    assert str(registry.alias_version("textperf-cell-a", "challenger").version) == str(v1.version)
    logged = json.loads(registry.resolve("textperf-cell-a/1").tags["gate_decision"])
    assert (logged["challenger"], logged["champion"]) == (GOOD, GOOD)


def test_a_refused_variant_keeps_a_champion_adapted_from_the_same_base(store, tmp_path):
    base = "models:/textperf/1"
    v1, v2 = _variant(tmp_path, base), _variant(tmp_path, base)
    registry.gate_variant("textperf-cell-a", v1, base, GOOD, GOOD, PromotionRule())
    decision = registry.gate_variant("textperf-cell-a", v2, base, WORSE, GOOD, PromotionRule())
    assert not decision.promoted
    assert decision.reason == "spearman 0.7 < base zero-shot's 0.8"
    assert _champion_of_variant() == str(v1.version)
    assert str(registry.alias_version("textperf-cell-a", "challenger").version) == str(v2.version)


def test_a_refused_variant_retires_a_champion_adapted_from_an_older_base(store, tmp_path):
    """The old variant never faced the new base: the task falls back to the base itself."""
    v1 = _variant(tmp_path, "models:/textperf/1")
    registry.gate_variant("textperf-cell-a", v1, "models:/textperf/1", GOOD, GOOD, PromotionRule())
    v2 = _variant(tmp_path, "models:/textperf/2")
    rule = PromotionRule()
    decision = registry.gate_variant("textperf-cell-a", v2, "models:/textperf/2", WORSE, GOOD, rule)
    assert not decision.promoted
    assert "retired @champion from v1" in decision.reason
    assert _champion_of_variant() is None
    logged = json.loads(registry.resolve("textperf-cell-a/2").tags["gate_decision"])
    assert logged["promoted"] is False


def test_metrics_are_written_as_standard_json_and_read_back_with_their_nans():
    """A bare `NaN` (the mean baseline's Spearman) made the tags unreadable to jq, JavaScript
    and Go; read back, a null metric is NaN again, and tags written before still read."""
    metrics = {"mean": {"spearman": float("nan"), "mape": 45.6}, "champion": None}
    text = registry.strict_json(metrics)
    assert text == '{"mean": {"spearman": null, "mape": 45.6}, "champion": null}'
    back = registry.metrics_from_json(text)
    assert math.isnan(back["mean"]["spearman"])
    assert back["mean"]["mape"] == 45.6
    old = registry.metrics_from_json('{"spearman": NaN}')
    assert math.isnan(old["spearman"])


def test_a_name_with_a_quote_is_searched_for_and_listed(store, tmp_path: Path):
    """A variant is `<model>-<task>`, and a task comes from data: MLflow takes a `'` in a model
    name, and every search built as `name='...'` failed to parse on it, so a variant of task
    `o'brien` broke every nightly run (`adaptations_due`), `models list` and `prune`."""
    from regressor import retention

    client = MlflowClient()
    variant = "textperf-o'brien"
    client.create_registered_model(variant)
    tags = {"task": "o'brien", registry.ADAPTATION_KEY: "k'1"}
    version = client.create_model_version(variant, str(tmp_path), tags=tags)
    assert [v.version for v in registry.versions_newest_first(variant)] == [version.version]
    assert registry.keyed_versions(variant, registry.ADAPTATION_KEY, "k'1")[1].version == 1
    assert registry.keyed_versions(variant, registry.ADAPTATION_KEY, "k") == (None, None)
    assert list(registry.latest_variants("textperf")) == ["o'brien"]
    assert [row.name for row in registry.list_versions()] == [variant]
    assert registry.resolve(variant).version == version.version
    assert retention.prunable("textperf", 1) == []
    with pytest.raises(registry.UserError, match="no MLflow search can name it"):
        registry.versions_of("both ' and \" quotes")


def test_a_rule_of_no_metrics_says_so_and_still_counts_the_records_scored():
    rule = PromotionRule(higher_is_better=(), lower_is_better=())
    assert registry.beats({"n": 5.0}, {"n": 5.0}, rule) == (
        True,
        "the promotion rule compares no metric",
    )
    assert not registry.beats({"n": 4.0}, {"n": 5.0}, rule)[0]
