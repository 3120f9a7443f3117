"""Ordinary mistakes with the `textperf` commands and flows: one clear line naming the thing and
what to do, a non-zero exit, no traceback, and nothing half-done left behind. Real DuckDB
files, a real MLflow store and a real Prefect server; no mocks."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import yaml
from conftest_data import TINY_APP, register_tiny_version
from mlflow import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from typer.testing import CliRunner

from regressor import cli, pipeline
from regressor.config import FleetSimConfig, load_app_config, load_source_config
from regressor.tracking import configure_mlflow

# 5 days, 4 of them held out: no training day, and 1 day of the holdout task before its test.
FEW_APP = {**TINY_APP, "fleet": {**TINY_APP["fleet"], "n_cells": 3, "n_days": 5}}
FEW_APP["split"] = {"test_days": 4}


def _ingested(root: Path, app: dict) -> tuple[Path, Path]:
    """(config, var dir) with the app's demo fleet generated and ingested."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "app.yaml"
    config.write_text(yaml.safe_dump(app))
    cfg = load_app_config(config, root / "var")
    paths, source = cfg.paths.resolve(), load_source_config(cfg.source)
    pipeline.generate(paths, cfg, source)
    pipeline.ingest(paths, source, "r1")
    return config, root / "var"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config, var): the tiny fleet ingested, and one untrained `textperf` v1 registered."""
    root = tmp_path_factory.mktemp("fleet")
    config, var = _ingested(root, TINY_APP)
    configure_mlflow(load_app_config(config, var).paths.resolve(), "textperf")
    register_tiny_version(root, "a")
    return config, var


@pytest.fixture(scope="module")
def few(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _ingested(tmp_path_factory.mktemp("few"), FEW_APP)


def invoke(*args: str | Path) -> object:
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def assert_clear_failure(result, *needles: str, code: int = 1) -> None:
    """Exit `code`, each needle in the output, and no traceback (an exception other than the
    exit itself would have been one)."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_adapt_and_export_before_any_ingest_say_to_ingest(tmp_path: Path):
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump(TINY_APP))
    var, out = tmp_path / "var", tmp_path / "shards"
    adapted = invoke("adapt", "-c", config, "--var-dir", var)
    assert_clear_failure(adapted, "no warehouse at", "textperf ingest")
    exported = invoke("export", "--out", out, "-c", config, "--var-dir", var)
    assert_clear_failure(exported, "no warehouse at", "textperf ingest")
    assert not out.exists()  # nothing half-made


def test_a_warehouse_without_records_or_without_the_source_exports_nothing(fleet, tmp_path):
    config, var = fleet
    blank = tmp_path / "blank" / "warehouse.duckdb"  # a DuckDB file no ingest has set up
    blank.parent.mkdir()
    duckdb.connect(str(blank)).close()
    out = tmp_path / "shards"
    exported = invoke("export", "--out", out, "-c", config, "--var-dir", blank.parent)
    assert_clear_failure(exported, "holds no records table", "textperf ingest")
    adapted = invoke("adapt", "-c", config, "--var-dir", blank.parent)
    assert_clear_failure(adapted, "holds no records table", "textperf ingest")
    unknown = invoke("export", "--out", out, "--source", "nope", "-c", config, "--var-dir", var)
    assert_clear_failure(unknown, "no records of source 'nope'", "demo_fleet")
    assert not out.exists()


def test_export_refuses_a_file_a_place_under_a_file_and_a_foreign_directory(fleet, tmp_path):
    config, var = fleet
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    common = ("-c", config, "--var-dir", var)
    assert_clear_failure(invoke("export", "--out", a_file, *common), "is a file")
    assert_clear_failure(
        invoke("export", "--out", a_file / "shards", *common), "cannot write the shards"
    )
    assert_clear_failure(invoke("export", "--out", var, *common), "other files than")
    assert a_file.read_text() == "mine"
    assert not list(var.glob("shard=*"))


