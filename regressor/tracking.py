"""MLflow setup: one place that points the client at the store and the experiment, and logs
what a run was trained and scored on."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from regressor.config import ResolvedPaths, is_tracking_server
from regressor.dataset import Examples
from regressor.errors import UserError
from regressor.locks import held

logger = logging.getLogger(__name__)

# MLflow registers its local-file dataset source twice, then warns that a path is ambiguous.
# Set once here: `warnings.catch_warnings` around each call is not thread-safe.
warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")


def store_paths(store: str | None, default_dir: Path) -> ResolvedPaths:
    """The MLflow store a bench's `--store` names: a tracking server's URL, or a directory
    holding a local store (its `mlflow.db` and `mlartifacts/`); `default_dir`'s when None."""
    if store and is_tracking_server(store):
        return ResolvedPaths(var_dir=default_dir, mlflow_server=store)
    return ResolvedPaths(var_dir=Path(store or default_dir).resolve())


def use_store(uri: str) -> None:
    """Point this process's MLflow tracking and registry at `uri`.

    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI (for its subprocesses), which
    `PathsConfig.resolve` reads as the user's choice of server: a second run in one process (a
    notebook, a script) on another var dir then logged to the first run's store. The variable
    is put back as the user had it; the pipeline's own children get the URI explicitly.
    """
    users = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if users is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = users


def _create_store(paths: ResolvedPaths) -> None:
    """Make the local store's schema under a file lock. MLflow's SQLite setup is not safe from
    two processes: two commands starting on a new var dir (a nightly run and an ad-hoc one)
    failed one of them ("table _alembic_tmp_params already exists", "duplicate column")."""
    with held(paths.locks, "mlflow-store.lock", "creating the MLflow store", logger):
        MlflowClient().search_experiments(max_results=1)  # the first use makes the schema


def configure_mlflow(paths: ResolvedPaths, experiment: str) -> str:
    """Point tracking and registry at `paths`, create the experiment if needed; returns its id.

    The artifact location is set explicitly: with a SQLite backend MLflow would otherwise put
    artifacts under the current working directory.
    """
    paths.var_dir.mkdir(parents=True, exist_ok=True)
    use_store(paths.tracking_uri)
    if not paths.mlflow_server and not paths.mlflow_db.exists():
        _create_store(paths)
    client = MlflowClient()
    existing = client.get_experiment_by_name(experiment)
    if existing is not None and existing.lifecycle_stage == "deleted":
        raise UserError(
            f"the MLflow experiment {experiment!r} (id {existing.experiment_id}) is deleted: "
            f"restore it (`mlflow experiments restore --experiment-id {existing.experiment_id}`"
            f" with MLFLOW_TRACKING_URI={paths.tracking_uri}), or name another in the config; "
            "its name stays taken until `mlflow gc` removes it for good"
        )
    if existing is not None:
        experiment_id = existing.experiment_id
    else:
        # A tracking server chooses (and with --serve-artifacts proxies) the artifact store.
        server = is_tracking_server(paths.tracking_uri)
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


def log_splits(
    splits: Mapping[str, Examples], source: str, warehouse: Path, data_hash: str
) -> None:
    """Each split as a dataset input of the active run, its context the split's name (the
    run's Datasets tab): the records' ids, tasks and targets, not their texts, from the source
    in the warehouse, tagged with the snapshot's `data_hash`."""
    for context, examples in splits.items():
        frame = pd.DataFrame(
            {"record_id": examples.record_ids, "task": examples.tasks, "target": examples.targets}
        )
        dataset = mlflow.data.from_pandas(
            frame, source=str(warehouse), targets="target", name=f"{source}/{context}"
        )
        mlflow.log_input(dataset, context=context, tags={"data_hash": data_hash})
