"""Validated configuration: one pydantic model per YAML file under `conf/`, and one loader.

Every model is strict about unknown keys (`extra="forbid"`) so a typo in a YAML file fails loudly
instead of silently falling back to a default.
"""

from __future__ import annotations

import importlib.util
import os
import re
import zoneinfo
from datetime import date
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
# A name that goes quoted into an MLflow search filter (a registered model's, a kept bundle's):
# letters, digits and . _ - only, so no quoting can break the filter.
SAFE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
# Where state lands, when neither --var-dir nor a flow's `var_dir` says (`load_app_config`).
VAR_DIR_ENV = "TEXTPERF_VAR_DIR"
# A registered model alias: MLflow's characters (word characters and -).
ALIAS = r"^[\w-]+$"
# A source's name keys its rows in the warehouse and starts its record ids (`name/task/key`).
SOURCE_NAME = rf"^{SAFE_NAME}$"


class Frozen(BaseModel):
    # allow_inf_nan=False: `.nan` passes no bound (every comparison is false) and `.inf` passes
    # any lower bound, so without it `lr: .inf` or `target_max: .nan` would be taken as given.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data: Any) -> Any:
        """YAML 1.1 reads `yes`, `on`, `true` as booleans, and pydantic's lax mode takes a
        boolean as 1 for a number: `batch_size: yes` trained with batches of 1."""
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if isinstance(value, bool) and field is not None and not _admits_bool(field.annotation):
                raise ValueError(
                    f"{name}: {value!r} is a boolean, which this setting does not take (YAML "
                    "reads yes, no, on and off as booleans: quote a word)"
                )
        return data


def _admits_bool(annotation: Any) -> bool:
    """Whether a field takes a boolean as such (bool, Any, a union or Literal holding one)."""
    if annotation is bool or annotation is Any:
        return True
    if get_origin(annotation) is Annotated:
        return _admits_bool(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return any(isinstance(a, bool) for a in get_args(annotation))
    args = get_args(annotation)
    return get_origin(annotation) in (Union, UnionType) and any(map(_admits_bool, args))


class PathsConfig(Frozen):
    """Where state lands. Relative paths are resolved against the project root."""

    var_dir: Path = Path("var")
    # An MLflow tracking server (http://...); None: $MLFLOW_TRACKING_URI, else SQLite under var/.
    # Every command and flow takes the store in this order (`resolve`).
    tracking_uri: str | None = None

    @field_validator("var_dir")
    @classmethod
    def _a_directory(cls, value: Path) -> Path:
        # Path("") is ".": state would be written into the project root itself.
        if str(value) in {"", "."}:
            raise ValueError("is empty: name the directory state lands in (e.g. var)")
        return value.expanduser()  # `~/state` from a compose or env file, not <project>/~/state

    def resolve(self, root: Path = PROJECT_ROOT) -> ResolvedPaths:
        var = self.var_dir if self.var_dir.is_absolute() else root / self.var_dir
        # Read at resolve time so a worker's environment (compose, a work pool) picks the server.
        server = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        return ResolvedPaths(var_dir=var.resolve(), mlflow_server=server)


def is_tracking_server(uri: str) -> bool:
    """Whether an MLflow URI names a tracking server (http or https), not a local store."""
    return uri.startswith(("http://", "https://"))


class ResolvedPaths(Frozen):
    var_dir: Path
    mlflow_server: str | None = None  # a team's tracking server; None: the local SQLite store

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
    def locks(self) -> Path:
        return self.var_dir / "locks"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_server:
            return self.mlflow_server
        # MLflow >= 3.13 refuses the ./mlruns file store; SQLite needs an absolute path.
        return f"sqlite:///{self.mlflow_db}"


class FleetSimConfig(Frozen):
    """The demo fleet generator (`regressor.fleetsim`)."""

    seed: int = Field(7, ge=0)  # numpy's generators take no negative seed
    n_cells: int = Field(24, ge=2)
    n_days: int = Field(150, ge=2)
    start_date: str = "2026-01-01"  # an ISO date: the first day of the generated logs
    # Utilisation samples per day in each log; more lines, longer logs.
    samples_per_day: int = Field(48, ge=1)
    jobs_per_day: int = Field(40, ge=1)
    noise: float = Field(0.02, ge=0)

    @field_validator("start_date", mode="before")
    @classmethod
    def _iso_date(cls, value: Any) -> Any:
        if isinstance(value, date):  # YAML reads an unquoted 2026-01-01 as a date
            return value.isoformat()
        if isinstance(value, str):
            date.fromisoformat(value)  # ValueError: "Invalid isoformat string: ..."
        return value

    @model_validator(mode="after")
    def _days_fit_the_calendar(self) -> FleetSimConfig:
        """Refused when loaded, not half-way through writing the fleet (an OverflowError)."""
        if date.fromisoformat(self.start_date).toordinal() + self.n_days > date.max.toordinal():
            raise ValueError(f"{self.n_days} days from {self.start_date} run past year 9999")
        return self


class SplitConfig(Frozen):
    """Held-out later days, and one cell kept out of training for few-shot adaptation."""

    # The days after (latest period over all tasks - test_days) are held out: one cut in time
    # for every task, so a cell whose records end earlier has none held out (`dataset.by_time`).
    # The cap only catches typos (a century; more overflows the calendar).
    test_days: int = Field(30, ge=1, le=36_500)
    holdout_task: str | None = None  # None: the last task in sorted order.
    # Sources without periods (tables of configurations) split by distinct configuration instead:
    # repeated runs of one configuration never land on both sides.
    test_fraction: float = Field(0.2, gt=0, lt=1)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _leaves_training_records(self) -> SplitConfig:
        # A configuration's hash bucket below test_fraction + val_fraction is held out
        # (`dataset.by_configuration`): at 1 or more, nothing is left to train on.
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"test_fraction + val_fraction ({self.test_fraction} + {self.val_fraction}) "
                "must be below 1, or no configuration is left for training"
            )
        return self


