"""Lightning training of the encoder-decoder: bucketed batches, bf16-mixed where the CPU has it
in hardware (else fp32), AdamW + cosine."""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
    Timer,
)
from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.plugins.environments import ClusterEnvironment
from lightning.pytorch.strategies import Strategy, StrategyRegistry
from torch.utils.data import DataLoader, Dataset, Sampler

from regressor.config import ConfigError, TrainConfig
from regressor.dataset import Examples
from regressor.environment import (
    TRAINED_WITH,
    launched_rank,
    numeric_environment,
    resolve_precision,
)
from regressor.errors import UserError
from regressor.model import EncoderDecoder
from regressor.numbers import NumberCodec
from regressor.predictor import Predictor, pad_batch
from regressor.sampling import finite_median, sample
from regressor.serialize import shuffle_section_lines


def _drop_advertising(record: logging.LogRecord) -> bool:
    """Lightning prints a tip for a hosted logger at every fit; nightly logs do not need it."""
    return not str(record.msg).startswith("💡 Tip")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_advertising)
# Lightning 2.6 calls an API torch 2.13 deprecated, once per fit: noise until Lightning updates.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# `fit` is given a directory of its own that holds the tokenizer and, after a kill, the
# checkpoints to resume from: a non-empty directory is the design, not a mistake.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


class EncodedExamples(Dataset):
    """Token ids of each input text and the codec tokens of its target."""

    # Whether items are drawn anew each epoch: the sampler then hands out (index, epoch) keys.
    keyed_by_epoch = False

    def __init__(self, input_ids: list[list[int]], target_ids: torch.Tensor) -> None:
        assert len(input_ids) == len(target_ids)
        self.input_ids = input_ids
        self.target_ids = target_ids  # long [N, codec.seq_len]
        self.lengths = np.array([len(row) for row in input_ids])

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> tuple[list[int], torch.Tensor]:
        return self.input_ids[i], self.target_ids[i]


