"""Ad-hoc adaptation of a registered version to one task. Orchestration only."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from flows.common import (
    checked_paths,
    failing_cleanly,
    forward_library_logs,
    retry_unless_user_error,
)
from regressor import jobs
from regressor.config import load_app_config, load_source_config


class AdaptParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: Path | None = None  # default: conf/default.yaml
    var_dir: Path | None = None
    source: str | None = None  # default: the app config's source
    task: str | None = None  # default: the config's holdout task
    version: str | None = None  # a version of the registered model; default: the champion
    # Adapt even when a variant was adapted from the same base, data and configs.
    force: bool = False


# Reads the warehouse and writes MLflow only; the tracking server can blip, so retry.
adapt_task = task(
    jobs.adapt,
    name="adapt",
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=retry_unless_user_error,  # not a missing task, version or champion
    cache_policy=NO_CACHE,
)


@flow(name="adapt", log_prints=True)
def adapt(params: AdaptParams | None = None) -> str:
    # A user's mistake (no such task or version, too few records) fails the run with its message.
    return failing_cleanly(_adapt, params or AdaptParams())


def _adapt(params: AdaptParams) -> str:
    forward_library_logs()
    app = load_app_config(params.config, params.var_dir)
    paths = checked_paths(app)
    source = load_source_config(params.source or app.source)
    outcome = adapt_task(app, paths, source, params.task, params.version, params.force)
    text = jobs.render_adapt(outcome, paths.tracking_uri)
    create_markdown_artifact(text, key="adapt-report", description=f"adaptation to {outcome.task}")
    print(text)
    return outcome.uri


if __name__ == "__main__":
    adapt()
