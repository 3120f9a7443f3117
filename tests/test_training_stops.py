"""When `fit` stops and what it keeps: the `min_steps` floor outlasts the clock, validation and
early stopping run on the same steps however short an epoch is, and `select_by: val_error` picks the
checkpoint by its sampled median (real fits of the tiny model)."""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

import lightning as L
import numpy as np
import polars as pl
import pytest
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from regressor.config import CodecConfig, TrainConfig, load_model_config
from regressor.predictor import Predictor
from regressor.training import BestAndLastCheckpoint, RegressionLM, fit
from regressor.vocab import InputTokenizer


def toy_data(n: int) -> tuple[list[str], np.ndarray]:
    x = np.random.default_rng(0).integers(1, 1000, n)
    return [f"load={v}\nqueue={v % 7}" for v in x], x * 1.5


def toy_predictor(texts: list[str]) -> Predictor:
    torch.manual_seed(0)
    tokenizer = InputTokenizer.train(texts, vocab_size=300)
    return Predictor.create(load_model_config("tiny"), CodecConfig(mantissa_digits=3), tokenizer)


def validated_config(max_steps: int, **update: object) -> TrainConfig:
    """A tiny fit that validates every 4 steps."""
    return TrainConfig(
        batch_size=8,
        warmup_steps=0,
        max_steps=max_steps,
        val_every_steps=4,
        precision="32-true",
        progress_bar=False,
        **update,
    )


def assert_weights_of(model: torch.nn.Module, checkpoint: Path | str) -> None:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[f"model.{key}"]), key


def fit_steps(
    tmp_path: Path, n_train: int, logger: CSVLogger | None = None, **update: object
) -> int:
    texts, targets = toy_data(n_train + 8)
    cfg = TrainConfig(
        batch_size=8, warmup_steps=0, precision="32-true", progress_bar=False
    ).model_copy(update=update)
    train, val = (texts[:n_train], targets[:n_train]), (texts[n_train:], targets[n_train:])
    fitted = fit(
        toy_predictor(texts), train, val, cfg, tmp_path, logger=logger or False, resume=False
    )
    return fitted.steps


