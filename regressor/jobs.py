"""Ad-hoc jobs behind the `adapt` and `evaluate` flows: thin generalisations of `pipeline`.

Each job takes validated config, does one thing and returns a small, serialisable outcome; the
markdown renderers beside them make the Prefect artifact.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from regressor import pipeline, registry, report, retention
from regressor.config import AppConfig, ResolvedPaths, SourceConfig, is_tracking_server
from regressor.dataset import SPLITS
from regressor.tracking import configure_mlflow


def with_holdout_task(app: AppConfig, task: str | None) -> AppConfig:
    """`app` with `task` as the held-out task (the one adaptation targets); None keeps it."""
    if task is None:
        return app
    split = app.split.model_copy(update={"holdout_task": task})
    return app.model_copy(update={"split": split})


def adapt(
    app: AppConfig,
    paths: ResolvedPaths,
    source: SourceConfig,
    task: str | None = None,
    version: str | None = None,
    force: bool = False,
) -> pipeline.AdaptOutcome:
    """Adapt registered `version` (default: the champion) to `task` (default: the holdout);
    an identical earlier adaptation is reported instead unless `force`."""
    app = with_holdout_task(app, task)
    data = pipeline.load_dataset(paths, app, source)
    if version is None:
        return pipeline.adapt_champion(app, paths, data, force)
    return pipeline.adapt_version(app, paths, data, version, force)


@dataclass(frozen=True)
class ModelRef:
    """A registered version resolved from any `models:/` URI, for links in reports."""

    uri: str
    name: str
    version: str
    run_id: str

    @property
    def version_uri(self) -> str:
        return registry.model_uri(self.name, self.version)


def resolve_model(uri: str) -> ModelRef:
    """`models:/name@alias` or `models:/name/version` to its fixed version and run; a
    `registry.NotRegisteredError` naming what is missing."""
    mv = registry.resolve(uri)
    return ModelRef(uri, mv.name, str(mv.version), mv.run_id or "")


@dataclass(frozen=True)
class EvaluateOutcome:
    model: ModelRef
    source: str
    split: str
    n_records: int
    metrics: dict[str, float]
    tracking_uri: str


def evaluate(
    app: AppConfig, paths: ResolvedPaths, source: SourceConfig, uri: str, split: str
) -> EvaluateOutcome:
    """Score the registered model at `uri` on the warehouse's records of `source`/`split`."""
    if split not in SPLITS:
        raise pipeline.DataError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
    configure_mlflow(paths, app.registry.experiment)
    model = resolve_model(uri)
    data = pipeline.load_dataset(paths, app, source)
    n_records = len(data.splits[split])
    if n_records == 0:
        raise pipeline.DataError(f"split {split!r} of source {source.name!r} has no records")
    # Score the fixed version, so the numbers stay true after an alias moves.
    metrics = pipeline.score_registered(model.version_uri, data, split, app.eval)
    return EvaluateOutcome(model, source.name, split, n_records, metrics, paths.tracking_uri)


def prune(
    app: AppConfig, paths: ResolvedPaths, keep: int | None = None, dry_run: bool = False
) -> str:
    """`retention.prune` of the app's model and its variants, keeping `keep` versions of each
    (default: the config's `schedule.prune_keep`); the markdown report."""
    keep = app.schedule.prune_keep if keep is None else keep
    configure_mlflow(paths, app.registry.experiment)
    with pipeline.retention_lock(paths, prune=not dry_run):  # a dry run deletes nothing
        doomed = retention.prune(app.registry.model_name, keep, dry_run)
    verb = "Would delete" if dry_run else "Deleted"
    rows = "\n".join(f"- {report.code(f'{v.name}/{v.version}')}" for v in doomed) or "- nothing"
    text = (
        f"# textperf retention of {report.code(app.registry.model_name)}\n\n"
        f"{verb} {len(doomed)} versions (kept the newest {keep} of each model, every version "
        f"holding an alias, and the bases of kept variants; a zero-shot fallback counts, and "
        f"goes, with the refused version it stands in for):\n\n{rows}\n"
    )
    if doomed and not dry_run:
        text += f"\nReclaim their space: {gc_command(paths)}.\n"
    return text


def gc_command(paths: ResolvedPaths) -> str:
    """How to run `mlflow gc` on the store (markdown). It needs the tracking URI as well as the
    backend store's to delete logged models' weights: given only the latter, it fails with
    "Tracking URL is not set" unless MLFLOW_TRACKING_URI happens to be exported."""
    uri = paths.tracking_uri
    if is_tracking_server(uri):
        return (
            f"`MLFLOW_TRACKING_URI={uri} mlflow gc --backend-store-uri DATABASE_URI`, where "
            "DATABASE_URI is the tracking server's backend store (its --backend-store-uri)"
        )
    quoted = shlex.quote(uri)  # a store under a folder with a space split the argument
    return f"`mlflow gc --backend-store-uri {quoted} --tracking-uri {quoted}`"


def run_link(tracking_uri: str, run_id: str) -> str:
    """A clickable run link on a tracking server; the bare id for a local store."""
    if is_tracking_server(tracking_uri):
        return f"[{run_id}]({tracking_uri.rstrip('/')}/#/runs/{run_id})"
    return report.code(run_id)


def render_evaluate(outcome: EvaluateOutcome) -> str:
    model = outcome.model
    links = report.bullet_list(
        {
            "model": f"{report.code(model.uri)} = {report.code(model.version_uri)}",
            "training run": run_link(outcome.tracking_uri, model.run_id),
            "data": f"{report.code(outcome.source)} / {report.code(outcome.split)}: "
            f"{outcome.n_records} records",
        }
    )
    table = report.metrics_table({model.version_uri: outcome.metrics})
    return f"# textperf evaluation of {report.code(model.uri)}\n\n{links}\n\n{table}\n"


def render_adapt(outcome: pipeline.AdaptOutcome, tracking_uri: str) -> str:
    links = report.bullet_list(
        {
            "base": report.code(outcome.base_uri),
            "adapted": report.code(outcome.uri),
            "task": f"{report.code(outcome.task)} ({report.shots_used(outcome)})",
            "tracking": report.code(tracking_uri),
        }
    )
    table = report.metrics_table(report.adaptation_scores(outcome, "zero-shot", "from scratch"))
    if notes := (report.reference_cost(outcome) + report.intervals_used(outcome)).strip():
        table += f"\n\n{notes}"
    gate = report.adaptation_gate(outcome)
    lineage = report.adaptation_lineage(outcome)
    title = f"# textperf adaptation to {report.code(outcome.task)}"
    return f"{title}\n\n{links}\n\n{table}\n\n{lineage}\n\n{gate}\n"
