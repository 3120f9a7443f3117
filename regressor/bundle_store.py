"""Saved predictor bundles kept in MLflow, found again by name on any machine sharing the store.

A benchmark's pretrained prior costs an hour or more on two cores and is bit-reproducible only
on the same thread count and CPU (`regressor.environment`); a copy on one local disk is lost with
that disk, and every figure fine-tuned from it with it. Logged as an MLflow run's artifacts
(experiment `bundles`, tag `textperf.bundle` = its name), a bundle lives where the models do: the
local SQLite store, or a team's tracking server, from which another machine or a later session
fetches it instead of pretraining a different one.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow

from regressor.config import SAFE_NAME, ResolvedPaths
from regressor.tracking import configure_mlflow

BUNDLE_EXPERIMENT = "bundles"
NAME_TAG = "textperf.bundle"
ARTIFACT_DIR = "bundle"
_SAFE_NAME = re.compile(SAFE_NAME)


def _checked(name: str) -> str:
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(
            f"bundle name {name!r}: use letters, digits and . _ - only, starting with a "
            "letter or digit"
        )
    return name


def keep_bundle(
    paths: ResolvedPaths,
    name: str,
    directory: Path,
    params: Mapping[str, object],
    metrics: Mapping[str, float],
) -> str:
    """Log `directory` (a saved `Predictor` bundle) as run artifacts under `name`, with the
    params it was made with and the metrics it scored; returns the run id."""
    configure_mlflow(paths, BUNDLE_EXPERIMENT)
    with mlflow.start_run(run_name=_checked(name), tags={NAME_TAG: name}) as run:
        mlflow.log_params(dict(params))
        mlflow.log_metrics(dict(metrics))
        mlflow.log_artifacts(str(directory), artifact_path=ARTIFACT_DIR)
    return run.info.run_id


def kept_run_id(paths: ResolvedPaths, name: str) -> str | None:
    """The latest finished run that kept a bundle named `name`, if any."""
    experiment_id = configure_mlflow(paths, BUNDLE_EXPERIMENT)
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{NAME_TAG}` = '{_checked(name)}' and status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def fetch_bundle(paths: ResolvedPaths, name: str, destination: Path) -> bool:
    """Download the bundle kept as `name` into `destination`, replacing what is there (a save
    cut short leaves a folder without its `bundle.json`); False if the store has none. The
    download lands in a sibling temporary directory and is renamed into place, so an
    interrupted fetch never leaves something that looks like a bundle. (Moved onto an existing
    folder, it landed inside it, `destination/bundle/`, and the fetch said it had succeeded.)"""
    run_id = kept_run_id(paths, name)
    if run_id is None:
        return False
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=ARTIFACT_DIR, dst_path=scratch
        )
        if _complete(destination):  # another process fetching the same bundle landed it first
            return True
        if destination.is_dir():
            shutil.rmtree(destination)
        try:
            Path(local).rename(destination)  # one file system: the scratch folder is a sibling
        except OSError:  # landed by another process in between (a non-empty folder is there)
            if not _complete(destination):
                raise
    return True


def _complete(bundle: Path) -> bool:
    """Whether `bundle` holds a whole bundle (its `bundle.json` is written last): a process
    fetching the same bundle deleted one another had landed and was loading."""
    return (bundle / "bundle.json").is_file()
