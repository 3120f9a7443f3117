"""`textperf`: the command line. Each command is a thin shell over `regressor` and `flows`."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, get_args

import typer

from regressor.config import AdaptConfig, AppConfig, ConfigError, ResolvedPaths, load_app_config

app = typer.Typer(
    help="textperf: predict performance metrics of large systems from their configs and logs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # a docstring's wrapped lines read as one paragraph
)
models_app = typer.Typer(
    help="The MLflow registry: list, show, predict with, promote and prune models.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(models_app, name="models")


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"textperf {version('textperf')}")
        raise typer.Exit


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version; exit."
        ),
    ] = False,
) -> None:
    """textperf: predict performance metrics of large systems from their configs and logs."""


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="App config YAML (default: conf/default.yaml)."),
]
VarOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="TEXTPERF_VAR_DIR",
        help="Override paths.var_dir (where all state lands; a relative path is taken from the "
        "project root, as in the config).",
    ),
]


def _use_tracking(paths: ResolvedPaths) -> str:
    """Point MLflow at the store the flows use (`PathsConfig.resolve`: the config's
    `paths.tracking_uri`, else MLFLOW_TRACKING_URI, else SQLite under var/); the URI."""
    from regressor.tracking import use_store

    use_store(paths.tracking_uri)
    return paths.tracking_uri


@contextmanager
def _user_errors(*also: type[Exception]) -> Iterator[None]:
    """A mistake the library names (`registry.UserError`: no data, no such model, version or
    alias, no server; and `also`) -> its message as one line, exit 1, not a traceback."""
    from regressor.registry import UserError

    try:
        yield
    except (UserError, *also) as exc:
        _fail(str(exc))


def _state(config: Path | None, var_dir: Path | None) -> tuple[AppConfig, ResolvedPaths]:
    """The app config and its checked state paths (a `registry.UserError` if var_dir is a
    file); call under `_user_errors`."""
    from regressor import registry

    cfg = load_app_config(config, var_dir)
    return cfg, registry.state_paths(cfg)


def _registry_at(config: Path | None, var_dir: Path | None) -> tuple[AppConfig, ResolvedPaths]:
    """`_state`, then `_open_store`. Call under `_user_errors`."""
    cfg, paths = _state(config, var_dir)
    _open_store(paths)
    return cfg, paths


def _open_store(paths: ResolvedPaths) -> None:
    """Point MLflow at the store (`_use_tracking`) once it is there (`registry.require_store`):
    MLflow's client would spend about four minutes retrying a server that is not there, per
    call, and would make a missing local store."""
    from regressor import registry

    registry.require_store(paths)
    _use_tracking(paths)


@contextmanager
def _registry_errors(uri: str) -> Iterator[None]:
    """`_user_errors`, and what else the store refuses (a bad name, no permission): one line
    naming the store."""
    from mlflow.exceptions import MlflowException

    try:
        with _user_errors():
            yield
    except MlflowException as exc:
        _fail(f"the MLflow registry at {uri} refused: {exc.message}")


@app.command()
def retrain(
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
    generate_fleet: Annotated[
        bool | None,
        typer.Option(
            "--generate-fleet/--no-generate-fleet",
            help="Write the demo fleet (the config's `fleet`) first [default: only into the "
            "empty folder of a source marked `demo: true`; never over a real fleet].",
            show_default=False,
        ),
    ] = None,
    adapt: Annotated[bool, typer.Option(help="Adapt the champion to the holdout task.")] = True,
    model: Annotated[
        str | None, typer.Option(help="Model size instead of the config's (conf/model/).")
    ] = None,
    train: Annotated[
        str | None, typer.Option(help="Optimisation instead of the config's (conf/train/).")
    ] = None,
    force_train: Annotated[
        bool,
        typer.Option(
            help="Train even when a registered version was trained from the same data snapshot "
            "and configs (by default that version is reported and nothing is retrained)."
        ),
    ] = False,
) -> None:
    """Run the nightly retraining flow once, now (ingest, train, evaluate, register, adapt)."""
    from flows.retrain import retrain
    from regressor import pipeline, registry
    from regressor.config import load_source_config
    from regressor.warehouse import WarehouseLockedError

    with _user_errors():  # checked before Prefect starts: a clear line, not a failed run
        cfg = load_app_config(config, var_dir, model=model, train=train)
        pipeline.check_train_config(cfg)
        paths = registry.state_paths(cfg)
        pipeline.generates_fleet(paths, load_source_config(cfg.source), generate_fleet)
        registry.require_reachable(paths.tracking_uri)
    # The flow fails on a user error with its message (`flows.common.failing_cleanly`), and on a
    # warehouse held too long by another process once its retries are spent.
    with _user_errors(WarehouseLockedError):
        try:
            text = retrain(
                config=config,
                var_dir=var_dir,
                generate_fleet=generate_fleet,
                adapt=adapt,
                model=model,
                train=train,
                force_train=force_train,
            )
        except pipeline.AdaptationsFailedError as exc:  # the report first: the rest stands
            typer.echo(exc.report)
            _fail(str(exc))
    typer.echo(text)  # the report is data: stdout, where `> report.md` finds it


# Said of target rows whose task no config or log names (`IngestReport.unmatched_targets`).
UNMATCHED = "no config or no log has that task, so they make no record (a misspelt task?)"


@app.command()
def ingest(
    source: Annotated[
        str | None,
        typer.Option(
            help="Source name or YAML path (conf/sources/) [default: the config's source].",
            show_default=False,
        ),
    ] = None,
    forget_gone: Annotated[
        bool,
        typer.Option(
            "--forget-gone",
            help="First drop the rows of stored files that are no longer there (deleted for "
            "good). Without it they keep their rows, so a folder that is away for a night does "
            "not empty the training set.",
        ),
    ] = False,
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
) -> None:
    """Ingest a source (fleet, table or runs adapter) into the DuckDB warehouse."""
    from regressor import pipeline
    from regressor.config import load_source_config
    from regressor.sources.forget import SourceFolderMissingError
    from regressor.warehouse import WarehouseLockedError

    # A missing folder: nothing was forgotten; say so in one line. So too a warehouse held by
    # another process for longer than the wait.
    with _user_errors(SourceFolderMissingError, WarehouseLockedError):
        cfg, paths = _state(config, var_dir)
        picked = load_source_config(source or cfg.source)
        with pipeline.writer_lock(paths):  # behind a flow's ingest, not failing after 120 s
            result = pipeline.ingest(paths, picked, pipeline.new_run_id(), forget_gone)
    typer.echo(
        f"files seen {result.files_seen}: ingested {result.files_ingested}, "
        f"unchanged {result.files_unchanged}, quarantined {result.files_quarantined}; "
        f"{result.records} records ({result.records_added:+d} this run)"
    )
    for file, reason in result.quarantined:  # a reason names its file: said once, not twice
        typer.echo(f"  quarantined {reason if file in reason else f'{file}: {reason}'}", err=True)
    for path in result.files_forgotten:
        typer.echo(f"  forgot {path} (gone; its rows were dropped)")
    unmatched = list(result.unmatched_targets.items())
    for task, n in unmatched[:20]:
        typer.echo(f"  {n} target row(s) of task {task!r}: {UNMATCHED}", err=True)
    if len(unmatched) > 20:
        typer.echo(f"  ... and {len(unmatched) - 20} more such tasks (the ingest report)", err=True)


# A record is one system's configs and log summaries: megabytes at most. A bigger file (or a
# device such as /dev/zero) is refused after this many bytes instead of being read whole.
MAX_RECORD_BYTES = 64 * 1024 * 1024


def _record_row(record: object) -> dict[str, str]:
    """A parsed record -> the pyfunc's row (config and logs as JSON text, the rest as text), or a
    ValueError saying why it is no record: checked here, by this code's rules, so the error names
    the file whatever version of the pyfunc code the model was registered with."""
    from regressor.pyfunc_model import json_kind, json_object

    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {json_kind(record)}")
    text = record.get("text")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {json_kind(text)}")
    missing = [k for k in ("task", "config", "logs") if record.get(k) is None]
    if text is None and missing:
        raise ValueError(
            f"a record needs 'text', or 'task', 'config' and 'logs'; missing {missing}"
        )
    row = {} if text is None else {"text": text}
    for key in ("task", "period"):
        value = record.get(key)
        if isinstance(value, dict | list | bool):
            raise ValueError(f"'{key}' must be a string, got {json_kind(value)}")
        if value is not None:
            row[key] = str(value)
    for key in ("config", "logs"):
        if record.get(key) is not None:
            row[key] = json.dumps(json_object(record[key], f"'{key}'"))
    return row


def _read_record(path: Path) -> dict[str, str]:
    """A record file -> the pyfunc's row; a BadParameter naming the file and the reason."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_RECORD_BYTES + 1)
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError(f"larger than {MAX_RECORD_BYTES // 2**20} MiB")
        return _record_row(json.loads(data.decode("utf-8-sig")))  # a BOM: Windows editors
    except RecursionError:
        raise typer.BadParameter(f"{path}: the JSON is nested too deeply") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"{path}: cannot read a JSON record: {exc}") from exc
    except ValueError as exc:
        raise typer.BadParameter(f"{path}: {exc}") from exc