def test_exporting_again_replaces_the_previous_shards_whole(fleet, tmp_path: Path):
    """A stale `shard=<k>` of a longer earlier export would be read by a rank too."""
    config, var = fleet
    out = tmp_path / "shards"
    common = ("--out", out, "-c", config, "--var-dir", var)
    assert invoke("export", "--shard-rows", "10", *common).exit_code == 0
    again = invoke("export", "--shard-rows", "50", *common)
    assert again.exit_code == 0, again.output
    assert "96 records in 2 shards" in again.output
    assert sorted(p.name for p in out.iterdir()) == ["shard=0", "shard=1"]


def test_an_export_directory_named_with_brackets_is_a_path_not_a_pattern(fleet, tmp_path: Path):
    """polars read `run[1]` as a glob class: the export ended in a traceback after DuckDB had
    written the shards, and `read_records` could not read them back."""
    from regressor.shards import read_records, shard_files

    config, var = fleet
    out = tmp_path / "run[1]"
    done = invoke("export", "--out", out, "-c", config, "--var-dir", var)
    assert done.exit_code == 0, done.output
    assert "96 records in" in done.output
    assert read_records(shard_files(out)).height == 96


def test_adapt_to_a_task_that_does_not_exist_names_the_tasks_there_are(fleet):
    config, var = fleet
    result = invoke("adapt", "--task", "cell-zz", "-c", config, "--var-dir", var)
    assert_clear_failure(result, "task 'cell-zz'", "cell-a01, cell-a02")


def test_adapt_to_a_task_with_too_few_records_stops_before_any_work(few):
    config, var = few
    result = invoke("adapt", "--task", "cell-a01", "--base", "1", "-c", config, "--var-dir", var)
    assert_clear_failure(result, "too few records to adapt", "'cell-a01'")


def test_adapt_from_a_base_that_does_not_exist_or_is_no_number(fleet):
    config, var = fleet
    common = ("-c", config, "--var-dir", var)
    missing = invoke("adapt", "--base", "7", *common)
    assert_clear_failure(missing, "'textperf' has no version 7", "textperf models list")
    assert_clear_failure(invoke("adapt", "--base", "abc", *common), "--base", code=2)


def test_adapt_without_a_champion_says_to_train_one(fleet, tmp_path: Path):
    config, var = fleet
    empty_store = tmp_path / "store"
    empty_store.mkdir()
    (empty_store / "warehouse.duckdb").symlink_to(var / "warehouse.duckdb")
    result = invoke("adapt", "-c", config, "--var-dir", empty_store)
    assert_clear_failure(result, "no textperf@champion to adapt", "textperf retrain")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("textperf", "9"), ("'textperf' has no version 9",)),
        (("textperf-cell-zz", "1"), ("no registered model 'textperf-cell-zz'",)),
        (("textperf", "latest"), ("'latest'", "not a version number")),
        (("textperf", "1", "--alias", "two words"), ("Invalid alias name",)),
    ],
)
def test_promote_of_what_is_not_registered_names_it(fleet, args, needles):
    config, var = fleet
    result = invoke("models", "promote", *args, "-c", config, "--var-dir", var)
    assert_clear_failure(result, *needles)


def test_models_list_of_a_model_that_does_not_exist_fails(fleet):
    config, var = fleet
    result = invoke("models", "list", "textperf-cell-zz", "-c", config, "--var-dir", var)
    assert_clear_failure(result, "no registered model 'textperf-cell-zz'")
    # A model whose versions were all deleted is there: it was "no registered model" too.
    client = MlflowClient(tracking_uri=f"sqlite:///{var / 'mlflow.db'}")
    client.create_registered_model("empty-model")  # no `textperf-` variant of the others
    result = invoke("models", "list", "empty-model", "-c", config, "--var-dir", var)
    assert result.exit_code == 0, result.output
    assert "empty-model: registered, with no versions left in sqlite:" in result.stdout


