r"""Accuracy of textperf against tabular peers on one dataset, all on the same split in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/accuracy.py --dataset c3o|lumos|deepperf|fleet \
        [--minutes 8] [--model small] [--seed 0] [--out var/bench/accuracy] \
        [--ensemble K [--cross-fit]] [--pretrain-on DATASET ..] [ablation flags, see --help]

Protocol:
1. ingest the dataset through the project's own source config (`conf/sources/<name>.yaml`, read in
   place from `../shared/datasets/`) into `<out>/warehouse.duckdb` (the fleet is generated first);
2. split by group, seeded: c3o and deepperf by distinct configuration (jobs / systems pooled, the
   repeated runs of a configuration all on one side), lumos by workload, the fleet by cell config;
   20% of the groups are test, and 10% of the remaining (training) groups are validation, used
   only for early stopping. The record ids of each side go to `<out>/<dataset>_split_seed<S>.json`;
   an existing file is reused, so a run repeats exactly;
3. train textperf from scratch on train (tokenizer too) within `--minutes`, best checkpoint by
   validation loss; predict the test part with 32 samples (median). `--ensemble K` trains K such
   models (training seeds seed, seed+1000, ..) and pools their samples; with `--cross-fit` member
   i stops early on group fold i of train+val and trains on the other folds; with `--refit`
   each trains on all of train+val for exactly `--steps` and keeps its last step. `--pretrain-on`
   first trains one model on every record of other datasets, which each member then fine-tunes;
   where the source sets `target_relative_to` (lumos: the reference run's runtime) the decoder
   learns target / baseline and samples are scaled back (`--target absolute` is the ablation;
   `--target mixed`, or the source's `mixed_target_forms`, makes the odd members learn the
   target itself); each member's point metrics on the validation part are printed too
   (`..._val_<metric>`), comparable across target forms where validation losses are not;
4. fit the tabular peers on train+val (they need no early stopping): the mean, LightGBM (the
   project's baseline, raw target) and XGBoost on flattened config fields, and both on log target;
   for lumos and the fleet also both with the logs' summary as columns (`..._logs`); for lumos
   on the log of target/reference runtime too, and the rule "reference runtime x median train
   ratio of the VM type". Nothing is tuned on the test part. `--peers-only` stops here. The
   peers do not get the field a split groups by (lumos' `workload`): none of its test values is
   in training, so it is a column missing on every test row (`--peers-keep-group-field` gives
   it, as before session 52).
   `--reference-pairs all` (lumos) adds a record per other reference run of a target run's group
   to train and val (so to every member and peer alike); test and each member's validation keep
   the matched pairs only, so the scored records are the same as with `matched`.

Prints `name: value` lines, `<dataset>_<model>_<metric>` with metric in spearman, kendall, mape
(%), mse_log (with n_mse_log_left_out: positive truths predicted at or below 0, which have no
log), n_failed, and for textperf also interval_coverage (10-90%), uncertainty_spearman (sample
spread vs absolute error; no conformal step here, so it equals uncertainty_spearman_samples),
uncertainty_spearman_relative (both relative), the samples ablation `textperf_k<K>_<median|mean>_
<spearman|mape>` (first member) and `textperf_mape_point_mape` (the point that minimises the
expected percentage error under the samples, `regressor.sampling.relative_error_point`); writes
predicted-vs-actual plots `<out>/plots/<dataset>_<peer>.png` and
`<out>/plots/<dataset>_<model>_<M>min_seed<S>_textperf.png`, every model's test predictions to
`<out>/<same name>_predictions.parquet`, each member's test and validation draws to
`<out>/<same name>_samples.npz` (runs on one split pool with `bench/pool.py`), and textperf's
loss curves to `<out>/checkpoints/<same name>/metrics.csv`. `--resume` continues a killed run
from its members' last checkpoints (a finished member is only loaded and sampled).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from samples import sweep
from sklearn.model_selection import GroupKFold

from regressor import baselines, tabular
from regressor.config import (
    CodecConfig,
    FleetSimConfig,
    ModelConfig,
    TrainConfig,
    load_model_config,
    load_source_config,
    load_train_config,
)
from regressor.dataset import Examples, to_examples
from regressor.ensemble import absolute_members_of
from regressor.evaluation import evaluate_predictions, point_metrics
from regressor.fleetsim import generate_fleet
from regressor.plots import predicted_vs_actual
from regressor.predictor import Predictor
from regressor.sampling import finite_median, relative_error_point, summarize
from regressor.serialize import shuffle_section_lines
from regressor.sources.dispatch import ingest_source
from regressor.sources.runs import is_extra_pair
from regressor.splits import config_group, field_group, load_split, save_split, split_groups
from regressor.training import FitResult, fit_examples
from regressor.vocab import InputTokenizer
from regressor.warehouse import Warehouse

DEFAULT_OUT = Path("var/bench/accuracy")
SOURCES = {"c3o": "c3o", "lumos": "lumos", "deepperf": "deepperf", "fleet": "demo_fleet"}
SIDES = ("train", "val", "test")
POINT = ("spearman", "kendall", "mape", "mse_log", "n_mse_log_left_out", "n_failed")
UNCERTAINTY = (
    "interval_coverage",
    "uncertainty_spearman",
    "uncertainty_spearman_relative",
    "uncertainty_spearman_samples",
)
# Steps of the two probe fits that time a training step before the real one (`steps_for`).
PROBE_STEPS = (20, 60)


def load_records(dataset: str, out: Path, pairs: str | None = None) -> pl.DataFrame:
    """Ingest (idempotent: re-running adds nothing) and return the dataset's records; `pairs`
    overrides a runs source's `reference.pairs` (the records are rebuilt on every ingest)."""
    source = load_source_config(SOURCES[dataset])
    reference = getattr(source, "reference", None)
    if pairs is not None and reference is not None:
        source = source.model_copy(
            update={"reference": reference.model_copy(update={"pairs": pairs})}
        )
    raw = out / "raw"
    if dataset == "fleet" and not (raw / "demo_fleet").exists():
        generate_fleet(raw / "demo_fleet", FleetSimConfig())
    out.mkdir(parents=True, exist_ok=True)
    with Warehouse(out / "warehouse.duckdb") as wh:
        ingest_source(wh, source, raw, f"bench-{dataset}")
        records = wh.query("records").filter(pl.col("source") == source.name)
    return records.sort("record_id")