def _model_uri(ref: str) -> str:
    """`textperf@champion`, `textperf/3` or a full URI (models:/, runs:/, a path) -> a URI."""
    if ":" in ref or ref.startswith(("/", ".")):
        return ref
    return "models:/" + ref


def _quantiles_text(labels: list[str], row: dict) -> str:
    """Two quantiles as the interval they bound (`10-90% [lo, hi]`); any other number each by
    its own label (`p5 .. p50 .. p95 ..`): a third used to be dropped without a word."""
    if len(labels) == 2:
        lo, hi = labels
        return f"{lo[1:]}-{hi[1:]}% [{row[lo]:.4g}, {row[hi]:.4g}]"
    return "  ".join(f"{label} {row[label]:.4g}" for label in labels)


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit 1: a failure the user can act on, not a traceback."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(1)


def _predict_params(
    num_samples: int | None, temperature: float, quantiles: list[float] | None, samples: bool
) -> dict:
    """The pyfunc's params, checked before the model is loaded (the pyfunc's own rules); its
    defaults for what is not given, so the command answers as the served model does."""
    from regressor.pyfunc_model import checked_params

    given = {"num_samples": num_samples} if num_samples is not None else {}
    try:
        params = checked_params(
            given
            | {
                "temperature": temperature,
                "quantiles": quantiles or [0.1, 0.9],
                "return_samples": samples,
            }
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return {**params, "quantiles": sorted(params["quantiles"])}  # the interval: first, last


def _pinned(uri: str) -> tuple[str, str]:
    """A registry URI as the fixed version it names now, so an alias that moves meanwhile
    cannot change the model mid-command, and a note saying which version and what it predicts
    (" = models:/textperf/3, predicts `efficiency`"). Other URIs, and refs that do not resolve
    (whose load then fails with its own message), as given."""
    from mlflow.exceptions import MlflowException

    from regressor import registry

    # A bare `models:/NAME` is left as given: pinning would pick its latest version, maybe a
    # challenger the gate refused.
    if not uri.startswith("models:/") or registry.parse_ref(uri)[1] is None:
        return uri, ""
    try:
        version = registry.resolve(uri)
    except (LookupError, MlflowException, registry.UserError):  # its load says what is wrong
        return uri, ""
    pinned = registry.model_uri(version.name, version.version)
    target = version.tags.get("target")
    what = f", predicts `{target}`" if target else ""
    return pinned, ("" if pinned == uri else f" = {pinned}") + what


def _load_model(uri: str):  # -> mlflow.pyfunc.PyFuncModel (imported lazily)
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError, ValueError) as exc:  # no such model, alias or artifact
        _fail(f"cannot load model {uri!r}: {exc}{_alias_hint(uri)}")


