"""MLflow setup: one place that points the client at the store and the experiment."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from regressor.config import ResolvedPaths


def store_paths(store: str | None, default_dir: Path) -> ResolvedPaths:
    """The MLflow store a bench's `--store` names: a tracking server's URL, or a directory
    holding a local store (its `mlflow.db` and `mlartifacts/`); `default_dir`'s when None."""
    if store and store.startswith(("http://", "https://")):
        return ResolvedPaths(var_dir=default_dir, mlflow_server=store)
    return ResolvedPaths(var_dir=Path(store or default_dir).resolve())


def configure_mlflow(paths: ResolvedPaths, experiment: str) -> str:
    """Point tracking and registry at `paths`, create the experiment if needed; returns its id.

    The artifact location is set explicitly: with a SQLite backend MLflow would otherwise put
    artifacts under the current working directory.
    """
    paths.var_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(paths.tracking_uri)
    mlflow.set_registry_uri(paths.tracking_uri)
    client = MlflowClient()
    existing = client.get_experiment_by_name(experiment)
    if existing is not None:
        experiment_id = existing.experiment_id
    else:
        # A tracking server chooses (and with --serve-artifacts proxies) the artifact store.
        server = paths.tracking_uri.startswith(("http://", "https://"))
        location = None if server else (paths.mlflow_artifacts / experiment).as_uri()
        try:
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        except MlflowException:  # another run created it first (two runs at once on one store)
            existing = client.get_experiment_by_name(experiment)
            if existing is None:
                raise
            experiment_id = existing.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
