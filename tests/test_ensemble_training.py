"""The pipeline with `ensemble_size: 2`: two members trained on one tokenizer and registered as
one model the pyfunc loads; a retrain killed on the second member resumes it without training
the first again (helpers from `test_reliability_training`)."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import mlflow
import pandas as pd
import torch
import yaml
from mlflow import MlflowClient
from test_reliability_training import (
    KILLABLE_TRAIN,
    client_of,
    conf_dir_with,
    local_paths,
    prepare,
    saved_step,
    sigkill,
    start_child,
    tiny_app,
)

from regressor import ensemble, pipeline, registry
from regressor.config import CONF_DIR, load_source_config
from regressor.environment import TRAINED_WITH, numeric_environment

TINY_PAIR = {**yaml.safe_load((CONF_DIR / "train" / "tiny.yaml").read_text()), "ensemble_size": 2}
KILLABLE_PAIR = {**KILLABLE_TRAIN, "ensemble_size": 2}


def metrics_of(client: MlflowClient, run_id: str) -> dict[str, float]:
    return client.get_run(run_id).data.metrics


def test_pipeline_trains_two_members_and_registers_one_pooled_model(tmp_path: Path) -> None:
    conf = conf_dir_with(tmp_path, "tiny_pair", TINY_PAIR)
    app = tiny_app(tmp_path / "var", train="tiny_pair")
    paths, data = prepare(app)
    try:
        outcome = pipeline.train_and_register(app, paths, data, conf)
        pyfunc = mlflow.pyfunc.load_model(outcome.uri)
        predictor = registry.load_predictor(outcome.uri)
    finally:
        mlflow.set_tracking_uri(None)
    client = client_of(paths)
    run = client.get_run(outcome.run_id)
    per_member = int(run.data.params["n_parameters_per_member"])
    assert int(run.data.params["n_parameters"]) == 2 * per_member == outcome.n_parameters
    assert run.data.params["env.torch_threads"] == str(torch.get_num_threads())
    assert run.data.params["env.torch_version"] == torch.__version__
    metrics = run.data.metrics
    member_steps = [metrics[f"member{i}_train_steps"] for i in (0, 1)]
    assert all(steps > 0 for steps in member_steps)
    assert metrics["train_steps"] == sum(member_steps) == outcome.fit.steps
    assert {"member0_train_seconds", "member1_best_val_loss", "train_seconds"} <= metrics.keys()
    assert client.get_metric_history(outcome.run_id, "member1/train_loss")  # per-member curves

    assert predictor.ensemble_size == 2
    assert predictor.model.num_parameters() == per_member
    assert predictor.metadata[TRAINED_WITH] == numeric_environment()  # in the registered bundle
    assert not list(paths.checkpoints.glob("train-*"))  # removed once registered
    rows = pd.DataFrame({"text": data.splits["test"].texts[:3]})
    out = pyfunc.predict(rows, params={"num_samples": 5, "return_samples": True})
    assert all(len(samples) == 5 for samples in out["samples"])
    assert all(math.isfinite(v) for v in out["median"])


def wait_for_member_checkpoint(
    checkpoints: Path, proc: subprocess.Popen, member: int, min_step: int
) -> Path:
    """Member `member`'s `last.ckpt` in the child's training once it holds `min_step` steps."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the child ended before the kill:\n{proc.stdout.read()[-3000:]}")
        for last in checkpoints.glob(f"train-*/member{member}/last.ckpt"):
            try:
                if saved_step(last) >= min_step:
                    return last
            except (RuntimeError, EOFError, OSError):  # caught mid-write: poll again
                pass
        time.sleep(0.1)
    raise TimeoutError(f"no member{member}/last.ckpt with enough steps in time")


def child_train_pair(var: str, conf: str) -> None:
    from test_reliability_training import child_train

    child_train(var, conf, "killable_pair")


def test_ensemble_retrain_killed_on_member_1_resumes_it_and_keeps_member_0(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    conf = conf_dir_with(tmp_path, "killable_pair", KILLABLE_PAIR)
    proc = start_child(
        "from test_ensemble_training import child_train_pair\n"
        f"        child_train_pair({str(var)!r}, {str(conf)!r})"
    )
    try:
        last = wait_for_member_checkpoint(var / "checkpoints", proc, member=1, min_step=10)
    finally:
        if proc.poll() is None:
            sigkill(proc)
    killed_at = saved_step(last)
    assert 10 <= killed_at < KILLABLE_PAIR["max_steps"]
    ckpt_dir = last.parent.parent
    assert (ckpt_dir / "member0" / ensemble.MEMBER_FIT).is_file()  # member 0 had finished
    first = torch.load(ckpt_dir / "member0" / ensemble.MEMBER_WEIGHTS, weights_only=True)

    app = tiny_app(var, train="killable_pair")
    paths = local_paths(app)
    client = client_of(paths)
    (killed_run,) = client.search_runs([client.get_experiment_by_name("textperf").experiment_id])
    data = pipeline.load_dataset(paths, app, load_source_config(app.source))
    try:
        outcome = pipeline.train_and_register(app, paths, data, conf)
        predictor = registry.load_predictor(outcome.uri)
    finally:
        mlflow.set_tracking_uri(None)

    # Member 0 was loaded, not retrained: no curve in the new run, its recorded steps kept.
    assert client.get_metric_history(outcome.run_id, "member0/train_loss") == []
    metrics = metrics_of(client, outcome.run_id)
    assert metrics["member0_train_steps"] == KILLABLE_PAIR["max_steps"]
    resumed = client.get_metric_history(outcome.run_id, "member1/train_loss")
    assert resumed
    assert min(m.step for m in resumed) >= killed_at  # member 1 went on from its checkpoint
    assert outcome.fit.steps == 2 * KILLABLE_PAIR["max_steps"]
    assert client.get_run(killed_run.info.run_id).info.status == "KILLED"
    assert client.get_run(outcome.run_id).data.tags["resumed_from_run"] == killed_run.info.run_id
    # The registered member 0 holds the weights the killed attempt saved.
    registered = predictor.members[0].state_dict()
    assert all(torch.equal(registered[k], v) for k, v in first.items())
    # ... and where the killed attempt trained them (the bundle's metadata is member 0's)
    trained_with = predictor.metadata[TRAINED_WITH]
    assert trained_with["torch_version"] == numeric_environment()["torch_version"]
    assert not ckpt_dir.exists()