# The config field a dataset's split groups by, where one does: every test value of it is one
# training never saw, so the peers' categorical column is missing on every test row, and
# XGBoost sent those rows down branches fitted on rows that always had it (lumos XGBoost-ratio:
# 19.55% with the column, 8.80% without). The peers go without it (`for_peers`); textperf
# reads its name in the text (`aggregationSUM` beside training's `aggregationAVG`).
GROUP_FIELD = {"lumos": "workload"}


def groups_of(dataset: str, tasks: Sequence[str], configs: Sequence[str]) -> list[str]:
    """What never straddles two sides: a workload (lumos) or a distinct configuration."""
    rows = zip(tasks, configs, strict=True)
    if dataset in GROUP_FIELD:
        return [field_group(config, GROUP_FIELD[dataset]) for _, config in rows]
    return [config_group(task, config) for task, config in rows]


def sides_of(dataset: str, records: pl.DataFrame, seed: int, out: Path) -> np.ndarray:
    """The saved split if there is one, else a new seeded split, saved."""
    path = out / f"{dataset}_split_seed{seed}.json"
    ids = records["record_id"].to_list()
    if path.exists():
        return load_split(path, ids)
    groups = groups_of(dataset, records["task"], records["config_json"])
    sides = split_groups(groups, 0.2, 0.1, seed)
    group_by = "workload" if dataset == "lumos" else "task+config"
    save_split(path, ids, sides, {"dataset": dataset, "seed": seed, "group_by": group_by})
    return sides


def matched_test_only(records: pl.DataFrame, sides: np.ndarray) -> tuple[pl.DataFrame, np.ndarray]:
    """Drop the test part's extra reference pairings (`pairs: all`): every target run is scored
    once, on its matched pair, as with `pairs: matched`; train and val keep every pairing."""
    extra = np.array([is_extra_pair(rid) for rid in records["record_id"]], dtype=bool)
    keep = ~(extra & (sides == "test"))
    return records.filter(pl.Series(keep)), sides[keep]


def codec_for(targets: np.ndarray, exponent_first: bool = False) -> CodecConfig:
    """Exponents spanning the training targets with a decade of room on each side."""
    positive = targets[targets > 0]
    low = math.floor(math.log10(positive.min())) - 1
    high = math.ceil(math.log10(positive.max())) + 1
    return CodecConfig(
        mantissa_digits=4, exponent_min=low, exponent_max=high, exponent_first=exponent_first
    )


def budget_config(
    minutes: float, seed: int, select_by: str = "val_loss", base: str = "demo"
) -> TrainConfig:
    """The demo recipe capped at `minutes`, its checkpoint picked by `select_by`; `max_steps` is
    sized later from the input lengths."""
    return load_train_config(base).model_copy(
        # no step floor: the bench plans its own steps (`--steps`, `steps_for`)
        update={
            "max_minutes": minutes,
            "seed": seed,
            "select_by": select_by,
            "progress_bar": False,
            "min_steps": 0,
        }
    )


def steps_for(
    predictor: Predictor, train: Examples, val: Examples, cfg: TrainConfig, ckpt: Path
) -> int:
    """How many steps fit in the time budget, so the cosine decay ends about when time does.

    Two throwaway copies of the model train `PROBE_STEPS` steps on this machine, now; the time
    between them is the cost of a step without the fit's setup, so the estimate follows the
    input lengths, the model size and the load of the moment (a fixed cost table sized an
    8-minute c3o run at 5,459 steps, which then took 2.6 minutes).
    """
    seconds = []
    for steps in PROBE_STEPS:
        probe_cfg = cfg.model_copy(
            update={"max_steps": steps, "ema_decay": None, "progress_bar": False}
        )
        probe = fit_examples(
            copy.deepcopy(predictor),
            train,
            val.take([0]),
            probe_cfg,
            ckpt / "probe",
            resume=False,
        )
        shutil.rmtree(ckpt / "probe", ignore_errors=True)
        seconds.append(probe.seconds)
    per_step = max(1e-4, (seconds[1] - seconds[0]) / (PROBE_STEPS[1] - PROBE_STEPS[0]))
    print(f"probe_seconds_per_step: {per_step:.4f}", flush=True)
    return max(200, int(cfg.max_minutes * 60 / per_step))