class CodecConfig(Frozen):
    """Number codec: sign, rounded mantissa digits, exponent token."""

    mantissa_digits: int = Field(4, ge=1, le=12)
    # Default covers every finite float64 (subnormals round into the smallest exponent).
    exponent_min: int = Field(-324, ge=-400)
    exponent_max: int = Field(308, le=400)  # beyond float64's decades: only a bigger vocabulary
    # Values per record (several objectives): the decoder writes one number after the other.
    num_objectives: int = Field(1, ge=1, le=64)
    # Token order of a number: `[sign][d1..dD][exponent]` (the paper's, RegressLM's) or, when
    # set, `[sign][exponent][d1..dD]`: the decade is decided before the digits (coarse to fine).
    exponent_first: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> CodecConfig:
        if self.exponent_min >= self.exponent_max:
            raise ValueError("exponent_min must be below exponent_max")
        return self


MAX_PARAMETERS = 2_000_000_000  # a model config beyond it is a typo, refused at load


class ModelConfig(Frozen):
    """Model sizes (`conf/model/*.yaml`): the encoder-decoder, or the decoder-only ablation."""

    name: str
    # decoder_only (`regressor.decoder_only`): one causal stack of `n_decoder_layers` over the
    # input then the target tokens; it has no encoder, so `n_encoder_layers` must be 0.
    architecture: Literal["encoder_decoder", "decoder_only"] = "encoder_decoder"
    # The caps only catch typos (the paper's model is 60M parameters, `base` here); the model
    # as a whole is capped by `_buildable`, before anything is ingested or trained.
    d_model: int = Field(ge=8, le=16384)
    n_heads: int = Field(ge=1, le=256)
    n_encoder_layers: int = Field(ge=0, le=256)
    n_decoder_layers: int = Field(ge=1, le=256)
    d_ff: int = Field(ge=8, le=65536)
    dropout: float = Field(0.0, ge=0, lt=1)
    # None: the same as `dropout`. 0 keeps dropout on the residual branches only: on CPU,
    # scaled_dot_product_attention with dropout_p > 0 leaves the fused kernel (5x slower here).
    attention_dropout: float | None = Field(None, ge=0, lt=1)
    max_input_tokens: int = Field(512, ge=16, le=8192)
    input_vocab_size: int = Field(2048, ge=300, le=1_000_000)

    @property
    def attention_dropout_rate(self) -> float:
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be a multiple of n_heads")
        return self

    @model_validator(mode="after")
    def _layers_fit_architecture(self) -> ModelConfig:
        if self.architecture == "encoder_decoder" and self.n_encoder_layers < 1:
            raise ValueError("an encoder_decoder model needs n_encoder_layers >= 1")
        if self.architecture == "decoder_only" and self.n_encoder_layers:
            raise ValueError(
                "a decoder_only model has no encoder: set n_encoder_layers to 0 "
                f"(got {self.n_encoder_layers}); n_decoder_layers is its depth"
            )
        return self

    @property
    def approx_parameters(self) -> int:
        """About how many weights the model has: per encoder block self-attention (4 d^2) and
        MLP (2 d d_ff), per decoder block also cross-attention (4 d^2 more), the input
        embedding; 58.72M for `base`, which builds with 58.78M."""
        d, mlp = self.d_model, 2 * self.d_model * self.d_ff
        blocks = self.n_encoder_layers * (4 * d * d + mlp) + self.n_decoder_layers * (
            8 * d * d + mlp
        )
        return blocks + self.input_vocab_size * d

    @model_validator(mode="after")
    def _buildable(self) -> ModelConfig:
        if self.approx_parameters > MAX_PARAMETERS:
            raise ValueError(
                f"about {self.approx_parameters:.2g} parameters, more than the "
                f"{MAX_PARAMETERS:.0g} textperf builds: check d_model, d_ff and the layer counts"
            )
        return self


