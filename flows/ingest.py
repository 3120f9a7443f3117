"""Ad-hoc ingestion of one source into the warehouse. Orchestration only."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from regressor import pipeline, report
from regressor.config import load_app_config, load_source_config
from regressor.sources.fleet import IngestReport


class IngestParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = "demo_fleet"  # a name under conf/sources/ or a YAML path
    config: Path | None = None
    var_dir: Path | None = None


ingest_task = task(
    pipeline.ingest, name="ingest", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE
)


@flow(name="ingest", log_prints=True)
def ingest(params: IngestParams | None = None) -> IngestReport:
    params = params or IngestParams()
    paths = load_app_config(params.config, params.var_dir).paths.resolve()
    result = ingest_task(paths, load_source_config(params.source), pipeline.new_run_id())
    text = report.render_ingest(result)
    create_markdown_artifact(text, key="ingest-report", description=f"ingest of {params.source}")
    print(text)
    return result


if __name__ == "__main__":
    ingest()