def _require_registered(uri: str, store: str) -> None:
    """A `models:/NAME@ALIAS` or `/VERSION` of a model the store does not have, or a bare
    registered NAME, fails in one line saying what to do. MLflow answered the first with
    "Registered Model with name=... not found" and no next step, and reads `models:/NAME` as a
    logged model's id ("Logged model with ID 'textperf' not found")."""
    from mlflow.exceptions import MlflowException

    from regressor import registry

    if not uri.startswith("models:/"):
        return
    name, which = registry.parse_ref(uri)
    try:
        registered = registry.is_registered(name)
    except MlflowException:  # a refusal other than "not found" (a bad name, no permission):
        return  # the load that follows reports it in one line
    if registered and which is None:
        _fail(
            f"{name!r} is a registered model: name an alias or a version, e.g. "
            f"models:/{name}@champion or models:/{name}/1 (`textperf models list {name}`)"
        )
    # A bare name nothing registered holds, unless it is a logged model's id (`m-<hex>`): MLflow
    # read `models:/textpref` (a typo) as one and answered "Logged model with ID ... not found".
    if not registered and (which is not None or not name.startswith("m-")):
        _fail(
            f"no registered model {name!r} in {store}: `textperf retrain` trains and registers "
            "one (or --var-dir, --config or MLFLOW_TRACKING_URI name the store that has it)"
        )


