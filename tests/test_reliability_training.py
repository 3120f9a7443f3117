"""Kill -9 during training: the retrain resumes from the last checkpoint of the killed attempt.

A child process runs the real steps (generate, ingest, dataset, `train_and_register`) on a tiny
fleet and model; it is SIGKILLed once `last.ckpt` holds a few steps. The rerun (same data, same
configs) resumes from that step with the tokenizer the killed run saved, registers one complete
version, marks the killed MLflow run KILLED and removes the checkpoints. Nothing was registered
while the killed run was alive, so no registry entry points at a half-written artifact.

The helpers here (`tiny_app`, `prepare`, `conf_dir_with`) are shared by the other reliability tests.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import torch
import yaml
from conftest_data import TINY_APP, register_tiny_version
from mlflow import MlflowClient

from regressor import pipeline, registry
from regressor.config import (
    CONF_DIR,
    AppConfig,
    PromotionRule,
    ResolvedPaths,
    load_source_config,
)
from regressor.tracking import configure_mlflow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
# Long enough to be killed mid-way, checkpointed often, never stopped early.
KILLABLE_TRAIN = {
    "batch_size": 8,
    "lr": 0.003,
    "warmup_steps": 2,
    "max_steps": 30,
    "max_minutes": 5.0,
    "val_every_steps": 10,
    "early_stopping_patience": 1000,
    "checkpoint_every_steps": 5,
    "progress_bar": False,
}


def tiny_app(var: Path, **overrides: object) -> AppConfig:
    return AppConfig.model_validate({**TINY_APP, "paths": {"var_dir": str(var)}, **overrides})


def conf_dir_with(root: Path, train_name: str, train: dict) -> Path:
    """A conf dir holding the tiny model and one extra train config."""
    conf = root / "conf"
    (conf / "train").mkdir(parents=True, exist_ok=True)
    shutil.copytree(CONF_DIR / "model", conf / "model", dirs_exist_ok=True)
    shutil.copy(CONF_DIR / "train" / "tiny.yaml", conf / "train" / "tiny.yaml")
    (conf / "train" / f"{train_name}.yaml").write_text(yaml.safe_dump(train))
    return conf


def local_paths(app: AppConfig) -> ResolvedPaths:
    """The app's paths with the local SQLite store, whatever MLFLOW_TRACKING_URI says (MLflow
    exports it on `set_tracking_uri`, so an earlier test in the session may have left it)."""
    return ResolvedPaths(var_dir=app.paths.var_dir.resolve())


def prepare(app: AppConfig, run_id: str = "ingest-1") -> tuple[ResolvedPaths, pipeline.Dataset]:
    """Generate the tiny fleet, ingest it, load the dataset: everything before training."""
    paths = local_paths(app)
    source = load_source_config(app.source)
    pipeline.generate(paths, app, source)
    pipeline.ingest(paths, source, run_id)
    return paths, pipeline.load_dataset(paths, app, source)


def child_train(var: str, conf: str, train_name: str) -> None:
    """The child's job: one retrain's steps up to registration (killed before it ends)."""
    torch.set_num_threads(1)
    app = tiny_app(Path(var), train=train_name)
    paths, data = prepare(app)
    pipeline.train_and_register(app, paths, data, Path(conf))


def child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the child uses the store under its var dir
    return env


def start_child(call: str) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        {call}
    """)
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def saved_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def wait_for_checkpoint(checkpoints: Path, proc: subprocess.Popen, min_step: int) -> Path:
    """The `last.ckpt` of the child's training once it holds `min_step` steps."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the child ended before the kill:\n{proc.stdout.read()[-3000:]}")
        for last in checkpoints.glob("train-*/last.ckpt"):
            try:
                if saved_step(last) >= min_step:
                    return last
            except (RuntimeError, EOFError, OSError):  # caught mid-write: poll again
                pass
        time.sleep(0.2)
    raise TimeoutError("no last.ckpt with enough steps in time")


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def client_of(paths: ResolvedPaths) -> MlflowClient:
    return MlflowClient(tracking_uri=paths.tracking_uri, registry_uri=paths.tracking_uri)


def test_retrain_killed_mid_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    var = tmp_path / "var"
    conf = conf_dir_with(tmp_path, "killable", KILLABLE_TRAIN)
    proc = start_child(
        f"from test_reliability_training import child_train\n"
        f"        child_train({str(var)!r}, {str(conf)!r}, 'killable')"
    )
    try:
        last = wait_for_checkpoint(var / "checkpoints", proc, min_step=10)
    finally:
        if proc.poll() is None:
            sigkill(proc)
    killed_at = saved_step(last)
    ckpt_dir = last.parent
    saved_tokenizer = (ckpt_dir / "tokenizer.json").read_text()
    assert 10 <= killed_at < KILLABLE_TRAIN["max_steps"]

    app = tiny_app(var, train="killable")
    paths = local_paths(app)
    client = client_of(paths)
    # Killed before registration: the registry holds nothing that could point at a partial model.
    assert client.search_model_versions("name='textperf'") == []
    (killed_run,) = client.search_runs([client.get_experiment_by_name("textperf").experiment_id])

    source = load_source_config(app.source)
    data = pipeline.load_dataset(paths, app, source)  # the rerun reads the same warehouse
    try:
        outcome = pipeline.train_and_register(app, paths, data, conf)
    finally:
        mlflow.set_tracking_uri(None)

    assert outcome.fit.steps == KILLABLE_TRAIN["max_steps"]
    history = client.get_metric_history(outcome.run_id, "train_loss")
    assert history
    assert min(m.step for m in history) >= killed_at  # no step trained twice
    assert client.get_run(killed_run.info.run_id).info.status == "KILLED"
    run = client.get_run(outcome.run_id)
    assert run.data.tags["resumed_from_run"] == killed_run.info.run_id
    assert not ckpt_dir.exists()  # removed once registered

    versions = client.search_model_versions("name='textperf'")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(client.get_model_version_by_alias("textperf", "champion").version) == "1"
    mlflow.set_tracking_uri(paths.tracking_uri)
    mlflow.set_registry_uri(paths.tracking_uri)
    try:
        predictor = registry.load_predictor("models:/textperf@champion")
    finally:
        mlflow.set_tracking_uri(None)
    # The same kind of model, reading the token ids it was trained with.
    assert predictor.model.num_parameters() == outcome.n_parameters
    assert predictor.tokenizer._tokenizer.to_str() == _tokenizer_str(saved_tokenizer)
    example = pd.DataFrame([{"text": t} for t in data.splits["test"].texts[:3]])
    medians = predictor.predict_texts(list(example["text"]), num_samples=4)["median"]
    assert all(math.isfinite(v) for v in medians)


def child_train_until_the_gate(var: str) -> None:
    """The child's job: one retrain's steps up to registration, then it stops for good where
    the gate would start (the parent kills it there)."""
    torch.set_num_threads(1)

    def stop_here(*args: object, **kwargs: object) -> None:
        print("registered, gate next", flush=True)
        time.sleep(600)

    registry.gate = stop_here
    app = tiny_app(Path(var))
    paths = local_paths(app)
    data = pipeline.load_dataset(paths, app, load_source_config(app.source))
    pipeline.train_and_register(app, paths, data)


def wait_for_line(proc: subprocess.Popen, marker: str) -> None:
    for line in proc.stdout:  # the child blocks at the marker: the loop cannot hang past it
        if line.startswith(marker):
            return
    raise AssertionError(f"the child ended before {marker!r}")


def test_retrain_killed_between_registering_and_gating_is_gated_by_the_next(
    tmp_path: Path,
) -> None:
    """The next run gates the version the killed run registered (against the champion, scored
    on the same test records), trains and registers nothing, and closes the killed run."""
    var = tmp_path / "var"
    app = tiny_app(var)
    paths, _ = prepare(app)
    configure_mlflow(paths, app.registry.experiment)
    try:
        champion = register_tiny_version(tmp_path, "older")
        registry.gate("textperf", champion, {"spearman": 0.5, "mape": 1.0}, None, PromotionRule())
    finally:
        mlflow.set_tracking_uri(None)
    proc = start_child(
        "from test_reliability_training import child_train_until_the_gate\n"
        f"        child_train_until_the_gate({str(var)!r})"
    )
    try:
        wait_for_line(proc, "registered, gate next")
    finally:
        sigkill(proc)
    client = client_of(paths)
    experiment = client.get_experiment_by_name("textperf").experiment_id
    (killed_run,) = client.search_runs([experiment], "attributes.run_name LIKE 'train-%'")
    assert killed_run.info.status == "RUNNING"
    assert "gate_decision" not in client.get_model_version("textperf", "2").tags

    data = pipeline.load_dataset(paths, app, load_source_config(app.source))
    try:
        outcome = pipeline.train_and_register(app, paths, data)
    finally:
        mlflow.set_tracking_uri(None)

    assert (outcome.version, outcome.reused, outcome.run_id) == ("2", True, killed_run.info.run_id)
    assert [str(v.version) for v in client.search_model_versions("name='textperf'")] == ["2", "1"]
    assert len(client.search_runs([experiment], "attributes.run_name LIKE 'train-%'")) == 1
    decision = registry.read_decision(
        client.get_model_version("textperf", "2").tags["gate_decision"]
    )
    assert decision["champion"] is not None  # compared with version 1, scored just now
    assert decision["reason"].endswith("stopped before its gate")
    verdict = registry.beats(decision["challenger"], decision["champion"], PromotionRule())
    assert decision["promoted"] == verdict[0] == outcome.promoted
    holder = client.get_model_version_by_alias("textperf", "champion").version
    assert str(holder) == ("2" if outcome.promoted else "1")
    assert str(client.get_model_version_by_alias("textperf", "challenger").version) == "2"
    assert client.get_run(killed_run.info.run_id).info.status == "KILLED"
    assert list(paths.checkpoints.iterdir()) == []  # the killed run's checkpoints too


def _tokenizer_str(text: str) -> str:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text).to_str()


def test_two_retrains_of_one_snapshot_register_the_same_weights(tmp_path: Path) -> None:
    """Each process starts torch's generator from a random seed; the initial weights come from
    `train.seed`, so retraining the same data in another process registers the same model (it
    once drew them from whatever state the generator was in)."""
    conf = conf_dir_with(tmp_path, "short", {**KILLABLE_TRAIN, "max_steps": 6})
    registered = []
    for run, generator_state in enumerate((11, 12)):
        app = tiny_app(tmp_path / f"var{run}", train="short")
        paths, data = prepare(app)
        torch.manual_seed(generator_state)  # as another process would find it
        try:
            pipeline.train_and_register(app, paths, data, conf)
            mlflow.set_registry_uri(paths.tracking_uri)
            registered.append(registry.load_predictor("models:/textperf/1").model.state_dict())
        finally:
            mlflow.set_tracking_uri(None)
    for key, value in registered[0].items():
        assert torch.equal(value, registered[1][key]), key


def test_two_runs_with_the_same_key_never_share_a_checkpoint_dir(tmp_path: Path) -> None:
    paths = ResolvedPaths(var_dir=tmp_path)
    with (
        pipeline.training_dir(paths, "k") as first,
        pipeline.training_dir(paths, "k", wait=False) as second,
    ):
        assert first.name == "train-k"
        assert second.name.startswith("train-k-")
    with pipeline.training_dir(paths, "k") as again:  # the lock was released: shared again
        assert again == first


class _Flag(logging.Handler):
    """Sets `event` when a record is logged: here, once a run starts waiting for the lock."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.event.set()


