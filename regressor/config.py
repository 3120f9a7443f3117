"""Validated configuration: one pydantic model per YAML file under `conf/`, and one loader.

Every model is strict about unknown keys (`extra="forbid"`) so a typo in a YAML file fails loudly
instead of silently falling back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(Frozen):
    """Where state lands. Relative paths are resolved against the project root."""

    var_dir: Path = Path("var")

    def resolve(self, root: Path = PROJECT_ROOT) -> ResolvedPaths:
        var = self.var_dir if self.var_dir.is_absolute() else root / self.var_dir
        return ResolvedPaths(var_dir=var.resolve())


class ResolvedPaths(Frozen):
    var_dir: Path

    @property
    def raw_dir(self) -> Path:
        return self.var_dir / "raw"

    @property
    def warehouse(self) -> Path:
        return self.var_dir / "warehouse.duckdb"

    @property
    def mlflow_db(self) -> Path:
        return self.var_dir / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.var_dir / "mlartifacts"

    @property
    def checkpoints(self) -> Path:
        return self.var_dir / "checkpoints"

    @property
    def prefect_home(self) -> Path:
        return self.var_dir / "prefect"

    @property
    def tracking_uri(self) -> str:
        # MLflow >= 3.13 refuses the ./mlruns file store; SQLite needs an absolute path.
        return f"sqlite:///{self.mlflow_db}"


class FleetSimConfig(Frozen):
    """The demo fleet generator (`regressor.fleetsim`)."""

    seed: int = 7
    n_cells: int = Field(24, ge=2)
    n_days: int = Field(150, ge=2)
    start_date: str = "2026-01-01"
    # Utilisation samples per day in each log; more lines, longer logs.
    samples_per_day: int = Field(48, ge=1)
    jobs_per_day: int = Field(40, ge=1)
    noise: float = Field(0.02, ge=0)


class SplitConfig(Frozen):
    """Held-out later days per cell, and one cell kept out of training for few-shot adaptation."""

    test_days: int = Field(30, ge=1)
    holdout_task: str | None = None  # None: the last task in sorted order.


class CodecConfig(Frozen):
    """Number codec: sign, rounded mantissa digits, exponent token."""

    mantissa_digits: int = Field(4, ge=1, le=12)
    # Default covers every finite float64 (subnormals round into the smallest exponent).
    exponent_min: int = -324
    exponent_max: int = 308

    @model_validator(mode="after")
    def _ordered(self) -> CodecConfig:
        if self.exponent_min >= self.exponent_max:
            raise ValueError("exponent_min must be below exponent_max")
        return self


class ModelConfig(Frozen):
    """Encoder-decoder sizes (`conf/model/*.yaml`)."""

    name: str
    d_model: int = Field(ge=8)
    n_heads: int = Field(ge=1)
    n_encoder_layers: int = Field(ge=1)
    n_decoder_layers: int = Field(ge=1)
    d_ff: int = Field(ge=8)
    dropout: float = Field(0.0, ge=0, lt=1)
    max_input_tokens: int = Field(512, ge=16, le=8192)
    input_vocab_size: int = Field(2048, ge=300)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be a multiple of n_heads")
        return self


class TrainConfig(Frozen):
    """Optimisation (`conf/train/*.yaml`)."""

    seed: int = 0
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    max_steps: int = Field(2000, ge=1)
    max_minutes: float = Field(5.0, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    precision: Literal["bf16-mixed", "32-true", "16-mixed"] = "bf16-mixed"
    val_every_steps: int = Field(200, ge=1)
    early_stopping_patience: int = Field(5, ge=1)
    num_workers: int = Field(0, ge=0)
    progress_bar: bool = True


class EvalConfig(Frozen):
    num_samples: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)


class AdaptConfig(Frozen):
    """Few-shot adaptation of the champion to one new task."""

    n_shots: int = Field(500, ge=1)
    max_steps: int = Field(300, ge=1)
    lr: float = Field(3e-4, gt=0)
    max_minutes: float = Field(2.0, gt=0)
    val_fraction: float = Field(0.2, gt=0, lt=1)


class PromotionRule(Frozen):
    """A challenger takes `champion` only when it is not worse on every listed metric."""

    higher_is_better: tuple[str, ...] = ("spearman",)
    lower_is_better: tuple[str, ...] = ("mape",)


class RegistryConfig(Frozen):
    model_name: str = "textperf"
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    experiment: str = "textperf"
    promotion: PromotionRule = PromotionRule()


class ScheduleConfig(Frozen):
    nightly_cron: str = "0 2 * * *"
    timezone: str = "UTC"


class AppConfig(Frozen):
    """`conf/default.yaml`: everything a run needs, with the model and train sizes by name."""

    paths: PathsConfig = PathsConfig()
    fleet: FleetSimConfig = FleetSimConfig()
    source: str = "demo_fleet"
    split: SplitConfig = SplitConfig()
    model: str = "small"
    train: str = "demo"
    codec: CodecConfig = CodecConfig()
    eval: EvalConfig = EvalConfig()
    adapt: AdaptConfig = AdaptConfig()
    registry: RegistryConfig = RegistryConfig()
    schedule: ScheduleConfig = ScheduleConfig()


class ConfigError(ValueError):
    """A configuration file is missing, malformed or invalid; the message names the file."""


M = TypeVar("M", bound=BaseModel)


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such configuration file") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_model(cls: type[M], path: Path, **overrides: Any) -> M:
    """Read `path` into `cls`, applying keyword overrides on top; errors name the file."""
    data = {**load_yaml(path), **overrides}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_app_config(
    path: Path | None = None, var_dir: Path | None = None, conf_dir: Path = CONF_DIR
) -> AppConfig:
    """The app config at `path` (default conf/default.yaml); `var_dir` moves where state lands."""
    app = load_model(AppConfig, path or conf_dir / "default.yaml")
    if var_dir is not None:
        app = app.model_copy(update={"paths": PathsConfig(var_dir=var_dir)})
    return app


def load_model_config(name: str, conf_dir: Path = CONF_DIR) -> ModelConfig:
    return load_model(ModelConfig, conf_dir / "model" / f"{name}.yaml")


def load_train_config(name: str, conf_dir: Path = CONF_DIR) -> TrainConfig:
    return load_model(TrainConfig, conf_dir / "train" / f"{name}.yaml")


class FleetSourceConfig(Frozen):
    """`conf/sources/*.yaml` for the `fleet` adapter: per-entity configs, per-period logs, targets.

    Globs are relative to `root`; a relative `root` is resolved against the run's raw directory.
    The entity key (the task, e.g. a cell) is the config file's stem and the log file's parent
    folder name; the period is the log file's stem (an ISO date).
    """

    name: str
    adapter: Literal["fleet"] = "fleet"
    root: Path
    config_glob: str = "cells/*.yaml"
    log_glob: str = "logs/*/*.log"
    targets_file: str = "targets.csv"
    task_column: str = "cell"
    period_column: str = "day"
    target_column: str = "efficiency"
    # Targets outside this range are quarantined as absurd.
    target_min: float = -1e300
    target_max: float = 1e300
    # Field priority for truncation to the token budget: earlier sections are kept longer.
    section_priority: tuple[str, ...] = ("task", "period", "config", "logs")


def load_source_config(name_or_path: str, conf_dir: Path = CONF_DIR) -> FleetSourceConfig:
    path = Path(name_or_path)
    if path.suffix not in {".yaml", ".yml"}:
        path = conf_dir / "sources" / f"{name_or_path}.yaml"
    return load_model(FleetSourceConfig, path)
