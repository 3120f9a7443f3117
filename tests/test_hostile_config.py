"""Hostile configuration files: each is refused early with a ConfigError naming the file (and
the field, for an invalid setting) and saying what is wrong; never a raw traceback from yaml,
pydantic or the OS, and never taken with an absurd value. Real files under tmp_path."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from regressor.config import (
    CONF_DIR,
    ConfigError,
    load_app_config,
    load_model_config,
    load_source_config,
    load_train_config,
)
from regressor.training import check_trainer_settings

TABLE = {
    "name": "t",
    "adapter": "table",
    "root": "data",
    "files": ["*.csv"],
    "target_columns": ["y"],
}
RUNS = {"name": "r", "adapter": "runs", "root": "data", "target_field": "y", "task_field": "app"}
FLEET = {"name": "f", "adapter": "fleet", "root": "data"}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def app_file(tmp_path: Path, data: dict) -> Path:
    return write(tmp_path / "app.yaml", yaml.safe_dump(data))


def source_file(tmp_path: Path, data: dict) -> str:
    return str(write(tmp_path / "source.yaml", yaml.safe_dump(data)))


def conf_with_train(tmp_path: Path, text: str) -> Path:
    """A conf dir holding the shipped default, model and train files plus train/t.yaml."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf, ignore=shutil.ignore_patterns("sources"))
    write(conf / "train" / "t.yaml", text)
    return conf


# --- The file itself -------------------------------------------------------------------------


def test_a_directory_is_refused_naming_it(tmp_path: Path):
    folder = tmp_path / "conf.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"conf\.yaml: is a directory"):
        load_app_config(folder)
    with pytest.raises(ConfigError, match=r"conf\.yaml: is a directory"):
        load_source_config(str(folder))


@pytest.mark.timeout(20)
def test_a_fifo_is_refused_instead_of_blocking(tmp_path: Path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"pipe\.yaml: not a regular file"):
        load_app_config(fifo)


def test_a_huge_file_is_refused_unparsed(tmp_path: Path):
    path = write(tmp_path / "huge.yaml", "model: mini\n" + "# padding\n" * 500_000)
    with pytest.raises(ConfigError, match=r"huge\.yaml: larger than"):
        load_app_config(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n"])
def test_an_empty_or_comment_only_file_is_refused(tmp_path: Path, text: str):
    """A truncated file would otherwise run the whole pipeline on defaults."""
    path = write(tmp_path / "truncated.yaml", text)
    with pytest.raises(ConfigError, match=r"truncated\.yaml: empty"):
        load_app_config(path)
    conf = conf_with_train(tmp_path, text)
    with pytest.raises(ConfigError, match=r"train/t\.yaml: empty"):
        load_train_config("t", conf)


def test_non_utf8_bytes_are_refused_with_their_place(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model: mini\nsource: d\xe9mo\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 21, line 2\)"):
        load_app_config(path)


# --- YAML that parses into something other than what was written ----------------------------


@pytest.mark.parametrize(
    "text",
    [
        "model: small\nmodel: tiny\n",  # the last one used to win silently
        "split:\n  test_days: 3\n  test_days: 30\n",
    ],
)
def test_a_repeated_key_is_refused_with_its_line(tmp_path: Path, text: str):
    path = write(tmp_path / "dup.yaml", text)
    with pytest.raises(ConfigError, match=r"(?s)dup\.yaml: not valid YAML: duplicate key.*line"):
        load_app_config(path)


def test_a_repeated_key_in_a_source_config_is_refused(tmp_path: Path):
    path = write(tmp_path / "dup.yaml", yaml.safe_dump(TABLE) + "target_columns: [z]\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: not valid YAML: duplicate key"):
        load_source_config(str(path))


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path):
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 8)]
    path = write(tmp_path / "bomb.yaml", "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml: .*YAML bomb"):
        load_app_config(path)


def test_nesting_too_deep_is_a_config_error_not_a_recursion_error(tmp_path: Path):
    path = write(tmp_path / "deep.yaml", "paths: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: not valid YAML"):
        load_app_config(path)


