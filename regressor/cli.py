"""`textperf`: the command line. Each command is a thin shell over `regressor` and `flows`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from regressor.config import AppConfig, load_app_config

app = typer.Typer(
    help="textperf: predict performance metrics of large systems from their configs and logs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Look up models in the MLflow registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="App config YAML (default: conf/default.yaml)."),
]
VarOpt = Annotated[
    Path | None, typer.Option(help="Override paths.var_dir (where all state lands).")
]


def _use_tracking(cfg: AppConfig) -> None:
    """MLFLOW_TRACKING_URI wins (a team server); else the local SQLite store under var/."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.paths.resolve().tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


@app.command()
def retrain(
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
    generate_fleet: Annotated[bool, typer.Option(help="Write the demo fleet first.")] = True,
    adapt: Annotated[bool, typer.Option(help="Adapt the champion to the holdout task.")] = True,
) -> None:
    """Run the nightly retraining flow once, now (ingest, train, evaluate, register, adapt)."""
    from flows.retrain import RetrainParams
    from flows.retrain import retrain as retrain_flow

    retrain_flow(
        RetrainParams(config=config, var_dir=var_dir, generate_fleet=generate_fleet, adapt=adapt)
    )


@app.command()
def ingest(
    source: Annotated[
        str, typer.Option(help="Source name or YAML path (conf/sources/).")
    ] = "demo_fleet",
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
) -> None:
    """Ingest a source's configs, logs and targets into the DuckDB warehouse."""
    from regressor import pipeline
    from regressor.config import load_source_config

    cfg = load_app_config(config, var_dir)
    result = pipeline.ingest(cfg.paths.resolve(), load_source_config(source), pipeline.new_run_id())
    typer.echo(
        f"files seen {result.files_seen}: ingested {result.files_ingested}, "
        f"unchanged {result.files_unchanged}, quarantined {result.files_quarantined}; "
        f"{result.records} records"
    )
    for file, reason in result.quarantined:
        typer.echo(f"  quarantined {file}: {reason}", err=True)


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"{path}: cannot read a JSON record: {exc}") from exc
    if not isinstance(record, dict) or not (
        {"text"} <= record.keys() or {"task", "config", "logs"} <= record.keys()
    ):
        raise typer.BadParameter(f"{path}: a record needs 'text', or 'task', 'config' and 'logs'")
    return record


@app.command()
def predict(
    records: Annotated[
        list[Path],
        typer.Argument(help="JSON record files: {task, period, config, logs} or {text}."),
    ],
    model: Annotated[str, typer.Option(help="Model URI.")] = "models:/textperf@champion",
    num_samples: Annotated[int, typer.Option(help="Sampled decodes per record.")] = 64,
    temperature: float = 1.0,
    config: ConfigOpt = None,
    var_dir: VarOpt = None,
) -> None:
    """Predict each record: the median of sampled decodes and a 10-90% interval."""
    import mlflow
    import pandas as pd

    _use_tracking(load_app_config(config, var_dir))
    rows = []
    for path in records:
        record = _read_record(path)
        rows.append({k: json.dumps(v) if isinstance(v, dict) else v for k, v in record.items()})
    frame = pd.DataFrame(rows)
    loaded = mlflow.pyfunc.load_model(model)
    out = loaded.predict(frame, params={"num_samples": num_samples, "temperature": temperature})
    for path, row in zip(records, out.to_dict("records"), strict=True):
        typer.echo(
            f"{path}: median {row['median']:.4g}  10-90% [{row['p10']:.4g}, {row['p90']:.4g}]"
        )


@models_app.command("list")
def models_list(config: ConfigOpt = None, var_dir: VarOpt = None) -> None:
    """Registered models, their versions and aliases."""
    from mlflow import MlflowClient

    _use_tracking(load_app_config(config, var_dir))
    client = MlflowClient()
    for rm in client.search_registered_models():
        typer.echo(rm.name)
        for mv in client.search_model_versions(f"name='{rm.name}'"):
            alias = "".join(
                f" @{a}" for a, v in sorted((rm.aliases or {}).items()) if v == mv.version
            )
            typer.echo(f"  v{mv.version}{alias}  run {mv.run_id}  {mv.tags.get('base_model', '')}")


if __name__ == "__main__":
    app()
