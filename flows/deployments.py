"""The deployments, built from `conf/`: served by `textperf serve`, mirrored in `prefect.yaml`.

`nightly-retrain` runs on the cron of `schedule.nightly_cron`; `ingest`, `adapt`, `evaluate` and
`prune` are ad-hoc (triggered from the UI, `prefect deployment run` or `run_deployment`), and
`prune` also runs on `schedule.prune_cron` when the team sets one.
"""

from __future__ import annotations

from pathlib import Path

from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.adapt import adapt
from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.prune import prune
from flows.retrain import retrain
from regressor.config import AppConfig, ConfigError

NIGHTLY = "nightly-retrain"
ALWAYS_AD_HOC = {"ingest": ingest, "adapt": adapt, "evaluate": evaluate}
AD_HOC = (*ALWAYS_AD_HOC, "prune")  # prune: also on `schedule.prune_cron` when set


def _params(config: Path | None, var_dir: Path | None) -> dict:
    """The flows' `config` and `var_dir` parameters pointing at the given config. Top-level
    parameters: Prefect merges a run's parameters into these key by key, so a run that sets
    another parameter keeps them."""
    given = {"config": config, "var_dir": var_dir}
    return {k: str(v) for k, v in given.items() if v is not None}


def build(app: AppConfig, config: Path | None = None, var_dir: Path | None = None) -> list:
    """RunnerDeployments for `serve()`: the nightly schedule and the ad-hoc flows."""
    params = _params(config, var_dir)
    nightly = retrain.to_deployment(
        name=NIGHTLY,
        schedules=[cron(app, "nightly_cron", config)],
        parameters=params,
        # Two nightly runs never overlap; ad-hoc writers still queue on the warehouse slot.
        concurrency_limit=1,
        tags=["textperf", "nightly"],
    )
    ad_hoc: list[RunnerDeployment] = [
        flow.to_deployment(name=name, parameters=params, tags=["textperf", "ad-hoc"])
        for name, flow in ALWAYS_AD_HOC.items()
    ]
    return [nightly, *ad_hoc, _prune_deployment(app, params, config)]


def cron(app: AppConfig, field: str, config: Path | None) -> Cron:
    """The schedule of `schedule.<field>`; a cron string Prefect refuses is a ConfigError that
    names the file and the setting (Prefect's own message names neither)."""
    try:
        return Cron(getattr(app.schedule, field), timezone=app.schedule.timezone)
    except ValueError as exc:
        where = config or "conf/default.yaml"
        raise ConfigError(f"{where}: schedule.{field}: {exc}") from exc


def _prune_deployment(app: AppConfig, params: dict, config: Path | None) -> RunnerDeployment:
    """Ad hoc; with `schedule.prune_cron`, also on that cron. Either keeps the config's
    `schedule.prune_keep` unless a run says otherwise (the flow's default)."""
    if app.schedule.prune_cron is None:
        return prune.to_deployment(name="prune", parameters=params, tags=["textperf", "ad-hoc"])
    return prune.to_deployment(
        name="prune",
        schedules=[cron(app, "prune_cron", config)],
        parameters=params,
        tags=["textperf", "retention"],
    )
