"""Few-shot adaptation: fine-tune a trained regressor on a handful of a new task's records."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from regressor.config import AdaptConfig, TrainConfig
from regressor.dataset import Examples
from regressor.predictor import Predictor
from regressor.training import FitResult, fit


def latest_shots(pool: Examples, n_shots: int) -> Examples:
    """The most recent `n_shots` records (pools are sorted by period within a task)."""
    return pool.take(np.arange(max(0, len(pool) - n_shots), len(pool)))


def adaptation_train_config(base: TrainConfig, adapt: AdaptConfig, n_train: int) -> TrainConfig:
    return base.model_copy(
        update={
            "lr": adapt.lr,
            "max_steps": adapt.max_steps,
            "max_minutes": adapt.max_minutes,
            "warmup_steps": min(base.warmup_steps, adapt.max_steps // 10),
            "batch_size": max(1, min(base.batch_size, n_train)),
            "val_every_steps": max(1, min(base.val_every_steps, adapt.max_steps // 5)),
        }
    )


def fine_tune(
    base: Predictor,
    shots: Examples,
    adapt: AdaptConfig,
    train_cfg: TrainConfig,
    checkpoint_dir: Path,
) -> tuple[Predictor, FitResult]:
    """Full fine-tuning of a copy of `base`; the last `val_fraction` of the shots stop it early."""
    n_val = max(1, round(len(shots) * adapt.val_fraction))
    if len(shots) - n_val < 1:
        raise ValueError(f"need at least 2 shots to adapt, got {len(shots)}")
    train, val = (
        shots.take(np.arange(len(shots) - n_val)),
        shots.take(np.arange(len(shots) - n_val, len(shots))),
    )
    adapted = copy.deepcopy(base)
    cfg = adaptation_train_config(train_cfg, adapt, len(train))
    result = fit(
        adapted,
        (train.texts, train.targets),
        (val.texts, val.targets),
        cfg,
        checkpoint_dir,
        resume=False,
    )
    return adapted, result