COMMANDS = [
    ("models", "list"),
    ("export", "--out", "shards"),
    ("adapt",),
    ("ingest",),
    ("predict", "RECORD"),
]


@pytest.mark.parametrize(
    "command",
    [("predict", "RECORD"), ("models", "list"), ("models", "show", "textperf@champion")],
)
def test_a_var_dir_without_a_store_is_named_and_left_as_it_was(fleet, tmp_path: Path, command):
    """A misspelt --var-dir: before, MLflow made an empty store there, printed its table setup
    and answered about an empty registry."""
    config, _ = fleet
    misspelt = tmp_path / "vra"
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"text": "cell a01 load 0.5"}))
    command = [str(record) if part == "RECORD" else part for part in command]
    result = invoke(*command, "-c", config, "--var-dir", misspelt)
    assert_clear_failure(result, f"no MLflow store in {misspelt}", "textperf retrain")
    assert not misspelt.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_var_dir_that_is_a_file_is_named(fleet, tmp_path: Path, command):
    config, _ = fleet
    a_file = tmp_path / "var"
    a_file.write_text("")
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"text": "cell a01 load 0.5"}))
    command = [str(record) if part == "RECORD" else part for part in command]
    result = invoke(*command, "-c", config, "--var-dir", a_file)
    assert_clear_failure(result, f"state directory {a_file}", "is a file")


def test_the_ingest_flow_names_a_var_dir_that_is_a_file(tmp_path: Path, prefect_harness):
    """As the other flows do: the run fails at once with the message, nothing ingested."""
    from flows.ingest import ingest

    a_file = tmp_path / "var"
    a_file.write_text("")
    state = ingest(var_dir=a_file, return_state=True)
    assert state.is_failed()
    assert state.message.startswith(f"the state directory {a_file}"), state.message
    assert a_file.read_text() == ""


def test_a_flow_a_worker_runs_reads_the_var_dir_variable(
    tmp_path: Path, monkeypatch, prefect_harness
):
    """`TEXTPERF_VAR_DIR` reached the CLI only, though the flows' errors named it as a way to
    move the state: a deployment's run put its state in the config's var dir instead."""
    from flows.ingest import ingest

    a_file = tmp_path / "var"
    a_file.write_text("")
    monkeypatch.setenv("TEXTPERF_VAR_DIR", str(a_file))
    state = ingest(return_state=True)
    assert state.is_failed()
    assert state.message.startswith(f"the state directory {a_file}"), state.message


def test_a_flow_given_a_bad_config_fails_with_its_one_line(tmp_path: Path, prefect_harness):
    """A `ConfigError` is a user's mistake too: the run fails with the message naming the file,
    not with two tracebacks in its log."""
    from flows.evaluate import evaluate

    bad = tmp_path / "bad.yaml"
    bad.write_text("registry:\n  champion_alias: latest\n")
    state = evaluate(config=bad, return_state=True)
    assert state.is_failed()
    assert state.message.startswith(f"{bad}: "), state.message


# A hang guard, not a speed check: MLflow's own retries took about four minutes per call.
@pytest.mark.timeout(150)
def test_an_unreachable_tracking_server_fails_quickly_and_says_so(fleet, monkeypatch):
    config, var = fleet
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    result = invoke("models", "list", "-c", config, "--var-dir", var)
    assert_clear_failure(result, "cannot reach the MLflow tracking server http://127.0.0.1:9")


@pytest.mark.parametrize("uri", ["http://exa mple.com", "http://localhost:99999"])
def test_a_malformed_tracking_url_is_named_in_one_line(fleet, monkeypatch, uri: str):
    """requests refuses such a URL before connecting (`InvalidURL`): a traceback."""
    config, var = fleet
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = invoke("models", "list", "-c", config, "--var-dir", var)
    assert_clear_failure(result, f"the MLflow tracking URI {uri!r} is not a valid URL")


