"""The steps of a retraining run, each callable alone; `flows/` only wires them together."""

from __future__ import annotations

import json
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from lightning.pytorch.loggers import MLFlowLogger

from regressor import baselines, registry
from regressor.adaptation import fine_tune, latest_shots
from regressor.config import (
    AppConfig,
    EvalConfig,
    FleetSourceConfig,
    ResolvedPaths,
    load_model_config,
    load_train_config,
)
from regressor.dataset import Examples, examples_by_split, holdout_task_of, record_from_row
from regressor.evaluation import evaluate_predictions, point_metrics
from regressor.fleetsim import FleetSummary, generate_fleet
from regressor.plots import calibration, predicted_vs_actual
from regressor.predictor import Predictor
from regressor.sources.fleet import IngestReport, ingest_fleet
from regressor.tracking import configure_mlflow
from regressor.training import FitResult, fit
from regressor.vocab import InputTokenizer
from regressor.warehouse import Warehouse


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def source_root(paths: ResolvedPaths, source: FleetSourceConfig) -> Path:
    return source.root if source.root.is_absolute() else paths.raw_dir / source.root


def generate(paths: ResolvedPaths, app: AppConfig, source: FleetSourceConfig) -> FleetSummary:
    return generate_fleet(source_root(paths, source), app.fleet)


def ingest(paths: ResolvedPaths, source: FleetSourceConfig, run_id: str) -> IngestReport:
    with Warehouse(paths.warehouse) as wh:
        return ingest_fleet(wh, source, paths.raw_dir, run_id)


@dataclass(frozen=True)
class Dataset:
    splits: dict[str, Examples]
    holdout_task: str
    data_hash: str
    example_record: dict


def load_dataset(paths: ResolvedPaths, app: AppConfig, source: FleetSourceConfig) -> Dataset:
    with Warehouse(paths.warehouse, read_only=True) as wh:
        records = wh.query("records").filter(source=source.name)
        data_hash = wh.content_hash()
    if records.is_empty():
        raise ValueError(
            f"the warehouse {paths.warehouse} has no records of source {source.name!r}"
        )
    budget = load_model_config(app.model).max_input_tokens
    splits = examples_by_split(records, app.split, source.section_priority, budget)
    return Dataset(
        splits,
        holdout_task_of(records, app.split),
        data_hash,
        record_from_row(records.row(0, named=True)),
    )


