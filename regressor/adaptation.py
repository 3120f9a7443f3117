"""Few-shot adaptation: fine-tune a trained regressor on a handful of a new task's records.

Three methods choose what may change: `full` (every weight), `last_layers` (the last decoder
block(s), the final norm and the output head) and `lora` (low-rank adapters on the attention and
MLP linears, merged into the weights afterwards so the saved bundle is an ordinary one).

The shots are cut three ways, latest last: the pipeline first keeps the latest `gate_fraction`
for the registry's gate (`hold_out_gate`), which nothing trains on; of the rest, the latest
`val_fraction` stop the fine-tuning early and pick its checkpoint, and the earlier ones train it
(`split_shots`). So the records that judge a variant never chose it. The same split trains the
from-scratch reference, so the two differ only in where their weights start. Shots without
periods are cut between configurations, so repeated runs of one stay on one side.

A fine-tuned variant's sampled intervals are not its base's: once the gate has scored it, it
gets a conformal scale of its own, fitted on the gate's shots (`recalibrate`). A variant the
gate refuses leaves its task to the base's weights, which get a scale fitted on the same shots
(`zero_shot_fallback`).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from torch import nn

from regressor.config import AdaptConfig, EvalConfig, TrainConfig
from regressor.dataset import Examples, configuration_of
from regressor.ensemble import combine_fits, member_config, member_dir
from regressor.environment import TRAINED_WITH, numeric_environment
from regressor.lora import add_lora, merge_lora
from regressor.model import EncoderDecoder
from regressor.predictor import Predictor
from regressor.training import FitResult, fit_examples

# Given a prefix (`adapt`, `scratch/member1`), the logger of a fit's curves; None: no curves.
CurveLoggers = Callable[[str], Logger] | None


def _curves(loggers: CurveLoggers, name: str, i: int, size: int) -> Logger | bool:
    """Member i's curve logger: `name`, or `name/member<i>` in an ensemble."""
    if loggers is None:
        return False
    return loggers(name if size == 1 else f"{name}/member{i}")


def latest_shots(pool: Examples, n_shots: int) -> Examples:
    """The most recent `n_shots` records (pools are sorted by period within a task)."""
    return pool.take(np.arange(max(0, len(pool) - n_shots), len(pool)))


def split_shots(shots: Examples, val_fraction: float) -> tuple[Examples, Examples]:
    """(train, val): the latest `val_fraction` of the shots stop training early."""
    return _split_latest(shots, val_fraction)


def hold_out_gate(shots: Examples, adapt: AdaptConfig) -> tuple[Examples, Examples]:
    """(tuning, gate): the latest `adapt.gate_fraction` of the shots are kept for the gate
    alone; fine-tuning trains on the rest and stops on their latest part (`split_shots`).
    A ValueError unless each of the three parts gets a record."""
    try:
        tuning, gate = _split_latest(shots, adapt.gate_fraction)
        split_shots(tuning, adapt.val_fraction)
    except ValueError:
        n_configurations = len(set(configurations(shots)))
        of = f" of {n_configurations} configurations" if shots.by_configuration else ""
        each = "a configuration of its own" if of else "a record"
        raise ValueError(
            f"{len(shots)} shots{of} are too few to train on, stop early on and gate "
            f"(adapt.val_fraction {adapt.val_fraction}, adapt.gate_fraction "
            f"{adapt.gate_fraction}): each of the three needs {each}"
        ) from None
    return tuning, gate


