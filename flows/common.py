"""Prefect plumbing shared by the flows: the one-writer limit, retries, task runners.

Kept out of `regressor/` on purpose: the library never imports Prefect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, TypeVar

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL
from prefect.states import Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import Task

from regressor import pipeline, registry
from regressor.config import (
    AppConfig,
    ConfigError,
    OrchestrationConfig,
    ResolvedPaths,
    load_train_config,
)

# Long enough for a full ingest of a large fleet; the lease is renewed while the holder lives.
WRITER_LEASE_SECONDS = 600.0


class _InARun(logging.Filter):
    """Only records logged inside a flow or task run: the API handler has no run to file others
    under (and would warn about each)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def forward_library_logs(name: str = "regressor") -> None:
    """Show the library's warnings (a run waiting on another's lock, a file refused) in the flow
    run's log in the Prefect UI, not only on the console: Prefect forwards its own loggers only,
    and the library never imports Prefect. Idempotent. The logger's level is left alone: under
    Prefect's root config, WARNING and above pass, as on the console."""
    logger = logging.getLogger(name)
    if not any(isinstance(handler, APILogHandler) for handler in logger.handlers):
        handler = APILogHandler()
        handler.addFilter(_InARun())
        logger.addHandler(handler)


# How long a flow waits for its MLflow tracking server to answer before it fails (a restart).
STORE_WAIT_SECONDS = 60.0
R = TypeVar("R")
T = TypeVar("T", bound=Task)


def retry_unless_user_error(task: Any, task_run: Any, state: State) -> bool:
    """A task's `retry_condition_fn`: retry, unless it failed on a user's mistake
    (`registry.UserError`: no data, no such model or version, no server; a `ConfigError`),
    which trying again cannot fix. Prefect then logs no traceback either: the flow reports
    the message."""
    return not isinstance(state.data, registry.UserError | ConfigError)


def tried_once_if(forced: bool, task_: T) -> T:
    """`task_`, without its retries when `forced`: a forced training or adaptation skips the
    lookup by key that lets a retry find what the first attempt registered, so a retry would
    register the same model twice."""
    return task_.with_options(retries=0) if forced else task_


def failing_cleanly(body: Callable[..., R], *args: Any, **kwargs: Any) -> R | State:
    """`body(*args, **kwargs)` for a flow to return: on a user error, a Failed state with its
    message, which ends the run Failed without the traceback Prefect logs for any exception a
    flow raises (calling the flow still raises the error)."""
    try:
        return body(*args, **kwargs)
    except (registry.UserError, ConfigError) as exc:  # a bad config file: named, one line
        return Failed(message=str(exc), data=exc)


def checked_paths(app: AppConfig) -> ResolvedPaths:
    """The run's state paths, checked before any work: a `registry.UserError` when the state
    directory is a file or the MLflow tracking server does not answer within
    `STORE_WAIT_SECONDS` (MLflow's own retries would spend minutes on every call)."""
    paths = registry.state_paths(app)
    registry.require_reachable(paths.tracking_uri, STORE_WAIT_SECONDS)
    return paths


def checked_store(app: AppConfig) -> ResolvedPaths:
    """`checked_paths` for a run that only reads or edits the registry (evaluate, adapt, prune):
    a `registry.UserError` when the var dir holds no MLflow store, which opening it would create
    (a misspelt `var_dir` then "deleted 0 versions" and succeeded). The server is asked once,
    with the flows' patience."""
    paths = registry.state_paths(app)
    registry.require_store(paths, STORE_WAIT_SECONDS)
    return paths


def ensure_writer_limit(name: str) -> None:
    """Create the 1-slot global concurrency limit if missing (Prefect skips unknown limits)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            limit = GlobalConcurrencyLimitCreate(name=name, limit=1)
            # Two first runs may race to create it; the loser finds it there, which is fine.
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(limit)


@contextmanager
def warehouse_writer(name: str, paths: ResolvedPaths) -> Iterator[None]:
    """Hold the warehouse's single writer slot: a second writer waits here, then proceeds.

    DuckDB itself allows one writer process per file (and `Warehouse` waits on its lock), but
    that wait is bounded and invisible; the Prefect slot makes the queue explicit in the UI.
    The file lock (`pipeline.writer_lock`) is held too, inside the slot: a CLI ingest or a cron
    run beside a worker takes no slot. On Prefect's temporary server (no PREFECT_API_URL:
    `textperf retrain` from cron), the file lock alone: that server frees no expired lease, so a
    writer killed holding the slot (the OOM killer) left every later run's ingest waiting
    forever; a file lock dies with its holder.
    """
    if not PREFECT_API_URL.value():
        with pipeline.writer_lock(paths):
            yield
        return
    ensure_writer_limit(name)
    logger = get_run_logger()
    logger.info("waiting for the warehouse writer slot since %s", _now())
    # A lease that fails to renew (the server restarting for a minute) leaves the slot to expire
    # rather than cancel the ingest: the file lock and DuckDB's keep the one writer. `strict`
    # still refuses a limit the server lacks.
    with (
        concurrency(
            name,
            occupy=1,
            lease_duration=WRITER_LEASE_SECONDS,
            strict=True,
            raise_on_lease_renewal_failure=False,
        ),
        pipeline.writer_lock(paths),
    ):
        # Times to the millisecond let an operator (and a test) see the writers take turns.
        logger.info("warehouse writer slot acquired at %s", _now())
        try:
            yield
        finally:
            logger.info("warehouse writer slot released at %s", _now())


def _now() -> str:
    """UTC now as ISO 8601 to the millisecond (`2026-12-05T17:10:02.123+00:00`)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def make_task_runner(cfg: OrchestrationConfig) -> TaskRunner:
    """Threads by default; a local Dask cluster (the `dask` extra) for many files or machines."""
    if cfg.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.max_workers, "processes": True})
    return ThreadPoolTaskRunner(max_workers=cfg.max_workers)


def side_by_side_runner(app: AppConfig, n_tasks: int) -> TaskRunner | None:
    """The runner to spread `n_tasks` independent fits of `app` over, None to run them one by
    one.

    Chosen per run from the run's own config (a flow's decorator runner is fixed at import):
    only a runner of processes, since fits at once in one process would share torch's global
    random state and their results would depend on the interleaving; and never for fits across
    nodes, which the other nodes join one at a time, all on one MASTER_PORT."""
    cfg = app.orchestration
    if cfg.task_runner == "threads" or n_tasks < 2:
        return None
    num_nodes = load_train_config(app.train).num_nodes
    if num_nodes > 1:
        get_run_logger().info(
            "%d fits one at a time, not on the %s task runner: each spans %d nodes, and the "
            "other nodes join one fit at a time",
            n_tasks,
            cfg.task_runner,
            num_nodes,
        )
        return None
    return make_task_runner(cfg)
