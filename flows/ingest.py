"""Ad-hoc ingestion of one source into the warehouse. Orchestration only."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from flows.common import failing_cleanly, forward_library_logs
from flows.tasks import ingest_task
from regressor import pipeline, registry, report
from regressor.config import load_app_config, load_source_config
from regressor.sources.fleet import IngestReport


class IngestParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = "demo_fleet"  # a name under conf/sources/ or a YAML path
    config: Path | None = None
    var_dir: Path | None = None
    # Drop the rows of stored files that are gone for good (by default they keep their rows, so
    # a source folder that is away for a night does not empty the training set).
    forget_gone: bool = False


@flow(name="ingest", log_prints=True)
def ingest(params: IngestParams | None = None) -> IngestReport:
    # A state directory that is a file fails the run with its message, not an OS traceback.
    return failing_cleanly(_ingest, params or IngestParams())


def _ingest(params: IngestParams) -> IngestReport:
    forward_library_logs()
    app = load_app_config(params.config, params.var_dir)
    source = load_source_config(params.source)
    # Holding the single warehouse-writer slot; unchanged files are skipped by content hash.
    paths, run_id = registry.state_paths(app), pipeline.new_run_id()
    result = ingest_task(paths, source, run_id, app.orchestration, forget_gone=params.forget_gone)
    text = report.render_ingest(result)
    create_markdown_artifact(text, key="ingest-report", description=f"ingest of {params.source}")
    print(text)
    return result


if __name__ == "__main__":
    ingest()
