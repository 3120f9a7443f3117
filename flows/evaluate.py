"""Score a registered model on the warehouse's records of a source and split. Orchestration only."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import (
    checked_store,
    failing_cleanly,
    forward_library_logs,
    retry_unless_user_error,
)
from regressor import jobs, registry
from regressor.config import load_app_config, load_source_config
from regressor.dataset import SplitName

# Loading the model goes through the tracking server and its artifact proxy: retry with backoff.
evaluate_task = task(
    jobs.evaluate,
    name="evaluate",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_unless_user_error,  # not a missing model, alias or split
    cache_policy=NO_CACHE,
    persist_result=False,
)


@flow(name="evaluate", log_prints=True)
def evaluate(
    model: str | None = None,
    split: SplitName = "test",
    source: str | None = None,
    config: Path | None = None,
    var_dir: Path | None = None,
) -> dict[str, float]:
    """Score a registered model on the warehouse's records of a source and split.

    Args:
        model: a models:/ URI, NAME@ALIAS, NAME/VERSION, or a bare NAME (its latest
            version); default: the config's model at its champion alias.
        split: train, val, test, adapt_pool or adapt_test.
        source: a name under conf/sources/ or a YAML path; default: the app config's source.
        config: the app config (YAML); default: conf/default.yaml.
        var_dir: the state directory, instead of the config's paths.var_dir.
    """
    # A user's mistake (no records, no such model, no server) fails the run with its message.
    return failing_cleanly(_evaluate, model, split, source, config, var_dir)


def _evaluate(
    model: str | None,
    split: SplitName,
    source_name: str | None,
    config: Path | None,
    var_dir: Path | None,
) -> dict[str, float]:
    forward_library_logs()
    app = load_app_config(config, var_dir)
    paths = checked_store(app)
    source = load_source_config(source_name or app.source)
    uri = model or registry.model_uri(app.registry.model_name, app.registry.champion_alias)
    outcome = evaluate_task(app, paths, source, uri, split)
    text = jobs.render_evaluate(outcome)
    create_markdown_artifact(text, key="evaluate-report", description=f"evaluation of {uri}")
    print(text)
    return outcome.metrics


if __name__ == "__main__":
    evaluate()
