from __future__ import annotations

from pathlib import Path

import pytest

from regressor.config import (
    CONF_DIR,
    AppConfig,
    CodecConfig,
    ConfigError,
    load_app_config,
    load_model_config,
    load_source_config,
    load_train_config,
)


def test_every_shipped_config_validates():
    app = load_app_config()
    assert app.registry.model_name == "textperf"
    for path in (CONF_DIR / "model").glob("*.yaml"):
        assert load_model_config(path.stem).name == path.stem
    for path in (CONF_DIR / "train").glob("*.yaml"):
        load_train_config(path.stem)
    for path in (CONF_DIR / "sources").glob("*.yaml"):
        load_source_config(path.stem)


def test_a_config_that_leaves_a_section_out_gets_default_yaml_s():
    """A config without `model:` trained `small` while conf/default.yaml picks `mini`. Only the
    codec differs on purpose: without one, every float's decade can be decoded."""
    shipped = load_app_config()
    embedded = AppConfig()
    assert embedded.codec == CodecConfig()
    assert (embedded.codec.exponent_min, embedded.codec.exponent_max) == (-324, 308)
    assert embedded.model_copy(update={"codec": shipped.codec, "paths": shipped.paths}) == shipped


def test_model_and_train_can_be_picked_by_name():
    default = load_app_config()
    picked = load_app_config(model="small", train="small_demo")
    assert (picked.model, picked.train) == ("small", "small_demo")
    assert picked.model_copy(update={"model": default.model, "train": default.train}) == default
    with pytest.raises(ConfigError, match=r"model/nosuch\.yaml"):
        load_app_config(model="nosuch")


def test_unknown_key_names_the_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: small\nmodle: typo\n")
    with pytest.raises(ConfigError, match=r"(?s)bad\.yaml.*modle"):
        load_app_config(path)


def test_malformed_yaml_names_the_file(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_app_config(path)


def test_non_mapping_yaml_is_refused(tmp_path: Path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_app_config(path)


def test_paths_resolve_under_var(tmp_path: Path):
    paths = load_app_config().paths.model_copy(update={"var_dir": tmp_path}).resolve()
    assert paths.warehouse == tmp_path / "warehouse.duckdb"
    assert paths.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_var_dir_override_keeps_the_configured_tracking_server(tmp_path: Path):
    path = tmp_path / "team.yaml"
    path.write_text("paths:\n  tracking_uri: http://mlflow.internal:5000\n")
    app = load_app_config(path, var_dir=tmp_path / "elsewhere")
    assert app.paths.var_dir == tmp_path / "elsewhere"
    assert app.paths.resolve().tracking_uri == "http://mlflow.internal:5000"


def test_a_model_name_that_would_break_a_registry_filter_is_refused(tmp_path: Path):
    path = tmp_path / "quoted.yaml"
    path.write_text("registry:\n  model_name: \"x' or name LIKE '%\"\n")
    with pytest.raises(ConfigError, match=r"(?s)quoted\.yaml.*model_name"):
        load_app_config(path)


def test_several_objectives_are_refused_by_a_pipeline_config(tmp_path: Path):
    """The codec writes several numbers per record, but nothing above it reads them: a run
    failed deep in training with a shape mismatch."""
    path = tmp_path / "two.yaml"
    path.write_text("codec:\n  num_objectives: 2\n")
    with pytest.raises(ConfigError, match=r"(?s)two\.yaml.*num_objectives"):
        load_app_config(path)
    assert CodecConfig(num_objectives=2).num_objectives == 2  # the codec alone still has them


def test_several_objectives_are_refused_by_a_predictor():
    """Nor does a library user's predictor read them: it was created, and its first prediction
    failed with a numpy broadcast error."""
    from regressor.predictor import Predictor
    from regressor.vocab import InputTokenizer

    tokenizer = InputTokenizer.train(["a=1", "b=2"], vocab_size=300)
    with pytest.raises(ValueError, match="codec writes 2"):
        Predictor.create(load_model_config("tiny"), CodecConfig(num_objectives=2), tokenizer)