def _split_latest(shots: Examples, fraction: float) -> tuple[Examples, Examples]:
    """(earlier, latest): the latest `fraction` of the records, at least one, and at least one
    before them. Shots `by_configuration` are cut between configurations: those last seen
    latest, whole, until they hold about the fraction (`_latest_configurations`), so no
    repeated run of a configuration trains (or stops) the fine-tuning while another judges
    it."""
    n_latest = max(1, round(len(shots) * fraction))
    if len(shots) - n_latest < 1:
        raise ValueError(f"need at least 2 shots to adapt, got {len(shots)}")
    if not shots.by_configuration:
        cut = len(shots) - n_latest
        return shots.take(np.arange(cut)), shots.take(np.arange(cut, len(shots)))
    configs = configurations(shots)
    latest = _latest_configurations(configs, n_latest)
    in_latest = np.array([config in latest for config in configs])
    if in_latest.all():
        raise ValueError(f"need at least 2 configurations to adapt, got {len(latest)}")
    return shots.take(np.flatnonzero(~in_latest)), shots.take(np.flatnonzero(in_latest))


def configurations(shots: Examples) -> list[str]:
    """Each shot's configuration (`dataset.configuration_of`): a repeated run's is its own."""
    return [configuration_of(config) for config in shots.config_json]


def _latest_configurations(configs: list[str], n_latest: int) -> set[str]:
    """Of the shots' `configs` (in shot order), those last seen latest, whole, until they hold
    `n_latest` records. One that would overshoot by more than it fills is passed over (one run
    94 times of 100 shots made a gate of 94), and the smallest is taken when every one would."""
    counts = Counter(configs)
    chosen: set[str] = set()
    held = 0
    for config in dict.fromkeys(reversed(configs)):  # distinct, latest first
        if held >= n_latest:
            break
        if held + counts[config] - n_latest <= n_latest - held:
            chosen.add(config)
            held += counts[config]
    return chosen or {min(counts, key=counts.__getitem__)}


