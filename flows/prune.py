"""Registry retention: delete the versions nobody uses any more (`regressor.retention`).

Orchestration only; ad hoc, or on a schedule of the user's choosing beside the nightly run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows.common import (
    checked_store,
    failing_cleanly,
    forward_library_logs,
    retry_unless_user_error,
)
from regressor import jobs
from regressor.config import load_app_config

prune_task = task(
    jobs.prune,
    name="prune",
    retries=2,
    retry_delay_seconds=30,
    retry_condition_fn=retry_unless_user_error,  # not a name the registry refuses
    cache_policy=NO_CACHE,
    persist_result=False,
)


@flow(name="prune", log_prints=True)
def prune(
    keep: Annotated[int, Field(ge=1)] | None = None,
    dry_run: bool = False,
    config: Path | None = None,
    var_dir: Path | None = None,
) -> str:
    """Delete old unaliased versions of the model and its variants, and their weights.

    Args:
        keep: versions kept per model, newest first, besides aliased ones; default: the
            config's schedule.prune_keep.
        dry_run: only list what would be deleted.
        config: the app config (YAML); default: conf/default.yaml.
        var_dir: the state directory, instead of the config's paths.var_dir.
    """
    # A state directory that is a file, or no server, fails the run with its message.
    return failing_cleanly(_prune, keep, dry_run, config, var_dir)


def _prune(keep: int | None, dry_run: bool, config: Path | None, var_dir: Path | None) -> str:
    forward_library_logs()
    app = load_app_config(config, var_dir)
    text = prune_task(app, checked_store(app), keep, dry_run)
    create_markdown_artifact(text, key="prune-report", description="textperf registry retention")
    print(text)
    return text


if __name__ == "__main__":
    prune()
