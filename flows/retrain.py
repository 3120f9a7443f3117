"""Nightly retraining: generate (demo) -> ingest -> dataset -> train/gate -> adapt due -> report.

Orchestration only: every step is a function of `regressor.pipeline`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State
from prefect.tasks import exponential_backoff

from flows.common import (
    checked_paths,
    failing_cleanly,
    forward_library_logs,
    retry_unless_user_error,
    side_by_side_runner,
    tried_once_if,
)
from flows.tasks import ingest_task
from regressor import jobs, pipeline, report
from regressor.config import (
    AppConfig,
    ResolvedPaths,
    SourceConfig,
    load_app_config,
    load_source_config,
)

# Heavy objects pass between these tasks in memory: none is cached, none persisted (with
# PREFECT_RESULTS_PERSIST_BY_DEFAULT on, every night pickled the dataset to disk for good).
generate_task = task(
    pipeline.generate, name="generate-fleet", cache_policy=NO_CACHE, persist_result=False
)
# Reads of the warehouse and the registry can meet a lock or a restarting server: retry those.
# A user's mistake (no records, no such task) is not retried (`retry_unless_user_error`).
IO_RETRIES = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=5),
    "retry_condition_fn": retry_unless_user_error,
}
dataset_task = task(
    pipeline.load_dataset,
    name="load-dataset",
    cache_policy=NO_CACHE,
    persist_result=False,
    **IO_RETRIES,
)
# One retry after a minute: a registry that was unreachable at registration time may be back,
# and the retry resumes from the finished training's checkpoint instead of training again.
train_task = task(
    pipeline.train_and_register,
    name="train-evaluate-register",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=1,
    retry_delay_seconds=60,
    retry_condition_fn=retry_unless_user_error,
)
due_task = task(
    pipeline.adaptations_due,
    name="adaptations-due",
    cache_policy=NO_CACHE,
    persist_result=False,
    **IO_RETRIES,
)


@task(
    name="adapt-champion",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=1,
    retry_condition_fn=retry_unless_user_error,
)
def adapt_task(
    app: AppConfig, paths: ResolvedPaths, source: SourceConfig, task_name: str
) -> pipeline.AdaptOutcome | pipeline.AdaptSkipped:
    """`jobs.adapt`; the library's warnings reach the run's log from a Dask worker too. A task
    with too few records to adapt to is skipped, with the reason, rather than failing the
    nightly run (and every run after it, until the task gains records) after its model was
    registered."""
    forward_library_logs()
    try:
        return jobs.adapt(app, paths, source, task_name)
    except pipeline.DataError as exc:
        get_run_logger().warning("adaptation to %s skipped: %s", task_name, exc)
        return pipeline.AdaptSkipped(task_name, str(exc))


def adapt_all(
    due: list[str],
    app: AppConfig,
    paths: ResolvedPaths,
    source: SourceConfig,
    seconds: dict[str, float],
) -> list[pipeline.AdaptOutcome | pipeline.AdaptSkipped | pipeline.AdaptFailed]:
    """One adaptation per due task (each a variant of its own, under its own lock): side by side
    on the task runner of `app.orchestration` when it runs tasks in processes (Dask), else one
    after another in the flow's process (`side_by_side_runner`)."""
    runner = side_by_side_runner(app, len(due))
    if runner is None:
        return [
            attempted(name, timed, seconds, f"adapt {name}", adapt_task, app, paths, source, name)
            for name in due
        ]
    started = time.perf_counter()
    with runner:  # a Dask cluster of the run's own config, closed with its adaptations
        futures = [
            runner.submit(
                adapt_task, {"app": app, "paths": paths, "source": source, "task_name": name}
            )
            for name in due
        ]
        outcomes = [
            attempted(name, future.result) for name, future in zip(due, futures, strict=True)
        ]
    seconds[f"adapt {len(due)} tasks side by side"] = time.perf_counter() - started
    return outcomes