def mean_tokens(predictor: Predictor, texts: list[str]) -> float:
    return float(np.mean([len(ids) for ids in predictor.encode_texts(texts)]))


@dataclass(frozen=True)
class Recipe:
    """textperf's knobs in this benchmark: a model config and the ablations on top of it."""

    model: str = "small"  # conf/model/<name>.yaml
    max_input_tokens: int | None = None  # instead of the model's input budget
    split_digits: bool = True  # False: the tokenizer keeps digit runs whole
    dropout: float | None = None  # instead of the model's
    attention_dropout: float | None = None  # instead of the model's (None: same as dropout)
    relative_to: str | None = None  # the config path the target is learnt relative to
    mixed_target_forms: bool = False  # odd ensemble members learn the target itself
    shuffle_fields: bool = False  # augment: fields in a new order at every draw
    split_lines: bool = False  # the tokenizer never merges across a line break
    exponent_first: bool = False  # the decoder writes a number's exponent before its digits

    def model_config(self) -> ModelConfig:
        overrides = {
            "max_input_tokens": self.max_input_tokens,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
        }
        update = {k: v for k, v in overrides.items() if v is not None}
        return load_model_config(self.model).model_copy(update=update)

    def run_suffix(self) -> str:
        """What sets this recipe apart from the model's own, for run names."""
        suffix = f"_in{self.max_input_tokens}" if self.max_input_tokens else ""
        suffix += "" if self.split_digits else "_whole_numbers"
        suffix += f"_relative-{self.relative_to}" if self.relative_to else ""
        suffix += "_mixed" if self.mixed_target_forms else ""
        suffix += "_shuffled" if self.shuffle_fields else ""
        suffix += "_lines" if self.split_lines else ""
        suffix += "_exponent_first" if self.exponent_first else ""
        suffix += f"_dropout{self.dropout:g}" if self.dropout is not None else ""
        if self.attention_dropout is not None:
            suffix += f"_attn{self.attention_dropout:g}"
        return suffix


def new_predictor(
    recipe: Recipe,
    texts: list[str],
    targets: np.ndarray,
    priority: tuple[str, ...],
    seed: int,
    absolute: bool = False,
) -> Predictor:
    """A tokenizer trained on `texts`, a codec spanning `targets`, a randomly initialised model
    (learning the target itself if `absolute`, else in the recipe's form)."""
    model_cfg = recipe.model_config()
    corpus = list(texts)
    if recipe.shuffle_fields:  # merges across line breaks must not favour one field order
        rng = np.random.default_rng(seed)
        corpus = [shuffle_section_lines(text, rng) for _ in range(3) for text in texts]
    tokenizer = InputTokenizer.train(
        corpus, model_cfg.input_vocab_size, recipe.split_digits, recipe.split_lines
    )
    codec = codec_for(targets, recipe.exponent_first)
    return Predictor.create(
        model_cfg,
        codec,
        tokenizer,
        priority,
        recipe.relative_to,
        absolute_members=(0,) if absolute else (),
        seed=seed,
    )