def adaptation_train_config(base: TrainConfig, adapt: AdaptConfig, n_train: int) -> TrainConfig:
    """Fine-tuning on the shots: the adapt lr and caps, a short warmup, no weight averaging (a
    few hundred steps are too few for an average to forget the base weights)."""
    batch_size = max(1, min(base.batch_size, n_train))
    val_every = max(1, min(base.val_every_steps, adapt.max_steps // 5))
    return base.model_copy(
        update={
            "lr": adapt.lr,
            "max_steps": adapt.max_steps,
            "max_minutes": adapt.max_minutes,
            "warmup_steps": min(base.warmup_steps, adapt.max_steps // 10),
            "batch_size": batch_size,
            "val_every_steps": val_every,
            "ema_decay": None,
            "min_steps": 0,  # fine-tuning is capped by max_steps and stopped by validation
        }
    )


def scratch_train_config(base: TrainConfig, adapt: AdaptConfig, n_train: int) -> TrainConfig:
    """The base model's own recipe (lr, warmup, patience, step floor), on the shots,
    time-capped; the floor outlasts the cap, so a loaded machine cannot make the baseline a
    model still on its plateau and the adapted one look better than it is.

    The patience spans as many steps as the base recipe's however few the shots (`fit`
    validates every `val_every_steps` across epochs), since from scratch the model sits on a
    plateau (predicting the marginal) for a while before it learns to read.
    """
    batch_size = max(1, min(base.batch_size, n_train))
    return base.model_copy(
        update={
            "max_minutes": min(base.max_minutes, adapt.scratch_max_minutes),
            "batch_size": batch_size,
        }
    )


# Records a variant's own scale needs: below 9 the conformal quantile (the k-th smallest score,
# k = ceil((n + 1) 0.8)) is the largest, so one gate record with a collapsed interval (every
# sample equal) that misses its truth sets a scale of ~1e299; from 9, k < n.
MIN_CALIBRATION_SHOTS = 9
OWN_SCALE = "a conformal scale of its own"  # how `recalibrate`'s text starts when it fitted one


def recalibrate(predictor: Predictor, gate_shots: Examples, eval_cfg: EvalConfig) -> str:
    """Refit `predictor`'s conformal interval scale on the gate's shots, in place (once the gate
    has scored it); returns what its intervals now rest on.

    The base's scale was fitted on other tasks with other weights. Split conformal needs
    records that did not train the model: of the shots, the gate's are the only ones that
    neither trained it nor picked its checkpoint (the ones that stopped the fine-tuning did),
    and they are the latest, nearest the days ahead. They did choose between the variant and
    the base, though: a scale fitted on them after a close verdict may be a little narrow on
    new records (split conformal assumes records that chose nothing). With fewer than
    `MIN_CALIBRATION_SHOTS` finite predictions among them, or a scale that is not finite, the
    predictor keeps the scale it had.
    """
    return _refit_scale(predictor, gate_shots, eval_cfg)[1]


def may_fit_a_scale(gate_shots: Examples, eval_cfg: EvalConfig) -> bool:
    """Whether `recalibrate` can fit a scale of its own on `gate_shots` at all, before any
    prediction (some shots may still lack a finite one); False spares loading a model."""
    return eval_cfg.conformal and len(gate_shots) >= MIN_CALIBRATION_SHOTS


def zero_shot_fallback(
    base: Predictor, gate_shots: Examples, eval_cfg: EvalConfig
) -> tuple[Predictor, str] | None:
    """For a task whose fine-tuned variant the gate refused: a copy of `base`, its weights
    untouched, with a conformal scale fitted on the task's gate shots, and what its intervals
    rest on; None when no scale of its own could be fitted (`recalibrate`'s rule).

    Refused, the task would be served by the base zero-shot, whose scale was fitted on other
    tasks: on a new cell it can cover far less than its nominal 80%. When the base held the
    task out, the gate's shots never trained it, so split conformal holds for them as for a
    variant; a base that trained on the task (`textperf adapt --task`) may have seen them, which
    the pipeline says beside the intervals (`pipeline.fitted_in_sample`).
    """
    fallback = copy.deepcopy(base)
    fitted, intervals = _refit_scale(fallback, gate_shots, eval_cfg)
    return (fallback, intervals) if fitted else None


def _refit_scale(
    predictor: Predictor, gate_shots: Examples, eval_cfg: EvalConfig
) -> tuple[bool, str]:
    """(whether `predictor` now has a scale of its own, what its intervals rest on)."""
    if not eval_cfg.conformal:  # raw, as said: the base's scale, copied with it, served before
        predictor.metadata.pop("interval_scale", None)
        return False, "the raw sampled quantiles (eval.conformal is off)"
    kept = predictor.metadata.get("interval_scale")
    n = len(gate_shots)
    if not may_fit_a_scale(gate_shots, eval_cfg):
        why = f"{n} gate shots; a scale of its own needs {MIN_CALIBRATION_SHOTS}"
        return False, _kept(kept, why)
    scale = predictor.calibrate(
        gate_shots.texts,
        gate_shots.targets,
        eval_cfg.num_samples,
        scales=gate_shots.scales,
        temperature=eval_cfg.temperature,
    )
    fitted = predictor.interval_scale()
    n_fit = 0 if fitted is None else fitted.n_fit
    if n_fit >= MIN_CALIBRATION_SHOTS and np.isfinite(scale):
        return True, f"{OWN_SCALE}, {scale:.4g}, fitted on {n_fit} of its {n} gate shots"
    predictor.metadata.pop("interval_scale", None)  # what `calibrate` fitted, if anything
    if kept is not None:
        predictor.metadata["interval_scale"] = kept
    if fitted is None:  # `fit_interval_scale` refused: nothing finite, or no spread
        why = "no finite prediction, or every prediction's median equals its truth"
        return False, _kept(kept, f"no scale fits its {n} gate shots: {why}")
    if n_fit < MIN_CALIBRATION_SHOTS:
        return False, _kept(
            kept, f"{n_fit} of its {n} gate shots have a finite prediction and target"
        )
    return False, _kept(kept, f"the scale fitted on its {n_fit} gate shots is not finite")


def _kept(scale: dict | None, why: str) -> str:
    """What a variant's intervals rest on when it keeps what it had, and why."""
    kept = "the base's conformal scale" if scale is not None else "the raw sampled quantiles"
    return f"{kept} ({why})"


def freeze_for(model: EncoderDecoder, adapt: AdaptConfig) -> list[str]:
    """Set which parameters train under `adapt.method`; returns the trainable names."""
    if adapt.method == "lora":
        add_lora(model, adapt.lora_rank, adapt.lora_alpha)
    elif adapt.method == "last_layers":
        model.requires_grad_(False)
        keep: list[nn.Module] = [*model.decoder[-adapt.last_layers :], model.decoder_norm]
        for module in [*keep, model.head]:
            module.requires_grad_(True)
    else:
        model.requires_grad_(True)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def fine_tune(
    base: Predictor,
    shots: Examples,
    adapt: AdaptConfig,
    train_cfg: TrainConfig,
    checkpoint_dir: Path,
    loggers: CurveLoggers = None,
) -> tuple[Predictor, FitResult]:
    """Fine-tune a copy of `base` by `adapt.method`; `base` itself is left untouched. With
    `loggers`, its curves go to `adapt/...` (`adapt/member<i>/...` in an ensemble).

    Every member of an ensemble base is fine-tuned (LoRA merged per member) and the result is
    an ensemble of as many; its FitResult sums the members' steps and seconds (`combine_fits`).
    """
    train, val = split_shots(shots, adapt.val_fraction)
    adapted = copy.deepcopy(base)
    cfg = adaptation_train_config(train_cfg, adapt, len(train))
    size = adapted.ensemble_size
    results = [
        _fine_tune_member(
            adapted.member(i),
            train,
            val,
            adapt,
            member_config(cfg, i),
            member_dir(checkpoint_dir, i, size),
            _curves(loggers, "adapt", i, size),
        )
        for i in range(size)
    ]
    # the members' views took the record (`fit`); the weights that ship were last trained here
    adapted.metadata[TRAINED_WITH] = numeric_environment()
    return adapted, combine_fits(results)


def _fine_tune_member(
    member: Predictor,
    train: Examples,
    val: Examples,
    adapt: AdaptConfig,
    cfg: TrainConfig,
    checkpoint_dir: Path,
    logger: Logger | bool = False,
) -> FitResult:
    """Fine-tune a one-model view in place (its module is the ensemble's member)."""
    # LoRA's adapters are drawn here, before `fit` seeds: from the member's seed, not from
    # whatever the process ran before (the nightly run, the CLI and a Dask worker differed).
    torch.manual_seed(cfg.seed)
    freeze_for(member.model, adapt)
    result = fit_examples(member, train, val, cfg, checkpoint_dir, logger=logger, resume=False)
    merge_lora(member.model)  # a no-op unless LoRA: the bundle then holds plain weights
    member.model.requires_grad_(True)
    member.model.eval()
    return result


def train_from_scratch(
    base: Predictor,
    shots: Examples,
    adapt: AdaptConfig,
    train_cfg: TrainConfig,
    checkpoint_dir: Path,
    loggers: CurveLoggers = None,
) -> tuple[Predictor, FitResult]:
    """The same architecture and tokenizer as `base`, freshly initialised, on the same split;
    as many members as `base`, member i initialised and trained with its own seed and in its
    own target form.

    Reusing the base tokenizer isolates what pretraining brings: only the weights differ.
    """
    train, val = split_shots(shots, adapt.val_fraction)
    cfg = scratch_train_config(train_cfg, adapt, len(train))
    size = base.ensemble_size
    members, results = [], []
    for i in range(size):
        member_cfg = member_config(cfg, i)
        scratch = Predictor.create(
            base.model_config,
            base.codec_config,
            base.tokenizer,
            base.priority,
            base.relative_to,
            absolute_members=base.member(i).absolute_members,  # member i's own target form
            seed=member_cfg.seed,
        )
        results.append(
            fit_examples(
                scratch,
                train,
                val,
                member_cfg,
                member_dir(checkpoint_dir, i, size),
                logger=_curves(loggers, "scratch", i, size),
                resume=False,
            )
        )
        members.append(scratch)
    return Predictor.ensemble(members), combine_fits(results)