MAX_SEED = 2**32 - 1  # numpy's (and `L.seed_everything`'s) largest seed
MEMBER_SEED_STEP = 1000  # an ensemble's member i trains with seed + 1000 i (`ensemble`)


class TrainConfig(Frozen):
    """Optimisation (`conf/train/*.yaml`)."""

    seed: int = Field(0, ge=0, le=MAX_SEED)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0, le=1)  # AdamW; the shipped recipes use 1e-3 to 1e-2
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    max_steps: int = Field(2000, ge=1)
    max_minutes: float = Field(5.0, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    # auto: bf16-mixed where the CPU has bf16 in hardware, else 32-true, where emulated bf16 is
    # several times slower than fp32 (`environment.resolve_precision`).
    precision: Literal["auto", "bf16-mixed", "32-true", "16-mixed"] = "auto"
    val_every_steps: int = Field(200, ge=1)
    # Validations every `val_every_steps` steps (across epochs, however few the records) without
    # improvement before the run stops: patience x val_every_steps steps.
    early_stopping_patience: int = Field(5, ge=1)
    # What picks the checkpoint and stops early. val_loss: the number tokens' cross-entropy.
    # val_error: the error of the median of `val_error_samples` draws (`RegressionLM.
    # median_error`). On a few dozen records the model soon memorises its training digits and
    # grows overconfident, so val cross-entropy rises while the median keeps improving (DeepPerf
    # BDBJ: val MRE 10.8% at the best-val_loss checkpoint, 2.7% at the last; README "Accuracy").
    select_by: Literal["val_loss", "val_error"] = "val_loss"
    val_error_samples: int = Field(8, ge=1)
    # Neither the clock (`max_minutes`) nor early stopping ends a run before this many steps: on a
    # loaded machine a time budget alone ships a model that has not learned to read (the demo
    # got 241 of its 1,900 steps while benchmarks held both cores). 0: no floor.
    min_steps: int = Field(0, ge=0)
    # Exponential moving average of the weights (Lightning's EMAWeightAveraging), from the end of
    # warmup: validation, checkpoints and the returned model use the average. null: off.
    ema_decay: float | None = Field(None, gt=0, lt=1)
    # Augmentation: in each epoch, the field lines of each section of a training record's text
    # come in a new random order (`serialize.shuffle_section_lines`), seeded by (seed, record,
    # epoch) so that a resumed run replays it.
    shuffle_fields: bool = False
    # K models that differ only in their training seed (seed, seed + 1000, ..), their samples
    # pooled before the median: on small data one model's error is mostly variance, and pooling
    # was the largest accuracy gain measured (c3o: 10.0-10.6% MAPE per member, 8.6% for 5;
    # README "Accuracy"). max_steps and max_minutes apply to each member: K times the cost.
    ensemble_size: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)
    progress_bar: bool = True
    # last.ckpt is refreshed this often (train steps), so a killed run loses at most this many.
    checkpoint_every_steps: int = Field(50, ge=1)
    # Scale-out by configuration (passed to `L.Trainer`): e.g. `ddp` on 2 devices; CPU DDP
    # uses gloo. A fit that launches processes runs in its own (`regressor.fit_worker`).
    accelerator: str = "cpu"
    strategy: str = "auto"
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    num_nodes: int = Field(1, ge=1)
    # How long a rank of a process group waits for the others, at the rendezvous and at each
    # collective: a node that never joins fails the fit after this long (Lightning's default
    # is 30 minutes). Only for a strategy that takes a timeout (DDP and kin).
    process_group_timeout_minutes: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _floor_below_cap(self) -> TrainConfig:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) exceeds max_steps ({self.max_steps})")
        return self

    @model_validator(mode="after")
    def _members_seeded(self) -> TrainConfig:
        # Refused at load, not when the last member's `seed_everything` fails mid-run.
        last = self.seed + MEMBER_SEED_STEP * (self.ensemble_size - 1)
        if last > MAX_SEED:
            raise ValueError(
                f"seed {self.seed} with ensemble_size {self.ensemble_size}: the last member's "
                f"seed {last} is above {MAX_SEED}"
            )
        return self

    @model_validator(mode="after")
    def _fp16_needs_a_gpu(self) -> TrainConfig:
        # Lightning trains a CPU run asked for 16-mixed in bf16-mixed, with a warning, while the
        # optimiser (`RegressionLM._fused`) takes it for fp16: say so at load instead.
        if self.precision == "16-mixed" and self.accelerator == "cpu":
            raise ValueError(
                "precision 16-mixed needs a GPU accelerator; on the CPU use bf16-mixed or auto"
            )
        return self


