"""The steps of a retraining run, each callable alone; `flows/` only wires them together."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import polars as pl
from mlflow.entities.model_registry import ModelVersion

from regressor import baselines, registry
from regressor.adaptation import (
    OWN_SCALE,
    fine_tune,
    hold_out_gate,
    latest_shots,
    may_fit_a_scale,
    recalibrate,
    train_from_scratch,
    zero_shot_fallback,
)
from regressor.calibration import is_quantile
from regressor.config import (
    CONF_DIR,
    AppConfig,
    CodecConfig,
    EvalConfig,
    FleetSourceConfig,
    ModelConfig,
    ResolvedPaths,
    SourceConfig,
    load_model_config,
    load_train_config,
    named_config,
)
from regressor.dataset import (
    Examples,
    assign_splits,
    examples_of_labelled,
    holdout_task_of,
    record_from_row,
    to_examples,
)
from regressor.ensemble import MEMBER_FIT, absolute_members_of, train_ensemble
from regressor.environment import code_digest, launched_rank, numeric_environment
from regressor.evaluation import evaluate_predictions, point_metrics
from regressor.fleetsim import FleetSummary, generate_fleet, is_generated
from regressor.locks import held, take_lock
from regressor.plots import calibration, predicted_vs_actual
from regressor.predictor import Predictor
from regressor.serialize import DEFAULT_PRIORITY
from regressor.sources.dispatch import INGEST_MEMORY_LIMIT, ingest_source, require_source
from regressor.sources.fleet import IngestReport
from regressor.sources.fleet import source_root as fleet_root
from regressor.tracking import configure_mlflow, log_splits
from regressor.training import FitResult, RunLogger, check_trainer_settings, fit_examples
from regressor.vocab import InputTokenizer
from regressor.warehouse import NoRecordsTableError, Warehouse, reading_records

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class DataError(registry.UserError, ValueError):
    """The warehouse lacks what a step needs (no warehouse yet, no records of the source, no
    such task, too few records to split or adapt): the message says what to ingest or change."""


def source_root(paths: ResolvedPaths, source: FleetSourceConfig) -> Path:
    return fleet_root(source, paths.raw_dir)


def generate(paths: ResolvedPaths, app: AppConfig, source: FleetSourceConfig) -> FleetSummary:
    return generate_fleet(source_root(paths, source), app.fleet)


def check_train_config(app: AppConfig) -> None:
    """The run's train config against Lightning and this machine, before any work
    (`training.check_trainer_settings`); a `ConfigError` naming its file."""
    where = str(named_config("train", app.train))
    check_trainer_settings(load_train_config(app.train), where)


def generates_fleet(paths: ResolvedPaths, source: SourceConfig, requested: bool | None) -> bool:
    """Whether a run writes the demo fleet (`app.fleet`) into `source`'s folder first: by
    default (None), only the folder of a source marked `demo` that holds nothing yet; asked for
    (True), any fleet source's empty folder, or one the generator wrote before
    (`fleetsim.is_generated`). Never a real fleet's files (its targets would be overwritten)
    nor a table or runs source's: a `DataError` when asked."""
    is_fleet = isinstance(source, FleetSourceConfig)
    if requested and not is_fleet:
        raise DataError(
            f"--generate-fleet writes a demo fleet, and source {source.name!r} is a "
            f"{source.adapter} source: run with --no-generate-fleet"
        )
    if not is_fleet or requested is False:
        return False
    root = source_root(paths, source)
    empty = not root.is_dir() or next(root.iterdir(), None) is None
    if requested and not empty and not is_generated(root):
        raise DataError(
            f"{root} holds files the demo fleet generator did not write (a real fleet?): "
            "--generate-fleet would overwrite them; empty the folder to write the demo there"
        )
    return bool(requested) or (empty and source.demo)


def ingest(
    paths: ResolvedPaths, source: SourceConfig, run_id: str, forget_gone: bool = False
) -> IngestReport:
    """Any adapter's source into the warehouse (`regressor.sources.dispatch`); `forget_gone`
    first drops the rows of its files that are gone for good (`regressor.sources.forget`)."""
    require_source(source, paths.raw_dir)  # before the warehouse is made: nothing to put in it
    with Warehouse(paths.warehouse, memory_limit=INGEST_MEMORY_LIMIT) as wh:
        return ingest_source(wh, source, paths.raw_dir, run_id, forget=forget_gone)


@dataclass(frozen=True)
class Dataset:
    splits: dict[str, Examples]
    holdout_task: str
    data_hash: str
    example_record: dict
    whole_numbers: bool = False  # the source's tokenization of numbers (`SourceText`)
    relative_to: str | None = None  # the source's baseline of its target (`SourceText`)
    mixed_target_forms: bool = False  # an ensemble's odd members learn the target itself
    source: str = ""  # the source's name and what it predicts, for the registry's descriptions
    target: str = "target"
    # The order of the texts' sections (`source.section_priority`): it shapes every text, so the
    # tokenizer and the weights; left out of the keys, a changed order reused the old model.
    section_priority: tuple[str, ...] = ()
    budget_tokens: int | None = None  # what the texts were cut to (the model config's budget)
    # The records with their `split` column, to serialize again for a registered model that
    # reads them otherwise (`served_by`); None for a dataset built from texts alone.
    labelled: pl.DataFrame | None = field(default=None, repr=False, compare=False)


def load_dataset(paths: ResolvedPaths, app: AppConfig, source: FleetSourceConfig) -> Dataset:
    """The source's records, serialized and split; a `DataError` saying what to ingest when the
    warehouse is missing or has none, or naming the tasks there are when the holdout task (the
    one to adapt to) is not among them."""
    records, data_hash = _source_records(paths.warehouse, source.name)
    holdout = app.split.holdout_task
    tasks = sorted(set(records["task"]))
    if holdout is not None and holdout not in tasks:
        raise DataError(
            f"task {holdout!r} (--task, or split.holdout_task) has no records of source "
            f"{source.name!r} in {paths.warehouse}; its tasks: {names_of(tasks)}"
        )
    budget = load_model_config(app.model).max_input_tokens
    relative_to = source.target_relative_to
    labelled = assign_splits(records, app.split)
    splits = examples_of_labelled(labelled, source.section_priority, budget, relative_to)
    return Dataset(
        splits,
        holdout_task_of(records, app.split),
        data_hash,
        record_from_row(records.row(0, named=True)),
        source.whole_numbers,
        relative_to,
        source.mixed_target_forms,
        source.name,
        source.target_name,
        tuple(source.section_priority),
        budget,
        labelled,
    )


def served_by(data: Dataset, predictor: Predictor) -> Dataset:
    """`data` with its texts and baselines as `predictor` makes them when it serves: its
    section order, token budget and target baseline. A registered model trained under other
    configs (an older champion, `textperf adapt --base N`) read the configured texts before:
    another order or cut than it learned and serves, and its scores and fine-tuning with them.
    Unchanged when they agree, or when `data` was built from texts alone."""
    if _reads_as_configured(data, predictor):
        return data
    priority, budget = _text_form(predictor)
    return replace(
        data,
        splits={name: served_split(data, predictor, name) for name in data.splits},
        section_priority=priority,
        budget_tokens=budget,
        relative_to=predictor.relative_to,
    )


def served_split(data: Dataset, predictor: Predictor, split: str) -> Examples:
    """One split of `served_by(data, predictor)`, made alone: scoring a champion on the test
    records made every record's text again (and a train record without the champion's
    baseline failed it)."""
    if _reads_as_configured(data, predictor):
        return data.splits[split]
    labelled = data.labelled.filter(pl.col("split") == split)
    by_configuration = data.splits[split].by_configuration  # as the whole source was split
    return to_examples(labelled, *_text_form(predictor), predictor.relative_to, by_configuration)


def _text_form(predictor: Predictor) -> tuple[tuple[str, ...], int]:
    """What shapes the texts `predictor` reads: its section order and token budget."""
    return tuple(predictor.priority), predictor.model_config.max_input_tokens


def _reads_as_configured(data: Dataset, predictor: Predictor) -> bool:
    """Whether `predictor` reads `data`'s texts as they are (or `data` has no records to make
    them again from)."""
    same = _text_form(predictor) == (data.section_priority, data.budget_tokens)
    return data.labelled is None or (same and predictor.relative_to == data.relative_to)