class ShuffledFields(EncodedExamples):
    """Training examples whose text is re-serialized with its section lines in a new random
    order at every epoch (`TrainConfig.shuffle_fields`), then tokenized afresh.

    Example i in epoch e uses the generator seeded (seed, i, e): the order is a function of where
    training stands, not of how many draws came before, so a resumed run replays it (and a
    loader worker's copy of the dataset needs no shared counter).
    Batches are bucketed by the canonical order's length: BPE merges across line breaks make a
    new order somewhat longer (a guide, not a bound; the collator pads to the real length).
    """

    keyed_by_epoch = True

    def __init__(
        self, texts: Sequence[str], target_ids: torch.Tensor, predictor: Predictor, seed: int
    ) -> None:
        super().__init__(predictor.encode_texts(texts), target_ids)
        self.texts = list(texts)
        self.encode = predictor.encode_texts
        self.seed = seed

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[int], torch.Tensor]:
        i, epoch = key
        rng = np.random.default_rng((self.seed, i, epoch))
        return self.encode([shuffle_section_lines(self.texts[i], rng)])[0], self.target_ids[i]


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length, so a batch pads only to its own longest input.

    Each epoch shuffles, cuts the order into pools of `pool_batches` batches, sorts each pool by
    length and shuffles the resulting batches: near-uniform length per batch, random batch order.
    Under DDP every rank builds the same batches (same seed) and takes every `world_size`-th one,
    so ranks share the work; the batch count is cut to a multiple of the world size so that all
    ranks take the same number of steps.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int = 0,
        pool_batches: int = 50,
        rank_and_world: tuple[int, int] | None = None,
        keyed_by_epoch: bool = False,
    ) -> None:
        self.lengths = lengths
        self.keyed_by_epoch = keyed_by_epoch  # yield (index, epoch) keys: see `ShuffledFields`
        self.batch_size = batch_size
        self.seed = seed
        self.pool = batch_size * pool_batches
        self.epoch = 0  # the epoch the next `__iter__` starts
        self.consumed = 0  # batches of the current epoch trained on (see `RegressionLM`)
        self._skip = 0  # batches to skip at the next `__iter__`: set by a resume
        self._rank_and_world = rank_and_world  # None: ask torch.distributed when iterating

    def rank_and_world(self) -> tuple[int, int]:
        if self._rank_and_world is not None:
            return self._rank_and_world
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _, world = self.rank_and_world()
        n_batches = math.ceil(len(self.lengths) / self.batch_size)
        return max(1, n_batches // world) if world > 1 else n_batches

    def state_dict(self) -> dict[str, int]:
        """Where training stands: the epoch in progress and the batches of it already used."""
        return {"epoch": max(0, self.epoch - 1), "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue a killed run: the next `__iter__` replays that epoch's order past `consumed`."""
        self.epoch, self._skip = state["epoch"], state["consumed"]

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        self.epoch += 1
        skip, self._skip = self._skip, 0
        self.consumed = skip
        batches = self._epoch_batches(np.random.default_rng(self.seed + epoch))[skip:]
        if self.keyed_by_epoch:
            batches = [[(i, epoch) for i in batch] for batch in batches]
        yield from batches

    def _epoch_batches(self, rng: np.random.Generator) -> list[list[int]]:
        order = rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start : start + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [
                pool[i : i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size)
            ]
        shuffled = [batches[i] for i in rng.permutation(len(batches))]
        rank, world = self.rank_and_world()
        if world > 1:
            shuffled = (shuffled * world)[: len(self) * world][rank::world]
        return shuffled


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning saves in checkpoints, so a resumed run continues the
    interrupted epoch with the batches it had not seen (the same order as an unbroken run)."""

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)


@dataclass(frozen=True)
class Collator:
    pad_id: int
    bos_id: int

    def __call__(self, items: Sequence[tuple[list[int], torch.Tensor]]) -> dict[str, torch.Tensor]:
        src, mask = pad_batch([ids for ids, _ in items], self.pad_id)
        target = torch.stack([t for _, t in items])  # [B, T]
        bos = torch.full((len(items), 1), self.bos_id, dtype=torch.long)
        # Teacher forcing: the decoder sees [bos, t0 .. t_{T-2}] and predicts [t0 .. t_{T-1}].
        return {
            "src": src,
            "mask": mask,
            "tgt_in": torch.cat([bos, target[:, :-1]], 1),
            "tgt": target,
        }


def warmup_cosine(warmup: int, total: int, floor: float = 0.05):
    """LR multiplier: linear warmup to 1, cosine decay to `floor` at `total` steps."""

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule


class RegressionLM(L.LightningModule):
    """Cross-entropy on the number tokens; the encoder-decoder itself lives in `regressor.model`."""

    def __init__(
        self, model: EncoderDecoder, train_cfg: TrainConfig, codec: NumberCodec | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.train_cfg = train_cfg
        self.codec = codec  # needed by `select_by: val_error`, which decodes
        if train_cfg.select_by == "val_error" and codec is None:
            raise ValueError("select_by val_error decodes numbers: give RegressionLM the codec")
        self.save_hyperparameters(train_cfg.model_dump(mode="json"))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(batch["src"], batch["mask"], batch["tgt_in"])  # [B, T, V]
        return F.cross_entropy(logits.float().flatten(0, 1), batch["tgt"].flatten())

    def count_consumed_batch(self) -> None:
        """Checkpoints are written after the optimiser step of this batch, so they see it used."""
        sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None)
        if isinstance(sampler, BucketBatchSampler):
            sampler.consumed += 1

    def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        self.count_consumed_batch()
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["src"]))
        self.log("tokens", float(batch["mask"].sum()), reduce_fx="sum", batch_size=1)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], _: int) -> None:
        n = len(batch["src"])
        # Under DDP every rank validates on all of `val`; the mean over ranks (a no-op on one)
        # is what each rank's checkpointing and early stopping then agree on.
        self.log("val_loss", self.loss(batch), prog_bar=True, batch_size=n, sync_dist=True)
        if self.train_cfg.select_by == "val_error":
            error = self.median_error(batch)  # sampled: each rank draws its own
            self.log("val_error", error, prog_bar=True, batch_size=n, sync_dist=True)

    def median_error(self, batch: dict[str, torch.Tensor]) -> float:
        """Mean |median - y| / max(|median|, |y|) over the batch's records (and objectives): the
        error of the point estimate users get (the median of the finite draws),
        bounded in [0, 2] and defined at y = 0; a record with no finite draw scores the worst, 2.
        The draws use a generator seeded the same at every validation, so checkpoints differ
        only in their weights."""
        generator = torch.Generator().manual_seed(self.train_cfg.seed)
        k = self.train_cfg.val_error_samples
        draws = sample(self.model, self.codec, batch["src"], batch["mask"], k, generator=generator)
        if draws.ndim == 3:  # [B, K, M]: one column per objective, as finite_median expects
            draws = draws.transpose(0, 2, 1).reshape(-1, k)
        median = finite_median(draws)  # [B * M]
        actual = self.codec.decode(batch["tgt"]).reshape(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            error = np.abs(median - actual) / np.maximum(np.abs(median), np.abs(actual))
        error = np.where(median == actual, 0.0, error)  # 0 / 0 when both are 0
        return float(np.mean(np.where(np.isfinite(error), error, 2.0)))

    def _fused(self) -> bool:
        return self.train_cfg.precision != "16-mixed"

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by norm here, not through the precision plugin: it refuses any fused optimizer,
        a rule that matters only for fp16's loss scaler (bf16 and fp32 gradients are unscaled)."""
        if not self._fused():
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
        elif gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), gradient_clip_val)

    def configure_optimizers(self):
        cfg = self.train_cfg
        # No weight decay on norms and biases (1-D parameters), as usual for transformers.
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(0.9, 0.98),
            # The fused kernel is several times faster on a CPU than the per-tensor loop; fp16's
            # loss scaler cannot unscale for it, so that precision keeps the foreach loop.
            fused=self._fused(),
            foreach=not self._fused(),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(cfg.warmup_steps, cfg.max_steps)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def encode_examples(
    predictor: Predictor, texts: Sequence[str], targets: np.ndarray
) -> EncodedExamples:
    """Token ids of texts and targets; a `UserError` when a target is beyond the number codec's
    range: it was written clamped (5e13 as 9.999e12 with `exponent_max: 12`), a wrong label."""
    codec = predictor.codec
    outside = np.asarray(targets, dtype=np.float64).reshape(-1)[codec.unwritable(targets)]
    if len(outside):
        raise UserError(
            f"{len(outside)} of {len(targets)} targets (as learned, e.g. {outside[0]:.4g}) lie "
            f"outside the number codec's range (codec.exponent_min {codec.exponent_min}, "
            f"exponent_max {codec.exponent_max}): widen it in the config, or quarantine them "
            "at ingest with the source's target_min and target_max"
        )
    return EncodedExamples(predictor.encode_texts(texts), codec.encode(targets))


