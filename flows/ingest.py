"""Ad-hoc ingestion of one source into the warehouse. Orchestration only."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.common import failing_cleanly, forward_library_logs
from flows.tasks import ingest_task
from regressor import pipeline, registry, report
from regressor.config import load_app_config, load_source_config
from regressor.sources.fleet import IngestReport


# Flat parameters, not one model: Prefect merges a run's parameters into its deployment's key
# by key, so a nested model given for one run replaced the config and var dir `serve` set.
@flow(name="ingest", log_prints=True)
def ingest(
    source: str | None = None,
    config: Path | None = None,
    var_dir: Path | None = None,
    forget_gone: bool = False,
) -> IngestReport:
    """Ingest one source into the DuckDB warehouse.

    Args:
        source: a name under conf/sources/ or a YAML path; default: the app config's source.
        config: the app config (YAML); default: conf/default.yaml.
        var_dir: the state directory, instead of the config's paths.var_dir.
        forget_gone: first drop the rows of stored files that are gone for good (by default
            they keep their rows, so a source folder away for a night does not empty the
            training set).
    """
    # A state directory that is a file fails the run with its message, not an OS traceback.
    return failing_cleanly(_ingest, source, config, var_dir, forget_gone)


def _ingest(
    source_name: str | None, config: Path | None, var_dir: Path | None, forget_gone: bool
) -> IngestReport:
    forward_library_logs()
    app = load_app_config(config, var_dir)
    source = load_source_config(source_name or app.source)
    # Holding the single warehouse-writer slot; unchanged files are skipped by content hash.
    paths, run_id = registry.state_paths(app), pipeline.new_run_id()
    result = ingest_task(paths, source, run_id, app.orchestration, forget_gone=forget_gone)
    text = report.render_ingest(result)
    create_markdown_artifact(text, key="ingest-report", description=f"ingest of {source.name}")
    print(text)
    return result


if __name__ == "__main__":
    ingest()
