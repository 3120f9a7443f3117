"""Retention: delete the registered versions nobody uses any more, so the store stops growing.

A nightly run on new data registers a version a night, and an adapted variant a few more; each
holds a copy of the weights. MLflow keeps them all. `prune` deletes, for the model and each of
its variants `<name>-<task>`, the versions beyond the newest `keep` that hold no alias, and
their logged models (the weights); `mlflow gc` then reclaims the space. A variant counts
adaptations, not versions: a zero-shot fallback and the refused version it stands in for are
kept or deleted together (alone, the fallback would name a version that is gone, and the
refused version would have its fallback rebuilt by the next run reusing it). Never deleted: a
version holding an alias (with its partner), and a version of the model that a kept variant
version was adapted from (its lineage names it, and with no champion of the model the task
falls back to it). Runs are left
alone: their curves and plots are small, and a version outlives its run anyway
(`pipeline.reused_outcome`).
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from regressor.registry import (
    FALLBACK_FOR,
    model_uri,
    quoted,
    unless_missing,
    variant_models,
    versions_newest_first,
)


def prunable(name: str, keep: int) -> list[ModelVersion]:
    """The versions of `name` and of its variants that `prune` would delete, oldest first."""
    doomed, bases_in_use = [], set()
    for model, versions in variant_models(name):
        kept, dropped = _split(versions, model.aliases or {}, keep)
        doomed += dropped
        bases_in_use |= {v.tags.get("base_model", "") for v in kept}
    filter_string = f"name = {quoted(name)}"
    for main in MlflowClient().search_registered_models(filter_string=filter_string):  # 0 or 1
        _, dropped = _split(versions_newest_first(name), main.aliases or {}, keep)
        doomed += [v for v in dropped if model_uri(name, v.version) not in bases_in_use]
    return sorted(doomed, key=lambda v: (v.name, int(v.version)))


def _split(
    versions: list[ModelVersion], aliases: dict[str, str], keep: int
) -> tuple[list[ModelVersion], list[ModelVersion]]:
    """(kept, the rest) of `versions` (newest first), by adaptation (`_adaptations`): the
    newest `keep` and those with a version holding an alias."""
    held = {str(v) for v in aliases.values()}
    kept = [
        v
        for i, unit in enumerate(_adaptations(versions))
        if i < keep or any(str(u.version) in held for u in unit)
        for v in unit
    ]
    return kept, [v for v in versions if v not in kept]


def _adaptations(versions: list[ModelVersion]) -> list[list[ModelVersion]]:
    """`versions` (newest first) grouped, newest first: a zero-shot fallback with the refused
    version it stands in for (its `FALLBACK_FOR` tag), every other version alone."""
    units: dict[str, list[ModelVersion]] = {}
    for version in versions:
        units.setdefault(version.tags.get(FALLBACK_FOR, str(version.version)), []).append(version)
    return list(units.values())


def prune(name: str, keep: int, dry_run: bool = False) -> list[ModelVersion]:
    """Delete `prunable(name, keep)`: each version's logged model (the weights, which
    `mlflow gc` removes for good), then the version; returns them.

    The version goes last: a prune stopped between the two (a store gone away, a kill) leaves
    the version listed, so the next prune finds it and finishes, where the other order would
    leave weights that no version names and no prune would ever find."""
    doomed = prunable(name, keep)
    return doomed if dry_run else delete_versions(doomed)


def delete_versions(doomed: list[ModelVersion]) -> list[ModelVersion]:
    """Delete each version (its weights first); returns those deleted. Each is read again just
    before: one promoted since the list was made (an operator rolling back) keeps its alias and
    is kept, where the prune deleted it and the model was left without `@champion`; one another
    prune deleted meanwhile is skipped, where this prune failed on it."""
    client, deleted = MlflowClient(), []
    for listed in doomed:
        version = unless_missing(client.get_model_version, listed.name, listed.version)
        if version is None or version.aliases:
            continue
        weights = logged_model_id(version)
        if weights is not None:  # gone already (a prune stopped after it, then gc): done
            unless_missing(client.delete_logged_model, weights)
        if unless_missing(_delete_version, client, version):
            deleted.append(version)
    return deleted


def _delete_version(client: MlflowClient, version: ModelVersion) -> bool:
    client.delete_model_version(version.name, version.version)
    return True


def logged_model_id(version: ModelVersion) -> str | None:
    """The logged model holding the version's weights; the SQLite registry leaves `model_id`
    empty, and its source names it (`models:/m-<id>`)."""
    if version.model_id:
        return version.model_id
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None