def test_a_run_on_a_busy_key_waits_then_locks_the_directory_the_first_left(tmp_path: Path) -> None:
    """The first run finishes while the second waits on its lock file, removing the directory
    (lock file included) as `train_and_register` does: the second must lock a new directory,
    not the unlinked file, or a third run could take the same key beside it."""
    paths = ResolvedPaths(var_dir=tmp_path)
    waiting = _Flag()
    logging.getLogger(pipeline.__name__).addHandler(waiting)
    held, events = threading.Event(), []

    def first_run() -> None:
        with pipeline.training_dir(paths, "k") as directory:
            held.set()
            assert waiting.event.wait(30)  # the second run is waiting for this lock
            events.append("first finished")
            shutil.rmtree(directory)

    thread = threading.Thread(target=first_run)
    try:
        thread.start()
        assert held.wait(30)
        with pipeline.training_dir(paths, "k") as second:
            events.append("second started")
            assert second.name == "train-k"
            assert (second / ".lock").is_file()
            with pipeline.training_dir(paths, "k", wait=False) as third:
                assert third != second  # the second holds the lock of the new directory
    finally:
        thread.join(30)
        logging.getLogger(pipeline.__name__).removeHandler(waiting)
    assert events == ["first finished", "second started"]


def test_a_run_on_the_shared_directory_removes_what_killed_forced_runs_left(
    tmp_path: Path,
) -> None:
    """Private directories nobody holds are killed forced runs' (never resumed): they go, the
    one of an older version without a lock file too; another key's stay."""
    paths = ResolvedPaths(var_dir=tmp_path)
    killed = paths.checkpoints / "train-k-killed"
    older = paths.checkpoints / "train-k-older"
    other_key = paths.checkpoints / "train-j-killed"
    for left in (killed, older, other_key):
        left.mkdir(parents=True)
        (left / "last.ckpt").write_bytes(b"weights")
    (killed / ".lock").touch()
    with pipeline.training_dir(paths, "k") as directory:
        assert directory.name == "train-k"
        assert not killed.exists()
        assert not older.exists()
    assert other_key.exists()