def patience_for(train_cfg: TrainConfig, max_steps: int) -> int:
    """Early-stopping patience of half the step plan (and at least the config's), in
    `val_every_steps` intervals: while the LR is high the val loss is noisy, and the low-LR end
    of the cosine decay is where a short run gains most (with the demo's patience of 1,000
    steps, an 8-minute c3o run stopped at a third of its budget)."""
    return max(train_cfg.early_stopping_patience, max_steps // 2 // train_cfg.val_every_steps)


def fit_in_budget(
    predictor: Predictor,
    train: Examples,
    val: Examples,
    train_cfg: TrainConfig,
    ckpt: Path,
    max_steps: int | None = None,
    resume: bool = False,
) -> tuple[FitResult, int]:
    """Train `predictor` on `train` with early stopping on `val`, in place.

    Returns the fit and the step plan: `max_steps`, or when None as many steps as fit in the
    budget (`steps_for`), so ensemble members can share one plan. With `resume`, a `last.ckpt`
    in `ckpt` (a killed or finished run of the same recipe) is continued, not restarted.
    """
    mean_train_tokens = mean_tokens(predictor, train.texts)
    max_steps = max_steps or steps_for(predictor, train, val, train_cfg, ckpt)
    patience = patience_for(train_cfg, max_steps)
    train_cfg = train_cfg.model_copy(
        update={"max_steps": max_steps, "early_stopping_patience": patience}
    )
    print(f"mean_input_tokens: {mean_train_tokens:.0f}\nmax_steps: {max_steps}", flush=True)
    # <ckpt>/metrics.csv: the loss curves (a resumed run logs beside them, not over them)
    resumed = resume and (ckpt / "last.ckpt").exists()
    logger = CSVLogger(ckpt, name="", version="resumed" if resumed else "")
    result = fit_examples(predictor, train, val, train_cfg, ckpt, logger=logger, resume=resume)
    return result, max_steps


def member_predictor(
    recipe: Recipe,
    train: Examples,
    val: Examples,
    priority: tuple[str, ...],
    seed: int,
    absolute: bool = False,
) -> Predictor:
    """The untrained predictor a member starts from: its tokenizer and codec are functions of
    `train` / `val` and `seed`, so a saved member's checkpoint loads into the same one again."""
    learnt = [part.targets if absolute else part.model_targets for part in (train, val)]
    return new_predictor(recipe, train.texts, np.concatenate(learnt), priority, seed, absolute)


def train_textperf(
    recipe: Recipe,
    train: Examples,
    val: Examples,
    train_cfg: TrainConfig,
    ckpt: Path,
    priority: tuple[str, ...],
    max_steps: int | None = None,
    resume: bool = False,
    absolute: bool = False,
) -> tuple[Predictor, FitResult, int]:
    """A tokenizer and model from scratch on `train` (learning the target itself if `absolute`);
    early stopping on `val` (`fit_in_budget`). The tokenizer and codec are functions of the
    training data, so a resumed run rebuilds the ones its checkpoint was trained with."""
    predictor = member_predictor(recipe, train, val, priority, train_cfg.seed, absolute)
    fitted, max_steps = fit_in_budget(predictor, train, val, train_cfg, ckpt, max_steps, resume)
    return predictor, fitted, max_steps


@dataclass(frozen=True)
class Parts:
    train: Examples
    val: Examples
    test: Examples
    logs: dict[str, str]  # record_id -> logs_json (tabular log-summary columns)

    def fit_part(self) -> Examples:
        """Train + val: the tabular peers need no early stopping."""
        return concat(self.train, self.val)

    def logs_of(self, examples: Examples) -> list[str]:
        return [self.logs[rid] for rid in examples.record_ids]


def for_peers(parts: Parts, dataset: str, keep_group_field: bool = False) -> Parts:
    """`parts` with the dataset's split-group field (`GROUP_FIELD`) left out of every config the
    peers read, unless `keep_group_field` (the figures measured before session 52)."""
    field = GROUP_FIELD.get(dataset)
    if field is None or keep_group_field:
        return parts

    def without(examples: Examples) -> Examples:
        configs = [json.loads(text) for text in examples.config_json]
        kept = [json.dumps({k: v for k, v in c.items() if k != field}) for c in configs]
        return dataclasses.replace(examples, config_json=kept)

    return dataclasses.replace(parts, **{side: without(getattr(parts, side)) for side in SIDES})


def concat(a: Examples, b: Examples) -> Examples:
    return Examples(
        record_ids=a.record_ids + b.record_ids,
        tasks=a.tasks + b.tasks,
        texts=a.texts + b.texts,
        targets=np.concatenate([a.targets, b.targets]),
        config_json=a.config_json + b.config_json,
        scales=None if a.scales is None else np.concatenate([a.scales, b.scale_values]),
    )


def scientific(value: str) -> str:
    """A number's text in scientific notation ("15150" -> "1.515e4"), anything else as is: the
    magnitude becomes one explicit exponent instead of a count of digits (the ablation)."""
    try:
        number = float(value)
    except ValueError:
        return value
    if number == 0 or not math.isfinite(number) or value in ("true", "false"):
        return value
    mantissa, exponent = f"{number:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def with_scientific_numbers(examples: Examples) -> Examples:
    """Every `key=number` line of the texts rewritten by `scientific`."""

    def line(text: str) -> str:
        key, sep, value = text.partition("=")
        return f"{key}={scientific(value)}" if sep else text

    texts = ["\n".join(map(line, text.split("\n"))) for text in examples.texts]
    return dataclasses.replace(examples, texts=texts)


def make_parts(
    records: pl.DataFrame,
    sides: np.ndarray,
    priority: tuple[str, ...],
    budget: int,
    relative_to: str | None = None,
) -> Parts:
    labelled = records.with_columns(pl.Series("side", sides))
    part = {
        side: to_examples(labelled.filter(pl.col("side") == side), priority, budget, relative_to)
        for side in SIDES
    }
    logs = dict(zip(records["record_id"], records["logs_json"], strict=True))
    return Parts(part["train"], part["val"], part["test"], logs)


Peer = Callable[[Parts, int], np.ndarray]
SMALL = tabular.SMALL_CATEGORIES


def config_peers() -> dict[str, Peer]:
    def gbm(kind: str, log_target: bool) -> Peer:
        def run(p: Parts, seed: int) -> np.ndarray:
            train = p.fit_part()
            x_train = baselines.flatten_configs(train.config_json)
            x_test = baselines.flatten_configs(p.test.config_json, like=x_train)
            return tabular.fit_predict(kind, x_train, train.targets, x_test, seed, log_target)

        return run

    return {
        "mean": lambda p, _: baselines.mean_baseline(p.fit_part().targets, len(p.test)),
        "lightgbm": lambda p, seed: baselines.lightgbm_baseline(
            p.fit_part().config_json, p.fit_part().targets, p.test.config_json, seed
        ),
        "xgboost": gbm("xgboost", False),
        "lightgbm_log": gbm("lightgbm", True),
        "xgboost_log": gbm("xgboost", True),
        # LightGBM splitting on categories of a few rows: neither setting wins everywhere.
        SMALL: gbm(SMALL, False),
        f"{SMALL}_log": gbm(SMALL, True),
    }


def with_logs(kind: str, ratio: bool) -> Peer:
    """A GBM on the config fields plus the logs' summary columns, on the log target or (`ratio`)
    on the log of target / the reference runtime."""

    def run(p: Parts, seed: int) -> np.ndarray:
        train = p.fit_part()
        x_train = tabular.features(train.config_json, p.logs_of(train))
        x_test = tabular.features(p.test.config_json, p.logs_of(p.test), like=x_train)
        if not ratio:
            return tabular.fit_predict(kind, x_train, train.targets, x_test, seed, True)
        ref_train = tabular.reference_runtime(train.config_json)
        ref_test = tabular.reference_runtime(p.test.config_json)
        return tabular.ratio_model(kind, x_train, train.targets, ref_train, x_test, ref_test, seed)

    return run


def log_peers() -> dict[str, Peer]:
    """The peers that read the logs, as hand-made summary columns (lumos and the demo fleet,
    whose targets depend on the logs: on the config alone a fleet cell is one constant)."""
    return {
        "lightgbm_logs": with_logs("lightgbm", False),
        "xgboost_logs": with_logs("xgboost", False),
        f"{SMALL}_logs": with_logs(SMALL, False),
    }


def lumos_peers() -> dict[str, Peer]:
    """The reference-VM peers: the log-ratio target and the median-ratio rule."""

    def rule(p: Parts, _: int) -> np.ndarray:
        train = p.fit_part()
        return tabular.median_ratio_rule(
            train.tasks,
            train.targets,
            tabular.reference_runtime(train.config_json),
            p.test.tasks,
            tabular.reference_runtime(p.test.config_json),
        )

    return {
        "lightgbm_ratio": with_logs("lightgbm", True),
        "xgboost_ratio": with_logs("xgboost", True),
        f"{SMALL}_ratio": with_logs(SMALL, True),
        "ratio_rule": rule,
    }


def peers_of(dataset: str) -> dict[str, Peer]:
    """Every peer that has the inputs it needs on `dataset`."""
    peers = config_peers()
    if dataset in ("lumos", "fleet"):
        peers |= log_peers()
    if dataset == "lumos":
        peers |= lumos_peers()
    return peers


def save_plot(out: Path, name: str, y: np.ndarray, median: np.ndarray, low=None, high=None) -> None:
    low = median if low is None else low
    high = median if high is None else high
    fig = predicted_vs_actual(y, median, low, high, name)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "plots" / f"{name}.png", dpi=90)