def evaluate_model(
    predictor: Predictor, examples: Examples, cfg: EvalConfig
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    summary = predictor.predict_texts(
        examples.texts, cfg.num_samples, cfg.temperature, cfg.quantiles
    )
    return evaluate_predictions(examples.targets, summary), summary


def baseline_metrics(train: Examples, test: Examples, seed: int = 0) -> dict[str, dict[str, float]]:
    mean = baselines.mean_baseline(train.targets, len(test))
    gbm = baselines.lightgbm_baseline(train.config_json, train.targets, test.config_json, seed)
    return {"mean": point_metrics(test.targets, mean), "lightgbm": point_metrics(test.targets, gbm)}


def log_figures(y_true: np.ndarray, summary: dict[str, np.ndarray], prefix: str) -> None:
    mlflow.log_figure(
        predicted_vs_actual(y_true, summary["median"], summary["q10"], summary["q90"], prefix),
        f"plots/{prefix}_predicted_vs_actual.png",
    )
    mlflow.log_figure(
        calibration(y_true, summary["samples"], prefix), f"plots/{prefix}_calibration.png"
    )


def score_registered(uri: str, examples: Examples, cfg: EvalConfig) -> dict[str, float]:
    """Metrics of a registered model on `examples`, through the same pyfunc users load."""
    predictor = mlflow.pyfunc.load_model(uri).unwrap_python_model().predictor
    return evaluate_model(predictor, examples, cfg)[0]


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    model_name: str
    version: str
    promoted: bool
    reason: str
    metrics: dict[str, dict[str, float]]
    fit: FitResult
    n_parameters: int

    @property
    def uri(self) -> str:
        return registry.model_uri(self.model_name, self.version)


def _log_params(app: AppConfig, data: Dataset, n_parameters: int) -> None:
    model_cfg, train_cfg = load_model_config(app.model), load_train_config(app.train)
    params = {f"model.{k}": v for k, v in model_cfg.model_dump().items()}
    params |= {f"train.{k}": v for k, v in train_cfg.model_dump().items()}
    params |= {f"codec.{k}": v for k, v in app.codec.model_dump().items()}
    params |= {
        "data_hash": data.data_hash,
        "n_parameters": n_parameters,
        "holdout_task": data.holdout_task,
    }
    params |= {f"n_{name}": len(ex) for name, ex in data.splits.items()}
    mlflow.log_params(params)


def train_and_register(app: AppConfig, paths: ResolvedPaths, data: Dataset) -> TrainOutcome:
    """Train from scratch, evaluate against baselines and the champion, register, gate."""
    model_cfg, train_cfg = load_model_config(app.model), load_train_config(app.train)
    configure_mlflow(paths, app.registry.experiment)
    train, val, test = data.splits["train"], data.splits["val"], data.splits["test"]
    tokenizer = InputTokenizer.train(train.texts, model_cfg.input_vocab_size)
    predictor = Predictor.create(model_cfg, app.codec, tokenizer)
    n_parameters = predictor.model.num_parameters()
    with mlflow.start_run(run_name=f"train-{model_cfg.name}") as run:
        _log_params(app, data, n_parameters)
        logger = MLFlowLogger(tracking_uri=paths.tracking_uri, run_id=run.info.run_id)
        fitted = fit(
            predictor,
            (train.texts, train.targets),
            (val.texts, val.targets),
            train_cfg,
            paths.checkpoints / run.info.run_id,
            logger=logger,
            resume=False,
        )
        model_metrics, summary = evaluate_model(predictor, test, app.eval)
        metrics = {"textperf": model_metrics, **baseline_metrics(train, test, train_cfg.seed)}
        for name, values in metrics.items():
            mlflow.log_metrics({f"test_{name}_{k}": v for k, v in values.items() if np.isfinite(v)})
        mlflow.log_metrics({"train_seconds": fitted.seconds, "train_steps": fitted.steps})
        log_figures(test.targets, summary, "test")
        champion = registry.alias_version(app.registry.model_name, app.registry.champion_alias)
        champion_metrics = None
        if champion is not None:
            uri = registry.model_uri(app.registry.model_name, champion.version)
            champion_metrics = score_registered(uri, test, app.eval)
            metrics["champion"] = champion_metrics
        with tempfile.TemporaryDirectory() as tmp:
            bundle = predictor.save(Path(tmp) / "bundle")
            tags = {
                "data_hash": data.data_hash,
                "model_config": json.dumps(model_cfg.model_dump()),
                "train_config": json.dumps(train_cfg.model_dump()),
                "test_metrics": json.dumps(model_metrics),
            }
            version = registry.log_and_register(
                bundle, app.registry.model_name, registry.input_example(data.example_record), tags
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
class AdaptOutcome:
    task: str
    model_name: str
    version: str
    base_uri: str
    n_shots: int
    zero_shot: dict[str, float]
    adapted: dict[str, float]
    fit: FitResult

    @property
    def uri(self) -> str:
        return registry.model_uri(self.model_name, self.version)


def adapt_champion(app: AppConfig, paths: ResolvedPaths, data: Dataset) -> AdaptOutcome:
    """Fine-tune the champion on the holdout task's latest records; register `<name>-<task>`."""
    configure_mlflow(paths, app.registry.experiment)
    name, task = app.registry.model_name, data.holdout_task
    champion = registry.alias_version(name, app.registry.champion_alias)
    if champion is None:
        raise LookupError(f"no {name}@{app.registry.champion_alias} to adapt; train one first")
    base_uri = registry.model_uri(name, champion.version)  # a fixed version, never an alias
    base = mlflow.pyfunc.load_model(base_uri).unwrap_python_model().predictor
    shots = latest_shots(data.splits["adapt_pool"], app.adapt.n_shots)
    target = data.splits["adapt_test"]
    with mlflow.start_run(run_name=f"adapt-{task}") as run:
        zero_shot, _ = evaluate_model(base, target, app.eval)
        adapted, fitted = fine_tune(
            base,
            shots,
            app.adapt,
            load_train_config(app.train),
            paths.checkpoints / run.info.run_id,
        )
        adapted_metrics, summary = evaluate_model(adapted, target, app.eval)
        mlflow.log_params(
            {"base_model": base_uri, "task": task, "n_shots": len(shots), "method": "full"}
        )
        mlflow.log_metrics({f"zero_shot_{k}": v for k, v in zero_shot.items() if np.isfinite(v)})
        mlflow.log_metrics(
            {f"adapted_{k}": v for k, v in adapted_metrics.items() if np.isfinite(v)}
        )
        log_figures(target.targets, summary, f"adapted_{task}")
        tags = {
            "base_model": base_uri,
            "n_shots": str(len(shots)),
            "method": "full",
            "task": task,
            "zero_shot_spearman": f"{zero_shot['spearman']:.4f}",
            "adapted_spearman": f"{adapted_metrics['spearman']:.4f}",
        }
        with tempfile.TemporaryDirectory() as tmp:
            bundle = adapted.save(Path(tmp) / "bundle")
            version = registry.log_and_register(
                bundle, f"{name}-{task}", registry.input_example(data.example_record), tags
            )
    return AdaptOutcome(
        task,
        f"{name}-{task}",
        str(version.version),
        base_uri,
        len(shots),
        zero_shot,
        adapted_metrics,
        fitted,
    )
