"""Resume after a kill: `fit` in a subprocess is SIGKILLed once `last.ckpt` exists; a rerun with
`resume=True` carries on from the saved global step instead of starting again at 0, and ends
with the very weights of a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from regressor.config import CodecConfig, TrainConfig, load_model_config
from regressor.predictor import Predictor
from regressor.training import fit
from regressor.vocab import InputTokenizer

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def toy_data() -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.integers(1, 1000, 480)
    texts = [f"load={v}\nqueue={v % 7}" for v in x]
    targets = x * 1.5
    return (texts[:400], targets[:400]), (texts[400:], targets[400:])


def toy_predictor(dropout: float = 0.0) -> Predictor:
    torch.manual_seed(0)
    (texts, _), _ = toy_data()
    tokenizer = InputTokenizer.train(texts, vocab_size=300)
    model_cfg = load_model_config("tiny").model_copy(update={"dropout": dropout})
    return Predictor.create(model_cfg, CodecConfig(mantissa_digits=3), tokenizer)


def train_config(max_steps: int, shuffle_fields: bool = False) -> TrainConfig:
    return TrainConfig(
        batch_size=8,
        max_steps=max_steps,
        max_minutes=10,
        warmup_steps=5,
        val_every_steps=50,
        early_stopping_patience=1000,  # never stop early: the kill must come first
        checkpoint_every_steps=5,
        progress_bar=False,
        shuffle_fields=shuffle_fields,
    )


def toy_setup(max_steps: int, randomized: bool) -> tuple[Predictor, TrainConfig]:
    """`randomized` turns on the training's own randomness (dropout, shuffled fields), which a
    resume must replay; the killed, resumed and unbroken runs all take their setup from here."""
    predictor = toy_predictor(dropout=0.2 if randomized else 0.0)
    return predictor, train_config(max_steps, shuffle_fields=randomized)


def run_fit(checkpoint_dir: str, max_steps: int, randomized: bool = False) -> None:
    """The subprocess' job: a long fit that will be killed mid-way."""
    predictor, cfg = toy_setup(max_steps, randomized)
    fit(predictor, *toy_data(), cfg, Path(checkpoint_dir), resume=False)