def emit(prefix: str, metrics: dict[str, float], keys: tuple[str, ...]) -> None:
    for key in keys:
        print(f"{prefix}_{key}: {metrics[key]:.4f}", flush=True)


def source_recipe(model: str, dataset: str) -> Recipe:
    """The model as the dataset's source config reads numbers (`SourceText.whole_numbers`) and
    states its target (`SourceText.target_relative_to`)."""
    source = load_source_config(SOURCES[dataset])
    return Recipe(
        model,
        split_digits=not source.whole_numbers,
        relative_to=source.target_relative_to,
        mixed_target_forms=source.mixed_target_forms,
    )


def absolute_recipe(model: str, dataset: str) -> Recipe:
    """`source_recipe` learning the target itself: for the protocol benches, whose single models
    fit the published protocols' rows (C3O's per-job medians) and were measured that way."""
    return dataclasses.replace(
        source_recipe(model, dataset), relative_to=None, mixed_target_forms=False
    )


def recipe_of(args: argparse.Namespace) -> Recipe:
    """The source's recipe with the command line's ablations on top."""
    source = source_recipe(args.model, args.dataset)
    split_digits, relative_to = source.split_digits, source.relative_to
    mixed = source.mixed_target_forms
    if args.number_tokens:
        split_digits = args.number_tokens == "digits"
    if args.target is not None:
        mixed = args.target == "mixed"
    if args.relative_to:
        relative_to = args.relative_to
    elif args.target == "absolute":
        relative_to = None
    elif args.target in ("relative", "mixed") and relative_to is None:
        raise SystemExit(f"conf/sources/{SOURCES[args.dataset]}.yaml sets no target_relative_to")
    return Recipe(
        model=args.model,
        max_input_tokens=args.max_input_tokens,
        split_digits=split_digits,
        relative_to=relative_to,
        mixed_target_forms=mixed and relative_to is not None,
        shuffle_fields=args.shuffle_fields,
        exponent_first=exponent_first(args),
        dropout=args.dropout,
        attention_dropout=args.attention_dropout,
    )


def add_number_order(parser: argparse._ActionsContainer) -> None:
    """`--number-order`: the token order in which the decoder writes a number (`CodecConfig`)."""
    parser.add_argument(
        "--number-order",
        choices=("mantissa-first", "exponent-first"),
        default="mantissa-first",
        help="the decoder writes sign, digits, exponent (the paper's order) or sign, exponent,"
        " digits: the decade before the digits",
    )


def exponent_first(args: argparse.Namespace) -> bool:
    """Whether `--number-order` asks for the exponent before the digits."""
    return args.number_order == "exponent-first"


def priority_of(args: argparse.Namespace) -> tuple[str, ...]:
    """The section order of the source config, or the `--section-order` ablation's."""
    if args.section_order:
        return tuple(args.section_order.split(","))
    return tuple(load_source_config(SOURCES[args.dataset]).section_priority)


