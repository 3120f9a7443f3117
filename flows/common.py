"""Prefect plumbing shared by the flows: the one-writer limit, the ingest cache key, task runners.

Kept out of `regressor/` on purpose: the library never imports Prefect.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger
from prefect.logging.handlers import APILogHandler
from prefect.states import Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from regressor import registry
from regressor.config import (
    AppConfig,
    FleetSourceConfig,
    OrchestrationConfig,
    ResolvedPaths,
    SourceConfig,
    TableSourceConfig,
    load_train_config,
)
from regressor.sources.common import safe_files
from regressor.sources.dispatch import parsing_version, root_of

# Long enough for a full ingest of a large fleet; the lease is renewed while the holder lives.
WRITER_LEASE_SECONDS = 600.0
HASH_LIMIT_BYTES = 8 << 20


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


def retry_unless_user_error(task: Any, task_run: Any, state: State) -> bool:
    """A task's `retry_condition_fn`: retry, unless it failed on a user's mistake
    (`registry.UserError`: no data, no such model or version, no server), which trying again
    cannot fix. Prefect then logs no traceback either: the flow reports the message."""
    return not isinstance(state.data, registry.UserError)


def failing_cleanly(body: Callable[..., R], *args: Any) -> R | State:
    """`body(*args)` for a flow to return: on a user error, a Failed state with its message,
    which ends the run Failed without the traceback Prefect logs for any exception a flow
    raises (calling the flow still raises the error)."""
    try:
        return body(*args)
    except registry.UserError as exc:
        return Failed(message=str(exc), data=exc)


def checked_paths(app: AppConfig) -> ResolvedPaths:
    """The run's state paths, checked before any work: a `registry.UserError` when the state
    directory is a file or the MLflow tracking server does not answer within
    `STORE_WAIT_SECONDS` (MLflow's own retries would spend minutes on every call)."""
    paths = registry.state_paths(app)
    registry.require_reachable(paths.tracking_uri, STORE_WAIT_SECONDS)
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
def warehouse_writer(name: str) -> Iterator[None]:
    """Hold the warehouse's single writer slot: a second writer waits here, then proceeds.

    DuckDB itself allows one writer process per file (and `Warehouse` waits on its lock), but
    that wait is bounded and invisible; the Prefect slot makes the queue explicit in the UI.
    """
    ensure_writer_limit(name)
    logger = get_run_logger()
    logger.info("waiting for the warehouse writer slot since %s", _now())
    with concurrency(name, occupy=1, lease_duration=WRITER_LEASE_SECONDS, strict=True):
        # Times to the millisecond let an operator (and a test) see the writers take turns.
        logger.info("warehouse writer slot acquired at %s", _now())
        try:
            yield
        finally:
            logger.info("warehouse writer slot released at %s", _now())


def _now() -> str:
    """UTC now as ISO 8601 to the millisecond (`2026-12-05T17:10:02.123+00:00`)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def source_files(paths: ResolvedPaths, source: SourceConfig) -> tuple[Path, list[Path]]:
    """The root and every input file the source's adapter reads, in a stable order."""
    root = root_of(source, paths.raw_dir)
    if isinstance(source, FleetSourceConfig):
        globs: tuple[str, ...] = (source.config_glob, source.log_glob, source.targets_file)
    elif isinstance(source, TableSourceConfig):
        globs = source.files
    else:  # runs: everything inside each run folder
        globs = (f"{source.run_glob}/**/*",)
    # Only files that really live under the root: a symlink out of it is never read, even to hash.
    return root, safe_files(root, globs)


def fingerprint_files(files: list[Path], root: Path) -> str:
    """sha256 over each file's relative path and content, so a regenerated identical file hits.

    Files above HASH_LIMIT_BYTES (real datasets, never regenerated) count by size and mtime:
    hashing gigabytes on every nightly run would cost more than the re-parse it saves.
    """
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        stat = path.stat()
        if stat.st_size > HASH_LIMIT_BYTES:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
            continue
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def ingest_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key of an ingest: the input files' content, the source config, the warehouse path,
    and the parsers' versions (`dispatch.parsing_version`).

    A missing warehouse is handled by the caller (`refresh_cache`), not by the key: anything that
    changes on every write (mtime, size) would make the key miss on every run.
    """
    paths: ResolvedPaths = parameters["paths"]
    source: SourceConfig = parameters["source"]
    root, files = source_files(paths, source)
    # One hex digest: Prefect uses the key as a file name in its result storage.
    parts = (
        source.model_dump_json(),
        str(paths.warehouse),
        fingerprint_files(files, root),
        parsing_version(),
    )
    return f"ingest-{source.name}-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()}"


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