def fresh_predictor(
    data: Dataset,
    model_cfg: ModelConfig,
    codec: CodecConfig,
    tokenizer: InputTokenizer,
    seed: int | None,
) -> Predictor:
    """An untrained model that reads texts as `data` made them: its section order and target
    baseline. Without the order, every model the pipeline trained kept the default one (task,
    period, config, logs): a source ordering its sections otherwise (lumos: task, config, logs,
    and a dated record's period last) trained on its texts and served others, and was gated and
    adapted on those (`served_by`)."""
    priority = data.section_priority or DEFAULT_PRIORITY
    return Predictor.create(model_cfg, codec, tokenizer, priority, data.relative_to, seed=seed)


def ingest_hint(source: str) -> str:
    return f"ingest it first: `textperf ingest --source {source}`"


@contextmanager
def reading_warehouse(warehouse: Path, source: str) -> Iterator[Warehouse]:
    """The warehouse, read-only (`warehouse.reading_records`); a `DataError` saying to ingest
    `source` when there is none yet or no ingest has set it up.

    It waits, holding the writer's lock shared, behind an ingest: DuckDB refuses a reader while
    a writer has the file open, and its own wait (`LOCK_TIMEOUT_S`) failed the nightly's dataset
    and adaptations behind a long ad-hoc ingest. The lock is in the `locks/` folder beside the
    warehouse (`ResolvedPaths`)."""
    try:
        with ExitStack() as stack:
            _behind_the_writer(stack, warehouse.parent / "locks")
            yield stack.enter_context(reading_records(warehouse))
    except NoRecordsTableError as exc:
        raise DataError(f"{exc}: {ingest_hint(source)}") from exc


def _behind_the_writer(stack: ExitStack, locks: Path) -> None:
    """The writer's lock, held shared on `stack`; where none can be made (a read-only state
    directory, as a copy for serving), DuckDB's own bounded wait only, as before the lock."""
    try:
        stack.enter_context(held(locks, WRITER_LOCK, "writing the warehouse", logger, shared=True))
    except OSError as exc:
        logger.warning("reading the warehouse without its writer lock (%s): %s", locks, exc)


def _source_records(warehouse: Path, source: str) -> tuple[pl.DataFrame, str]:
    """The warehouse's records of `source` and the snapshot's hash, or a `DataError`."""
    with reading_warehouse(warehouse, source) as wh:
        records = wh.query("records").filter(source=source)
        data_hash = wh.content_hash(source)
    if records.is_empty():
        raise DataError(
            f"the warehouse {warehouse} has no records of source {source!r}: {ingest_hint(source)}"
        )
    return records, data_hash


def names_of(names: list[str], most: int = 8) -> str:
    """A few names of a list for a message, and how many there are."""
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown}, ... ({len(names)} in all)"


def require_splits(data: Dataset, needed: tuple[str, ...], doing: str) -> None:
    """A `DataError` when a split `doing` needs is empty: it would fail later on an empty
    array (LightGBM's baseline, a metric) after minutes of training, with its MLflow run open."""
    sizes = {name: len(data.splits[name]) for name in needed}
    if min(sizes.values()) > 0:
        return
    counts = ", ".join(f"{name} {n}" for name, n in sizes.items())
    raise DataError(
        f"too few records {doing}: the split left {counts} records (each needs at least one); "
        "ingest more, or hold out less (split.test_days, or split.test_fraction and "
        "split.val_fraction for a source without periods)"
    )