def run_name_of(args: argparse.Namespace, recipe: Recipe) -> str:
    budget = f"{args.minutes:g}min" if args.steps is None else f"{args.steps}steps"
    name = f"{args.dataset}_{args.model}_{budget}_seed{args.seed}{recipe.run_suffix()}"
    name += "_scientific" if args.number_format == "scientific" else ""
    name += f"_wd{args.weight_decay:g}" if args.weight_decay is not None else ""
    name += "_select-val_error" if args.select_by == "val_error" else ""
    name += f"_{args.reference_pairs}-pairs" if args.reference_pairs else ""
    if args.pretrain_on:
        name += f"_pretrain-{'-'.join(args.pretrain_on)}-{args.pretrain_minutes:g}min"
    name += f"_order-{args.section_order.replace(',', '-')}" if args.section_order else ""
    name += f"_ensemble{args.ensemble}" if args.ensemble > 1 else ""
    return name + ("_crossfit" if args.cross_fit else "") + ("_refit" if args.refit else "")


def examples_of(dataset: str, out: Path, budget: int) -> Examples:
    """Every record of a dataset (ingested into `out` if need be), in its source's section order."""
    priority = tuple(load_source_config(SOURCES[dataset]).section_priority)
    return to_examples(load_records(dataset, out), priority, budget)