def _alias_hint(uri: str) -> str:
    """For a NAME@ALIAS that failed: the aliases NAME has, and why a variant may have none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from regressor.registry import parse_ref, versions_of

    if not uri.startswith("models:/") or "@" not in uri:
        return ""
    name, _ = parse_ref(uri)
    try:
        aliases = MlflowClient().get_registered_model(name).aliases or {}
        variant = any("base_model" in v.tags for v in versions_of(name))
    except MlflowException:  # no such model: its own message says so
        return ""
    held = ", ".join(f"@{a} (v{v})" for a, v in sorted(aliases.items())) or "none"
    if not variant:  # a base model: the variant's advice would mislead
        return f" {name}'s aliases: {held} (`textperf models promote {name} VERSION` sets one)"
    return (
        f" {name}'s aliases: {held}. An adapted variant the gate refused has no champion: "
        f"its task is predicted with the base model (`textperf models show {name}` gives the "
        "gate's reason)"
    )


@app.command()
def predict(
    records: Annotated[
        list[Path],
        typer.Argument(help="JSON record files: {task, period, config, logs} or {text}."),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="Model URI or NAME@ALIAS / NAME/VERSION [default: the config's "
            "registry.model_name at registry.champion_alias, textperf@champion].",
            show_default=False,
        ),
    ] = None,
    num_samples: Annotated[
        int | None,
        typer.Option(help="Sampled decodes per record [default: 32].", show_default=False),
    ] = None,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature: 1 samples the model, 0 decodes greedily.")
    ] = 1.0,
    quantile: Annotated[
        list[float] | None, typer.Option("--quantile", "-q", help="Repeatable; default 0.1 0.9.")
    ] = None,
    samples: Annotated[bool, typer.Option(help="Also print every sampled value.")] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON object a record (JSON Lines): its file, the model version, median, "
            "mean, std, each quantile (p10, ...) and with --samples the samples, at full "
            "precision.",
        ),
    ] = False,
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
) -> None:
    """Predict each record: the median of sampled decodes and an interval between quantiles."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from regressor import registry
    from regressor.pyfunc_model import quantile_column

    params = _predict_params(num_samples, temperature, quantile, samples)
    if model is not None and not model.strip():  # `--model "$MODEL"` with MODEL unset
        raise typer.BadParameter("is empty: name a model, or leave it out", param_hint="--model")
    rows = [_read_record(path) for path in records]
    with _user_errors():  # a var dir that is a file, a tracking server that does not answer
        cfg, paths = _state(config, var_dir)
        # The config's names by default, as the pipeline registers and gates: `textperf@champion`
        # was fixed here, so a config naming its own model predicted with another, or none.
        named = registry.model_uri(cfg.registry.model_name, cfg.registry.champion_alias)
        uri = _model_uri(model) if model else named
        if uri.startswith(("models:/", "runs:/")):  # a model folder on disk needs no store
            _open_store(paths)
    store = paths.tracking_uri
    _require_registered(uri, store)
    pinned, note = _pinned(uri)
    loaded = _load_model(pinned)
    try:
        out = loaded.predict(pd.DataFrame(rows), params=params)
    except (MlflowException, ValueError) as exc:
        bad = getattr(exc, "row", None)  # the pyfunc's InvalidInputError names the bad row
        _fail(f"{records[bad] if bad is not None else uri}: {exc}")
    labels = [quantile_column(q) for q in params["quantiles"]]
    typer.echo(f"{uri}{note}: {params['num_samples']} samples per record", err=True)
    for path, row in zip(records, out.to_dict("records"), strict=True):
        if as_json:  # NaN (no finite sample) as null: JSON has no NaN
            values = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in row.items()}
            fields = {"record": str(path), "model": pinned, **values}
            typer.echo(json.dumps(registry.finite_json(fields), allow_nan=False))
            continue
        line = f"{path}: median {row['median']:.4g}  {_quantiles_text(labels, row)}"
        finite = row.get("finite_fraction", 1.0)  # versions registered before do not say
        if finite < 1:  # the figures rest on fewer draws than asked for
            line += f"  ({finite_note(finite)})"
        if samples:
            line += "  samples " + " ".join(f"{v:.4g}" for v in row["samples"])
        typer.echo(line)


