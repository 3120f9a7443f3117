"""Security: no unpickling of models from untrusted places, only safe YAML, SQL only with bound
parameters, a non-root container, and no secret in any log, MLflow param, tag or artifact."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from regressor.config import CodecConfig, load_model_config
from regressor.predictor import WEIGHTS_FILE, Predictor
from regressor.vocab import InputTokenizer

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CODE = sorted(
    p for folder in ("regressor", "flows", "bench") for p in (PROJECT_ROOT / folder).rglob("*.py")
)
# SQL is checked in the library and the flows; bench/ scripts query files they generate.
LIBRARY = [p for p in CODE if p.relative_to(PROJECT_ROOT).parts[0] in {"regressor", "flows"}]
# torch.load without weights_only=True, allowed only where the file is one this process's own
# Lightning trainer just wrote under var/checkpoints, or the call a pipeline process just wrote
# for its training worker into a hand-off directory only its user can open (`fit_worker`); never
# a downloaded or registered artifact.
OWN_CHECKPOINT_LOADS = {"regressor/training.py", "regressor/fit_worker.py"}
SAFE_LOADERS = {"YAML_LOADER", "UniqueKeyLoader", "SafeLoader", "CSafeLoader"}
# f-strings that reach SQL, each with its validation: a table name from code, a checked size.
VALIDATED_SQL_FSTRINGS = {
    ("regressor/warehouse.py", "INSERT INTO {table} BY NAME SELECT * FROM {view}"),
    ("regressor/warehouse.py", "SET memory_limit = '{memory_limit}'"),
    # COPY takes its target as a literal, not a parameter: the path's quotes are doubled, and
    # the query inside is read from sql/.
    (
        "regressor/shards.py",
        "COPY ({inner}) TO '{target}' (FORMAT parquet, PARTITION_BY (shard), "
        "OVERWRITE_OR_IGNORE true)",
    ),
}
# An f-string whose text opens with one of these is SQL, wherever it is built.
SQL_START = re.compile(
    r"^\s*\(?\s*(SELECT|INSERT|UPDATE|DELETE|COPY|CREATE|ALTER|DROP|SET|ATTACH|DETACH|PRAGMA"
    r"|WITH|EXPORT|IMPORT|LOAD|INSTALL)\b"
)


def calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def rel(path: Path) -> str:
    return path.relative_to(PROJECT_ROOT).as_posix()


def keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_no_pickle_modules_are_used() -> None:
    banned = {"pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
    found = []
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            found += [f"{rel(path)}: {n}" for n in names if n in banned]
    assert found == []


def test_torch_load_is_weights_only_outside_own_checkpoints() -> None:
    unsafe = []
    for path in CODE:
        for call in calls(path):
            if dotted(call.func) != "torch.load":
                continue
            flag = keyword(call, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                unsafe.append(rel(path))
    assert set(unsafe) <= OWN_CHECKPOINT_LOADS
    assert "regressor/predictor.py" not in unsafe  # the pyfunc's path to the weights


class Payload:
    """What an attacker would pickle into weights.pt: code that runs on unpickling."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_payload_in_the_weights_is_refused_and_never_runs(tmp_path: Path) -> None:
    texts = [f"n={i}" for i in range(20)]
    predictor = Predictor.create(
        load_model_config("tiny"), CodecConfig(), InputTokenizer.train(texts, 300)
    )
    bundle = predictor.save(tmp_path / "bundle")
    marker = tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, bundle / WEIGHTS_FILE)
    # Strip the checksums: the weights_only loader itself must refuse, not only the checksum.
    meta = (bundle / "bundle.json").read_text()
    data = yaml.safe_load(meta)
    data.pop("checksums")
    data.pop("bundle_sha256")  # bundle.json's own, which the edit would break
    (bundle / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl|unsupported"):
        Predictor.load(bundle)
    assert not marker.exists()


def test_yaml_is_only_read_with_safe_loaders() -> None:
    unsafe = []
    for path in CODE:
        for call in calls(path):
            name = dotted(call.func)
            if name in {
                "yaml.unsafe_load",
                "yaml.full_load",
                "yaml.load_all",
                "yaml.unsafe_load_all",
            }:
                unsafe.append(f"{rel(path)}: {name}")
            if name == "yaml.load":
                loader = keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
                if dotted(loader).split(".")[-1] not in SAFE_LOADERS:
                    unsafe.append(f"{rel(path)}: yaml.load with {dotted(loader) or 'no Loader'}")
    assert unsafe == []


def sql_fstrings(path: Path) -> set[tuple[str, str]]:
    """The f-strings in `path` that read as SQL, wherever they are built (a variable first,
    then `execute(variable)`, is the usual way one slips past a check of the calls)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            if SQL_START.match(text):
                found.add((rel(path), ast.unparse(node)[2:-1]))
    return found


def test_sql_is_never_built_from_f_strings_except_validated_identifiers() -> None:
    built = set()
    for path in LIBRARY:
        built |= sql_fstrings(path)
        for call in calls(path):
            if not isinstance(call.func, ast.Attribute):
                continue
            if call.func.attr not in {"execute", "sql", "query", "executemany", "run_script"}:
                continue
            for arg in call.args[:1]:
                if isinstance(arg, ast.JoinedStr) or (
                    isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Mod | ast.Add)
                ):
                    text = ast.unparse(arg)[2:-1] if isinstance(arg, ast.JoinedStr) else ""
                    built.add((rel(path), text or ast.unparse(arg)))
    assert built <= VALIDATED_SQL_FSTRINGS


def test_the_docker_image_runs_as_a_non_root_user() -> None:
    lines = (PROJECT_ROOT / "docker" / "Dockerfile").read_text().splitlines()
    instructions = [line.split(None, 1) for line in lines if line.strip() and line[0] != "#"]
    last_from = max(i for i, parts in enumerate(instructions) if parts[0].upper() == "FROM")
    users = [parts[1].strip() for parts in instructions[last_from:] if parts[0].upper() == "USER"]
    assert users, "the final stage never switches away from root"
    assert users[-1].split(":")[0] not in {"root", "0"}


SECRETS = {
    "MLFLOW_TRACKING_PASSWORD": "s3cr3t-mlflow-0f1e2d",
    "MLFLOW_TRACKING_TOKEN": "s3cr3t-token-9a8b7c",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t-aws-5d4c3b2a",
    "POSTGRES_PASSWORD": "s3cr3t-db-77aa66bb",
    "PREFECT_API_DATABASE_PASSWORD": "s3cr3t-pg-1234abcd",
}


def files_holding(folder: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {n.decode()}" for n in needles if n in data]
    return hits


@pytest.fixture
def prefect_console_restored() -> Iterator[None]:
    """After a flow ran under `capfd`, Prefect's console log handler can be left writing to that
    test's captured stream, closed at its end: every later flow run in the session then failed
    on its first log line. Set up before `capfd`, this is torn down after it, and points such a
    handler back at the session's stderr."""
    yield
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and handler.stream.closed:
            handler.stream = sys.stderr  # not setStream: it flushes the closed one
            handler.console.file = sys.stderr


def test_secrets_in_the_environment_reach_no_log_param_or_artifact(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_console_restored: None,
    capfd: pytest.CaptureFixture,
    prefect_harness,
) -> None:
    from test_reliability_training import TINY_APP

    from flows.retrain import retrain

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # this run's store under var/
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump(TINY_APP))
    var = tmp_path / "var"
    report = retrain(config=config, var_dir=var, adapt=False)
    out, err = capfd.readouterr()
    needles = [v.encode() for v in SECRETS.values()]
    assert (var / "mlflow.db").is_file()
    assert list((var / "mlartifacts").rglob("MLmodel"))  # a model was logged: there is a haystack
    assert files_holding(var, needles) == []  # MLflow store, artifacts, warehouse, checkpoints
    assert files_holding(Path(os.environ["PREFECT_HOME"]), needles) == []  # Prefect's db, logs
    for text in (out, err, report):
        assert not [v for v in SECRETS.values() if v in text]
    # And the logged model is code plus plain files: no pickle among its artifacts.
    artifacts = [p.name for p in (var / "mlartifacts").rglob("*") if p.is_file()]
    assert not [n for n in artifacts if n.endswith((".pkl", ".pickle", ".joblib"))]