# --- Absurd values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("adapt", "lr", ".inf"),
        ("adapt", "max_minutes", ".inf"),
        ("adapt", "lr", "1.0e+9"),
        ("eval", "quantiles", "[.nan, 0.1, 0.9]"),
        ("fleet", "start_date", "yesterday"),
        ("fleet", "seed", "-1"),  # failed in numpy, after the fleet folder was marked
        ("codec", "exponent_max", "100000000"),
    ],
)
def test_an_absurd_app_setting_is_refused_naming_the_field(
    tmp_path: Path, section: str, field: str, value: str
):
    path = write(tmp_path / "absurd.yaml", f"{section}:\n  {field}: {value}\n")
    with pytest.raises(ConfigError, match=rf"(?s)absurd\.yaml: .*{section}\.{field}"):
        load_app_config(path)


@pytest.mark.parametrize(
    ("section", "text", "why"),
    [
        ("adapt", "n_shots: yes", "is a boolean"),  # YAML 1.1: yes is true, pydantic took 1
        ("fleet", "noise: on", "is a boolean"),
        ("split", "holdout_task: no", "is a boolean"),  # a cell named "no": quote it
        ("split", "test_days: 1000000", "less than or equal"),  # overflowed the calendar
        ("registry", "experiment: ../outside", "should match pattern"),  # a store folder
        ("registry", "promotion: {lower_is_better: [mapee]}", "mapee not one of"),
        ("registry", "promotion: {higher_is_better: [mape]}", "mape not one of"),
        ("paths", "var_dir: ''", "is empty"),  # the project root itself
    ],
)
def test_a_setting_that_ran_wrong_or_failed_late_is_refused_at_load(
    tmp_path: Path, section: str, text: str, why: str
):
    """Each loaded before: a misspelt promotion metric failed the gate with a KeyError on the
    first night with a champion, after training and registering."""
    path = write(tmp_path / "late.yaml", f"{section}:\n  {text}\n")
    with pytest.raises(ConfigError, match=rf"(?s)late\.yaml: .*{section}.*{why}"):
        load_app_config(path)


def test_a_yaml_date_and_a_home_relative_var_dir_are_read_as_meant(tmp_path: Path):
    path = write(tmp_path / "ok.yaml", "fleet:\n  start_date: 2026-02-01\npaths:\n  var_dir: ~/s\n")
    app = load_app_config(path)
    assert app.fleet.start_date == "2026-02-01"  # unquoted, YAML gave a date
    assert app.paths.resolve().var_dir == Path.home() / "s"  # not <project>/~/s


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("batch_size: yes\n", "batch_size: True is a boolean"),
        ("seed: -5\n", "seed"),  # failed in seed_everything, inside the run
        ("seed: 4294967000\nensemble_size: 2\n", "last member's seed 4294968000"),
    ],
)
def test_a_train_setting_that_failed_mid_run_is_refused_at_load(
    tmp_path: Path, text: str, why: str
):
    conf = conf_with_train(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"(?s)train/t\.yaml: .*{why}"):
        load_train_config("t", conf)