def make_loader(
    data: EncodedExamples, codec: NumberCodec, pad_id: int, cfg: TrainConfig, shuffle: bool
) -> DataLoader:
    collate = Collator(pad_id, codec.bos_id)
    sampler = BucketBatchSampler(
        data.lengths,
        cfg.batch_size,
        cfg.seed if shuffle else 0,
        keyed_by_epoch=data.keyed_by_epoch,
    )
    if not shuffle:
        order = np.argsort(data.lengths, kind="stable")
        batches = [
            order[i : i + cfg.batch_size].tolist() for i in range(0, len(order), cfg.batch_size)
        ]
        return DataLoader(
            data, batch_sampler=batches, collate_fn=collate, num_workers=cfg.num_workers
        )
    return ResumableLoader(
        data, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers
    )


class BestAndLastCheckpoint(ModelCheckpoint):
    """`best.ckpt` judged at each validation, and `last.ckpt` refreshed every N training steps.

    Plain `every_n_train_steps` would also rank `best` at those steps, against a val_loss that
    may be many steps stale; here ranking stays on validation and only `last` follows the steps,
    so a run killed at any moment resumes from at most N steps back.
    """

    def __init__(self, last_every_n_steps: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last_every_n_steps = last_every_n_steps
        self._last_written_at = -1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if trainer.global_step % self.last_every_n_steps == 0 and not (
            self._should_skip_saving_checkpoint(trainer) or self._validates_next(trainer)
        ):
            saved_at = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_written_at = trainer.global_step
            # Lightning skips any save at a step already saved: keep `best` possible at this
            # step's validation, which runs right after this hook.
            self._last_global_step_saved = saved_at

    def _validates_next(self, trainer: L.Trainer) -> bool:
        """Whether Lightning validates right after this step: every `val_check_batch` steps
        (counted across epochs), or once something stopped the fit and `min_steps` lets it
        stop (before the floor a stop is held, and nothing validates off the plan). A `last`
        saved before that validation, and a kill during it, resumed past it: the step was
        never scored, so it could not be the best, and early stopping counted one validation
        fewer. Its own save (`on_validation_end`) writes `last` instead, with it done."""
        if self.monitor is None:  # no validation set: nothing validates
            return False
        floor = trainer.fit_loop.min_steps or 0
        stopping = trainer.should_stop and trainer.global_step >= floor
        return stopping or trainer.global_step % int(trainer.val_check_batch) == 0

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning forgets the best score of a run resumed in another directory ("dirpath has
        changed"), so its next validation, however worse, became a new best (`best-v1.ckpt`)
        and the model `fit` returned. A directory moved or copied whole carries its files: the
        saved paths are read as those files here."""
        if self.dirpath:
            state_dict = _rebased(state_dict, Path(self.dirpath))
        super().load_state_dict(state_dict)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """`last` at the final step too, wherever the plan, the clock or early stopping ended
        it (Lightning's own end-of-training save is skipped once any `last` was written)."""
        super().on_train_end(trainer, pl_module)
        self.save_final_last(trainer)

    def save_final_last(self, trainer: L.Trainer) -> None:
        """`last` at the final step, unless one was written there (by this or by the step's
        validation). `EMAAfterWarmup` calls it before it puts the average over the live
        weights, which a save after that would keep as the raw ones too."""
        step = trainer.global_step
        if step not in (self._last_written_at, self._last_global_step_saved):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_written_at = step


def _rebased(state: dict[str, Any], dirpath: Path) -> dict[str, Any]:
    """A checkpoint callback's saved state with its file paths moved into `dirpath`, when it was
    saved in another directory and every file it names is in `dirpath` by the same name (else
    as saved: Lightning then keeps only `best_model_path`, which `fit` does not trust)."""
    saved = state.get("dirpath")
    if not saved or Path(saved) == dirpath:
        return state

    def moved(path: str) -> str:
        return str(dirpath / Path(path).name) if path else path

    best_k = state.get("best_k_models", {})
    paths = [state["best_model_path"], state.get("last_model_path", ""), *best_k]
    if not all(Path(moved(p)).exists() for p in paths if p):
        return state
    return {
        **state,
        "dirpath": str(dirpath),
        "best_model_path": moved(state["best_model_path"]),
        "kth_best_model_path": moved(state.get("kth_best_model_path", "")),
        "last_model_path": moved(state.get("last_model_path", "")),
        "best_k_models": {moved(p): score for p, score in best_k.items()},
    }


class ValidateTheLastStep(Callback):
    """Stops the fit at `max_steps` through `should_stop`, on which Lightning validates (it
    validates every `val_check_interval` steps, and not when the plan runs out): the steps
    after the last interval were never scored, so a plan that is not a multiple of the
    interval returned an earlier model, and one shorter than it validated nothing."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class StepSeededRandomness(Callback):
    """Seeds torch's generator before each training step from (seed, step, rank), so the step's
    random draws (dropout) are a function of where training stands. Lightning's checkpoints do
    not carry the generator's state: without this, a run resumed after a kill drew other dropout
    masks than an unbroken one and ended with another model. Each rank draws its own masks."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        key = [self.seed, trainer.global_step, trainer.global_rank]
        torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0]))


