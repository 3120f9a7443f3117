"""Score a registered model on the warehouse's records of a source and split. Orchestration only."""

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


class EvaluateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "models:/textperf@champion"  # any models:/ URI: an alias or a fixed version
    split: str = "test"  # train | val | test | adapt_pool | adapt_test
    source: str | None = None  # default: the app config's source
    config: Path | None = None
    var_dir: Path | None = None


# Loading the model goes through the tracking server and its artifact proxy: retry with backoff.
evaluate_task = task(
    jobs.evaluate,
    name="evaluate",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)


@flow(name="evaluate", log_prints=True)
def evaluate(params: EvaluateParams | None = None) -> dict[str, float]:
    # A user's mistake (no records, no server) fails the run with its message, no traceback.
    return failing_cleanly(_evaluate, params or EvaluateParams())


def _evaluate(params: EvaluateParams) -> dict[str, float]:
    forward_library_logs()
    app = load_app_config(params.config, params.var_dir)
    paths = checked_paths(app)
    source = load_source_config(params.source or app.source)
    outcome = evaluate_task(app, paths, source, params.model, params.split)
    text = jobs.render_evaluate(outcome)
    create_markdown_artifact(
        text, key="evaluate-report", description=f"evaluation of {params.model}"
    )
    print(text)
    return outcome.metrics


if __name__ == "__main__":
    evaluate()