def pretrained_base(
    args: argparse.Namespace, recipe: Recipe, parts: Parts, priority: tuple[str, ...], ckpt: Path
) -> Predictor:
    """One model trained within `--pretrain-minutes` on every record of the `--pretrain-on`
    datasets (none of them is scored in this run), 5% of them, at random, for early stopping.
    Its tokenizer and codec also cover this dataset's training part, which it is fine-tuned on."""
    budget = recipe.model_config().max_input_tokens
    others = functools.reduce(
        concat, [examples_of(d, Path(args.out), budget) for d in args.pretrain_on]
    )
    order = np.random.default_rng(args.seed).permutation(len(others))
    n_val = max(1, len(others) // 20)
    val, train = others.take(order[:n_val]), others.take(order[n_val:])
    learnt = [others.targets, parts.train.model_targets, parts.val.model_targets]
    if recipe.mixed_target_forms:  # the codec spans both forms: members fine-tune in either
        learnt += [parts.train.targets, parts.val.targets]
    targets = np.concatenate(learnt)
    texts = others.texts + parts.train.texts
    base = new_predictor(recipe, texts, targets, priority, args.seed)
    cfg = budget_config(args.pretrain_minutes, args.seed)
    fitted, _ = fit_in_budget(base, train, val, cfg, ckpt, resume=args.resume)
    d = args.dataset
    print(f"{d}_pretrain_records: {len(others)}\n{d}_pretrain_steps: {fitted.steps}")
    print(f"{d}_pretrain_best_{fitted.monitor}: {fitted.best_val_score:.4f}", flush=True)
    return base


def member_parts(args: argparse.Namespace, parts: Parts) -> list[tuple[Examples, Examples]]:
    """Each ensemble member's (train, val): the split's, or with `--cross-fit` train+val cut into
    K group folds (a configuration or workload never in two), member i validating on fold i and
    training on the rest. The ensemble then learns from all of train+val, as the tabular peers
    do, while each member still stops early on groups it has not seen. Validation keeps only
    matched reference pairs. With `--refit` every member trains on all of train+val, to the step
    plan, and validates on nothing (`training.fit` then keeps the last step's weights)."""
    if args.refit:
        everything = parts.fit_part()
        return [(everything, everything.take([]))] * args.ensemble
    if not args.cross_fit:
        return [(parts.train, matched_only(parts.val))] * args.ensemble
    pool = parts.fit_part()
    groups = groups_of(args.dataset, pool.tasks, pool.config_json)
    folds = GroupKFold(args.ensemble, shuffle=True, random_state=args.seed)
    cuts = folds.split(pool.texts, groups=groups)
    return [(pool.take(fit), matched_only(pool.take(val))) for fit, val in cuts]


def matched_only(examples: Examples) -> Examples:
    """A validation part without extra reference pairings (`pairs: all`): a member stops early on
    what test scores, and decoding a part 3x as large each validation buys nothing."""
    keep = [i for i, rid in enumerate(examples.record_ids) if not is_extra_pair(rid)]
    return examples if len(keep) == len(examples) else examples.take(keep)


@dataclass(frozen=True)
class MemberSamples:
    """One ensemble member's draws: on the test part [N_test, samples], and on the validation
    part it stopped early on [N_val, samples] (with `--cross-fit` a fold of its own)."""

    test: np.ndarray
    val: np.ndarray
    val_ids: list[str]


def save_member_samples(path: Path, test_ids: list[str], members: list[MemberSamples]) -> None:
    """Every member's draws, so runs on one split can be pooled later (`bench/pool.py`)."""
    arrays: dict[str, np.ndarray] = {"test_ids": np.array(test_ids)}
    for i, member in enumerate(members):
        arrays |= {f"test_{i}": member.test, f"val_{i}": member.val}
        arrays[f"val_ids_{i}"] = np.array(member.val_ids)
    np.savez_compressed(path, **arrays)


def train_members(
    args: argparse.Namespace, recipe: Recipe, parts: Parts, priority: tuple[str, ...], ckpt: Path
) -> list[MemberSamples]:
    """Each ensemble member's test and validation samples. Members differ in their training seed
    (and with `--cross-fit` in their train/val cut, `member_parts`) and share the step plan
    timed for the first. With `--pretrain-on`, each is the one pretrained model fine-tuned."""
    base = None
    if args.pretrain_on:  # beside the fine-tuning's directory: its logger clears that one
        base_ckpt = ckpt.with_name(f"{ckpt.name}_base")
        base = pretrained_base(args, recipe, parts, priority, base_ckpt)
    d, plan, members = args.dataset, args.steps, []
    absolute_members = absolute_members_of(args.ensemble, recipe.mixed_target_forms)
    for i, (train, val) in enumerate(member_parts(args, parts)):
        # A fixed step plan (`--steps`) is not cut by the clock: results then do not depend on
        # what else the machine runs (members of a 5-model run got 613 down to 210 steps).
        minutes = args.minutes if args.steps is None else 100 * args.minutes
        cfg = budget_config(minutes, args.seed + 1000 * i, args.select_by)
        if args.weight_decay is not None:
            cfg = cfg.model_copy(update={"weight_decay": args.weight_decay})
        cfg = cfg.model_copy(update={"shuffle_fields": recipe.shuffle_fields})
        member_ckpt = ckpt if args.ensemble == 1 else ckpt / f"member{i}"
        if base is None:
            predictor, fitted, plan = train_textperf(
                recipe,
                train,
                val,
                cfg,
                member_ckpt,
                priority,
                plan,
                args.resume,
                i in absolute_members,
            )
        else:
            predictor = copy.deepcopy(base)
            predictor.absolute_members = (0,) if i in absolute_members else ()
            fitted, plan = fit_in_budget(predictor, train, val, cfg, member_ckpt, plan, args.resume)
        test = parts.test
        samples = predictor.sample_texts(
            test.texts, args.samples, seed=args.seed + i, scales=test.scales
        )
        tag = f"{d}_textperf" if args.ensemble == 1 else f"{d}_textperf_member{i}"
        print(f"{tag}_steps: {fitted.steps}\n{tag}_train_s: {fitted.seconds:.0f}")
        print(f"{tag}_best_{fitted.monitor}: {fitted.best_val_score:.4f}", flush=True)
        # Validation loss is not comparable across target forms (absolute vs relative): the
        # validation part's own point metrics are, and choosing on them leaves test untouched.
        val_samples = np.empty((0, args.samples))  # a refit member validates on nothing
        if len(val):
            val_samples = predictor.sample_texts(
                val.texts, args.samples, seed=args.seed, scales=val.scales
            )
            emit(f"{tag}_val", point_metrics(val.targets, finite_median(val_samples)), POINT)
        if args.ensemble > 1:
            emit(tag, point_metrics(parts.test.targets, finite_median(samples)), POINT)
        members.append(MemberSamples(samples, val_samples, val.record_ids))
    print(f"{d}_textperf_parameters: {predictor.model.num_parameters()}")
    print(f"{d}_textperf_mean_input_tokens: {mean_tokens(predictor, parts.test.texts):.0f}")
    return members


def print_sample_sweep(prefix: str, y: np.ndarray, samples: np.ndarray) -> None:
    """The samples ablation on one model: K = 1, 2, 4 .. samples; median vs mean."""
    for k, scores in sweep(y, samples):
        for key, value in scores.items():
            print(f"{prefix}_k{k}_{key}: {value:.4f}", flush=True)


def check_member_plan(args: argparse.Namespace) -> None:
    """Refuses member plans that cannot run: cross-fitting needs a fold per member, and a refit
    has no validation to stop it or time a plan by, so it needs a fixed `--steps`."""
    if args.cross_fit and args.ensemble < 2:
        raise SystemExit("--cross-fit needs --ensemble 2 or more (one fold per member)")
    if args.refit and args.cross_fit:
        raise SystemExit("--refit and --cross-fit exclude each other: a refit validates on nothing")
    if args.refit and args.steps is None:
        raise SystemExit("--refit trains to a fixed plan: give --steps")


def run(args: argparse.Namespace) -> None:
    if args.dataset in args.pretrain_on:
        raise SystemExit("--pretrain-on must name other datasets than --dataset")
    check_member_plan(args)
    out = Path(args.out)
    started = time.perf_counter()
    records = load_records(args.dataset, out, args.reference_pairs)
    records, sides = matched_test_only(records, sides_of(args.dataset, records, args.seed, out))
    recipe = recipe_of(args)
    priority = priority_of(args)
    budget = recipe.model_config().max_input_tokens
    parts = make_parts(records, sides, priority, budget, recipe.relative_to)
    if args.number_format == "scientific":
        parts = dataclasses.replace(
            parts, **{side: with_scientific_numbers(getattr(parts, side)) for side in SIDES}
        )
    d = args.dataset
    print(f"{d}_n_train: {len(parts.train)}\n{d}_n_val: {len(parts.val)}")
    print(f"{d}_n_test: {len(parts.test)}", flush=True)

    peers = peers_of(d)
    y = parts.test.targets
    predictions = {"record_id": parts.test.record_ids, "task": parts.test.tasks, "actual": y}
    peer_parts = for_peers(parts, d, args.peers_keep_group_field)
    for name, peer in peers.items():
        pred = predictions[name] = peer(peer_parts, args.seed)
        emit(f"{d}_{name}", point_metrics(y, pred), POINT)
        save_plot(out, f"{d}_{name}", y, pred)
    if args.peers_only:
        return

    run_name = run_name_of(args, recipe)
    members = train_members(args, recipe, parts, priority, out / "checkpoints" / run_name)
    save_member_samples(out / f"{run_name}_samples.npz", parts.test.record_ids, members)
    # [N, ensemble * samples]: pooled draws
    samples = np.concatenate([member.test for member in members], axis=1)
    summary = summarize(samples) | {"samples": samples}
    metrics = evaluate_predictions(y, summary)
    emit(f"{d}_textperf", metrics, POINT + UNCERTAINTY)
    print_sample_sweep(f"{d}_textperf", y, members[0].test)
    point_mape = point_metrics(y, relative_error_point(samples))["mape"]
    print(f"{d}_textperf_mape_point_mape: {point_mape:.4f}")
    save_plot(out, f"{run_name}_textperf", y, summary["median"], summary["q10"], summary["q90"])
    print(f"{d}_wall_s: {time.perf_counter() - started:.0f}")
    (out / f"{run_name}_textperf.json").write_text(json.dumps(metrics))
    predictions |= {f"textperf_{key}": summary[key] for key in ("median", "q10", "q90")}
    pl.DataFrame(predictions).write_parquet(out / f"{run_name}_predictions.parquet")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(SOURCES), required=True)
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per model")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train every model this many steps whatever the clock says (default: as many as"
        " --minutes allows, timed by a probe)",
    )
    parser.add_argument("--model", default="small", help="conf/model/<name>.yaml")
    parser.add_argument("--seed", type=int, default=0, help="split, training and sampling seed")
    parser.add_argument("--samples", type=int, default=32, help="decodes per test input")
    parser.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="models trained with seeds seed, seed+1000, ..; their samples are pooled",
    )
    parser.add_argument(
        "--cross-fit",
        action="store_true",
        help="members train on K-1 of K group folds of train+val and stop early on the last",
    )
    parser.add_argument(
        "--refit",
        action="store_true",
        help="members train on all of train+val for exactly --steps steps, validate on nothing"
        " and keep the last step's weights (as the tabular peers see train+val)",
    )
    parser.add_argument(
        "--pretrain-on",
        nargs="+",
        choices=sorted(SOURCES),
        default=[],
        help="first pretrain on every record of these other datasets, then fine-tune",
    )
    parser.add_argument("--pretrain-minutes", type=float, default=5.0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="warehouse, split, plots")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--peers-only", action="store_true", help="score the tabular peers on the split and stop"
    )
    parser.add_argument(
        "--peers-keep-group-field",
        action="store_true",
        help="give the peers the field the split groups by (lumos' workload), unseen on every"
        " test row, as before session 52",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each member from the last.ckpt a killed (or finished) run of the same"
        " flags left under --out; exact with --steps (a --minutes plan is timed anew)",
    )
    ablation = parser.add_argument_group("ablations (textperf only; the peers are unchanged)")
    ablation.add_argument(
        "--max-input-tokens", type=int, default=None, help="input budget instead of the model's"
    )
    ablation.add_argument(
        "--number-tokens",
        choices=("digits", "whole"),
        default=None,
        help="one token per digit, or digit runs kept whole so a frequent number can become one"
        " token (default: the source config's `whole_numbers`)",
    )
    add_number_order(ablation)
    ablation.add_argument(
        "--number-format",
        choices=("plain", "scientific"),
        default="plain",
        help="numbers in the input as written, or rewritten as 1.515e4 (after truncation)",
    )
    ablation.add_argument(
        "--target",
        choices=("absolute", "relative", "mixed"),
        default=None,
        help="learn the target itself, or its ratio to the source's `target_relative_to` field,"
        " or (mixed) the ratio in even ensemble members and the target in odd ones (default: the"
        " source config's)",
    )
    ablation.add_argument(
        "--relative-to",
        default=None,
        metavar="PATH",
        help="learn the target relative to this dotted config path instead of the source's",
    )
    ablation.add_argument("--dropout", type=float, default=None, help="instead of the model's")
    ablation.add_argument(
        "--attention-dropout",
        type=float,
        default=None,
        help="instead of the model's (default: the same as --dropout)",
    )
    ablation.add_argument(
        "--shuffle-fields",
        action="store_true",
        help="augment: each epoch shows a training record's fields in a new order",
    )
    ablation.add_argument(
        "--weight-decay", type=float, default=None, help="instead of conf/train/demo.yaml's"
    )
    ablation.add_argument(
        "--select-by",
        choices=("val_loss", "val_error"),
        default="val_loss",
        help="what picks each model's checkpoint and stops it early (TrainConfig.select_by)",
    )
    parser.add_argument(
        "--reference-pairs",
        choices=("matched", "all"),
        default=None,
        help="train/val records pair each run with its matched reference run only, or with every"
        " reference run of its group (test keeps the matched pairs; the peers get the same"
        " records; default: the source config's `reference.pairs`; use an --out of its own)",
    )
    ablation.add_argument(
        "--section-order",
        default=None,
        help="comma-separated sections, most important first (default: the source config's)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    run(args)


if __name__ == "__main__":
    main()