def _averaging(cfg: TrainConfig) -> list[Callback]:
    """The EMA callback when configured; it starts after warmup, when the weights stop rushing."""
    if cfg.ema_decay is None:
        return []
    return [EMAAfterWarmup(decay=cfg.ema_decay, update_starting_at_step=cfg.warmup_steps)]


class EMAAfterWarmup(EMAWeightAveraging):
    """The moving average of the weights from `update_starting_at_step` on; before that, the
    weights themselves. Lightning's average is the initial weights until its first update, and
    is what validation scores, checkpoints hold and `fit` returns: a validation during warmup
    scored the untrained model, and a fit ending within warmup shipped it."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if trainer.global_step - 1 >= (self.update_starting_at_step or 0):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, i)
            return
        average = self._average_model
        assert average is not None
        average.update_parameters(pl_module)  # with nothing averaged yet, a copy
        average.n_averaged.zero_()  # so the first real update copies again, as before

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final `last` first (`BestAndLastCheckpoint.save_final_last`): Lightning runs
        checkpoint callbacks after this one, whose end puts the average over the live weights,
        and a `last` saved then held the average as the raw weights to resume from."""
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, BestAndLastCheckpoint):
                callback.save_final_last(trainer)
        super().on_train_end(trainer, pl_module)


class RunLogger(MLFlowLogger):
    """Lightning's curves in an MLflow run the caller started and ends.

    Lightning's `finalize` marks the run FINISHED when `fit` returns, while the caller still
    evaluates and registers in it: a kill then left a run reading FINISHED that never finished,
    and a later run could not tell it was killed. The caller's `mlflow.start_run` block ends it.

    Nor does it log the module's hyperparameters: the caller logs the train config as
    `train.*` params, and Lightning's copy under bare names (`lr`, `batch_size`, ...) put each
    of them in the run twice (an ensemble's members would also clash on their seeds, which
    MLflow refuses as a param logged again with another value).

    With a `prefix`, the curves are `<prefix>/train_loss`, `<prefix>/val_loss` ...: several fits
    in one run (ensemble members, an adaptation and its from-scratch reference), which the
    MLflow UI groups by prefix.
    """

    LOGGER_JOIN_CHAR = "/"

    def finalize(self, status: str = "success") -> None:
        pass

    def log_hyperparams(self, params: Any) -> None:
        pass