@pytest.mark.parametrize(
    ("base", "update", "why"),
    [
        (TABLE, {"config_columns": ["y", "x"]}, "config_columns holds the target column"),
        (TABLE, {"key_columns": ["y"]}, "key_columns holds the target column"),
        (TABLE, {"config_columns": ["x"], "exclude_columns": ["z"]}, "only without"),
        (RUNS, {"config_fields": ["vm", "y"]}, "config_fields holds the target field y"),
        (FLEET, {"section_priority": ["Task", "period", "config", "logs"]}, "Task not one of"),
        (TABLE, {"section_priority": ["task", "task", "config"]}, "each section it orders once"),
    ],
    ids=["target-in-config", "target-in-key", "exclude-unused", "runs", "typo", "twice"],
)
def test_a_source_reading_its_target_or_misordering_its_text_is_refused(
    tmp_path: Path, base: dict, update: dict, why: str
):
    """The target in the input: the model read the answer. A misspelt section was ignored and
    the real one moved last, the first cut."""
    with pytest.raises(ConfigError, match=rf"(?s)source\.yaml: .*{why}"):
        load_source_config(source_file(tmp_path, {**base, **update}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("champion_alias", "v1"),  # MLflow's: refused at the gate, after training
        ("champion_alias", "latest"),  # MLflow reads it as the newest version
        ("challenger_alias", "Latest"),
        ("champion_alias", "7"),  # `NAME/7` is version 7
        ("champion_alias", "a b"),
        ("writer_limit", "a/b"),  # Prefect's: refused at the first ingest on a server
    ],
)
def test_a_name_mlflow_or_prefect_would_refuse_is_refused_at_load(
    tmp_path: Path, field: str, value: str
):
    section = "orchestration" if field == "writer_limit" else "registry"
    path = write(tmp_path / "names.yaml", f"{section}:\n  {field}: '{value}'\n")
    with pytest.raises(ConfigError, match=rf"(?s)names\.yaml: .*{section}"):
        load_app_config(path)


def test_the_champion_and_challenger_aliases_must_differ(tmp_path: Path):
    path = write(tmp_path / "same.yaml", "registry:\n  challenger_alias: champion\n")
    with pytest.raises(ConfigError, match=r"(?s)same\.yaml: .*must differ"):
        load_app_config(path)


def test_the_dask_runner_without_its_package_is_refused_at_load(tmp_path: Path, monkeypatch):
    """Without prefect-dask, a run failed once its model was registered, at its first
    adaptations spread out, and wrote no report. `None` in sys.modules: not importable."""
    monkeypatch.setitem(sys.modules, "prefect_dask", None)
    path = write(tmp_path / "dask.yaml", "orchestration:\n  task_runner: dask\n")
    with pytest.raises(ConfigError, match=r"(?s)dask\.yaml: .*textperf\[dask\]"):
        load_app_config(path)


def test_fleet_days_past_the_calendar_are_refused_when_loaded(tmp_path: Path):
    """An OverflowError half-way through writing the demo fleet, before."""
    path = write(tmp_path / "late.yaml", "fleet:\n  start_date: '9999-12-30'\n  n_days: 5\n")
    with pytest.raises(ConfigError, match=r"(?s)late\.yaml: .*5 days from 9999-12-30 run past"):
        load_app_config(path)


@pytest.mark.parametrize(
    "text", ["lr: .inf\n", "lr: 1.0e+9\n", "max_minutes: .inf\n", "grad_clip: .inf\n"]
)
def test_a_non_finite_or_absurd_train_setting_is_refused(tmp_path: Path, text: str):
    conf = conf_with_train(tmp_path, text)
    field = text.split(":", maxsplit=1)[0]
    with pytest.raises(ConfigError, match=rf"(?s)train/t\.yaml: .*{field}"):
        load_train_config("t", conf)


@pytest.mark.parametrize(
    ("sizes", "field"),
    [
        ({"d_model": 10**9}, "d_model"),  # a typo that used to fail only when built
        ({"d_ff": 10**7}, "d_ff"),
        ({"input_vocab_size": 5 * 10**7}, "input_vocab_size"),
        # each within its cap, together ~13e9 parameters
        ({"d_model": 8192, "d_ff": 32768, "n_encoder_layers": 24}, "parameters"),
    ],
)
def test_an_absurd_model_size_is_refused_at_load(tmp_path: Path, sizes: dict, field: str):
    conf = conf_with_train(tmp_path, "")
    base = yaml.safe_load((CONF_DIR / "model" / "base.yaml").read_text())
    write(conf / "model" / "huge.yaml", yaml.safe_dump(base | sizes | {"name": "huge"}))
    with pytest.raises(ConfigError, match=rf"(?s)model/huge\.yaml: .*{field}"):
        load_model_config("huge", conf)
    assert load_model_config("base", conf).approx_parameters < 6e7  # the paper's size loads