def attempted(
    task_name: str, fn, *args: Any
) -> pipeline.AdaptOutcome | pipeline.AdaptSkipped | pipeline.AdaptFailed:
    """`fn(*args)`, an adaptation after its retries, or what it failed with: one task's crash
    (a training process killed, a base whose files the store lost) neither stops the tasks
    after it nor the run's report; the run ends failed after the report (`_retrain`)."""
    try:
        return fn(*args)
    except Exception as exc:
        return pipeline.AdaptFailed(task_name, f"{type(exc).__name__}: {exc}")


def timed(seconds: dict[str, float], step: str, fn, *args: Any, **kwargs: Any) -> Any:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds[step] = time.perf_counter() - started
    return result


# Flat parameters, not one model: Prefect merges a run's parameters into its deployment's key
# by key, so a nested model given for one run replaced the config and var dir `serve` set.
@flow(name="retrain", log_prints=True)
def retrain(
    config: Path | None = None,
    var_dir: Path | None = None,
    generate_fleet: bool | None = None,
    adapt: bool = True,
    model: str | None = None,
    train: str | None = None,
    force_train: bool = False,
) -> str:
    """Nightly retraining: ingest, train, evaluate, register and gate, adapt, report.

    Args:
        config: the app config (YAML); everything else comes from it; default:
            conf/default.yaml.
        var_dir: the state directory, instead of the config's paths.var_dir.
        generate_fleet: write the demo fleet first; default: only into the empty folder of a
            source marked `demo: true` (never over a real fleet, never for another adapter).
        adapt: adapt the champion to the holdout task, and re-adapt the variants due.
        model: the model size instead of the config's (conf/model/<name>.yaml).
        train: the optimisation instead of the config's (conf/train/<name>.yaml).
        force_train: train even when a registered version was trained from the same data and
            configs.
    """
    # A user's mistake (no records, too few) fails the run with its message, no traceback.
    return failing_cleanly(
        _retrain,
        config=config,
        var_dir=var_dir,
        generate_fleet=generate_fleet,
        adapt=adapt,
        model=model,
        train=train,
        force_train=force_train,
    )


def _retrain(
    config: Path | None,
    var_dir: Path | None,
    generate_fleet: bool | None,
    adapt: bool,
    model: str | None,
    train: str | None,
    force_train: bool,
) -> str | State:
    forward_library_logs()
    app = load_app_config(config, var_dir, model=model, train=train)
    pipeline.check_train_config(app)  # before any work: a typo'd strategy failed after ingest
    paths = checked_paths(app)
    source = load_source_config(app.source)
    run_id = pipeline.new_run_id()
    seconds: dict[str, float] = {}
    if pipeline.generates_fleet(paths, source, generate_fleet):
        timed(seconds, "generate fleet", generate_task, paths, app, source)
    ingested = timed(seconds, "ingest", ingest_task, paths, source, run_id, app.orchestration)
    data = timed(seconds, "serialize + split", dataset_task, paths, app, source)
    training = tried_once_if(force_train, train_task)
    trained = timed(
        seconds, "train + evaluate + register", training, app, paths, data, force=force_train
    )
    due = due_task(app, paths, data) if adapt else []
    outcomes = adapt_all(due, app, paths, source, seconds)
    adapted = [o for o in outcomes if isinstance(o, pipeline.AdaptOutcome)]
    skipped = [o for o in outcomes if isinstance(o, pipeline.AdaptSkipped)]
    failed = [o for o in outcomes if isinstance(o, pipeline.AdaptFailed)]
    text = report.render_retrain(
        app, paths, ingested, trained, adapted, seconds, skipped, failed, adapting=adapt
    )
    create_markdown_artifact(text, key="retrain-report", description="textperf nightly retraining")
    pipeline.log_report(paths, trained, text)
    # The report is the run's artifact and its return value (`textperf retrain` prints that
    # on stdout); printed here as well, it came twice, once inside the log on stderr.
    get_run_logger().info("report: artifact 'retrain-report' of this flow run")
    if failed:  # after the report: the run ends Failed, its message naming each failure
        error = pipeline.AdaptationsFailedError.of(failed, text)
        return Failed(message=str(error), data=error)
    return text


if __name__ == "__main__":
    retrain()