def finite_note(finite: float) -> str:
    """What share of a record's draws decoded to a number, rounded down: 1023 of 1024 printed
    "100%", contradicting the note it is."""
    return f"{math.floor(finite * 1000) / 10:g}% of the draws decoded to a number"


# `textperf models predict` is the same command, for users who look everything up under `models`.
models_app.command("predict")(predict)


@app.command()
def serve(
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="Flow runs at once on this machine.")] = 2,
) -> None:
    """Serve the deployments on this machine: nightly-retrain on conf's cron, plus ad-hoc ones."""
    from prefect import serve as prefect_serve

    from flows import deployments

    with _user_errors():
        cfg, _ = _state(config, var_dir)
    prefect_serve(*deployments.build(cfg, config, var_dir), limit=limit)


@app.command()
def record(
    task: Annotated[str, typer.Argument(help="The task (cell, job, system) to take it from.")],
    period: Annotated[
        str | None, typer.Option(help="Its period, e.g. 2026-06-01 [default: the latest].")
    ] = None,
    source: Annotated[str | None, typer.Option(help="Source name [default: the config's].")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write it here, not to stdout.")
    ] = None,
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
) -> None:
    """Write a stored record as the JSON `predict` reads: a template to edit, or a record to
    predict and compare with its stored target (printed on stderr)."""
    from regressor.config import load_source_config
    from regressor.record_files import record_json, stored_record

    with _user_errors():
        cfg, paths = _state(config, var_dir)
        name = load_source_config(source or cfg.source).name  # as the records store it
        found, target = stored_record(paths.warehouse, name, task, period)
    text = record_json(found)
    if out is None:
        typer.echo(text, nl=False)
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot write {out}: {exc.strerror or exc}")
    typer.echo(f"{found['task']} {found.get('period') or ''}: stored target {target:.6g}", err=True)


@app.command()
def export(
    out: Annotated[
        Path,
        typer.Option(
            help="Directory for the Parquet shards: new, empty, or a previous export (replaced)."
        ),
    ],
    shard_rows: Annotated[int, typer.Option(min=1, help="Records per shard.")] = 10_000,
    source: Annotated[str | None, typer.Option(help="Only this source's records.")] = None,
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
) -> None:
    """Export the warehouse's records as Parquet shards (`OUT/shard=<k>/`) for multi-node runs."""
    from regressor.shards import ExportError, export_shards

    with _user_errors(ExportError):
        paths = _state(config, var_dir)[1]
        try:
            result = export_shards(paths.warehouse, out, shard_rows, source)
        except OSError as exc:  # --out under a file, a read-only or full file system
            _fail(f"cannot write the shards to {out}: {exc.strerror or exc}")
    typer.echo(f"{result.rows} records in {result.shards} shards under {result.out_dir}")


