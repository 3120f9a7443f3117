"""Training ensembles: each member's seed and checkpoint directory, training the members one
after the other (resumable after a kill), and their fits summed up.

Members differ in their training seed (seed, seed + 1000, .. as in `bench/accuracy.py`), so
one training config describes them all, and in a mixed ensemble (`SourceText.mixed_target_forms`)
every other member learns the target itself instead of its ratio to the baseline
(`absolute_members_of`). The predictor side (pooling samples, the bundle) is in
`regressor.predictor`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import torch

from regressor.config import MEMBER_SEED_STEP, TrainConfig
from regressor.dataset import Examples
from regressor.environment import TRAINED_WITH
from regressor.predictor import Predictor, sha256_file
from regressor.training import FitResult, RunLogger, fit_examples

SEED_STRIDE = MEMBER_SEED_STEP  # the config bounds the last member's seed by it


def member_config(cfg: TrainConfig, i: int) -> TrainConfig:
    """Member i's training config: its own seed; member 0 keeps `cfg.seed`, so a one-member
    ensemble trains exactly as a single model."""
    return cfg if i == 0 else cfg.model_copy(update={"seed": cfg.seed + SEED_STRIDE * i})


def absolute_members_of(ensemble_size: int, mixed_target_forms: bool) -> tuple[int, ...]:
    """The members of a mixed ensemble that learn the target itself: the odd ones, so member 0
    keeps the source's relative form and K members split about evenly (c3o: runtime and runtime
    per MB err on different records; pooled, 5 members beat 5 of either form on validation,
    README "Accuracy")."""
    return tuple(range(1, ensemble_size, 2)) if mixed_target_forms else ()


def member_dir(directory: Path, i: int, ensemble_size: int) -> Path:
    """Member i's checkpoints: the directory itself for a single model (as before ensembles),
    `member<i>/` under it otherwise, so members never resume from each other's checkpoints."""
    return directory if ensemble_size == 1 else directory / f"member{i}"


def combine_fits(results: Sequence[FitResult]) -> FitResult:
    """The fit of an ensemble: steps and seconds are the members' totals (what it cost), the best
    validation score is the mean over the members that validated (the pooled model has no loss of
    its own: it is scored on samples), the checkpoint member 0's. One member: its own result."""
    if len(results) == 1:
        return results[0]
    scores = [r.best_val_score for r in results if math.isfinite(r.best_val_score)]
    return FitResult(
        steps=sum(r.steps for r in results),
        seconds=sum(r.seconds for r in results),
        best_val_score=sum(scores) / len(scores) if scores else float("nan"),
        best_checkpoint=results[0].best_checkpoint,
        monitor=results[0].monitor,
        processes=max(r.processes for r in results),
        n_train=results[0].n_train,  # every member trains on the same records
        n_val=results[0].n_val,
    )


# A finished ensemble member in its checkpoint subdirectory: its best weights, then its FitResult
# with their checksum. The FitResult is written last, so it marks the member as done: a rerun
# after a kill loads such members instead of training them again.
MEMBER_WEIGHTS = "weights.pt"
MEMBER_FIT = "fit.json"


def save_finished_member(directory: Path, member: Predictor, fitted: FitResult) -> None:
    weights = directory / MEMBER_WEIGHTS
    torch.save(member.model.state_dict(), weights.with_suffix(".tmp"))
    os.replace(weights.with_suffix(".tmp"), weights)  # atomic: a kill leaves no half file
    record = {
        "fit": asdict(fitted),
        "sha256": sha256_file(weights),
        TRAINED_WITH: member.metadata.get(TRAINED_WITH),  # what `fit` recorded, for the bundle
    }
    tmp = directory / f"{MEMBER_FIT}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, directory / MEMBER_FIT)


def load_finished_member(directory: Path, member: Predictor) -> FitResult | None:
    """Load a member finished by an earlier attempt into `member`; None if it did not finish
    (or its weights are not the ones it recorded: then it trains again)."""
    weights, done = directory / MEMBER_WEIGHTS, directory / MEMBER_FIT
    if not done.is_file() or not weights.is_file():
        return None
    record = json.loads(done.read_text())
    if sha256_file(weights) != record["sha256"]:
        return None
    member.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    member.model.eval()
    if record.get(TRAINED_WITH):  # records written before it have none
        member.metadata[TRAINED_WITH] = record[TRAINED_WITH]
    return FitResult(**record["fit"])


def train_member(
    template: Predictor,
    train: Examples,
    val: Examples,
    cfg: TrainConfig,
    directory: Path,
    logger: RunLogger,
    absolute: bool = False,
) -> tuple[Predictor, FitResult]:
    """One ensemble member, learning the target itself if `absolute` (else the template's
    form): loaded if an earlier attempt finished it, else trained with `fit` (resuming its own
    `last.ckpt` if an attempt was killed while training it)."""
    directory.mkdir(parents=True, exist_ok=True)
    member = Predictor.create(
        template.model_config,
        template.codec_config,
        template.tokenizer,
        template.priority,
        template.relative_to,
        absolute_members=(0,) if absolute else (),
        seed=cfg.seed,  # its initial weights: its own, and the same on a rerun
    )
    fitted = load_finished_member(directory, member)
    if fitted is None:
        fitted = fit_examples(member, train, val, cfg, directory, logger=logger, resume=True)
        save_finished_member(directory, member, fitted)
    return member, fitted


def train_ensemble(
    template: Predictor,
    train: Examples,
    val: Examples,
    cfg: TrainConfig,
    ckpt_dir: Path,
    tracking_uri: str,
    run_id: str,
    absolute_members: Sequence[int] = (),
) -> tuple[Predictor, FitResult]:
    """`cfg.ensemble_size` members one after the other, member i with seed `seed + 1000 i`
    (`member_config`) in `ckpt_dir/member<i>`, all reading `template`'s tokenizer, those in
    `absolute_members` learning the target itself. Each member's curves are logged as
    `member<i>/train_loss` .., its totals as `member<i>_...`."""
    size = cfg.ensemble_size
    configs = [member_config(cfg, i) for i in range(size)]
    mlflow.log_params({f"member{i}_seed": member_cfg.seed for i, member_cfg in enumerate(configs)})
    if absolute_members:
        mlflow.log_param("absolute_members", ",".join(map(str, absolute_members)))
    members, fits = [], []
    for i, member_cfg in enumerate(configs):
        # Not ending the run when a member's fit returns (`RunLogger`): the next members still
        # train in it, and a kill must leave it RUNNING for the pipeline's `_note_resume`.
        logger = RunLogger(tracking_uri=tracking_uri, run_id=run_id, prefix=f"member{i}")
        directory = member_dir(ckpt_dir, i, size)
        absolute = i in absolute_members
        member, fitted = train_member(template, train, val, member_cfg, directory, logger, absolute)
        metrics = {
            f"member{i}_train_steps": fitted.steps,
            f"member{i}_train_seconds": fitted.seconds,
            f"member{i}_best_{fitted.monitor}": fitted.best_val_score,
        }
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        members.append(member)
        fits.append(fitted)
    return Predictor.ensemble(members), combine_fits(fits)