def test_fp16_on_the_cpu_is_refused(tmp_path: Path):
    """Lightning trained it in bf16 with a warning, while the optimiser took it for fp16."""
    conf = conf_with_train(tmp_path, "precision: 16-mixed\n")
    with pytest.raises(ConfigError, match=r"(?s)train/t\.yaml: .*16-mixed needs a GPU"):
        load_train_config("t", conf)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("strategy: dpp\n", "strategy 'dpp' is not one Lightning knows"),
        ("accelerator: gpux\n", "accelerator 'gpux' is none of auto, cpu, cuda, gpu"),
        pytest.param(
            "accelerator: gpu\n",
            "accelerator 'gpu': this machine has none",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
    ],
)
def test_a_strategy_or_accelerator_lightning_refuses_is_named_before_any_work(
    tmp_path: Path, text: str, said: str
):
    """They passed the config and failed when `L.Trainer` was built, after the ingest and the
    dataset, and a nightly run tried again a minute later."""
    cfg = load_train_config("t", conf_with_train(tmp_path, text))
    with pytest.raises(ConfigError, match=re.escape(f"train/t.yaml: {said}")):
        check_trainer_settings(cfg, str(tmp_path / "conf" / "train" / "t.yaml"))
    check_trainer_settings(load_train_config("tiny_ddp"), "tiny_ddp.yaml")  # DDP on CPUs


@pytest.mark.parametrize("devices", [0, -3])
def test_devices_must_be_positive_or_auto(tmp_path: Path, devices: int):
    conf = conf_with_train(tmp_path, f"devices: {devices}\n")
    with pytest.raises(ConfigError, match=r"(?s)train/t\.yaml: .*devices"):
        load_train_config("t", conf)
    assert load_train_config("tiny_ddp").devices == 2


@pytest.mark.parametrize("quantiles", [[0.25, 0.75], [], [0.1, 0.9, 1.5]])
def test_eval_quantiles_must_hold_the_q10_q90_interval(tmp_path: Path, quantiles: list):
    """The metrics read q10 and q90: without them evaluation failed with KeyError after training."""
    path = app_file(tmp_path, {"eval": {"quantiles": quantiles}})
    with pytest.raises(ConfigError, match=r"(?s)app\.yaml: .*eval\.quantiles"):
        load_app_config(path)
    wider = app_file(tmp_path, {"eval": {"quantiles": [0.05, 0.1, 0.5, 0.9, 0.95]}})
    assert load_app_config(wider).eval.quantiles == (0.05, 0.1, 0.5, 0.9, 0.95)


def test_split_fractions_must_leave_configurations_to_train_on(tmp_path: Path):
    path = app_file(tmp_path, {"split": {"test_fraction": 0.6, "val_fraction": 0.5}})
    with pytest.raises(ConfigError, match=r"(?s)app\.yaml: .*split: test_fraction \+ val_fraction"):
        load_app_config(path)


def test_an_unknown_timezone_is_refused(tmp_path: Path):
    """Prefect's Cron takes any timezone string; the schedule would then never fire as meant."""
    path = app_file(tmp_path, {"schedule": {"timezone": "Mars/Olympus"}})
    with pytest.raises(ConfigError, match=r"(?s)app\.yaml: .*schedule\.timezone"):
        load_app_config(path)


# --- Files the app config names ------------------------------------------------------------------


@pytest.mark.parametrize(("key", "folder"), [("model", "model"), ("train", "train")])
def test_a_model_or_train_file_the_config_names_must_exist(tmp_path: Path, key: str, folder: str):
    """Checked when the config loads, not after ingest in the middle of the nightly flow; the
    message lists the names there are."""
    path = app_file(tmp_path, {key: "nosuch"})
    shipped = f"no {folder} config named 'nosuch'; conf/{folder}/ has .*tiny"
    with pytest.raises(ConfigError, match=rf"{folder}/nosuch\.yaml: {shipped}"):
        load_app_config(path)


