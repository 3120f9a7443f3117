"""Tasks shared by several flows, with their retry, cache and concurrency policies."""

from __future__ import annotations

from datetime import timedelta

from prefect import task
from prefect.client.schemas.objects import State
from prefect.tasks import exponential_backoff

from flows.common import ingest_cache_key, warehouse_writer
from regressor import pipeline
from regressor.config import OrchestrationConfig, ResolvedPaths, SourceConfig
from regressor.sources.fleet import IngestReport


@task(
    name="ingest",
    # The warehouse lock wait can time out, and network file systems hiccup: retry with backoff.
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    # Unchanged input files (same content, same warehouse) are not re-parsed: the persisted
    # report of the run that ingested them is returned instead.
    cache_key_fn=ingest_cache_key,
    cache_expiration=timedelta(days=30),
    persist_result=True,
)
def cached_ingest(
    paths: ResolvedPaths,
    source: SourceConfig,
    run_id: str,
    orchestration: OrchestrationConfig | None = None,
    forget_gone: bool = False,
) -> IngestReport:
    limit = (orchestration or OrchestrationConfig()).writer_limit
    with warehouse_writer(limit):
        return pipeline.ingest(paths, source, run_id, forget_gone)


def ingest_task(
    paths: ResolvedPaths,
    source: SourceConfig,
    run_id: str,
    orchestration: OrchestrationConfig | None = None,
    return_state: bool = False,
    forget_gone: bool = False,
) -> IngestReport | State:
    """Run the cached ingest; a missing warehouse file, or `forget_gone` (the cache key sees only
    the files there are, so an earlier ingest of the same files would answer), forces a fresh one.

    Otherwise Prefect's setting decides (`PREFECT_TASKS_REFRESH_CACHE=true` re-parses everything).
    """
    refresh = True if forget_gone or not paths.warehouse.exists() else None
    task_ = cached_ingest.with_options(refresh_cache=refresh)
    state = task_(paths, source, run_id, orchestration, forget_gone, return_state=True)
    if return_state:
        return state
    report: IngestReport = state.result()
    if state.name == "Cached":
        # What re-parsing would have said: every file unchanged, nothing added.
        return unchanged(report, run_id)
    return report


def unchanged(report: IngestReport, run_id: str) -> IngestReport:
    """`report` of an earlier ingest of the same files, restated for a run that skipped them."""
    update = {
        "run_id": run_id,
        "files_ingested": 0,
        "files_quarantined": 0,
        "files_unchanged": report.files_seen,
        "records_added": 0,
        "quarantined": [],
        "files_forgotten": [],
    }
    return report.model_copy(update=update)