def saved_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def wait_for_progress(path: Path, process: subprocess.Popen, min_step: int, timeout: float) -> int:
    """Poll until last.ckpt holds at least `min_step` steps; returns that step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before it could be killed"
        if path.exists():
            try:
                step = saved_step(path)
            except (RuntimeError, EOFError, OSError):  # caught mid-write: try again
                step = -1
            if step >= min_step:
                return step
        time.sleep(0.2)
    raise TimeoutError("no last.ckpt in time")


def kill_mid_fit(ckpt_dir: Path, max_steps: int, min_step: int, randomized: bool = False) -> int:
    """Start `run_fit` in a subprocess, SIGKILL it once `last.ckpt` holds `min_step` steps;
    returns the step that `last.ckpt` was left at."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(PROJECT_ROOT / "tests")!r})
        from test_training_resume import run_fit
        run_fit({str(ckpt_dir)!r}, {max_steps}, {randomized})
    """)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env)
    try:
        wait_for_progress(ckpt_dir / "last.ckpt", process, min_step=min_step, timeout=300)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return saved_step(ckpt_dir / "last.ckpt")


def test_fit_resumes_from_the_saved_step_after_sigkill(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    killed_at = kill_mid_fit(ckpt_dir, 100_000, min_step=20)
    assert killed_at >= 20

    logger = CSVLogger(tmp_path / "logs", name="resume")
    result = fit(
        toy_predictor(), *toy_data(), train_config(killed_at + 12), ckpt_dir, logger, resume=True
    )
    assert result.steps == killed_at + 12
    logged = pl.read_csv(Path(logger.log_dir) / "metrics.csv")
    steps = logged.filter(pl.col("train_loss").is_not_null())["step"]
    assert len(steps) > 0
    assert steps.min() >= killed_at


def test_a_killed_and_resumed_fit_ends_with_the_weights_of_an_unbroken_one(tmp_path: Path) -> None:
    """Dropout and shuffled fields draw at every step: a resume replays those draws, not new
    ones, so being killed does not change the model a seed gives."""
    max_steps = 400  # long enough that the kill lands mid-way, on any machine
    killed_at = kill_mid_fit(tmp_path / "resumed", max_steps, min_step=20, randomized=True)
    assert 20 <= killed_at < max_steps
    for run, resume in (("resumed", True), ("unbroken", False)):
        predictor, cfg = toy_setup(max_steps, randomized=True)
        fit(predictor, *toy_data(), cfg, tmp_path / run, resume=resume)

    resumed, unbroken = (
        torch.load(tmp_path / run / "last.ckpt", map_location="cpu", weights_only=False)
        for run in ("resumed", "unbroken")
    )
    assert resumed["global_step"] == unbroken["global_step"] == max_steps
    for name, value in unbroken["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, rtol=0, atol=0)


def test_ema_weights_are_validated_checkpointed_and_returned(tmp_path: Path) -> None:
    """With `ema_decay` the best checkpoint holds the averaged weights (the raw ones ride along
    for resuming) and `fit` returns the model with the averaged weights loaded."""
    cfg = train_config(30).model_copy(update={"ema_decay": 0.9, "val_every_steps": 10})
    predictor = toy_predictor()
    result = fit(predictor, *toy_data(), cfg, tmp_path, resume=False)
    assert result.steps == 30
    saved = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    assert {"current_model_state", "averaging_state"} <= saved.keys()
    returned = {f"model.{k}": v for k, v in predictor.model.state_dict().items()}
    for name, value in saved["state_dict"].items():
        torch.testing.assert_close(returned[name], value)
    raw = saved["current_model_state"]
    assert any(not torch.equal(raw[k], v) for k, v in saved["state_dict"].items())


@pytest.mark.parametrize("validated", [True, False])
def test_an_ema_fits_final_last_checkpoint_keeps_the_raw_weights(
    tmp_path: Path, validated: bool
) -> None:
    """`last.ckpt` holds the average as its weights and the raw ones to resume from. The final
    save ran after the averaging callback had put the average over the live weights, so both
    were the average: a finished run continued to more steps went on from the average."""
    cfg = train_config(12).model_copy(
        update={"ema_decay": 0.5, "val_every_steps": 5, "warmup_steps": 0, "lr": 1e-2}
    )
    train, val = toy_data()
    fit(
        toy_predictor(),
        train,
        val if validated else ([], np.array([])),
        cfg,
        tmp_path,
        resume=False,
    )
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 12
    raw, averaged = last["current_model_state"], last["state_dict"]
    assert any(not torch.equal(raw[k], v) for k, v in averaged.items())


def test_an_ema_fit_ending_within_warmup_returns_the_trained_weights(tmp_path: Path) -> None:
    """The average starts after warmup; before, Lightning's was the initial weights, which a
    refit ending within warmup (no validation) returned, untrained."""
    cfg = train_config(4).model_copy(update={"ema_decay": 0.9, "warmup_steps": 10, "lr": 1e-2})
    predictor = toy_predictor()
    initial = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    (texts, targets), _ = toy_data()
    fit(predictor, (texts, targets), ([], np.array([])), cfg, tmp_path, resume=False)
    trained = predictor.model.state_dict()
    assert all(not torch.equal(initial[k], trained[k]) for k in initial if "norm" not in k)


def test_a_truncated_last_checkpoint_starts_the_fit_over(tmp_path: Path) -> None:
    """A kill mid-copy of `last.ckpt` (a var dir on another file system) left it truncated, and
    every resume of that snapshot then failed reading it, until someone deleted it."""
    predictor, cfg = toy_setup(12, randomized=False)
    fit(predictor, *toy_data(), cfg, tmp_path, resume=False)
    last = tmp_path / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    again, _ = toy_setup(12, randomized=False)
    result = fit(again, *toy_data(), cfg, tmp_path, resume=True)
    assert result.steps == 12
    assert saved_step(last) == 12


def test_a_fresh_fit_clears_the_checkpoints_an_earlier_run_left(tmp_path: Path) -> None:
    """`resume=False` beside an earlier run's files: before, this run saved `last-v1.ckpt` and
    left the earlier `last.ckpt`, which a kill then `resume=True` would have carried on from."""
    predictor, cfg = toy_setup(12, randomized=False)
    fit(predictor, *toy_data(), cfg, tmp_path, resume=False)
    assert saved_step(tmp_path / "last.ckpt") == 12
    predictor, cfg = toy_setup(7, randomized=False)
    fit(predictor, *toy_data(), cfg, tmp_path, resume=False)
    # this run's own: `best` is its last step's, the one validation off the 50-step interval
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert saved_step(tmp_path / "last.ckpt") == 7
    assert saved_step(tmp_path / "best.ckpt") == 7