def test_a_sqlite_store_named_by_its_uri_must_exist(fleet, tmp_path: Path, monkeypatch):
    """A store named by URI was taken for a server: a misspelt file was never checked, MLflow
    made an empty store there and the command answered about an empty registry."""
    config, var = fleet
    typo = tmp_path / "mlfow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{typo}")
    result = invoke("models", "list", "-c", config, "--var-dir", var)
    assert_clear_failure(result, f"no MLflow store at sqlite:///{typo}")
    assert not typo.exists()


def test_a_deleted_experiment_is_named_with_the_way_back(tmp_path: Path, request):
    """MLflow refuses to set a deleted experiment: every training and adapting command ended in
    its traceback."""
    import mlflow
    from mlflow import MlflowClient

    from regressor.config import ResolvedPaths
    from regressor.errors import UserError
    from regressor.tracking import configure_mlflow

    paths = ResolvedPaths(var_dir=tmp_path / "var")
    experiment = configure_mlflow(paths, "textperf-deleted")
    MlflowClient().delete_experiment(experiment)
    request.addfinalizer(lambda: mlflow.set_tracking_uri(None))
    with pytest.raises(UserError, match=f"experiment 'textperf-deleted' \\(id {experiment}\\) is"):
        configure_mlflow(paths, "textperf-deleted")


def test_every_command_takes_the_store_the_config_names_before_the_environment(
    fleet, tmp_path, monkeypatch
):
    """The config's `paths.tracking_uri` comes first for `models` as for the flows, and
    `--var-dir` moves the state without dropping it (both once fell back to the unreachable
    MLFLOW_TRACKING_URI here)."""
    _, var = fleet
    config = tmp_path / "named.yaml"
    named = {**TINY_APP, "paths": {"tracking_uri": f"sqlite:///{var / 'mlflow.db'}"}}
    config.write_text(yaml.safe_dump(named))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    result = invoke("models", "list", "-c", config, "--var-dir", var)
    assert result.exit_code == 0, result.output
    assert "textperf" in result.output


def test_training_on_too_few_records_fails_before_a_run_is_opened(few):
    config, var = few
    app = load_app_config(config, var)
    paths, source = app.paths.resolve(), load_source_config(app.source)
    data = pipeline.load_dataset(paths, app, source)
    assert data.section_priority == source.section_priority  # in the keys (`training_key`)
    with pytest.raises(ValueError, match=r"too few records to train on: .* train 0"):
        pipeline.train_and_register(app, paths, data)
    client = MlflowClient(tracking_uri=paths.tracking_uri, registry_uri=paths.tracking_uri)
    experiment = client.get_experiment_by_name("textperf")
    assert experiment is None or not client.search_runs([experiment.experiment_id])


def test_the_retrain_flow_without_its_source_folder_fails_at_once_with_the_message(
    tmp_path: Path, prefect_harness
):
    """Not retried (a folder that is not there stays so), and the run's state says it, not a
    trace; without the folder check it read nothing and failed later, at the dataset."""
    from flows.retrain import retrain

    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump(TINY_APP))
    params = {"config": config, "var_dir": tmp_path / "var", "generate_fleet": False}
    state = retrain(**params, return_state=True)
    assert state.is_failed()
    assert "the source folder of 'demo_fleet' is not there" in state.message, state.message
    # the ingest task ran once: its retries (5 + 10 s) are for locks and network file systems
    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=flow_run)
    assert [(run.name.split("-")[0], run.run_count) for run in task_runs] == [("ingest", 1)]