def test_an_unknown_source_lists_the_sources_and_a_path_is_not_taken_for_a_name() -> None:
    with pytest.raises(ConfigError, match=r"named 'nosuch'; .* has c3o, deepperf"):
        load_source_config("nosuch")
    for given in ("bad.json", "conf/sources"):  # were read as bad.json.yaml, conf/sources.yaml
        with pytest.raises(ConfigError, match="a name under conf/sources/ or a YAML file"):
            load_source_config(given)


@pytest.mark.parametrize("name", ["../train/demo", "/etc/passwd", "..", "sub/dir"])
def test_a_model_name_cannot_point_outside_conf(tmp_path: Path, name: str):
    path = app_file(tmp_path, {"model": name})
    with pytest.raises(ConfigError, match=r"(?s)app\.yaml: .*model: String should match"):
        load_app_config(path)


# --- Source configs ------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [TABLE, RUNS, FLEET], ids=["table", "runs", "fleet"])
@pytest.mark.parametrize(
    "bounds", [{"target_min": 5.0, "target_max": 1.0}, {"target_min": 2.0, "target_max": 2.0}]
)
def test_a_reversed_or_empty_target_range_is_refused(tmp_path: Path, base: dict, bounds: dict):
    """Every target would be quarantined as absurd."""
    with pytest.raises(ConfigError, match=r"(?s)source\.yaml: .*target_min .* must be below"):
        load_source_config(source_file(tmp_path, {**base, **bounds}))


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_a_non_finite_target_bound_is_refused(tmp_path: Path, value: str):
    path = write(tmp_path / "source.yaml", yaml.safe_dump(TABLE) + f"target_max: {value}\n")
    with pytest.raises(ConfigError, match=r"(?s)source\.yaml: .*table\.target_max"):
        load_source_config(str(path))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("path_pattern", "(unclosed"),
        ("log_window_s", 0),
        ("log_window_s", -5),
        ("report_files", []),
    ],
)
def test_an_absurd_runs_setting_is_refused(tmp_path: Path, field: str, value: object):
    with pytest.raises(ConfigError, match=rf"(?s)source\.yaml: .*runs\.{field}"):
        load_source_config(source_file(tmp_path, {**RUNS, field: value}))


def test_a_source_error_names_the_field_without_pydantic_union_noise(tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        load_source_config(source_file(tmp_path, {**TABLE, "targt_min": 1}))
    message = str(caught.value)
    assert "table.targt_min: Extra inputs are not permitted" in message
    assert "tagged-union" not in message
    assert "errors.pydantic.dev" not in message


@pytest.mark.parametrize("base", [TABLE, RUNS, FLEET], ids=["table", "runs", "fleet"])
@pytest.mark.parametrize("name", ["", "../x", "a/b"])
def test_a_source_name_must_be_a_plain_name(tmp_path: Path, base: dict, name: str):
    """It keys the source's warehouse rows and starts its record ids (`name/task/key`)."""
    adapter = base["adapter"]
    with pytest.raises(ConfigError, match=rf"(?s)source\.yaml: .*{adapter}\.name"):
        load_source_config(source_file(tmp_path, {**base, "name": name}))


# --- The command line ------------------------------------------------------------------------


def test_the_cli_reports_a_bad_config_in_one_line_not_a_traceback(tmp_path: Path):
    """`textperf` (regressor.cli:main) prints the ConfigError and exits 2, the usage-error code."""
    path = write(tmp_path / "dup.yaml", "model: small\nmodel: tiny\n")
    cmd = [sys.executable, "-m", "regressor.cli", "ingest", "--config", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"Error: {path}: not valid YAML: duplicate key")


def test_an_empty_var_dir_option_is_refused_naming_the_option():
    """`--var-dir ""` (or TEXTPERF_VAR_DIR=) put state into the project root; then a traceback."""
    named = r"(?s)--var-dir \(TEXTPERF_VAR_DIR\): .*var_dir: is empty"
    with pytest.raises(ConfigError, match=named):
        load_app_config(var_dir=Path(""))
