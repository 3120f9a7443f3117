"""Tasks shared by several flows, with their retry and concurrency policies."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.common import retry_unless_user_error, warehouse_writer
from regressor import pipeline
from regressor.config import OrchestrationConfig, ResolvedPaths, SourceConfig
from regressor.sources.fleet import IngestReport


@task(
    name="ingest",
    # The warehouse lock wait can time out, and network file systems hiccup: retry with backoff.
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_unless_user_error,
    # Never cached: the adapter itself skips files whose bytes it has stored (by content hash,
    # against what the warehouse holds). A cache keyed on the input files answered "unchanged"
    # for a warehouse another writer had re-created or changed, and for files changed and
    # changed back, to save ~0.2 s.
    cache_policy=NO_CACHE,
    persist_result=False,  # a report is returned to its flow, never read back
)
def ingest_task(
    paths: ResolvedPaths,
    source: SourceConfig,
    run_id: str,
    orchestration: OrchestrationConfig | None = None,
    forget_gone: bool = False,
) -> IngestReport:
    """Ingest `source` into the warehouse, holding the single warehouse-writer slot."""
    limit = (orchestration or OrchestrationConfig()).writer_limit
    with warehouse_writer(limit, paths):
        return pipeline.ingest(paths, source, run_id, forget_gone)