class EvalConfig(Frozen):
    num_samples: int = Field(32, ge=1)
    # Also the temperature the conformal scale is fitted at, and holds at only: served draws at
    # another keep their sampled quantiles (`Predictor.scale_at`). Serving defaults to 1.0.
    temperature: float = Field(1.0, gt=0)
    # Must hold 0.1 and 0.9: the metrics read the q10..q90 interval (`evaluate_predictions`).
    quantiles: tuple[Annotated[float, Field(ge=0, le=1)], ...] = (0.1, 0.5, 0.9)
    # Split-conformal rescaling of the q10..q90 interval, fitted on the validation split and
    # shipped in the model bundle (regressor.calibration); false keeps the raw sampled quantiles.
    conformal: bool = True
    # Mondrian conformal: a task with at least this many validation records gets its own scale
    # (null: one pooled scale only). With the demo's 10 records a cell, per-cell scales were too
    # noisy: they widened the gap between each cell's coverage and 80% (bench/spread.py, README).
    conformal_task_min_records: int | None = Field(30, ge=1)

    @field_validator("quantiles")
    @classmethod
    def _has_the_interval(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not {0.1, 0.9} <= set(value):
            raise ValueError(f"must include 0.1 and 0.9 (the q10..q90 interval), got {value}")
        return value


class AdaptConfig(Frozen):
    """Few-shot adaptation of the champion to one new task."""

    # At least 3: one each for the gate, validation and fine-tuning (`adaptation.hold_out_gate`).
    n_shots: int = Field(500, ge=3)
    max_steps: int = Field(300, ge=1)
    lr: float = Field(3e-4, gt=0, le=1)
    max_minutes: float = Field(2.0, gt=0)
    # The latest `gate_fraction` of the shots are the gate's alone (`adaptation.hold_out_gate`);
    # of the rest, the latest `val_fraction` stop fine-tuning early and pick its checkpoint.
    gate_fraction: float = Field(0.2, gt=0, lt=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    # full: every weight; last_layers: the last `last_layers` decoder blocks, final norm and head;
    # lora: low-rank adapters (rank `lora_rank`) on the attention and MLP linears, merged on save.
    method: Literal["full", "last_layers", "lora"] = "full"
    last_layers: int = Field(1, ge=1)
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float | None = Field(None, gt=0)  # None: alpha = rank (scale 1)
    # The from-scratch reference: the same architecture trained on the same shots, which shows
    # what the base's pretraining is worth. It trains at most this long, but keeps the base
    # recipe's step floor (`adaptation.scratch_train_config`), so it usually costs more than the
    # fine-tuning itself; false skips it (the gate never reads it), e.g. for many tasks a night.
    from_scratch_reference: bool = True
    scratch_max_minutes: float = Field(2.0, gt=0)


# What the gate can compare (`evaluation.evaluate_predictions` scores both sides), by direction.
HIGHER_IS_BETTER = ("spearman", "kendall", "uncertainty_spearman", "uncertainty_spearman_relative")
LOWER_IS_BETTER = ("mape", "mse", "mse_log")


class PromotionRule(Frozen):
    """A challenger takes `champion` only when it is not worse on every listed metric (none
    listed: every challenger that scores as many records does)."""

    higher_is_better: tuple[str, ...] = ("spearman",)
    lower_is_better: tuple[str, ...] = ("mape",)
    # A challenger that scored fewer of the same records (the others' draws held no number, so
    # they are in no metric) is worse, whatever its metrics on the rest.
    fewer_scored_is_worse: bool = True

    @model_validator(mode="after")
    def _known_metrics(self) -> PromotionRule:
        # A typo loaded fine and failed the gate with a KeyError, after training and
        # registering, on the first night that had a champion to compare with.
        for key, known in (
            ("higher_is_better", HIGHER_IS_BETTER),
            ("lower_is_better", LOWER_IS_BETTER),
        ):
            unknown = [m for m in getattr(self, key) if m not in known]
            if unknown:
                raise ValueError(f"{key}: {', '.join(unknown)} not one of {', '.join(known)}")
        return self


class RegistryConfig(Frozen):
    model_name: str = Field("textperf", pattern=rf"^{SAFE_NAME}$")
    champion_alias: str = Field("champion", pattern=ALIAS, max_length=255)
    challenger_alias: str = Field("challenger", pattern=ALIAS, max_length=255)
    # Also a folder of the local artifact store (`tracking.configure_mlflow`): no '/' in it.
    experiment: str = Field("textperf", pattern=rf"^{SAFE_NAME}$")
    promotion: PromotionRule = PromotionRule()

    @model_validator(mode="after")
    def _usable_aliases(self) -> RegistryConfig:
        # MLflow refuses these only when the gate sets them, after training and registering;
        # and it reads `latest` as the newest version, a refused challenger among them.
        for key in ("champion_alias", "challenger_alias"):
            alias = getattr(self, key)
            if alias.lower() == "latest" or re.fullmatch(r"[vV]?\d+", alias):
                raise ValueError(f"{key} {alias!r}: MLflow keeps `latest` and v<N> for versions")
        if self.champion_alias == self.challenger_alias:
            raise ValueError("champion_alias and challenger_alias must differ")
        return self


class ScheduleConfig(Frozen):
    nightly_cron: str = "0 2 * * *"
    timezone: str = "UTC"
    # A variant is re-adapted when the champion changes; with N here, also once N records of
    # its task arrived since its adaptation (its base still the champion). None: never for that.
    readapt_new_records: int | None = Field(None, ge=1)
    # Registry retention (`textperf models prune`) on this cron too, as the `prune` deployment's
    # schedule, keeping `prune_keep` versions per model besides the aliased ones (a zero-shot
    # fallback counts with the refused version it stands in for). None: `prune`
    # stays ad hoc, since deleting versions is the team's decision.
    prune_cron: str | None = None
    prune_keep: int = Field(30, ge=1)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        # Prefect's Cron takes any string and the schedule then never fires as meant.
        if value not in zoneinfo.available_timezones():
            raise ValueError(f"unknown IANA timezone {value!r} (e.g. UTC, Europe/Paris)")
        return value


class OrchestrationConfig(Frozen):
    """How Prefect runs the flows: task runner, and the one-writer limit around DuckDB."""

    # threads: the flows' tasks in the flow's process, and a run's adaptations one after
    # another; dask: its adaptations side by side on a local Dask cluster of `max_workers`
    # processes (the `dask` extra).
    task_runner: Literal["threads", "dask"] = "threads"
    max_workers: int = Field(2, ge=1)  # Dask workers of the local cluster
    # A Prefect global concurrency limit of 1 slot held by every task that writes the warehouse
    # (the characters Prefect refuses in a limit's name are refused here, at load).
    writer_limit: str = Field("textperf-warehouse-writer", pattern=r"^[^/%&><]+$")
    work_pool: str = "textperf-process"  # what prefect.yaml and the Makefile name

    @model_validator(mode="after")
    def _dask_installed(self) -> OrchestrationConfig:
        # Checked at load: without it, a run failed once its model was registered, at the first
        # adaptations it spread out, and wrote no report.
        if self.task_runner == "dask" and importlib.util.find_spec("prefect_dask") is None:
            raise ValueError(
                "task_runner dask needs prefect-dask: pip install 'textperf[dask]' (or threads)"
            )
        return self


class AppConfig(Frozen):
    """`conf/default.yaml`: everything a run needs, with the model and train sizes by name."""

    paths: PathsConfig = PathsConfig()
    fleet: FleetSimConfig = FleetSimConfig()
    source: str = "demo_fleet"
    split: SplitConfig = SplitConfig()
    # File names under conf/model/ and conf/train/ (without .yaml): no '/', so no '..' either.
    model: str = Field("mini", pattern=rf"^{SAFE_NAME}$")  # the size `demo`'s budget fits
    train: str = Field("demo", pattern=rf"^{SAFE_NAME}$")
    codec: CodecConfig = CodecConfig()
    eval: EvalConfig = EvalConfig()
    adapt: AdaptConfig = AdaptConfig()
    registry: RegistryConfig = RegistryConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @model_validator(mode="after")
    def _one_target(self) -> AppConfig:
        # The codec writes several numbers per record, but records carry one target and the
        # predictor, dataset and metrics read one: a run would fail deep in training.
        if self.codec.num_objectives != 1:
            raise ValueError(
                "codec.num_objectives: a pipeline run predicts one target per record; several "
                "objectives are a feature of the number codec and sampler only"
            )
        return self


class ConfigError(ValueError):
    """A configuration file is missing, malformed or invalid; the message names the file."""


M = TypeVar("M", bound=BaseModel)


# A configuration file is a few KB; anything far bigger is the wrong file (a dataset, a device).
MAX_CONFIG_BYTES = 4 << 20


def read_config_text(path: Path) -> str:
    """The UTF-8 text of a configuration file, or ConfigError saying why it cannot be read."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a configuration file")
    if path.exists() and not path.is_file():  # a FIFO or /dev/zero would block or never end
        raise ConfigError(f"{path}: not a regular file")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such configuration file") from exc
    except OSError as exc:  # permission denied, I/O error
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a configuration file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}, line {line})") from exc


def load_yaml(path: Path) -> dict[str, Any]:
    """A configuration file's top-level mapping. Refused, naming the file: an empty file (or only
    comments: a truncated file would otherwise run on defaults), a repeated key (YAML keeps the
    last one silently), an alias bomb or nesting too deep, anything but a mapping at the top."""
    # Imported here: regressor.sources imports this module. Its loader is the one input files go
    # through: repeated keys and alias bombs are refused, with the line.
    from regressor.sources.common import load_yaml_limited
    from regressor.sources.parsing import UniqueKeyLoader

    text = read_config_text(path)
    try:
        data = load_yaml_limited(text, UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        raise ConfigError(f"{path}: empty (no settings; a truncated file?)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def describe(exc: ValidationError) -> str:
    """One line per problem: the field's dotted path, what is wrong, and the value given.

    pydantic's own text starts with the model's name, which for a source config is the whole
    tagged union (`tagged-union[function-after[...], ...]`), and adds a URL to every line."""
    lines = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "top level"
        value = error["input"]
        # A missing field has no value, and a rule over several fields gets the whole mapping.
        got = (
            "" if error["type"] == "missing" or isinstance(value, dict) else f" (got {value!r:.80})"
        )
        lines.append(f"  {where}: {error['msg'].removeprefix('Value error, ')}{got}")
    return f"{len(lines)} invalid setting(s):\n" + "\n".join(lines)


def load_model(cls: type[M], path: Path, **overrides: Any) -> M:
    """Read `path` into `cls`, applying keyword overrides on top; errors name the file."""
    data = {**load_yaml(path), **overrides}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe(exc)}") from exc


def load_app_config(
    path: Path | None = None,
    var_dir: Path | None = None,
    conf_dir: Path = CONF_DIR,
    model: str | None = None,
    train: str | None = None,
) -> AppConfig:
    """The app config at `path` (default conf/default.yaml); `var_dir` (else the environment's
    `TEXTPERF_VAR_DIR`) moves where state lands, `model` and `train` pick other `conf/model/`
    and `conf/train/` files by name."""
    # The CLI reads the variable as its --var-dir; a flow a Prefect worker runs reads it here
    # (it was the CLI's only, though a flow's errors named it as a way to move the state).
    var_dir = var_dir if var_dir is not None else (os.environ.get(VAR_DIR_ENV) or None)
    picked = {key: name for key, name in (("model", model), ("train", train)) if name}
    app = load_model(AppConfig, path or conf_dir / "default.yaml", **picked)
    # The files it names, picked or not: fail now, naming the file, not after ingest, mid-flow.
    load_model_config(app.model, conf_dir)
    load_train_config(app.train, conf_dir)
    if var_dir is not None:
        # Only the state directory moves: a tracking server the config names stays.
        try:
            paths = PathsConfig.model_validate(app.paths.model_dump() | {"var_dir": var_dir})
        except ValidationError as exc:  # `--var-dir ""`: the project root itself
            raise ConfigError(f"--var-dir ({VAR_DIR_ENV}): {describe(exc)}") from exc
        app = app.model_copy(update={"paths": paths})
    return app


def named_config(kind: str, name: str, conf_dir: Path = CONF_DIR) -> Path:
    """`conf/<kind>/<name>.yaml`; a ConfigError listing the shipped names when there is none
    (it said only "no such configuration file")."""
    path = conf_dir / kind / f"{name}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in (conf_dir / kind).glob("*.yaml"))) or "none"
        raise ConfigError(f"{path}: no {kind} config named {name!r}; conf/{kind}/ has {shipped}")
    return path


def load_model_config(name: str, conf_dir: Path = CONF_DIR) -> ModelConfig:
    return load_model(ModelConfig, named_config("model", name, conf_dir))


def load_train_config(name: str, conf_dir: Path = CONF_DIR) -> TrainConfig:
    return load_model(TrainConfig, named_config("train", name, conf_dir))


def unsafe_pattern(pattern: str) -> str | None:
    """Why a configured glob or file name could reach outside its root, or None when it cannot."""
    if not pattern.strip():
        return "is empty"
    drive = len(pattern) > 1 and pattern[1] == ":" and pattern[0].isalpha()  # C:\\ on Windows
    if pattern.startswith(("/", "\\", "~")) or Path(pattern).is_absolute() or drive:
        return "is absolute"
    if ".." in Path(pattern.replace("\\", "/")).parts:
        return "climbs out with '..'"
    return None


def checked_patterns(value: Any) -> Any:
    """A source's globs and file names stay under its root: no `..`, nothing absolute."""
    for pattern in [value] if isinstance(value, str) else value or ():
        if isinstance(pattern, str) and (problem := unsafe_pattern(pattern)):
            raise ValueError(f"{pattern!r} {problem}; it must be relative to the source root")
    return value


# The sections of a record's text (`serialize.DEFAULT_PRIORITY`), for `section_priority`.
SECTIONS = ("task", "period", "config", "logs")


def known_sections(value: tuple[str, ...]) -> tuple[str, ...]:
    """A misspelt section (`Task`) was ignored, and the real one moved last: cut first."""
    unknown = [name for name in value if name not in SECTIONS]
    if unknown:
        raise ValueError(f"{', '.join(unknown)} not one of the sections {', '.join(SECTIONS)}")
    if len(set(value)) < len(value) or not value:
        raise ValueError("must name each section it orders once, and at least one")
    return value


def ordered_targets(source: Any) -> Any:
    """Every adapter quarantines targets outside [target_min, target_max]: an empty or reversed
    range would quarantine every record."""
    low, high = source.target_min, source.target_max
    if low >= high:
        raise ValueError(f"target_min ({low}) must be below target_max ({high})")
    return source


class SourceText(Frozen):
    """How a source's records are read as text by the model, whatever the adapter."""

    # Tokenize each run of digits whole, so BPE can learn a frequent number as one token, instead
    # of digit by digit. It pays where numbers are a few distinct settings (c3o: best validation
    # loss 0.664 vs 0.748) and loses where they are continuous measurements (lumos: 1.163 vs
    # 0.991); README "Accuracy".
    whole_numbers: bool = False
    # Learn the target as a ratio to a baseline each record's config carries (a dotted path,
    # e.g. `reference.elapsed_time`): the decoder writes target / baseline and predictions are
    # scaled back (`regressor.targets`). None: the target itself.
    target_relative_to: str | None = Field(None, min_length=1)
    # With `target_relative_to`, an ensemble's odd members learn the target itself instead: the
    # two forms err on different records (c3o: pooled, 5 members beat 5 of either form on
    # validation; README "Accuracy"). A single model keeps the relative form.
    mixed_target_forms: bool = False

    @model_validator(mode="after")
    def _mixing_needs_a_baseline(self) -> SourceText:
        if self.mixed_target_forms and self.target_relative_to is None:
            raise ValueError("mixed_target_forms needs target_relative_to (the relative form)")
        return self


class FleetSourceConfig(SourceText):
    """`conf/sources/*.yaml` for the `fleet` adapter: per-entity configs, per-period logs, targets.

    Globs are relative to `root`; a relative `root` is resolved against the run's raw directory.
    The entity key (the task, e.g. a cell) is the config file's stem and the log file's parent
    folder name; the period is the log file's stem (an ISO date).
    """

    name: str = Field(pattern=SOURCE_NAME)
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
    # The demo fleet generator may fill this source's folder when it is empty or missing
    # (`pipeline.generates_fleet`). Off, an empty folder (a share not mounted at 02:00, a typo
    # in `root`) fails the run, where it got the demo fleet, trained on it and could promote.
    demo: bool = False

    _relative = field_validator("config_glob", "log_glob", "targets_file")(checked_patterns)
    _targets = model_validator(mode="after")(ordered_targets)
    _sections = field_validator("section_priority")(known_sections)

    @property
    def target_name(self) -> str:
        """What is predicted, as the source names it (the registry's descriptions say it)."""
        return self.target_column


def data_root(root: Path) -> Path:
    """A table/runs source's root: relative paths are against the project root, so a YAML file
    can read `../shared/datasets/...` in place (next to the project, never copied into it)."""
    return root if root.is_absolute() else (PROJECT_ROOT / root).resolve()


class TableSourceConfig(SourceText):
    """`adapter: table`: each row of CSV/TSV/Parquet files is one record.

    Config = `config_columns` (None: every column but the target and task columns, minus
    `exclude_columns`). The target is the first of `target_columns` present in a file's header
    (so one source can span files that name it differently). The task is `task_column` when set,
    else `task` with `{stem}` replaced by the file's stem. The record key is `key_columns` (a
    repeated key is quarantined) or, when empty, the file and line (repeated measurements of one
    configuration are legitimate rows).
    """

    name: str = Field(pattern=SOURCE_NAME)
    adapter: Literal["table"]
    root: Path
    files: tuple[str, ...] = Field(min_length=1)  # globs under root: *.csv, *.tsv, *.parquet
    separator: str | None = None  # None: tab for .tsv, comma otherwise
    target_columns: tuple[str, ...] = Field(min_length=1)
    config_columns: tuple[str, ...] | None = None
    exclude_columns: tuple[str, ...] = ()
    task_column: str | None = None
    task: str = "{stem}"
    key_columns: tuple[str, ...] = ()
    target_min: float = -1e300
    target_max: float = 1e300
    max_line_bytes: int = Field(1 << 20, ge=64)  # longer lines are quarantined, not parsed
    block_bytes: int = Field(8 << 20, ge=256)  # read and parse files this much at a time
    section_priority: tuple[str, ...] = ("task", "config", "logs")

    _relative = field_validator("files")(checked_patterns)
    _targets = model_validator(mode="after")(ordered_targets)
    _sections = field_validator("section_priority")(known_sections)

    @model_validator(mode="after")
    def _target_not_an_input(self) -> TableSourceConfig:
        # A target among the config columns is in every record's text: the model reads the
        # answer, and its scores mean nothing.
        for key in ("config_columns", "key_columns"):
            leaked = set(getattr(self, key) or ()) & set(self.target_columns)
            if leaked:
                raise ValueError(f"{key} holds the target column(s) {', '.join(sorted(leaked))}")
        if self.config_columns is not None and self.exclude_columns:
            raise ValueError(
                "exclude_columns applies only without config_columns (which lists them all)"
            )
        return self

    @property
    def target_name(self) -> str:
        return " or ".join(self.target_columns)  # whichever a file has, first present first


class ReferenceConfig(Frozen):
    """Pair each run with a run of the same workload on a reference setting (e.g. VM type).

    A record then holds the target run's own configuration and the reference run's log summary
    and target, never the target run's own log (that would leak its runtime).
    """

    field: str  # e.g. vm_type
    value: str  # e.g. m5.large
    match: tuple[str, ...] = Field(min_length=1)  # fields that define "the same workload"
    pair_on: str | None = None  # prefer the reference run with the same value (e.g. repetition)
    # "matched": one record per run, with the reference run chosen above. "all": also one more
    # record per other usable reference run of its group (training pairs x the group's repeats);
    # those records' keys carry `EXTRA_PAIR_MARK` and the reference run's key.
    pairs: Literal["matched", "all"] = "matched"


class RunsSourceConfig(SourceText):
    """`adapter: runs`: one folder per run holding a report/config JSON (or YAML) and a
    time-series CSV log (e.g. sar, one row per second).

    `path_pattern` is a regex with named groups matched against the folder's path under root;
    the groups join the report's fields. `lookup` enriches fields with static tables, e.g. a VM
    type's vCPUs and memory. Config = path groups + `config_fields` (+ lookups); listing fields
    keeps leaky ones (end times, throughput = size / runtime) out.
    """

    name: str = Field(pattern=SOURCE_NAME)
    adapter: Literal["runs"]
    root: Path
    run_glob: str = "*/*"
    report_files: tuple[str, ...] = Field(("report.json",), min_length=1)  # first present is read
    log_file: str = "log.csv"
    path_pattern: str | None = None
    target_field: str
    task_field: str
    period_field: str | None = None  # a timestamp field; its date is the record's period
    config_fields: tuple[str, ...] = ()
    lookup: dict[str, dict[str, dict[str, str | int | float]]] = {}
    reference: ReferenceConfig | None = None
    own_log: bool = False  # put the run's own log summary in its record (off: leakage)
    log_columns: tuple[str, ...] | None = None  # numeric log columns to summarise (None: all)
    log_window_s: int | None = Field(None, ge=1)  # summary window (None: one per run)
    target_min: float = -1e300
    target_max: float = 1e300
    section_priority: tuple[str, ...] = ("task", "config", "logs")

    _relative = field_validator("run_glob", "report_files", "log_file")(checked_patterns)
    _targets = model_validator(mode="after")(ordered_targets)
    _sections = field_validator("section_priority")(known_sections)

    @model_validator(mode="after")
    def _target_not_an_input(self) -> RunsSourceConfig:
        if self.target_field in self.config_fields:  # the model would read the answer
            raise ValueError(f"config_fields holds the target field {self.target_field}")
        return self

    @property
    def target_name(self) -> str:
        return self.target_field

    @field_validator("path_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:  # else a raw re.error at ingest, from the first run folder
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


SourceConfig = Annotated[
    FleetSourceConfig | TableSourceConfig | RunsSourceConfig, Field(discriminator="adapter")
]
SOURCE_ADAPTER: TypeAdapter[SourceConfig] = TypeAdapter(SourceConfig)


def load_source_config(name_or_path: str, conf_dir: Path = CONF_DIR) -> SourceConfig:
    """`conf/sources/<name>.yaml` (or a YAML path) as its `adapter` (default fleet)."""
    path = Path(name_or_path)
    if path.suffix not in {".yaml", ".yml"}:
        if path.name != name_or_path or path.suffix:  # a path, or `bad.json`: not a name
            raise ConfigError(f"{path}: a source is a name under conf/sources/ or a YAML file")
        path = named_config("sources", name_or_path, conf_dir)
    data = {"adapter": "fleet", **load_yaml(path)}
    try:
        return SOURCE_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe(exc)}") from exc