def test_min_steps_outlasts_the_clock(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A budget of 6 ms stops after the first step; the floor carries the run to 12 steps,
    without a "Time limit reached" line at each of the steps past the clock."""
    clock_only = fit_steps(tmp_path / "clock", 64, max_steps=40, max_minutes=1e-4)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        floored = fit_steps(tmp_path / "floor", 64, max_steps=40, max_minutes=1e-4, min_steps=12)
    assert clock_only < 12
    assert floored == 12
    assert "Time limit reached" not in caplog.text
    assert caplog.text.count("has not been met") == 1


def test_a_short_epoch_validates_and_stops_on_the_same_steps(tmp_path: Path) -> None:
    """24 records in batches of 8 are a 3-step epoch; validation still runs every 30 steps
    across epochs. With a learning rate too small to move a weight the val loss never improves,
    so the run stops when the patience of 2 validations after the first runs out, at step 90
    (validating every epoch with a patience of 2 validations once stopped such runs at step 9)."""
    logger = CSVLogger(tmp_path, name="", version="")
    steps = fit_steps(
        tmp_path,
        24,
        logger=logger,
        lr=1e-12,
        max_steps=500,
        val_every_steps=30,
        early_stopping_patience=2,
    )
    validated = pl.read_csv(tmp_path / "metrics.csv").drop_nulls("val_loss")["step"].to_list()
    assert steps == 90
    assert validated == [29, 59, 89]


@pytest.mark.parametrize(("max_steps", "validated_at"), [(10, [3, 7, 9]), (3, [2])])
def test_the_last_step_is_validated_off_the_interval_too(
    tmp_path: Path, max_steps: int, validated_at: list[int]
) -> None:
    """Validation ran every `val_every_steps` only: the steps after the last one were never
    scored, so a plan of 10 steps validating every 4 returned step 8's model at best, and a
    plan shorter than the interval validated nothing, returning no checkpoint and a NaN score
    (`val_every_steps` beyond `max_steps` also left a stale `best.ckpt` in play)."""
    logger = CSVLogger(tmp_path, name="", version="")
    steps = fit_steps(tmp_path, 64, logger=logger, max_steps=max_steps, val_every_steps=4)
    validated = pl.read_csv(tmp_path / "metrics.csv").drop_nulls("val_loss")["step"].to_list()
    assert steps == max_steps
    assert validated == validated_at


def test_min_steps_above_max_steps_is_refused() -> None:
    with pytest.raises(ValueError, match="min_steps"):
        TrainConfig(max_steps=100, min_steps=200)


def test_select_by_val_error_keeps_the_checkpoint_with_the_best_median(tmp_path: Path) -> None:
    """With `select_by: val_error` the checkpoint and early stopping follow the error of the
    sampled median (logged beside val_loss), and the fit reports that score."""
    texts, targets = toy_data(72)
    cfg = validated_config(24, select_by="val_error", val_error_samples=4)
    logger = CSVLogger(tmp_path, name="", version="")
    train, val = (texts[:64], targets[:64]), (texts[64:], targets[64:])
    result = fit(toy_predictor(texts), train, val, cfg, tmp_path, logger=logger, resume=False)
    logged = pl.read_csv(tmp_path / "metrics.csv").drop_nulls("val_error")
    assert result.monitor == "val_error"
    assert logged.height == 6
    assert logged["val_error"].is_between(0, 2).all()
    assert result.best_val_score == pytest.approx(logged["val_error"].min(), rel=1e-6)


@pytest.mark.parametrize("how", ["moved", "copied, the original reused"])
def test_a_finished_run_moved_elsewhere_resumes_to_its_best_checkpoint(
    tmp_path: Path, how: str
) -> None:
    """Lightning reloads `best_model_path` from the checkpoint as it was: in the old directory.
    Moved, or copied while another run reuses the original, the run still returns the weights
    of the `best.ckpt` it carries."""
    texts, targets = toy_data(72)
    cfg = validated_config(16)
    train, val = (texts[:64], targets[:64]), (texts[64:], targets[64:])
    fit(toy_predictor(texts), train, val, cfg, tmp_path / "run", resume=False)
    if how == "moved":
        shutil.move(tmp_path / "run", tmp_path / "moved")
    else:
        shutil.copytree(tmp_path / "run", tmp_path / "moved")
        other = cfg.model_copy(update={"seed": 1, "lr": 0.01})
        fit(toy_predictor(texts), train, val, other, tmp_path / "run", resume=False)
    shutil.copy(tmp_path / "moved" / "best.ckpt", tmp_path / "carried.ckpt")

    again = toy_predictor(texts)
    result = fit(again, train, val, cfg, tmp_path / "moved", resume=True)
    assert Path(result.best_checkpoint) == tmp_path / "moved" / "best.ckpt"
    assert_weights_of(again.model, tmp_path / "carried.ckpt")


def test_a_run_moved_midway_still_ranks_against_its_old_best(tmp_path: Path) -> None:
    """Resumed in a directory it was moved to, a run keeps its best checkpoint's score: a later,
    worse validation is not saved as a new best (`best-v1.ckpt`) nor returned."""
    texts, targets = toy_data(72)
    train, val = (texts[:64], targets[:64]), (texts[64:], targets[64:])
    cfg = validated_config(40, early_stopping_patience=20)
    first = fit(toy_predictor(texts), train, val, cfg, tmp_path / "run")
    shutil.move(tmp_path / "run", tmp_path / "moved")
    shutil.copy(tmp_path / "moved" / "best.ckpt", tmp_path / "carried.ckpt")

    # Validated after the move on targets a thousand times off: every new score is worse
    longer = validated_config(48, early_stopping_patience=20)
    logger = CSVLogger(tmp_path / "logs", name="", version="")
    off = (val[0], val[1] * 1000)
    again = toy_predictor(texts)
    result = fit(again, train, off, longer, tmp_path / "moved", logger=logger)
    after_move = pl.read_csv(tmp_path / "logs" / "metrics.csv").drop_nulls("val_loss")["val_loss"]
    assert result.steps == 48
    assert after_move.len() == 2
    assert after_move.min() > first.best_val_score
    assert result.best_val_score == pytest.approx(first.best_val_score)
    assert Path(result.best_checkpoint) == tmp_path / "moved" / "best.ckpt"
    assert sorted(p.name for p in (tmp_path / "moved").glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert_weights_of(again.model, tmp_path / "carried.ckpt")


def test_val_error_needs_the_codec() -> None:
    predictor = toy_predictor(toy_data(8)[0])
    with pytest.raises(ValueError, match="codec"):
        RegressionLM(predictor.model, TrainConfig(select_by="val_error"))


@pytest.mark.parametrize("save_every", [7, 10])
def test_without_validation_fit_trains_to_the_plan_and_keeps_the_last_weights(
    tmp_path: Path, save_every: int
) -> None:
    """An empty validation part (a refit on everything): no early stopping and no best-checkpoint
    ranking; the model is the last step's (with EMA the average, as `last.ckpt` saved it), and a
    finished run resumed returns that same model, also from a copy of its directory. A plan that
    ends on a save step (10) once left a copied run's model with the raw, non-averaged weights:
    Lightning restores no `last_model_path` from a directory that moved."""
    texts, targets = toy_data(64)
    cfg = TrainConfig(
        batch_size=8,
        warmup_steps=0,
        max_steps=30,
        val_every_steps=4,
        early_stopping_patience=1,
        checkpoint_every_steps=save_every,  # 7: the end is not a multiple, yet still saved
        ema_decay=0.9,
        precision="32-true",
        progress_bar=False,
    )
    run = tmp_path / "run"
    predictor = toy_predictor(texts)
    result = fit(predictor, (texts, targets), ([], np.array([])), cfg, run, resume=False)
    saved = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    assert result.steps == 30
    assert saved["global_step"] == 30
    assert result.monitor == "last"
    assert Path(result.best_checkpoint).name == "last.ckpt"
    assert not (run / "best.ckpt").exists()
    assert_weights_of(predictor.model, run / "last.ckpt")
    weights = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    # The raw weights (those a resume restores first) are not the average, whether the end
    # was a save step (10) or saved when training ended (7: that save came after the average
    # was put over the live weights, and kept it as the raw ones too)
    raw_differs = any(
        not torch.equal(saved["current_model_state"][f"model.{key}"], value)
        for key, value in weights.items()
    )
    assert raw_differs

    shutil.copytree(run, tmp_path / "copy")
    for resumed_in in (run, tmp_path / "copy"):
        again = toy_predictor(texts)
        fit(again, (texts, targets), ([], np.array([])), cfg, resumed_in, resume=True)
        for key, value in again.model.state_dict().items():
            assert torch.equal(value, weights[key]), resumed_in.name

    # A fresh run in that directory replaces the stale `last.ckpt` with its own last step
    fresh = toy_predictor(texts)
    shorter = cfg.model_copy(update={"max_steps": 20})
    again = fit(fresh, (texts, targets), ([], np.array([])), shorter, run, resume=False)
    assert Path(again.best_checkpoint) == run / "last.ckpt"
    assert [p.name for p in run.glob("*.ckpt")] == ["last.ckpt"]
    assert torch.load(again.best_checkpoint, weights_only=True)["global_step"] == 20
    assert any(not torch.equal(v, weights[k]) for k, v in fresh.model.state_dict().items())


def test_an_early_stopped_fit_resumed_returns_the_same_model(tmp_path: Path) -> None:
    """The checkpoint keeps the patience counter, not the trainer's `should_stop`: resuming a
    finished, early-stopped fit (the training task's retry) trained on to the next
    validation, 4 steps more each time, and could return another best."""
    texts, targets = toy_data(72)
    cfg = validated_config(300, lr=1e-2, early_stopping_patience=1)
    train, val = (texts[:64], targets[:64]), (texts[64:], targets[64:])
    first = fit(toy_predictor(texts), train, val, cfg, tmp_path, resume=False)
    again = toy_predictor(texts)
    resumed = fit(again, train, val, cfg, tmp_path, resume=True)
    assert first.steps < 300
    assert resumed.steps == first.steps
    assert resumed.best_val_score == first.best_val_score
    assert_weights_of(again.model, tmp_path / "best.ckpt")


class FitKilledError(Exception):
    """Stands for a SIGKILL: raised from inside the fit, nothing after it runs."""


class ValidationsLogged(CSVLogger):
    """The validations' (step, val_loss) as Lightning logs them; with `kill_at`, the fit dies
    while logging that step's validation, i.e. inside the validation, before its checkpoint."""

    def __init__(self, save_dir: Path, kill_at: int | None = None) -> None:
        super().__init__(save_dir)
        self.kill_at, self.validations = kill_at, []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if "val_loss" in metrics:
            self.validations.append((step, float(metrics["val_loss"])))
            if step == self.kill_at:
                raise FitKilledError
        super().log_metrics(metrics, step)


def test_a_fit_killed_while_validating_validates_that_step_when_resumed(tmp_path: Path) -> None:
    """`last` was saved at a step before its validation ran: killed during it, the resumed fit
    carried on past the step, which was then never scored (it was the best one here, so the
    resumed fit returned another model) and early stopping counted one validation fewer."""
    texts, targets = toy_data(88)
    train, val = (texts[:48], targets[:48]), (texts[48:], targets[48:])
    cfg = validated_config(60, lr=1e-2, early_stopping_patience=3, checkpoint_every_steps=4)
    unbroken = toy_predictor(texts)
    logged = ValidationsLogged(tmp_path / "logs")
    expected = fit(unbroken, train, val, cfg, tmp_path / "unbroken", logged, resume=False)
    best_step = min(logged.validations, key=lambda v: v[1])[0]
    assert best_step != logged.validations[-1][0]  # a kill there loses something
    with pytest.raises(FitKilledError):
        fit(
            toy_predictor(texts),
            train,
            val,
            cfg,
            tmp_path / "killed",
            ValidationsLogged(tmp_path / "logs", kill_at=best_step),
            resume=False,
        )
    resumed = toy_predictor(texts)
    relogged = ValidationsLogged(tmp_path / "logs")
    again = fit(resumed, train, val, cfg, tmp_path / "killed", relogged, resume=True)
    assert relogged.validations[0][0] == best_step  # scored again, not skipped
    assert (again.steps, again.best_val_score) == (expected.steps, expected.best_val_score)
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, unbroken.model.state_dict()[key]), key


def test_a_stop_held_to_min_steps_stands_when_the_fit_is_resumed(tmp_path: Path) -> None:
    """Patience ran out before `min_steps`, then a validation before the floor improved and
    reset the counter: the fit stopped at the floor, but its retry read the counter, trained
    on past the floor and returned another model."""
    texts, targets = toy_data(88)
    train, val = (texts[:48], targets[:48]), (texts[48:], targets[48:])
    cfg = validated_config(60, lr=1e-2, early_stopping_patience=1, min_steps=40)
    logged = ValidationsLogged(tmp_path / "logs")
    first = fit(toy_predictor(texts), train, val, cfg, tmp_path / "run", logged, resume=False)
    losses = [loss for _, loss in logged.validations]
    assert first.steps == 40  # stopped at the floor, not at the plan's 60
    assert losses[6] > losses[5]  # patience ran out at the 7th validation (step 28)
    assert losses[-1] == min(losses)  # and the last, at the floor, improved: counter at 0
    again = toy_predictor(texts)
    resumed = fit(again, train, val, cfg, tmp_path / "run", resume=True)
    assert (resumed.steps, resumed.best_val_score) == (first.steps, first.best_val_score)


class _Linear(L.LightningModule):
    """The smallest module Lightning trains and validates."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], _: int) -> None:
        self.log("val_loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _SavesRecorded(BestAndLastCheckpoint):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.saved_at: list[int] = []

    def _save_last_checkpoint(self, trainer: L.Trainer, candidates: dict) -> None:
        self.saved_at.append(trainer.global_step)
        super()._save_last_checkpoint(trainer, candidates)


@pytest.mark.parametrize("clock_minutes", [24 * 60, 1e-9])
def test_last_follows_the_steps_while_a_stop_is_held_to_min_steps(
    tmp_path: Path, clock_minutes: float
) -> None:
    """`last` is saved every N steps except just before a validation (which saves it). A
    stop held to `min_steps` (the clock past, the floor ahead: the demo under load) was
    taken for a validation to come, so `last` was saved only at validations: a kill could lose
    `val_every_steps` steps, not `checkpoint_every_steps`."""
    data = TensorDataset(torch.randn(64, 2))
    saves = _SavesRecorded(
        last_every_n_steps=3, dirpath=tmp_path, monitor="val_loss", save_last=True, filename="b"
    )
    clock = Timer(timedelta(minutes=clock_minutes), interval="step", verbose=False)
    trainer = L.Trainer(
        max_steps=30,
        min_steps=30,
        val_check_interval=10,
        check_val_every_n_epoch=None,
        callbacks=[saves, clock],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(_Linear(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=32))
    assert sorted(set(saves.saved_at)) == [3, 6, 9, 10, 12, 15, 18, 20, 21, 24, 27, 30]