def fit_examples(
    predictor: Predictor,
    train: Examples,
    val: Examples,
    cfg: TrainConfig,
    checkpoint_dir: Path,
    logger: Logger | bool = False,
    resume: bool = True,
) -> FitResult:
    """`fit` on examples: the decoder learns what `predictor.model_targets` says (the target, or
    its ratio to the record's own baseline when the predictor learns relative targets)."""
    return fit(
        predictor,
        (train.texts, predictor.model_targets(train)),
        (val.texts, predictor.model_targets(val)),
        cfg,
        checkpoint_dir,
        logger=logger,
        resume=resume,
    )


@dataclass(frozen=True)
class FitResult:
    steps: int
    seconds: float
    best_val_score: float  # the best value of `monitor`, which picked `best_checkpoint`
    best_checkpoint: str
    monitor: str = "val_loss"  # TrainConfig.select_by
    processes: int = 1  # that trained it together: the DDP world size
    # Records it trained on and validated on (0: a result recorded before they were counted).
    n_train: int = 0
    n_val: int = 0


def load_checkpoint_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """The model's weights from a `RegressionLM` Lightning checkpoint (its `model.` entries; with
    EMA those are the averaged weights), strictly: every parameter must be there."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})


def _discard_checkpoints(checkpoint_dir: Path) -> None:
    """A fresh start clears what an earlier run saved here: kept, its files would push this run's
    to `best-v1.ckpt` / `last-v1.ckpt`, and a kill then a `resume=True` would carry on from the
    earlier run's `last.ckpt`. Every rank of a DDP run clears before `trainer.fit`, whose setup
    waits for all of them before any step, so none deletes what another has saved."""
    for pattern in ("best*.ckpt", "last*.ckpt"):
        for stale in checkpoint_dir.glob(pattern):
            stale.unlink(missing_ok=True)


def _readable(checkpoint: Path) -> bool:
    """Whether a checkpoint loads. Lightning saves to a temporary file and moves it into place,
    which across file systems (a mounted var dir) is a copy: a kill mid-copy left a truncated
    `last.ckpt` that every later resume of the snapshot failed on, until deleted by hand."""
    try:
        torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, empty, not a checkpoint at all
        logging.getLogger(__name__).warning(
            "%s cannot be read (%s: %s): training starts over", checkpoint, type(exc).__name__, exc
        )
        return False
    return True


def _result_checkpoint(checkpoint: ModelCheckpoint, checkpoint_dir: Path, validating: bool) -> str:
    """The checkpoint whose weights `fit` returns: the best validation's, or without validation
    the last step's as `last.ckpt` saved them (with EMA, the average), so a finished run resumed
    returns the same model as the unbroken one.

    The callback's path first, if it lies in `checkpoint_dir`, else the file there. A run
    resumed from a directory moved or copied whole has its paths rebased (`_rebased`); one
    copied in part (say `last.ckpt` alone) keeps Lightning's view: no `last_model_path`, so the
    model would keep the raw, non-averaged weights of a run whose plan ended on a save step,
    and a `best_model_path` in the old directory, gone once moved or reused by another run
    since the copy.
    """
    known = checkpoint.best_model_path if validating else checkpoint.last_model_path
    if known and Path(known).resolve().parent == checkpoint_dir.resolve():
        return known
    found = checkpoint_dir / ("best.ckpt" if validating else "last.ckpt")
    return str(found) if found.exists() else ""


def check_trainer_settings(cfg: TrainConfig, where: str) -> None:
    """Refuse, before a run does any work, an accelerator or strategy Lightning does not know, or
    an accelerator this machine lacks: `L.Trainer` refused them only when the fit began, after
    the ingest and the dataset (and a nightly run tried again a minute later). A `ConfigError`
    naming `where` (the train config's file). Names only, not a trial `L.Trainer`: inside a
    SLURM allocation the parent process would meet checks meant for the ranks."""
    from lightning.pytorch.accelerators import AcceleratorRegistry, CUDAAccelerator, MPSAccelerator

    accelerators = {"auto", "gpu", *AcceleratorRegistry.available_accelerators()}
    if cfg.accelerator not in accelerators:
        known = ", ".join(sorted(accelerators))
        raise ConfigError(f"{where}: accelerator {cfg.accelerator!r} is none of {known}")
    if cfg.strategy != "auto" and cfg.strategy not in StrategyRegistry:
        raise ConfigError(
            f"{where}: strategy {cfg.strategy!r} is not one Lightning knows (auto, ddp, "
            "fsdp, deepspeed, ...: lightning.pytorch.strategies.StrategyRegistry)"
        )
    if cfg.accelerator == "gpu":
        present = CUDAAccelerator.is_available() or MPSAccelerator.is_available()
    elif cfg.accelerator != "auto":
        present = AcceleratorRegistry[cfg.accelerator]["accelerator"].is_available()
    else:
        present = True
    if not present:
        raise ConfigError(f"{where}: accelerator {cfg.accelerator!r}: this machine has none")


def strategy_name(cfg: TrainConfig) -> str:
    """The strategy Lightning would run `cfg` with: `auto` on more than one device or node is
    DDP, which Lightning launches by re-executing the command (`launches_processes`)."""
    if cfg.strategy == "auto" and (cfg.devices != 1 or cfg.num_nodes > 1):
        return "ddp"
    return cfg.strategy


class StoppedStaysStopped(EarlyStopping):
    """Early stopping whose verdict survives a resume. A checkpoint keeps the patience counter
    but not the trainer's `should_stop`, so a finished, early-stopped fit resumed (a retry of
    the training task after the registry failed) trained on to its next validation, which
    could become a new best: the retry registered another model than the run it repeats.

    The verdict itself is kept (`stopped`), not read back from the counter: a stop that
    `min_steps` held back stands even if a validation before the floor improved (and reset
    the counter), and so does a stop on a non-finite score."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopped = False

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        before = trainer.should_stop  # another callback's (the clock's) stop is not ours
        super()._run_early_stopping_check(trainer)
        self.stopped = self.stopped or (trainer.should_stop and not before)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"stopped": self.stopped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.stopped = bool(state_dict.get("stopped", False))  # older checkpoints: the counter

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.stopped or self.wait_count >= self.patience:  # still held to `min_steps`
            trainer.should_stop = True