def test_a_due_task_with_too_few_records_is_skipped_not_a_failed_nightly_run(
    tmp_path: Path, prefect_harness
):
    """The holdout task keeps 1 day before its test days: too few shots. The nightly run
    registers its model and reports the adaptation as skipped, with the reason; it used to fail
    after registering, and so would every night until the task gained records."""
    from flows.retrain import retrain

    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump(TINY_APP))
    app = load_app_config(config, tmp_path / "var")
    paths, source = app.paths.resolve(), load_source_config(app.source)
    pipeline.generate(paths, app, source)
    logs = pipeline.source_root(paths, source) / "logs"
    holdout = sorted(folder.name for folder in logs.iterdir())[-1]  # the last task in order
    test_days = TINY_APP["split"]["test_days"]
    for log in sorted((logs / holdout).iterdir())[1:-test_days]:
        log.unlink()
    params = {"config": config, "var_dir": tmp_path / "var", "generate_fleet": False}
    state = retrain(**params, return_state=True)
    assert state.is_completed(), state.message
    text = state.result()
    assert "## Adaptations skipped" in text
    assert f"- `{holdout}`: task '{holdout}' has too few records to adapt to: 1 before" in text
    assert str(MlflowClient().get_model_version_by_alias("textperf", "champion").version) == "1"


def test_the_demo_fleet_is_written_only_where_it_cannot_overwrite_data(tmp_path: Path):
    """`retrain` wrote the demo fleet by default, whatever the source: into a real fleet's
    folder, or cells and logs beside a table source's files."""
    from regressor.config import ResolvedPaths

    paths = ResolvedPaths(var_dir=tmp_path / "var")
    fleet, table = load_source_config("demo_fleet"), load_source_config("c3o")
    assert pipeline.generates_fleet(paths, fleet, None)  # an empty folder: the demo
    root = pipeline.source_root(paths, fleet)
    root.mkdir(parents=True)
    (root / "targets.csv").write_text("cell,day,efficiency\n")
    assert not pipeline.generates_fleet(paths, fleet, None)  # a fleet is there already
    with pytest.raises(pipeline.DataError, match="did not write \\(a real fleet\\?\\)"):
        pipeline.generates_fleet(paths, fleet, True)  # asked for, still not over a real fleet
    (root / "targets.csv").unlink()
    small = load_app_config().model_copy(update={"fleet": FleetSimConfig(n_cells=2, n_days=2)})
    pipeline.generate(paths, small, fleet)
    assert not pipeline.generates_fleet(paths, fleet, None)
    assert pipeline.generates_fleet(paths, fleet, True)  # asked for: the demo is rewritten
    assert not pipeline.generates_fleet(paths, table, None)
    with pytest.raises(pipeline.DataError, match="'c3o' is a table source"):
        pipeline.generates_fleet(paths, table, True)


def test_a_real_fleets_empty_folder_never_gets_the_demo_by_default(tmp_path: Path):
    """A share not mounted at 02:00 (an empty or missing folder) got the demo fleet written
    into it under the real source's name: the nightly trained on it and could promote."""
    from regressor.config import ResolvedPaths

    paths = ResolvedPaths(var_dir=tmp_path / "var")
    demo = load_source_config("demo_fleet")
    real = demo.model_copy(update={"name": "prod", "root": tmp_path / "share", "demo": False})
    assert demo.demo
    assert not pipeline.generates_fleet(paths, real, None)  # missing
    (tmp_path / "share").mkdir()
    assert not pipeline.generates_fleet(paths, real, None)  # empty
    assert pipeline.generates_fleet(paths, real, True)  # asked for by name: still written


