"""Ad-hoc adaptation of a registered version to one task. Orchestration only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BeforeValidator

from flows.common import (
    checked_store,
    failing_cleanly,
    forward_library_logs,
    retry_unless_user_error,
    tried_once_if,
)
from regressor import jobs, pipeline
from regressor.config import load_app_config, load_source_config

# Reads the warehouse and writes MLflow only; the tracking server can blip, so retry.
adapt_task = task(
    jobs.adapt,
    name="adapt",
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=retry_unless_user_error,  # not a missing task, version or champion
    cache_policy=NO_CACHE,
    persist_result=False,
)


def _as_text(value: object) -> object:
    """A name as text: `prefect deployment run --param version=3` parses the 3 as JSON, an
    integer, which a `str` parameter refused."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Name = Annotated[str | None, BeforeValidator(_as_text)]


@flow(name="adapt", log_prints=True)
def adapt(
    task: Name = None,
    version: Name = None,
    force: bool = False,
    source: str | None = None,
    config: Path | None = None,
    var_dir: Path | None = None,
) -> str:
    """Adapt a registered version to one task from a few of its records; register and gate it.

    Args:
        task: the task to adapt to; default: the config's holdout task.
        version: a version of the registered model; default: the champion.
        force: adapt even when a variant was adapted from the same base, data and configs.
        source: a name under conf/sources/ or a YAML path; default: the app config's source.
        config: the app config (YAML); default: conf/default.yaml.
        var_dir: the state directory, instead of the config's paths.var_dir.
    """
    # A user's mistake (no such task or version, too few records) fails the run with its message.
    return failing_cleanly(_adapt, task, version, force, source, config, var_dir)


def _adapt(
    task_name: str | None,
    version: str | None,
    force: bool,
    source_name: str | None,
    config: Path | None,
    var_dir: Path | None,
) -> str:
    forward_library_logs()
    app = load_app_config(config, var_dir)
    pipeline.check_train_config(app)  # fine-tuning trains with it too
    paths = checked_store(app)
    source = load_source_config(source_name or app.source)
    attempt = tried_once_if(force, adapt_task)
    outcome = attempt(app, paths, source, task_name, version, force)
    text = jobs.render_adapt(outcome, paths.tracking_uri)
    create_markdown_artifact(text, key="adapt-report", description=f"adaptation to {outcome.task}")
    print(text)
    return outcome.uri


if __name__ == "__main__":
    adapt()