def launches_processes(cfg: TrainConfig) -> bool:
    """Whether Lightning would launch a process per device for `cfg`: a strategy other than
    one device's, on more than one device or node. `strategy: auto` with `devices: 2` is one
    (it was taken for one device's: the caller's whole command, `textperf retrain` or a worker,
    ran again per rank, and the process-group timeout was not applied)."""
    many = cfg.devices != 1 or cfg.num_nodes > 1
    return many and strategy_name(cfg) not in ("auto", "single_device")


def _strategy(cfg: TrainConfig) -> str | Strategy:
    """The strategy (`strategy_name`), built with `cfg.process_group_timeout_minutes` where it
    launches processes and takes a timeout; otherwise the name, for Lightning to build."""
    name = strategy_name(cfg)
    if not launches_processes(cfg) or name not in StrategyRegistry:
        return name
    entry = StrategyRegistry[name]
    if "timeout" not in inspect.signature(entry["strategy"]).parameters:
        return name
    timeout = timedelta(minutes=cfg.process_group_timeout_minutes)
    return entry["strategy"](**entry["init_params"], timeout=timeout)


def fit(
    predictor: Predictor,
    train: tuple[Sequence[str], np.ndarray],
    val: tuple[Sequence[str], np.ndarray],
    cfg: TrainConfig,
    checkpoint_dir: Path,
    logger: Logger | bool = False,
    resume: bool = True,
) -> FitResult:
    """Train `predictor.model` in place; returns with the best validation checkpoint loaded and
    `numeric_environment` in its metadata (`TRAINED_WITH`), which ships with its bundle.

    Stops at `max_steps`, at `max_minutes`, or when the validation score (`select_by`) stops
    improving for `early_stopping_patience` intervals (never before `min_steps`). With `resume`,
    a `last.ckpt` left in `checkpoint_dir` by a killed run is picked up where it stopped; without,
    the checkpoints an earlier run left there are deleted first.

    An empty `val` trains on everything to the plan: no validation, no early stopping, and the
    weights of the last step (a refit at a step count chosen elsewhere, e.g. by cross-fitting).

    A config that launches a process per device (`launches_processes`, e.g. `strategy: ddp`,
    `devices: 2`) trains in a process group of its own (`regressor.fit_worker`), so the
    launcher re-executes that and not the caller's command; in a process a launcher started
    (torchrun), Lightning uses the ranks already there.
    """
    if predictor.ensemble_size > 1:  # it would train member 0 only, silently
        raise ValueError("fit trains one model: fit each `predictor.member(j)` of an ensemble")
    if launches_processes(cfg) and launched_rank() is None:
        from regressor.fit_worker import fit_in_worker  # it imports this module

        return fit_in_worker(predictor, train, val, cfg, checkpoint_dir, logger, resume)
    return fit_here(predictor, train, val, cfg, checkpoint_dir, logger, resume)[0]