def test_a_run_on_the_shared_directory_waits_for_a_live_forced_run(tmp_path: Path) -> None:
    """A forced run trains in a private directory; a run on the shared one waits until it
    has registered and gated (its directory is released), then finds its version, rather than
    training the same snapshot again or gating the forced run's version beside it."""
    paths = ResolvedPaths(var_dir=tmp_path)
    waiting = _Flag()
    logging.getLogger(pipeline.__name__).addHandler(waiting)
    forced_in, events = threading.Event(), []

    def forced_run() -> None:
        with pipeline.training_dir(paths, "k", wait=False) as private:
            assert private.name.startswith("train-k-")
            forced_in.set()
            assert waiting.event.wait(30)  # the unforced run is waiting for this directory
            events.append("forced run gated")
            shutil.rmtree(private)  # as `train_and_register` does once gated

    try:
        with pipeline.training_dir(paths, "k"):  # what made the forced run go private
            thread = threading.Thread(target=forced_run)
            thread.start()
            assert forced_in.wait(30)
        with pipeline.training_dir(paths, "k") as shared:
            events.append("unforced run started")
            assert shared.name == "train-k"
            assert [p.name for p in paths.checkpoints.iterdir()] == ["train-k"]
    finally:
        thread.join(30)
        logging.getLogger(pipeline.__name__).removeHandler(waiting)
    assert events == ["forced run gated", "unforced run started"]