def evaluate_model(
    predictor: Predictor, examples: Examples, cfg: EvalConfig
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    summary = predictor.predict_texts(
        examples.texts,
        cfg.num_samples,
        cfg.temperature,
        cfg.quantiles,
        tasks=examples.tasks,
        scales=examples.scales,
    )
    return evaluate_predictions(examples.targets, summary), summary


def baseline_metrics(train: Examples, test: Examples, seed: int = 0) -> dict[str, dict[str, float]]:
    mean = baselines.mean_baseline(train.targets, len(test))
    gbm = baselines.lightgbm_baseline(train.config_json, train.targets, test.config_json, seed)
    return {"mean": point_metrics(test.targets, mean), "lightgbm": point_metrics(test.targets, gbm)}


def log_evaluation(
    examples: Examples, summary: dict[str, np.ndarray], prefix: str, scored: str
) -> None:
    """The figures of a scored split and its per-record predictions, as the table
    `predictions/<prefix>.json` (the MLflow UI shows it; `mlflow.load_table` reads it back):
    what per-task error analysis starts from."""
    log_figures(examples.targets, summary, prefix, scored)
    mlflow.log_table(predictions_frame(examples, summary), f"predictions/{prefix}.json")


def predictions_frame(examples: Examples, summary: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per record: its id, task and actual target, then the summary's median, mean,
    std and quantiles (as served: conformally rescaled)."""
    columns = ["median", "mean", "std", *sorted(k for k in summary if is_quantile(k))]
    return pd.DataFrame(
        {
            "record_id": examples.record_ids,
            "task": examples.tasks,
            "actual": examples.targets,
            **{c: np.asarray(summary[c], dtype=float) for c in columns if c in summary},
        }
    )


def log_figures(
    y_true: np.ndarray, summary: dict[str, np.ndarray], prefix: str, scored: str
) -> None:
    """Predicted vs actual and the calibration, as `plots/<prefix>_*.png`; `scored` says whose
    predictions of what, for the titles (which also give the number of records)."""
    title = f"{scored} ({len(y_true)} records)"
    figures = {
        f"plots/{prefix}_predicted_vs_actual.png": predicted_vs_actual(
            y_true, summary["median"], summary["q10"], summary["q90"], title
        ),
        f"plots/{prefix}_calibration.png": calibration(y_true, summary["samples"], title),
    }
    for path, figure in figures.items():  # not pyplot's: nothing to close (`plots._figure`)
        mlflow.log_figure(figure, path)


def score_registered(uri: str, data: Dataset, split: str, cfg: EvalConfig) -> dict[str, float]:
    """Metrics of a registered model on the `split` records of `data`, through the same pyfunc
    users load, on texts as it serves them (`served_by`).

    A missing or corrupted artifact raises `registry.ModelLoadError` naming the version.
    """
    predictor = registry.load_predictor(uri)
    return evaluate_model(predictor, served_split(data, predictor, split), cfg)[0]


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    model_name: str
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, dict[str, float]]
    fit: FitResult  # an ensemble's: its members' summed up (`regressor.ensemble.combine_fits`)
    n_parameters: int  # all members' together
    # True when nothing was trained: `version` was registered under the same registration key
    # (data snapshot, configs, code); its run, metrics and gate decision are the ones reported.
    reused: bool = False
    run_deleted: bool = False  # reused, and its run since removed from the store (`mlflow gc`)

    @property
    def uri(self) -> str:
        return registry.model_uri(self.model_name, self.version)


def _log_params(
    app: AppConfig,
    data: Dataset,
    n_parameters: int,
    conf_dir: Path = CONF_DIR,
    per_member: int | None = None,
) -> None:
    """The run's configs and data; `n_parameters` counts all members of an ensemble, whose
    `per_member` count is logged too; `env.*` what else decides the weights to the bit."""
    model_cfg = load_model_config(app.model, conf_dir)
    train_cfg = load_train_config(app.train, conf_dir)
    params = {f"model.{k}": v for k, v in model_cfg.model_dump().items()}
    params |= {f"train.{k}": v for k, v in train_cfg.model_dump().items()}
    params |= {f"codec.{k}": v for k, v in app.codec.model_dump().items()}
    # What else shapes the reported figures and the gate, and the code that ran.
    params |= {f"split.{k}": v for k, v in app.split.model_dump().items()}
    params |= {f"eval.{k}": v for k, v in app.eval.model_dump().items()}
    params |= {f"promotion.{k}": v for k, v in app.registry.promotion.model_dump().items()}
    params |= {"source": app.source, "code_digest": code_digest()}
    params["git_commit"] = registry.git_commit()
    params |= {
        "data_hash": data.data_hash,
        "n_parameters": n_parameters,
        **({} if per_member is None else {"n_parameters_per_member": per_member}),
        "holdout_task": data.holdout_task,
        "whole_numbers": data.whole_numbers,
        "section_priority": ",".join(data.section_priority),
        "target_relative_to": data.relative_to,
        "mixed_target_forms": data.mixed_target_forms,
    }
    params |= {f"n_{name}": len(ex) for name, ex in data.splits.items()}
    params |= {f"env.{key}": value for key, value in numeric_environment().items()}
    mlflow.log_params(params)


# A model version's held-out task; on a variant, the other task its base held out instead.
HOLDOUT_TAG = "holdout_task"
BASE_TRAINED_ON_TASK = "base_held_out_another_task"
# Appended to the gate reason of a version gated by a run other than the one that registered it.
STOPPED_BEFORE_GATE = "; gated by a later run: the run that registered it stopped before its gate"
TEST_METRICS = "test_metrics.json"  # every model's held-out metrics, logged by a training run
# Version tags from which a later run reports a version it reuses: the registry alone, since
# the run that made it may be deleted and garbage-collected (`mlflow gc`) while it serves.
TEST_REPORT_TAG = "test_report"  # the report's table: every model's held-out metrics
FIT_TAG = "fit"  # steps, seconds, processes (`_fit_tag`)
INTERVALS_TAG = "intervals"  # an adapted variant's: what its conformal scale was fitted on
SCRATCH_FIT_TAG = "scratch_fit"  # an adaptation's from-scratch reference: its steps and seconds
VALIDATION_TAG = "validation_metrics"  # an adaptation's gate scores, zero-shot and adapted


def _digest(parts: dict) -> str:
    """The short hash every key here is: of `parts` as canonical JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def training_key(app: AppConfig, data: Dataset, conf_dir: Path = CONF_DIR) -> str:
    """What makes two trainings the same: data snapshot, configs, codec, split and source."""
    parts = {
        "data_hash": data.data_hash,
        "model": load_model_config(app.model, conf_dir).model_dump(mode="json"),
        "train": load_train_config(app.train, conf_dir).model_dump(mode="json"),
        "codec": app.codec.model_dump(mode="json"),
        # The holdout task as resolved, as `adaptation_key` has it: `holdout_task: null` and the
        # task it resolves to, named, hold out the same records and trained twice.
        "split": app.split.model_dump(mode="json") | {"holdout_task": data.holdout_task},
        "source": app.source,
        "whole_numbers": data.whole_numbers,
        "relative_to": data.relative_to,
        "section_priority": list(data.section_priority),
        # Only when set, so the keys (checkpoint directories) of existing trainings stay.
        **({"mixed_target_forms": True} if data.mixed_target_forms else {}),
    }
    return _digest(parts)


def registration_key(app: AppConfig, training: str) -> str:
    """What makes two registered versions the same: the training (`training_key`), how the
    model is calibrated, evaluated and gated, and the code that did it all."""
    parts = {
        "training": training,
        "eval": app.eval.model_dump(mode="json"),
        "promotion": app.registry.promotion.model_dump(mode="json"),
        "code": code_digest(),
    }
    return _digest(parts)


@contextmanager
def training_dir(paths: ResolvedPaths, key: str, wait: bool = True) -> Iterator[Path]:
    """`checkpoints/train-<key>`, held with an exclusive lock for the whole training.

    A run killed at any point leaves its `last.ckpt` and tokenizer there and the next run with
    the same key resumes from them (the kernel drops the lock of a killed process). A second
    live run with the same key waits for the first, then finds its registered version or
    resumes what it left; with `wait=False` it gets a private directory at once instead
    (`checkpoints/train-<key>-<id>`, never resumed, locked for that run's life). Holding the
    shared directory, a run also waits for the live private ones of its key, then finds their
    versions, and removes those that killed runs left (`_settle_private_dirs`).
    """
    directory = paths.checkpoints / f"train-{key}"
    while True:
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / ".lock").open("a") as lock:
            if not take_lock(lock, wait, f"training the same snapshot in {directory}", logger):
                with _private_dir(paths.checkpoints / f"train-{key}-{new_run_id()}") as private:
                    yield private
                return
            # The holder we waited for may have removed the directory, lock file and all, on
            # finishing: a lock on that unlinked file guards nothing, so lock the new one.
            if _is_same_file(lock.fileno(), directory / ".lock"):
                _settle_private_dirs(paths.checkpoints, key)
                yield directory
                return


@contextmanager
def _private_dir(directory: Path) -> Iterator[Path]:
    """A forced run's own training directory, locked while it lives: a run on the shared
    directory then tells a live one (wait for its version) from a killed one's leftovers. It
    appears under its name already locked (made under a hidden one, then renamed)."""
    making = directory.with_name(f".making-{directory.name}")
    making.mkdir(parents=True)
    with (making / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        making.rename(directory)
        yield directory


def _settle_private_dirs(checkpoints: Path, key: str) -> None:
    """Wait for every forced run training `key` in a private directory (it registers and
    gates its own version, which the caller then finds instead of training it again, or
    gating it at the same moment); remove the directories killed ones left."""
    # `.making-*`: a private directory not yet renamed into place, or a run killed meanwhile.
    leftovers = [*checkpoints.glob(f"train-{key}-*"), *checkpoints.glob(f".making-train-{key}-*")]
    for private in sorted(leftovers):
        try:
            lock = (private / ".lock").open("r")
        except FileNotFoundError:  # gone meanwhile, or left by a version without the lock
            shutil.rmtree(private, ignore_errors=True)
            continue
        with lock:
            take_lock(lock, True, f"training the same snapshot in {private} (forced)", logger)
            shutil.rmtree(private, ignore_errors=True)


@contextmanager
def gate_lock(paths: ResolvedPaths, name: str) -> Iterator[None]:
    """An exclusive lock per registered model from reading its champion to gating against it,
    so two runs (a nightly and an ad-hoc one, on other data) gate one after the other, each
    against the champion the other left. It guards runs sharing this var dir; runs on several
    machines that share only a tracking server do not see it. A prune waits for it
    (`retention_lock`)."""
    doing = f"gating a version of {name}"
    with retention_lock(paths), held(paths.locks, f"gate-{_variant_id(name)}.lock", doing, logger):
        yield


WRITER_LOCK = "warehouse-writer.lock"


@contextmanager
def writer_lock(paths: ResolvedPaths) -> Iterator[None]:
    """The warehouse's one writer, as an exclusive file lock in `var/locks/` (also under a
    Prefect server's slot: a CLI ingest or a cron run beside a worker takes no slot): the OS
    frees it when its holder dies, however it dies. Readers hold it shared (`reading_warehouse`)."""
    with held(paths.locks, WRITER_LOCK, "writing the warehouse", logger):
        yield


@contextmanager
def adaptation_lock(paths: ResolvedPaths, variant: str) -> Iterator[None]:
    """An exclusive lock per variant, so a run beside another adapting it waits, then finds
    that run's version rather than registering the same adaptation twice, and the two gates
    never move the variant's aliases at once. The lock file (empty, in `var/locks/`) stays:
    removing it would race with a run about to lock it. A prune waits for it
    (`retention_lock`): the base being adapted has no variant naming it yet."""
    doing = f"adapting {variant}"
    with (
        retention_lock(paths),
        held(paths.locks, f"adapt-{_variant_id(variant)}.lock", doing, logger),
    ):
        yield


@contextmanager
def retention_lock(paths: ResolvedPaths, prune: bool = False) -> Iterator[None]:
    """Shared by every run gating or adapting (`gate_lock`, `adaptation_lock`), exclusive for
    a prune, which so waits for them all and they for it. A prune beside an adaptation deleted
    the base version being adapted (no variant named it yet), and one beside a promote could
    delete the version the promote was moving an alias to. Like the others, it guards runs
    sharing this var dir."""
    doing = "gating or adapting a version" if prune else "pruning the registry"
    with held(paths.locks, "registry-retention.lock", doing, logger, shared=not prune):
        yield


@contextmanager
def alias_locks(paths: ResolvedPaths, name: str) -> Iterator[None]:
    """The locks under which runs move `name`'s aliases: a base model's gate lock, or a
    variant's adaptation lock (held for the whole adaptation). Each is taken, as only one
    applies to a name; the adaptation lock first, the order every run takes them in."""
    with adaptation_lock(paths, name), gate_lock(paths, name):
        yield


def _variant_id(variant: str) -> str:
    """Any task's variant name as a safe file name."""
    return hashlib.sha256(variant.encode()).hexdigest()[:16]


def adaptation_checkpoints(paths: ResolvedPaths, variant: str, run_id: str) -> Path:
    """`checkpoints/adapt-<variant>-<run>`, for one adaptation's fits; never resumed.

    The caller holds the variant's `adaptation_lock`, so the directories of the variant's other
    adaptations are those of runs killed (each run removes its own as it ends,
    `adaptation_dir`): they go, and a killed run still reading RUNNING is marked KILLED.
    """
    prefix = f"adapt-{_variant_id(variant)}-"
    for stale in paths.checkpoints.glob(f"{prefix}*"):
        _mark_killed(stale.name.removeprefix(prefix))
        shutil.rmtree(stale, ignore_errors=True)
    return paths.checkpoints / f"{prefix}{run_id}"


@contextmanager
def adaptation_dir(paths: ResolvedPaths, variant: str, run_id: str) -> Iterator[Path]:
    """`adaptation_checkpoints`, there for as long as the run adapts, registers and gates: left
    behind, it names a killed run to the next adaptation of the variant."""
    directory = adaptation_checkpoints(paths, variant, run_id)
    directory.mkdir(parents=True)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_once_check() -> None:
    """Refuse to run a pipeline step as one rank of a distributed launch: every rank would
    register its own version and move the aliases. The pipeline runs once and `training.fit`
    launches the training ranks itself (`regressor.fit_worker`)."""
    if (launched := launched_rank()) is not None:
        raise RuntimeError(
            f"this process was started as a rank of a distributed launch ({launched}), but "
            "textperf's pipeline must run once: start it plainly (not under torchrun) "
            "and set strategy/devices/num_nodes in conf/train, the training then launches one "
            "process per device"
        )


def _is_same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def resumable_tokenizer(
    directory: Path, texts: list[str], vocab_size: int, split_digits: bool = True
) -> InputTokenizer:
    """The tokenizer a killed run saved beside its checkpoint, else a new one, saved first.

    A resumed model must read the same token ids it was trained on; saving is cheaper than
    trusting BPE training to be bit-for-bit deterministic.
    """
    path = directory / "tokenizer.json"
    if path.is_file():
        return InputTokenizer.load(path)
    (directory / "last.ckpt").unlink(missing_ok=True)  # weights without their tokenizer
    for member in directory.glob("member*"):  # an ensemble's members' weights, likewise
        shutil.rmtree(member, ignore_errors=True)
    tokenizer = InputTokenizer.train(texts, vocab_size, split_digits)
    tmp = tokenizer.save(directory / "tokenizer.json.tmp")
    os.replace(tmp, path)  # atomic: a kill leaves the old state or the whole file
    return tokenizer


def _attempt_left(directory: Path) -> bool:
    """A killed attempt trained here: a single model's `last.ckpt`, or an ensemble member's
    checkpoint or finished weights."""
    return (
        (directory / "last.ckpt").is_file()
        or any(directory.glob("member*/last.ckpt"))
        or any(directory.glob(f"member*/{MEMBER_FIT}"))
    )


def _note_resume(directory: Path, run_id: str) -> None:
    """Mark the MLflow run of a killed attempt KILLED and link the new run to it."""
    record = directory / "mlflow_run.json"
    if record.is_file() and _attempt_left(directory):
        previous = json.loads(record.read_text())["run_id"]
        _mark_killed(previous)
        mlflow.set_tag("resumed_from_run", previous)
    tmp = directory / "mlflow_run.json.tmp"
    tmp.write_text(json.dumps({"run_id": run_id}))
    os.replace(tmp, record)


def train_and_register(
    app: AppConfig,
    paths: ResolvedPaths,
    data: Dataset,
    conf_dir: Path = CONF_DIR,
    force: bool = False,
) -> TrainOutcome:
    """Train (resuming a killed attempt on the same data and configs), evaluate against the
    baselines and the champion, register, gate. Checkpoints are removed once registered.

    A version already trained and gated under the same `registration_key` (data snapshot,
    configs, code) is reported instead of training it again, unless `force`: a nightly run on
    unchanged data costs seconds and adds no duplicate version. A run that starts while another
    trains the same key waits for it, so it too reports that version rather than a duplicate.

    With `ensemble_size` K > 1 in the train config, K members are trained
    (`ensemble.train_ensemble`) and registered as one model whose samples pool theirs."""
    run_once_check()
    require_splits(data, ("train", "val", "test"), "to train on")
    key = training_key(app, data, conf_dir)
    reg_key = registration_key(app, key)
    configure_mlflow(paths, app.registry.experiment)
    # Unforced, a run beside another on the same key waits for it, then reuses its version.
    with training_dir(paths, key, wait=not force) as ckpt_dir:
        earlier = None
        if not force:
            earlier = _gated_or_stopped(
                app.registry.model_name,
                registry.REGISTRATION_KEY,
                reg_key,
                lambda stopped: finish_gate(app, paths, stopped, data, ckpt_dir),
            )
        if earlier is None:
            keys = {registry.TRAINING_KEY: key, registry.REGISTRATION_KEY: reg_key}
            outcome = _train_and_register(app, paths, data, ckpt_dir, conf_dir, keys)
        else:
            outcome = reused_outcome(earlier)
        # Also what a run killed after registering left behind.
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return outcome


def _gated_or_stopped(
    name: str, key_tag: str, key: str, gate_now: Callable[[ModelVersion], None]
) -> ModelVersion | None:
    """The version of `name` registered and gated under `key_tag=key`, None when there is none.
    One whose run registered it and stopped before its gate (killed, or the registry unreachable
    then) is gated now by `gate_now`, rather than made and registered again."""
    gated, stopped = registry.keyed_versions(name, key_tag, key)
    if gated is not None or stopped is None:
        return gated
    gate_now(stopped)
    return mlflow.MlflowClient().get_model_version(name, stopped.version)  # with its decision


def finish_gate(
    app: AppConfig, paths: ResolvedPaths, version: ModelVersion, data: Dataset, ckpt_dir: Path
) -> None:
    """Gate `version` as the run that registered it would have: its test metrics (tagged)
    against the champion's, scored now on the same test records (same registration key, same
    data). The caller holds `ckpt_dir`'s lock, so a run that trained there is not alive."""
    _close_stopped_run(ckpt_dir, version.run_id)
    name, alias = app.registry.model_name, app.registry.champion_alias
    metrics = registry.metrics_from_json(version.tags["test_metrics"])
    with gate_lock(paths, name):
        champion = registry.alias_version(name, alias)
        champion_metrics = None
        if champion is not None and str(champion.version) == str(version.version):
            champion_metrics = metrics  # killed after taking the alias: it keeps it
        elif champion is not None:
            champion_uri = registry.model_uri(name, champion.version)
            champion_metrics = score_registered(champion_uri, data, "test", app.eval)
        decision = registry.gate(
            name,
            version,
            metrics,
            champion_metrics,
            app.registry.promotion,
            alias,
            app.registry.challenger_alias,
            note=STOPPED_BEFORE_GATE,
        )
    _log_late_decision(version.run_id, decision, "gate_decision.json")


def _log_late_decision(run_id: str, decision: registry.GateDecision, artifact: str) -> None:
    """Beside the tag on the version, the gate's verdict in the run that registered it, if the
    store still has that run."""
    if registry.existing_run(run_id) is not None:
        verdict = {"promoted": decision.promoted, "reason": decision.reason}
        mlflow.MlflowClient().log_dict(run_id, verdict, artifact)


def _close_stopped_run(ckpt_dir: Path, run_id: str) -> None:
    """Mark `run_id` KILLED if it trained in `ckpt_dir` (whose lock the caller holds, so it is
    dead) and still reads RUNNING; a run that failed already says so."""
    record = ckpt_dir / "mlflow_run.json"
    if record.is_file() and json.loads(record.read_text())["run_id"] == run_id:
        _mark_killed(run_id)


def _mark_killed(run_id: str) -> None:
    """A run known dead that still reads RUNNING was killed; one that failed already says so
    (and one deleted from the store says nothing)."""
    run = registry.existing_run(run_id)
    if run is not None and run.info.status == "RUNNING":
        mlflow.MlflowClient().set_terminated(run_id, "KILLED")


def _fit_metrics(fitted: FitResult, prefix: str) -> dict[str, float]:
    """What a run logs of its fit."""
    return {
        f"{prefix}_steps": fitted.steps,
        f"{prefix}_seconds": fitted.seconds,
        f"{prefix}_processes": fitted.processes,
    }


def _fit_tag(fitted: FitResult) -> str:
    """The fit as the version's `FIT_TAG`, which `_tagged_fit` reads back."""
    return json.dumps(
        {
            "steps": fitted.steps,
            "seconds": fitted.seconds,
            "processes": fitted.processes,
            "n_train": fitted.n_train,
            "n_val": fitted.n_val,
        }
    )


def _tagged_fit(tags: Mapping[str, str], key: str = FIT_TAG) -> FitResult:
    """A registered version's fit (`_fit_tag`, under `key`); the checkpoint it picked is gone
    with its checkpoints, so the best score and path are NaN and empty."""
    fit = json.loads(tags[key])
    # Fits tagged before the records were counted have none (0).
    counts = {k: fit.get(k, 0) for k in ("n_train", "n_val")}
    return FitResult(
        fit["steps"], fit["seconds"], float("nan"), "", processes=fit["processes"], **counts
    )


REPORT_ARTIFACT = "report.md"


def log_report(paths: ResolvedPaths, trained: TrainOutcome, text: str) -> None:
    """The run's report (`report.render_retrain`) beside its training run's figures (the store
    named outright: with a Dask task runner the training ran in another process). A reused
    version's run keeps the report of the run that trained it (and may have been collected)."""
    if not trained.reused:
        client = mlflow.MlflowClient(tracking_uri=paths.tracking_uri)
        client.log_text(trained.run_id, text, REPORT_ARTIFACT)


def reused_outcome(version: ModelVersion) -> TrainOutcome:
    """The outcome of the run that trained and gated `version`, as the version's tags recorded
    it. The registration key holds the code's digest, so every version reused was tagged so."""
    tags = version.tags
    decision = registry.read_decision(tags["gate_decision"])
    return TrainOutcome(
        version.run_id,
        version.name,
        str(version.version),
        decision["promoted"],
        decision["reason"],
        registry.metrics_from_json(tags[TEST_REPORT_TAG]),
        _tagged_fit(tags),
        int(tags["n_parameters"]),
        reused=True,
        run_deleted=registry.existing_run(version.run_id) is None,
    )


def _train_and_register(
    app: AppConfig,
    paths: ResolvedPaths,
    data: Dataset,
    ckpt_dir: Path,
    conf_dir: Path,
    keys: dict[str, str],
) -> TrainOutcome:
    model_cfg = load_model_config(app.model, conf_dir)
    train_cfg = load_train_config(app.train, conf_dir)
    train, val, test = data.splits["train"], data.splits["val"], data.splits["test"]
    tokenizer = resumable_tokenizer(
        ckpt_dir, train.texts, model_cfg.input_vocab_size, not data.whole_numbers
    )
    predictor = fresh_predictor(data, model_cfg, app.codec, tokenizer, train_cfg.seed)
    size = train_cfg.ensemble_size
    per_member = predictor.model.num_parameters()
    n_parameters = size * per_member
    # Named by model and snapshot: each night's new data gives its run a name of its own.
    with mlflow.start_run(run_name=f"train-{model_cfg.name}-{data.data_hash[:8]}") as run:
        _note_resume(ckpt_dir, run.info.run_id)
        _log_params(app, data, n_parameters, conf_dir, per_member if size > 1 else None)
        log_splits(
            {"train": train, "val": val, "test": test}, data.source, paths.warehouse, data.data_hash
        )
        if size == 1:
            logger = RunLogger(tracking_uri=paths.tracking_uri, run_id=run.info.run_id)
            fitted = fit_examples(
                predictor, train, val, train_cfg, ckpt_dir, logger=logger, resume=True
            )
        else:  # `predictor` is only the template of the members (configs, tokenizer)
            predictor, fitted = train_ensemble(
                predictor,
                train,
                val,
                train_cfg,
                ckpt_dir,
                paths.tracking_uri,
                run.info.run_id,
                absolute_members_of(size, data.mixed_target_forms),
            )
        if app.eval.conformal:
            scale = predictor.calibrate(
                val.texts,
                val.targets,
                app.eval.num_samples,
                val.tasks,
                app.eval.conformal_task_min_records,
                val.scales,
                app.eval.temperature,
            )
            if np.isfinite(scale):
                mlflow.log_metric("conformal_interval_scale", scale)
        model_metrics, summary = evaluate_model(predictor, test, app.eval)
        metrics = {"textperf": model_metrics, **baseline_metrics(train, test, train_cfg.seed)}
        for name, values in metrics.items():
            mlflow.log_metrics({f"test_{name}_{k}": v for k, v in values.items() if np.isfinite(v)})
        mlflow.log_metrics(_fit_metrics(fitted, "train"))
        log_evaluation(test, summary, "test", f"{model_cfg.name}, held-out test records")
        # Read, scored and gated against under the model's gate lock: a run gating beside this
        # one could otherwise promote after this run read the champion, and this run then
        # promoted past a champion it never faced.
        with gate_lock(paths, app.registry.model_name):
            champion = registry.alias_version(app.registry.model_name, app.registry.champion_alias)
            champion_metrics = None
            if champion is not None:
                uri = registry.model_uri(app.registry.model_name, champion.version)
                champion_metrics = score_registered(uri, data, "test", app.eval)
                metrics["champion"] = champion_metrics
            mlflow.log_text(registry.strict_json(metrics), TEST_METRICS)  # the report's table
            with tempfile.TemporaryDirectory() as tmp:
                bundle = predictor.save(Path(tmp) / "bundle")
                tags = {
                    "data_hash": data.data_hash,
                    "source": data.source,
                    "target": data.target,
                    "model_config": json.dumps(model_cfg.model_dump()),
                    "train_config": json.dumps(train_cfg.model_dump()),
                    "test_metrics": registry.strict_json(model_metrics),
                    TEST_REPORT_TAG: registry.strict_json(metrics),
                    FIT_TAG: _fit_tag(fitted),
                    "n_parameters": str(n_parameters),
                    HOLDOUT_TAG: data.holdout_task,  # the one task it never trained on
                    **keys,
                }
                version = registry.log_and_register(
                    bundle,
                    app.registry.model_name,
                    registry.input_example(data.example_record),
                    tags,
                )
            decision = registry.gate(
                app.registry.model_name,
                version,
                model_metrics,
                champion_metrics,
                app.registry.promotion,
                app.registry.champion_alias,
                app.registry.challenger_alias,
            )
        mlflow.log_dict(
            {"promoted": decision.promoted, "reason": decision.reason}, "gate_decision.json"
        )
    return TrainOutcome(
        run.info.run_id,
        app.registry.model_name,
        str(version.version),
        decision.promoted,
        decision.reason,
        metrics,
        fitted,
        n_parameters,
    )


@dataclass(frozen=True)
class AdaptSkipped:
    """A due adaptation the nightly run could not make (`DataError`: the task has too few
    records): named in the report, while the run and the other tasks' adaptations go on."""

    task: str
    reason: str


@dataclass(frozen=True)
class AdaptFailed:
    """A due adaptation that failed on anything but missing data (a training process that
    died, a store that lost the base's files), after its retries: named in the report, while
    the other tasks' adaptations go on; the nightly run then ends failed."""

    task: str
    error: str


class AdaptationsFailedError(RuntimeError):
    """The nightly run's due adaptations failed (`AdaptFailed`) after the rest of the run was
    registered and its report saved. Carries the report, which `textperf retrain` prints before
    the error; `args` is (message, report), so the error pickles like any other."""

    def __init__(self, message: str, report: str) -> None:
        super().__init__(message, report)

    def __str__(self) -> str:
        return self.args[0]

    @property
    def report(self) -> str:
        return self.args[1]

    @classmethod
    def of(cls, failed: Sequence[AdaptFailed], report: str) -> AdaptationsFailedError:
        named = "; ".join(f"{f.task}: {f.error}" for f in failed)
        return cls(
            f"{len(failed)} adaptation(s) failed ({named}); the run's training, registration "
            "and other adaptations stand, and its report was saved",
            report,
        )


@dataclass(frozen=True)
class ZeroShotFallback:
    """What serves a task whose fine-tuned variant the gate refused: a version of the variant
    holding its base's weights, with intervals fitted on the task's gate shots
    (`adaptation.zero_shot_fallback`)."""

    version: str
    intervals: str  # what its intervals rest on
    scores: dict[str, float]  # on the task's test records: the base zero-shot's but coverage


@dataclass(frozen=True)
class AdaptOutcome:
    task: str
    model_name: str
    version: str
    base_uri: str
    n_shots: int
    zero_shot: dict[str, float]
    adapted: dict[str, float]
    fit: FitResult
    from_scratch: dict[str, float]  # empty when `adapt.from_scratch_reference` is off
    method: str
    # The gate: zero-shot and adapted on the shots kept out of training, and its decision.
    validation: dict[str, dict[str, float]]
    promoted: bool
    reason: str
    use_uri: str  # what to predict the task with now: the variant's champion, else the base
    # Adapted and gated earlier from the same base, data and configs (`adaptation_key`):
    # reported as that run recorded it, nothing adapted now.
    reused: bool = False
    # What the from-scratch reference cost (None without one): often more than the adaptation.
    scratch_fit: FitResult | None = None
    intervals: str = ""  # what the variant's intervals rest on (`adaptation.recalibrate`)
    fallback: ZeroShotFallback | None = None  # registered when the gate refused the variant
    # The base trained on this task's records before its test days (it held out another task):
    # its "zero-shot" scores on the shots are in-sample, its test scores are not.
    base_trained_on_task: bool = False

    @property
    def uri(self) -> str:
        return registry.model_uri(self.model_name, self.version)


SCORES = ("zero_shot", "adapted", "from_scratch")


def adapt_champion(
    app: AppConfig, paths: ResolvedPaths, data: Dataset, force: bool = False
) -> AdaptOutcome:
    """Fine-tune the champion on the holdout task's latest records; register `<name>-<task>`
    (`adapt_version`, which reports an earlier identical adaptation unless `force`)."""
    configure_mlflow(paths, app.registry.experiment)
    name = app.registry.model_name
    champion = registry.alias_version(name, app.registry.champion_alias)
    if champion is None:
        raise registry.NotRegisteredError(
            f"no {name}@{app.registry.champion_alias} to adapt: train one first (`textperf "
            f"retrain`), or adapt a version by number (`--base N`; `textperf models list {name}`)"
        )
    return adapt_version(app, paths, data, str(champion.version), force)


def _adaptation_tags(
    base_uri: str, task: str, n_shots: int, scores: dict[str, dict[str, float]], app: AppConfig
) -> dict[str, str]:
    """Lineage of an adapted variant: its base as a fixed version, the shots, the three scores."""
    tags = {
        "base_model": base_uri,
        "n_shots": str(n_shots),
        "method": app.adapt.method,
        "task": task,
        "adapt_config": json.dumps(app.adapt.model_dump()),
    }
    for kind, metrics in scores.items():
        tags[f"{kind}_spearman"] = f"{metrics['spearman']:.4f}"
        tags[f"{kind}_metrics"] = registry.strict_json(metrics)
    return tags


def _log_scores(scores: dict[str, dict[str, float]]) -> None:
    for kind, metrics in scores.items():
        mlflow.log_metrics({f"{kind}_{k}": v for k, v in metrics.items() if np.isfinite(v)})


def adaptations_due(app: AppConfig, paths: ResolvedPaths, data: Dataset) -> list[str]:
    """Tasks whose adapted variant is missing or was adapted from an older champion, and with
    `schedule.readapt_new_records` N, whose task has gained N records since its adaptation.

    The holdout task always has a variant; any other `<name>-<task>` someone registered (e.g.
    with `textperf adapt --task`) is re-adapted whenever the champion changes.
    """
    configure_mlflow(paths, app.registry.experiment)
    champion = registry.alias_version(app.registry.model_name, app.registry.champion_alias)
    if champion is None:
        return []
    return registry.variants_due(
        app.registry.model_name,
        str(champion.version),
        [data.holdout_task],
        task_record_counts(data),
        app.schedule.readapt_new_records,
    )


def task_record_counts(data: Dataset) -> dict[str, int]:
    """Records per task in the snapshot, over every split (a variant's task may be any)."""
    return dict(Counter(task for examples in data.splits.values() for task in examples.tasks))


def adaptation_key(app: AppConfig, data: Dataset, base_uri: str) -> str:
    """What makes two adapted variants the same: the base version, the data snapshot and task,
    the adaptation, training, split, eval and promotion configs, and the code."""
    parts = {
        "base": base_uri,
        "data_hash": data.data_hash,
        # Not the configured section order nor budget: the shots are the base's texts
        # (`served_by`), which "base" fixes.
        "adapt": app.adapt.model_dump(mode="json"),
        "train": load_train_config(app.train).model_dump(mode="json"),
        # The task as resolved: the nightly flow names it, `textperf adapt` may leave it None.
        "split": app.split.model_dump(mode="json") | {"holdout_task": data.holdout_task},
        "eval": app.eval.model_dump(mode="json"),
        "promotion": app.registry.promotion.model_dump(mode="json"),
        "code": code_digest(),
    }
    return _digest(parts)


def adapt_version(
    app: AppConfig, paths: ResolvedPaths, data: Dataset, base_version: str, force: bool = False
) -> AdaptOutcome:
    """Adapt `models:/<name>/<base_version>` to the holdout task with `app.adapt`; register and
    gate it (`registry.gate_variant`, on the shots kept out of training, never the test records).
    Refused, the task may get a zero-shot fallback as its champion (`_fallback_for`).

    Scores on the task's test records: the base zero-shot, the adapted model, and the same
    architecture (and tokenizer) trained from scratch on the same shots.

    A variant already adapted and gated under the same `adaptation_key` is reported instead of
    adapting again, unless `force`. A run beside another adapting the same variant waits for
    it first (`adaptation_lock`), so the two never register the same adaptation twice.
    """
    run_once_check()
    require_shots(app, data)
    configure_mlflow(paths, app.registry.experiment)
    registry.existing_version(app.registry.model_name, base_version)  # named, before any work
    variant = f"{app.registry.model_name}-{data.holdout_task}"
    base_uri = registry.model_uri(app.registry.model_name, base_version)  # fixed, not an alias
    key = adaptation_key(app, data, base_uri)
    with adaptation_lock(paths, variant):
        earlier = None
        if not force:
            earlier = _gated_or_stopped(
                variant,
                registry.ADAPTATION_KEY,
                key,
                lambda stopped: finish_variant_gate(app, stopped),
            )
        if earlier is not None:
            if _missing_fallback(earlier, app):
                earlier = _repair_fallback(app, data, earlier)
            return reused_adaptation(earlier, app)
        return _adapt_and_register(app, paths, data, base_uri, key)


def task_shots(app: AppConfig, data: Dataset) -> tuple[Examples, Examples, Examples]:
    """(shots, tuning, gate): the holdout task's latest `adapt.n_shots` records and their cut
    (`adaptation.hold_out_gate`, whose ValueError it raises). One place, so that a fallback
    made good later (`_repair_fallback`) fits on the very shots the gate judged."""
    shots = latest_shots(data.splits["adapt_pool"], app.adapt.n_shots)
    return (shots, *hold_out_gate(shots, app.adapt))


def require_shots(app: AppConfig, data: Dataset) -> None:
    """A `DataError` unless the holdout task's shots can be cut three ways (training, early
    stopping and the gate each get a record: `adaptation.hold_out_gate`) and it has a record in
    its test periods (to score it on), checked before anything is loaded or trained."""
    task, pool, test = data.holdout_task, data.splits["adapt_pool"], data.splits["adapt_test"]
    try:
        task_shots(app, data)
        problem = ""
    except ValueError as cut:
        problem = str(cut)
    if problem and app.adapt.n_shots < len(pool):
        raise DataError(f"adapt.n_shots (--shots) is {app.adapt.n_shots}: {problem}")
    if problem or len(test) < 1:
        raise DataError(
            f"task {task!r} has too few records to adapt to: {len(pool)} before its test "
            f"periods ({problem or 'enough, as shots'}) and {len(test)} in them (at least 1, "
            "to score the adaptation on); ingest more of its records, or adapt another task "
            "(--task)"
        )


def finish_variant_gate(app: AppConfig, version: ModelVersion) -> None:
    """Gate the variant `version` on the validation scores tagged on it before its run stopped.

    The caller holds the variant's `adaptation_lock`, which every adaptation takes, so the run
    that registered it is not alive: a run still reading RUNNING was killed."""
    _mark_killed(version.run_id)
    validation = registry.metrics_from_json(version.tags[VALIDATION_TAG])
    decision = registry.gate_variant(
        version.name,
        version,
        version.tags["base_model"],
        validation["adapted"],
        validation["zero_shot"],
        app.registry.promotion,
        app.registry.champion_alias,
        app.registry.challenger_alias,
        note=STOPPED_BEFORE_GATE,
    )
    _log_late_decision(version.run_id, decision, "gate.json")


def reused_adaptation(version: ModelVersion, app: AppConfig) -> AdaptOutcome:
    """The outcome of the run that adapted and gated `version`, as its tags recorded it."""
    tags = version.tags
    decision = registry.read_decision(tags["gate_decision"])
    fit = _tagged_fit(tags)
    scratch_fit = _tagged_fit(tags, SCRATCH_FIT_TAG) if SCRATCH_FIT_TAG in tags else None
    scores = {
        kind: registry.metrics_from_json(tags.get(f"{kind}_metrics", "{}")) for kind in SCORES
    }
    return AdaptOutcome(
        tags["task"],
        version.name,
        str(version.version),
        tags["base_model"],
        int(tags["n_shots"]),
        scores["zero_shot"],
        scores["adapted"],
        fit,
        scores["from_scratch"],
        tags["method"],
        {"zero_shot": decision["champion"], "adapted": decision["challenger"]},
        decision["promoted"],
        decision["reason"],
        _use_uri(version.name, tags["base_model"], app),
        reused=True,
        scratch_fit=scratch_fit,
        intervals=tags.get(INTERVALS_TAG, ""),
        fallback=ZeroShotFallback(**json.loads(tags[registry.FALLBACK]))
        if registry.FALLBACK in tags
        else None,
        base_trained_on_task=BASE_TRAINED_ON_TASK in tags,
    )


def _use_uri(variant: str, base_uri: str, app: AppConfig) -> str:
    """What to predict the variant's task with now: its champion if it has one, else the
    model's champion (the base, unless the variant was adapted from another version), else
    the base."""
    alias = app.registry.champion_alias
    if registry.alias_version(variant, alias) is not None:
        return registry.model_uri(variant, alias)
    champion = registry.alias_version(app.registry.model_name, alias)
    return base_uri if champion is None else registry.model_uri(champion.name, champion.version)


def _adapt_and_register(
    app: AppConfig, paths: ResolvedPaths, data: Dataset, base_uri: str, key: str
) -> AdaptOutcome:
    task = data.holdout_task
    variant = f"{app.registry.model_name}-{task}"
    base = registry.load_predictor(base_uri)
    data = served_by(data, base)  # its shots and test records as the base reads them
    base_holdout = registry.resolve(base_uri).tags.get(HOLDOUT_TAG)  # None: registered before
    # The gate's shots never train nor stop the fine-tuning: they judge what it kept.
    shots, tuning, gate_shots = task_shots(app, data)
    target = data.splits["adapt_test"]
    run_name = f"adapt-{task}-{app.adapt.method}-{data.data_hash[:8]}"
    with (
        mlflow.start_run(run_name=run_name) as run,
        adaptation_dir(paths, variant, run.info.run_id) as ckpt,
    ):
        mlflow.log_params(
            {
                "base_model": base_uri,
                "task": task,
                "n_shots": len(shots),
                "n_gate_shots": len(gate_shots),
                "data_hash": data.data_hash,
            }
            | {f"adapt.{k}": v for k, v in app.adapt.model_dump().items()}
        )
        splits = {"fine_tuning": tuning, "gate": gate_shots, "test": target}
        log_splits(splits, data.source, paths.warehouse, data.data_hash)
        fits = _fit_variant(base, tuning, app, paths.tracking_uri, run.info.run_id, ckpt)
        adapted, fitted, scratch, scratch_fit = fits
        trained_on_task = base_holdout is not None and base_holdout != task
        other_holdout = base_holdout if trained_on_task else None
        validation, intervals, scores = _score_variant(
            base, adapted, scratch, gate_shots, target, task, app, other_holdout
        )
        tags = _adaptation_tags(base_uri, task, len(shots), scores, app)
        tags |= {
            "data_hash": data.data_hash,
            "source": data.source,
            "target": data.target,
            INTERVALS_TAG: intervals,
            registry.ADAPTATION_KEY: key,
            FIT_TAG: _fit_tag(fitted),
            VALIDATION_TAG: registry.strict_json(validation),
            registry.TASK_RECORDS: str(task_record_counts(data).get(task, 0)),
        }
        if scratch_fit is not None:
            tags[SCRATCH_FIT_TAG] = _fit_tag(scratch_fit)
        if trained_on_task:
            tags[BASE_TRAINED_ON_TASK] = base_holdout
        with tempfile.TemporaryDirectory() as tmp:
            bundle = adapted.save(Path(tmp) / "bundle")
            version = registry.log_and_register(
                bundle, variant, registry.input_example(data.example_record), tags
            )
        decision = registry.gate_variant(
            variant,
            version,
            base_uri,
            validation["adapted"],
            validation["zero_shot"],
            app.registry.promotion,
            app.registry.champion_alias,
            app.registry.challenger_alias,
        )
        mlflow.log_dict({"promoted": decision.promoted, "reason": decision.reason}, "gate.json")
        fallback = None
        if not decision.promoted and (
            made := _fallback_for(base, version, base_uri, gate_shots, app)
        ):
            gate_zero_shot = validation["zero_shot"]
            fallback = _register_fallback(made, version, tags, data, gate_zero_shot, app)
    return AdaptOutcome(
        task,
        variant,
        str(version.version),
        base_uri,
        len(shots),
        scores["zero_shot"],
        scores["adapted"],
        fitted,
        scores.get("from_scratch", {}),
        app.adapt.method,
        validation,
        decision.promoted,
        decision.reason,
        _use_uri(variant, base_uri, app),
        scratch_fit=scratch_fit,
        intervals=intervals,
        fallback=fallback,
        base_trained_on_task=BASE_TRAINED_ON_TASK in tags,
    )


# What a zero-shot fallback shares with the variant version it stands in for.
FALLBACK_LINEAGE = (
    "base_model",
    "task",
    "n_shots",
    "data_hash",
    "source",
    "target",
    BASE_TRAINED_ON_TASK,
)


def fitted_in_sample(intervals: str, base_holdout: str | None) -> str:
    """What a scale of its own, fitted on the gate's shots, rests on when the base trained on
    their task (`base_holdout`, the task it held out instead; None: it held this one out).
    Split conformal needs records the model never trained on, and the base may have trained
    on these, so the intervals may come out narrow."""
    if not base_holdout or not intervals.startswith(OWN_SCALE):
        return intervals
    return (
        f"{intervals}; in-sample: the base trained on this task's records (it held out "
        f"{base_holdout}), the gate shots perhaps among them, so they may be too narrow"
    )


def _fallback_for(
    base: Predictor, refused: ModelVersion, base_uri: str, gate_shots: Examples, app: AppConfig
) -> tuple[Predictor, str] | None:
    """The zero-shot fallback of the variant version `refused`, adapted from `base_uri`, and
    what its intervals rest on; None when its task may not have one
    (`registry.may_serve_fallback`) or the gate's shots fit no scale of its own."""
    if not registry.may_serve_fallback(refused.name, base_uri, app.registry.champion_alias):
        return None
    return zero_shot_fallback(base, gate_shots, app.eval)


def _register_fallback(
    made: tuple[Predictor, str],
    refused: ModelVersion,
    tags: Mapping[str, str],
    data: Dataset,
    gate_zero_shot: Mapping[str, float],
    app: AppConfig,
) -> ZeroShotFallback:
    """Register `made` (`_fallback_for`) as the task's champion in place of `refused` (whose
    tags are `tags`), scored, plotted and logged to the active run like the variant. A run
    stopped before this is made good by the next (`_repair_fallback`)."""
    variant, base_uri, task = refused.name, tags["base_model"], data.holdout_task
    predictor, intervals = made
    intervals = fitted_in_sample(intervals, tags.get(BASE_TRAINED_ON_TASK))
    target = data.splits["adapt_test"]
    scores, summary = evaluate_model(predictor, target, app.eval)
    _log_scores({"fallback": scores})
    log_evaluation(target, summary, f"fallback_{task}", f"zero-shot fallback on {task}")
    lineage = {key: tags[key] for key in (*FALLBACK_LINEAGE, registry.TASK_RECORDS) if key in tags}
    with tempfile.TemporaryDirectory() as tmp:
        version = registry.log_and_register(
            predictor.save(Path(tmp) / "bundle"),
            variant,
            registry.input_example(data.example_record),
            lineage
            | {
                "method": "zero_shot",
                registry.FALLBACK_FOR: str(refused.version),
                INTERVALS_TAG: intervals,
                "zero_shot_metrics": registry.strict_json(scores),
            },
        )
    fallback = ZeroShotFallback(str(version.version), intervals, scores)
    _promote_fallback(fallback, version, refused, base_uri, gate_zero_shot, app)
    return fallback


def _promote_fallback(
    fallback: ZeroShotFallback,
    version: ModelVersion,
    refused: ModelVersion,
    base_uri: str,
    gate_zero_shot: Mapping[str, float],
    app: AppConfig,
) -> None:
    """Make `version`, registered as `fallback`, the champion of the task in place of `refused`
    (adapted from `base_uri`), and name it in the active run."""
    registry.promote_fallback(
        refused.name,
        version,
        refused,
        base_uri,
        gate_zero_shot,
        asdict(fallback),
        app.registry.champion_alias,
    )
    mlflow.set_tag(registry.FALLBACK, registry.model_uri(refused.name, version.version))


def _registered_fallback(refused: ModelVersion) -> tuple[ZeroShotFallback, ModelVersion] | None:
    """The fallback of `refused` already registered, with everything its promotion needs, by a
    run stopped before it promoted it or tagged `refused` with it; None if there is none."""
    version = registry.fallback_of(refused.name, refused.version)
    if version is None or not {INTERVALS_TAG, "zero_shot_metrics"} <= version.tags.keys():
        return None  # none, or stopped while tagging it: it is built again
    tags = version.tags
    scores = registry.metrics_from_json(tags["zero_shot_metrics"])
    return ZeroShotFallback(str(version.version), tags[INTERVALS_TAG], scores), version


def _missing_fallback(version: ModelVersion, app: AppConfig) -> bool:
    """Whether the gated variant `version` was refused and its task lacks the fallback it may
    have: its run failed or was killed after the gate, or its gate was finished late
    (`finish_variant_gate`). Whether the gate's shots fit a scale is known only by trying."""
    decision = registry.read_decision(version.tags["gate_decision"])
    return (
        not decision["promoted"]
        and registry.FALLBACK not in version.tags
        and registry.may_serve_fallback(
            version.name, version.tags["base_model"], app.registry.champion_alias
        )
    )


def _repair_fallback(app: AppConfig, data: Dataset, version: ModelVersion) -> ModelVersion:
    """Serve the fallback `version`'s adaptation should have left, from the same gate shots (its
    key fixes the data and configs), logged to its run as it would have been; returns
    `version` with its tags as they now are. One registered already (a run stopped before its
    promotion) is promoted, not built again."""
    gate_zero_shot = registry.read_decision(version.tags["gate_decision"])["champion"] or {}
    run_name = f"fallback-{data.holdout_task}-{data.data_hash[:8]}"
    registered = _registered_fallback(version)
    if registered is not None:
        with _reopened_run(version.run_id, run_name):
            _promote_fallback(*registered, version, version.tags["base_model"], gate_zero_shot, app)
        return mlflow.MlflowClient().get_model_version(version.name, version.version)
    if not may_fit_a_scale(task_shots(app, data)[2], app.eval):
        return version  # no scale of its own (`adaptation.recalibrate`): not worth a load
    base = registry.load_predictor(version.tags["base_model"])
    data = served_by(data, base)
    made = zero_shot_fallback(base, task_shots(app, data)[2], app.eval)
    if made is None:
        return version
    with _reopened_run(version.run_id, run_name):
        _register_fallback(made, version, version.tags, data, gate_zero_shot, app)
    return mlflow.MlflowClient().get_model_version(version.name, version.version)


@contextmanager
def _reopened_run(run_id: str, name_if_gone: str) -> Iterator[None]:
    """The run `run_id` active again, left with the status it had (one still RUNNING was
    killed: the caller holds its adaptation lock); a new run named `name_if_gone` when the
    store no longer has it, or has it deleted (MLflow will not start a deleted run)."""
    run = registry.existing_run(run_id)
    if run is None or run.info.lifecycle_stage == "deleted":
        with mlflow.start_run(run_name=name_if_gone):
            yield
        return
    status = "KILLED" if run.info.status == "RUNNING" else run.info.status
    try:
        with mlflow.start_run(run_id=run_id):
            yield
    finally:  # a repair that fails leaves the run as the adaptation left it
        mlflow.MlflowClient().set_terminated(run_id, status)


def _fit_variant(
    base: Predictor,
    tuning: Examples,
    app: AppConfig,
    tracking_uri: str,
    run_id: str,
    ckpt: Path,
) -> tuple[Predictor, FitResult, Predictor | None, FitResult | None]:
    """(adapted, its fit, from-scratch reference or None, its fit or None), their curves and
    costs logged to the adaptation's run; their checkpoints removed whatever happens."""
    train_cfg = load_train_config(app.train)

    def curves(prefix: str) -> RunLogger:  # the run's `adapt/...`, `scratch/...` curves
        return RunLogger(tracking_uri=tracking_uri, run_id=run_id, prefix=prefix)

    try:
        adapted, fitted = fine_tune(base, tuning, app.adapt, train_cfg, ckpt / "adapted", curves)
        scratch, scratch_fit = None, None
        if app.adapt.from_scratch_reference:
            scratch, scratch_fit = train_from_scratch(
                base, tuning, app.adapt, train_cfg, ckpt / "scratch", curves
            )
    finally:
        # Named by this run, so never resumed: once the models are in memory, keep nothing
        # (every nightly adaptation once left its checkpoints here, growing without bound).
        for fit_dir in (ckpt / "adapted", ckpt / "scratch"):
            shutil.rmtree(fit_dir, ignore_errors=True)
    mlflow.log_metrics(_fit_metrics(fitted, "adapt"))
    if scratch_fit is not None:
        mlflow.log_metrics(_fit_metrics(scratch_fit, "scratch"))
    return adapted, fitted, scratch, scratch_fit


def _score_variant(
    base: Predictor,
    adapted: Predictor,
    scratch: Predictor | None,
    gate_shots: Examples,
    target: Examples,
    task: str,
    app: AppConfig,
    base_holdout: str | None = None,
) -> tuple[dict[str, dict[str, float]], str, dict[str, dict[str, float]]]:
    """(gate scores, what the variant's intervals rest on, test scores by model), logged with
    the plots and per-record predictions of the task's test records.

    The gate scores the variant as fine-tuned; then its intervals are calibrated on those same
    shots, the only ones that neither trained it nor picked its checkpoint (`recalibrate`), and
    the test records score what ships. `base_holdout`: the other task the base held out, when
    it trained on this one (`fitted_in_sample`)."""
    validation = _validation_scores(base, adapted, gate_shots, app)
    intervals = fitted_in_sample(recalibrate(adapted, gate_shots, app.eval), base_holdout)
    mlflow.set_tag(INTERVALS_TAG, intervals)
    if scratch is not None:
        recalibrate(scratch, gate_shots, app.eval)  # by the same rule as the variant
    scores = {}
    scores["zero_shot"], zero_shot = evaluate_model(base, target, app.eval)
    scores["adapted"], summary = evaluate_model(adapted, target, app.eval)
    if scratch is not None:
        scores["from_scratch"] = evaluate_model(scratch, target, app.eval)[0]
    _log_scores(scores)
    _log_scores({f"validation_{kind}": m for kind, m in validation.items()})
    log_evaluation(target, summary, f"adapted_{task}", f"adapted to {task}, its test records")
    log_evaluation(target, zero_shot, f"zero_shot_{task}", f"base zero-shot on {task}")
    return validation, intervals, scores


def _validation_scores(
    base: Predictor, adapted: Predictor, gate_shots: Examples, app: AppConfig
) -> dict[str, dict[str, float]]:
    """Zero-shot and adapted on the gate's shots (`adaptation.hold_out_gate`), which neither
    trained the fine-tuning nor chose its checkpoint; the test records stay untouched for the
    scores reported beside them."""
    return {
        "zero_shot": evaluate_model(base, gate_shots, app.eval)[0],
        "adapted": evaluate_model(adapted, gate_shots, app.eval)[0],
    }