@app.command("join-fits")
def join_fits(
    max_fits: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many fits (default: never).")
    ] = None,
    until: Annotated[
        Path | None,
        typer.Option(help="Stop once this file exists (node 0 writes it when its run ends)."),
    ] = None,
    ready: Annotated[
        Path | None,
        typer.Option(help="Write this file once watching (for node 0 to wait on)."),
    ] = None,
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
) -> None:
    """On node k > 0 of a multi-node config (`num_nodes`): join node 0's fits.

    Runs as node NODE_RANK (in a SLURM job step: SLURM_NODEID), watching the checkpoint directory
    shared with node 0 (MASTER_ADDR, MASTER_PORT). `docker/slurm/` runs it on a SLURM allocation.
    """
    from regressor.fit_worker import JoinError
    from regressor.fit_worker import join_fits as join

    with _user_errors():
        paths = _state(config, var_dir)[1]
    try:
        joined = join(paths.checkpoints, max_fits, until, ready)
    except JoinError as exc:  # one line and exit 1, as every other command's failure
        _fail(str(exc))
    except OSError as exc:  # --ready where no file can be written
        _fail(f"{exc.filename}: {exc.strerror}")
    typer.echo(f"joined {joined} fits")


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Argument(help="Only this registered model.")] = None,
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
) -> None:
    """Registered models, their versions (registered when, UTC), aliases, held-out scores
    (a variant's on its task), gate verdicts and lineage."""
    from regressor import descriptions, registry

    with _user_errors():
        uri = _registry_at(config, var_dir)[1].tracking_uri
    with _registry_errors(uri):
        rows = registry.list_versions(name)
        empty = not rows and name is not None and registry.is_registered(name)
    if empty:  # its versions all deleted: "no registered model" sent the user looking for it
        typer.echo(f"{name}: registered, with no versions left in {uri}")
        return
    if not rows and name is not None:
        _fail(f"no registered model {name!r} in {uri}; `textperf models list` lists them all")
    if not rows:
        typer.echo(f"no registered models in {uri} yet (`textperf retrain` makes one)", err=True)
    current = None
    for row in rows:
        if row.name != current:
            current = row.name
            typer.echo(row.name)
        aliases = "".join(f" @{a}" for a in row.aliases)
        created = f"  {row.created:%Y-%m-%d %H:%M}" if row.created else ""
        extra = "  ".join(
            f"{k}={row.tags[k]}" for k in ("base_model", "method", "n_shots") if k in row.tags
        )
        typer.echo(
            f"  v{row.version}{aliases}{created}  {descriptions.one_line(row.tags, row.aliases)}"
            f"  run {row.run_id}  {extra}".rstrip()
        )


@models_app.command("prune")
def models_prune(
    keep: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Versions kept per model, newest first, besides aliased (a zero-shot fallback "
            "counts with the refused version it stands in for) [default: the config's "
            "schedule.prune_keep, 30].",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be deleted.")] = False,
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
) -> None:
    """Delete old versions of the model and its variants (never one holding an alias, nor a
    base a kept variant came from) and their weights; `mlflow gc` then reclaims the space."""
    from regressor import jobs

    with _user_errors():
        cfg, paths = _registry_at(config, var_dir)
    with _registry_errors(paths.tracking_uri):
        typer.echo(jobs.prune(cfg, paths, keep, dry_run))


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@ALIAS or NAME/VERSION.")],
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
) -> None:
    """One version as JSON: its URI, aliases, run, lineage tags and metrics."""
    from mlflow.exceptions import MlflowException

    from regressor import registry

    with _user_errors():
        _registry_at(config, var_dir)
    try:
        version = registry.resolve(ref)
    except (LookupError, MlflowException, registry.UserError) as exc:  # a name it cannot quote
        _fail(f"{ref}: {exc}")
    typer.echo(json.dumps(registry.describe(version), indent=2, default=str))


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version to promote.")],
    alias: Annotated[
        str | None,
        typer.Option(
            help="The alias to move [default: the config's registry.champion_alias, champion].",
            show_default=False,
        ),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why; kept on the version.")] = "manual promotion",
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
) -> None:
    """Point an alias (default: the champion) at a version by hand, bypassing the gate; logged.
    It waits for a run gating or adapting this model on this var dir, so the run's gate, which
    read the champion before, cannot move the alias back past this promotion."""
    from regressor import pipeline, registry

    if alias is not None and alias.isdigit():  # `models:/NAME/2` is version 2: not an alias
        raise typer.BadParameter(
            f"alias {alias!r} is a number: name it, e.g. champion", param_hint="--alias"
        )
    with _user_errors():
        cfg, paths = _registry_at(config, var_dir)
    # The alias the pipeline's gate reads: a fixed `champion` moved one it never reads.
    alias = alias or cfg.registry.champion_alias
    with _registry_errors(paths.tracking_uri), pipeline.alias_locks(paths, name):
        registry.existing_version(name, version)  # names what is missing, MLflow's words do not
        decision = registry.promote(name, version, alias, reason, cfg.registry.champion_alias)
    previous = decision["previous"]
    was = "unset" if previous is None else f"v{previous}"
    typer.echo(f"{name}/{version} is now @{alias} (was {was})")