def fit_here(
    predictor: Predictor,
    train: tuple[Sequence[str], np.ndarray],
    val: tuple[Sequence[str], np.ndarray],
    cfg: TrainConfig,
    checkpoint_dir: Path,
    logger: Logger | bool = False,
    resume: bool = True,
    environment: ClusterEnvironment | None = None,
) -> tuple[FitResult, bool]:
    """`fit` in this process, whatever the strategy; also whether this is global rank 0.
    `environment`: the cluster environment, instead of the one Lightning detects."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_data = encode_examples(predictor, *train)
    if cfg.shuffle_fields:
        train_data = ShuffledFields(train[0], train_data.target_ids, predictor, cfg.seed)
    validating = len(val[0]) > 0
    module = RegressionLM(predictor.model, cfg, predictor.codec)
    checkpoint = BestAndLastCheckpoint(
        last_every_n_steps=cfg.checkpoint_every_steps,
        dirpath=checkpoint_dir,
        monitor=cfg.select_by if validating else None,
        save_last=True,
        save_top_k=1 if validating else 0,
        filename="best",
    )
    stopping = [StoppedStaysStopped(cfg.select_by, patience=cfg.early_stopping_patience)]
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        strategy=_strategy(cfg),
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        # Our length-bucketed batch sampler shards itself by rank (Lightning cannot wrap it).
        use_distributed_sampler=False,
        precision=resolve_precision(cfg.precision),
        max_steps=cfg.max_steps,
        gradient_clip_val=cfg.grad_clip,
        min_steps=cfg.min_steps or None,
        # Every `val_every_steps` steps counted across epochs (check_val_every_n_epoch=None), so
        # a run on a few records validates, and counts its patience, on the same steps as any
        # other: validating every 1-5-step epoch of DeepPerf's records with the patience kept
        # as a count of validations once stopped those runs untrained at step ~55.
        val_check_interval=cfg.val_every_steps,
        check_val_every_n_epoch=None,
        callbacks=[
            checkpoint,
            StepSeededRandomness(cfg.seed),
            *_averaging(cfg),
            # Past the clock with a `min_steps` floor still ahead, a verbose Timer would log
            # "Time limit reached" at every step; Lightning says once that training continues.
            Timer(timedelta(minutes=cfg.max_minutes), interval="step", verbose=not cfg.min_steps),
            *([*stopping, ValidateTheLastStep()] if validating else []),
        ],
        logger=logger,
        plugins=[environment] if environment is not None else None,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(10, len(train_data) // cfg.batch_size)),
    )
    predictor.model.train()  # a loaded or sampled model may have been left in eval mode
    last = checkpoint_dir / "last.ckpt"
    if not resume or (last.exists() and not _readable(last)):
        _discard_checkpoints(checkpoint_dir)
    started = time.perf_counter()
    val_loader = None
    if validating:
        val_data = encode_examples(predictor, *val)
        val_loader = make_loader(
            val_data, predictor.codec, predictor.tokenizer.pad_id, cfg, shuffle=False
        )
    trainer.fit(
        module,
        make_loader(train_data, predictor.codec, predictor.tokenizer.pad_id, cfg, shuffle=True),
        val_loader,
        ckpt_path=str(last) if resume and last.exists() else None,
    )
    seconds = time.perf_counter() - started
    best = _result_checkpoint(checkpoint, checkpoint_dir, validating)
    if best:
        load_checkpoint_weights(predictor.model, Path(best))
    predictor.model.eval()
    predictor.metadata[TRAINED_WITH] = numeric_environment()  # bit-reproducible only where equal
    best_score = checkpoint.best_model_score
    result = FitResult(
        steps=trainer.global_step,
        seconds=seconds,
        best_val_score=float(best_score) if best_score is not None else float("nan"),
        best_checkpoint=best,
        monitor=cfg.select_by if validating else "last",
        processes=trainer.world_size,
        n_train=len(train[0]),
        n_val=len(val[0]),
    )
    return result, trainer.is_global_zero
