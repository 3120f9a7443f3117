"""Registry retention: delete the versions nobody uses any more (`regressor.retention`).

Orchestration only; ad hoc, or on a schedule of the user's choosing beside the nightly run.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from flows.common import checked_paths, failing_cleanly, forward_library_logs
from regressor import jobs
from regressor.config import load_app_config


class PruneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep: int = Field(30, ge=1)  # versions kept per model, newest first, besides aliased ones
    dry_run: bool = False  # only list what would be deleted
    config: Path | None = None
    var_dir: Path | None = None


prune_task = task(
    jobs.prune, name="prune", retries=2, retry_delay_seconds=30, cache_policy=NO_CACHE
)


@flow(name="prune", log_prints=True)
def prune(params: PruneParams | None = None) -> str:
    # A state directory that is a file, or no server, fails the run with its message.
    return failing_cleanly(_prune, params or PruneParams())


def _prune(params: PruneParams) -> str:
    forward_library_logs()
    app = load_app_config(params.config, params.var_dir)
    text = prune_task(app, checked_paths(app), params.keep, params.dry_run)
    create_markdown_artifact(text, key="prune-report", description="textperf registry retention")
    print(text)
    return text


if __name__ == "__main__":
    prune()