def test_predict_says_what_to_do_for_a_model_the_store_lacks_or_a_bare_name(
    fleet: tuple[Path, Path], tmp_path: Path
):
    """MLflow answered "Registered Model with name=nosuch not found" with no next step, and
    read a bare `textperf` as a logged model's id ("Logged model with ID 'textperf' not
    found"), while `models show textperf` took the same name."""
    config, var = fleet
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"text": "<task>\ncell-a01"}))
    store = ("-c", config, "--var-dir", var)
    missing = invoke("predict", "--model", "nosuch@champion", record, *store)
    assert_clear_failure(missing, "no registered model 'nosuch' in sqlite:", "textperf retrain")
    bare = invoke("predict", "--model", "textperf", record, *store)
    assert_clear_failure(bare, "'textperf' is a registered model: name an alias or a version")
    typo = invoke("predict", "--model", "textpref", record, *store)
    assert_clear_failure(typo, "no registered model 'textpref' in sqlite:", "textperf retrain")
    # Three quantiles print as three: the middle one was dropped without a word.
    three = ("-q", "0.05", "-q", "0.5", "-q", "0.95", "--num-samples", "4")
    done = invoke("predict", "--model", "textperf/1", *three, record, *store)
    assert done.exit_code == 0, done.output
    assert all(f"{label} " in done.stdout for label in ("p5", "p50", "p95"))
    # --json: one object a record on stdout, full precision, for scripts.
    done = invoke("predict", "--model", "textperf/1", *three, "--json", "--samples", record, *store)
    assert done.exit_code == 0, done.output
    (line,) = done.stdout.splitlines()
    out = json.loads(line)
    assert (out["record"], out["model"]) == (str(record), "models:/textperf/1")
    assert {"median", "mean", "std", "p5", "p50", "p95"} <= set(out)
    assert len(out["samples"]) == 4


def test_the_models_and_serve_commands_refuse_in_one_line_and_read_the_config(
    fleet: tuple[Path, Path], tmp_path: Path
):
    config, var = fleet
    assert_clear_failure(
        invoke("models", "show", "textperf/99", "-c", config, "--var-dir", var), "textperf/99"
    )
    keep_one = tmp_path / "keep.yaml"
    keep_one.write_text(yaml.safe_dump({**TINY_APP, "schedule": {"prune_keep": 1}}))
    listed = invoke("models", "prune", "--dry-run", "-c", keep_one, "--var-dir", var)
    assert listed.exit_code == 0, listed.output
    assert "kept the newest 1 of each model" in listed.stdout  # it kept 30 whatever the config
    assert invoke("serve", "--limit", "0").exit_code == 2  # no flow run could ever start


def test_ingest_names_each_quarantined_file_once(tmp_path: Path):
    config, var = _ingested(tmp_path, TINY_APP)
    bad = var / "raw" / "demo_fleet" / "cells" / "cell-zz.yaml"
    bad.write_text("machines: [unclosed\n")
    done = invoke("ingest", "-c", config, "--var-dir", var)
    assert done.exit_code == 0, done.output
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("  quarantined")]
    assert line.count("cell-zz.yaml") == 1, line  # "quarantined P: P: reason" before


def test_a_damaged_warehouse_is_named_with_the_way_out(tmp_path: Path):
    """A warehouse cut short (a disk that filled, a copy stopped half-way) is one line naming
    the file, DuckDB's reason and what to do, not DuckDB's traceback."""
    config, var = _ingested(tmp_path, TINY_APP)
    warehouse = var / "warehouse.duckdb"
    warehouse.write_bytes(warehouse.read_bytes()[: warehouse.stat().st_size // 3])
    result = invoke("ingest", "-c", config, "--var-dir", var)
    assert_clear_failure(result, f"warehouse {warehouse} cannot be read", "ingest again")


def test_a_warehouse_another_process_keeps_open_is_named_in_one_line(tmp_path: Path, monkeypatch):
    """A DuckDB shell left open on the warehouse: the ingest waits, then says who to close."""
    from test_warehouse import hold_lock

    from regressor import warehouse

    config, var = _ingested(tmp_path, TINY_APP)
    monkeypatch.setattr(warehouse, "LOCK_TIMEOUT_S", 1.0)  # not two minutes
    holder = hold_lock(var / "warehouse.duckdb", 60)
    try:
        result = invoke("ingest", "-c", config, "--var-dir", var)
    finally:
        holder.kill()
        holder.wait()
    assert_clear_failure(result, "still locked after 1 s", "a DuckDB shell")