METHODS: tuple[str, ...] = get_args(AdaptConfig.model_fields["method"].annotation)


@app.command()
def adapt(
    task: Annotated[
        str | None, typer.Option(help="Task to adapt to; default: the holdout.")
    ] = None,
    shots: Annotated[
        int | None, typer.Option(min=3, help="Number of shots (default from conf).")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="full | last_layers | lora (default from conf).")
    ] = None,
    lora_rank: Annotated[
        int | None, typer.Option(min=1, help="LoRA rank, with --method lora.")
    ] = None,
    base_version: Annotated[
        str | None, typer.Option("--base", help="Base version of the model; default: champion.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(help="Adapt even if this base was adapted on this data with these configs."),
    ] = False,
    from_scratch: Annotated[
        bool | None,
        typer.Option(
            "--from-scratch/--no-from-scratch",
            help="Also train from scratch on the shots, to compare (default from conf).",
        ),
    ] = None,
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
) -> None:
    """Fine-tune a registered model on a task's latest shots; register `<name>-<task>`."""
    if base_version is not None and not base_version.isdigit():
        raise typer.BadParameter(f"{base_version!r} is not a version number", param_hint="--base")
    if method is not None and method not in METHODS:
        raise typer.BadParameter(f"{method!r}: one of {', '.join(METHODS)}", param_hint="--method")
    if task is not None and not task.strip():  # `--task "$TASK"` with TASK unset: the holdout
        raise typer.BadParameter("is empty: name a task, or leave it out", param_hint="--task")
    from regressor import pipeline, registry, report
    from regressor.config import load_source_config

    with _user_errors():
        cfg, paths = _state(config, var_dir)
        pipeline.check_train_config(cfg)  # fine-tuning trains with it: before the data loads
        registry.require_reachable(paths.tracking_uri)
    overrides = {
        "n_shots": shots,
        "method": method,
        "lora_rank": lora_rank,
        "from_scratch_reference": from_scratch,
    }
    adapt_cfg = cfg.adapt.model_validate(
        cfg.adapt.model_dump() | {k: v for k, v in overrides.items() if v is not None}
    )
    if adapt_cfg.method != "lora" and lora_rank is not None:  # unused, yet in the reuse key
        raise typer.BadParameter(
            f"only with --method lora (the method is {adapt_cfg.method})", param_hint="--lora-rank"
        )
    split = cfg.split.model_copy(update={"holdout_task": task or cfg.split.holdout_task})
    cfg = cfg.model_copy(update={"adapt": adapt_cfg, "split": split})
    with _user_errors():
        data = pipeline.load_dataset(paths, cfg, load_source_config(cfg.source))
        if base_version is None:
            outcome = pipeline.adapt_champion(cfg, paths, data, force)
        else:
            outcome = pipeline.adapt_version(cfg, paths, data, base_version, force)
    # Reused: an identical adaptation was registered earlier; nothing was trained now.
    done = "already adapted (--force adapts again):" if outcome.reused else "registered"
    typer.echo(f"{done} {outcome.uri} from {outcome.base_uri} ({report.shots_used(outcome)})")
    scores = report.adaptation_scores(outcome, "zero_shot", "from_scratch", "fallback")
    # The gate compared on its own shots: these test scores may rank the two otherwise.
    typer.echo(f"test scores on {outcome.task} (the gate compared on its held-out shots):")
    for kind, metrics in scores.items():
        typer.echo(
            f"  {kind:13s} spearman {metrics['spearman']:.3f}  mape {metrics['mape']:.3g}  "
            f"10-90% coverage {metrics.get('interval_coverage', float('nan')):.2f}"
        )
    verdict = "promoted" if outcome.promoted else "refused"
    typer.echo(
        f"gate: {verdict} ({outcome.reason}); predict {outcome.task} with {outcome.use_uri}"
        + report.fallback_served(outcome)
    )


def main() -> None:
    """The `textperf` console script: a bad configuration file is one line naming the file and
    the setting, exit 2 (click's usage-error code), not a traceback (`pretty_exceptions_enable`
    is off so that other failures keep theirs)."""
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
