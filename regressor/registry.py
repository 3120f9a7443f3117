"""MLflow registry conventions: log the pyfunc, register, tag, and the champion promotion gate."""

from __future__ import annotations

import getpass
import importlib.metadata
import json
import logging
import math
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import pandas as pd
import requests
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from regressor.config import AppConfig, PromotionRule, ResolvedPaths, is_tracking_server
from regressor.descriptions import model_description, version_description
from regressor.errors import UserError
from regressor.pyfunc_model import DEFAULT_PARAMS, OUTPUT_COLUMNS

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
logger = logging.getLogger(__name__)


class NotRegisteredError(UserError, LookupError):
    """No such registered model, version or alias."""


class StoreUnreachableError(UserError, ConnectionError):
    """No MLflow tracking server answers at the configured URI."""


def state_paths(app: AppConfig) -> ResolvedPaths:
    """`app.paths` resolved, for any command or flow; a `UserError` when the state directory
    (the warehouse, the local store, checkpoints) is a file: every step would fail on a path
    inside it with an OS error naming a file the user never named."""
    paths = app.paths.resolve()
    if paths.var_dir.exists() and not paths.var_dir.is_dir():
        raise UserError(
            f"the state directory {paths.var_dir} (--var-dir, TEXTPERF_VAR_DIR or "
            "paths.var_dir) is a file: name a directory (it is made if missing)"
        )
    return paths


def require_store(paths: ResolvedPaths, wait_s: float = 10.0) -> None:
    """For a command that only reads or edits the registry (predict, `models ...`): a
    `UserError` when the local store under the var dir does not exist, and the tracking server,
    if one is named, must answer within `wait_s` (`require_reachable`). Opening a missing
    SQLite store makes it: a misspelt `--var-dir` left an empty store behind, MLflow's
    table-creation lines on the terminal, and an answer about an empty registry."""
    database = sqlite_file(paths.mlflow_server) if paths.mlflow_server else None
    if paths.mlflow_server and database is None:
        require_reachable(paths.tracking_uri, wait_s)
    elif database is not None and not database.is_file():  # a store named by its URI
        raise UserError(
            f"no MLflow store at {paths.tracking_uri} (no file {database}): name the store "
            "that exists (MLFLOW_TRACKING_URI or paths.tracking_uri; a relative sqlite path "
            "is read from the current directory)"
        )
    elif not paths.mlflow_server and not paths.mlflow_db.is_file():
        raise UserError(
            f"no MLflow store in {paths.var_dir} (no {paths.mlflow_db.name}): `textperf "
            "retrain` makes one there, or name the state directory that holds one (--var-dir, "
            "TEXTPERF_VAR_DIR or paths.var_dir)"
        )


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI, None for any other URI. Named so
    (MLFLOW_TRACKING_URI=sqlite:///...), a store was taken for a server: a misspelt file was
    never checked, and MLflow made an empty store there."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0] or ".")


def require_reachable(uri: str, wait_s: float = 10.0) -> None:
    """Raise `StoreUnreachableError` unless the tracking server at `uri` (http or https) answers
    within `wait_s` seconds; a local store is not checked.

    MLflow's own client retries a refused connection with backoff for about four minutes
    (`MLFLOW_HTTP_REQUEST_MAX_RETRIES` 7, backoff factor 2) before it fails, per call: a command
    pointed at a server that is not there would hang that long and end in a traceback. This
    probe tries for `wait_s` only (a restarting server gets that long). Any HTTP answer, even
    an error status, or a TLS failure (MLflow has its own TLS settings), counts as reachable."""
    if not is_tracking_server(uri):
        return
    deadline, delay = time.monotonic() + wait_s, 1.0
    while True:
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=max(1.0, min(5.0, wait_s)))
            return
        except requests.exceptions.SSLError:
            return
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as exc:
            raise StoreUnreachableError(
                f"the MLflow tracking URI {uri!r} is not a valid URL ({exc}): fix "
                "MLFLOW_TRACKING_URI or the config's paths.tracking_uri"
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            if time.monotonic() + delay > deadline:
                refused = "refused" in str(exc).lower()
                reason = "connection refused" if refused else type(exc).__name__
                raise StoreUnreachableError(
                    f"cannot reach the MLflow tracking server {uri} ({reason}, tried for "
                    f"{wait_s:g} s): start it, or point MLFLOW_TRACKING_URI (or the config's "
                    "paths.tracking_uri) at one that runs; with neither set, the local store "
                    "under var/ is used"
                ) from None
        time.sleep(delay)
        delay = min(delay * 2, 8.0)


def signature() -> ModelSignature:
    inputs = Schema(
        [
            ColSpec("string", "task", required=False),
            ColSpec("string", "period", required=False),
            ColSpec("string", "config", required=False),
            ColSpec("string", "logs", required=False),
            ColSpec("string", "text", required=False),
        ]
    )
    # The columns with the default params; other `quantiles` give other `p<percent>` columns.
    outputs = Schema([ColSpec("double", name) for name in OUTPUT_COLUMNS])
    params = ParamSchema(
        [
            ParamSpec("num_samples", "integer", DEFAULT_PARAMS["num_samples"]),
            ParamSpec("temperature", "double", DEFAULT_PARAMS["temperature"]),
            ParamSpec("seed", "integer", DEFAULT_PARAMS["seed"]),
            # A list param: the output has one `p<percent>` column per requested quantile.
            ParamSpec("quantiles", "double", DEFAULT_PARAMS["quantiles"], (-1,)),
            ParamSpec("return_samples", "boolean", DEFAULT_PARAMS["return_samples"]),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example(record: Mapping) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "task": record["task"],
                "period": None if record["period"] is None else str(record["period"]),
                "config": json.dumps(record["config"], sort_keys=True),
                "logs": json.dumps(record["logs"], sort_keys=True),
            }
        ]
    )


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=PYFUNC_CODE.parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def log_and_register(
    bundle_dir: Path, name: str, example: pd.DataFrame, tags: Mapping[str, str]
) -> ModelVersion:
    """Log the bundle as a models-from-code pyfunc in the active run and register a new version
    with its tags, in one call: set one by one after the version existed, a store lost midway
    left a version without its `registration_key`, which the retry could not find, so it
    registered another."""
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_CODE),
        artifacts={"bundle": str(bundle_dir)},
        signature=signature(),
        input_example=example,
        # The pyfunc needs the project itself; `--env-manager local` serves from this environment.
        pip_requirements=[project_requirement()],
    )
    all_tags = {key: str(value) for key, value in {**tags, "git_commit": git_commit()}.items()}
    return mlflow.register_model(info.model_uri, name, tags=all_tags)


def project_requirement() -> str:
    """This project as the logged model's pip requirement, pinned to the installed version: a
    bare `textperf` let pip (`mlflow models serve` with a virtualenv, `build-docker`) install
    whatever an index calls textperf, at any version."""
    try:
        return f"textperf=={importlib.metadata.version('textperf')}"
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "textperf"


class ModelLoadError(RuntimeError):
    """A registered version whose artifact cannot be loaded; the message names the version."""


def load_predictor(uri: str):  # -> regressor.predictor.Predictor (imported lazily: torch)
    """The predictor of a registered model (`models:/name@alias`, `/version` or bare name).

    The ref is resolved to its fixed version first, so an error names the exact version whose
    artifact is missing or corrupted; nothing in the registry is changed.
    """
    version = resolve(uri)
    fixed = model_uri(version.name, version.version)
    try:
        return mlflow.pyfunc.load_model(fixed).unwrap_python_model().predictor
    except Exception as exc:  # missing files, bad bytes, checksum mismatch: all one answer
        raise ModelLoadError(
            f"cannot load model {version.name!r} version {version.version} ({fixed}, asked as "
            f"{uri}): its artifact is missing or corrupted: {type(exc).__name__}: {exc}"
        ) from exc


# What the store answers for a model or alias that does not exist (sqlite and REST stores).
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")
T = TypeVar("T")


def unless_missing(call: Callable[..., T], *args: Any) -> T | None:
    """`call(*args)`, None when the store answers that its object does not exist; any other
    failure (an unreachable store) raises."""
    try:
        return call(*args)
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND:
            return None
        raise


def alias_version(name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, None when there is none; an unreachable store raises (it
    must never read as "no champion", which would promote a challenger unchecked)."""
    return unless_missing(MlflowClient().get_model_version_by_alias, name, alias)


def no_such_model(name: str) -> NotRegisteredError:
    """The error for a registered model the store does not have, saying where to look."""
    return NotRegisteredError(
        f"no registered model {name!r}; `textperf models list` lists the registered models"
    )


def existing_version(name: str, version: str | int) -> ModelVersion:
    """Version `version` (a number) of registered model `name`; a `NotRegisteredError` naming what
    is missing (the model, or that version of it) and where to look, or a `UserError` when
    `version` is no number. An unreachable store raises as it does."""
    if not str(version).isdigit():
        raise UserError(
            f"version {version!r} of {name!r} is not a version number; "
            f"`textperf models list {name}` lists its versions"
        )
    found = unless_missing(MlflowClient().get_model_version, name, str(version))
    if found is not None:
        return found
    if not is_registered(name):
        raise no_such_model(name)
    raise NotRegisteredError(
        f"{name!r} has no version {version}; `textperf models list {name}` lists its versions"
    )


def is_registered(name: str) -> bool:
    """Whether the registry holds a model named `name`, with versions or without."""
    return unless_missing(MlflowClient().get_registered_model, name) is not None


def existing_run(run_id: str) -> Run | None:
    """The run, None when the store no longer has it (deleted, then `mlflow gc`): a registered
    version outlives the run that logged it, and stays usable without it."""
    return unless_missing(MlflowClient().get_run, run_id)


def newest(versions: Iterable[ModelVersion]) -> ModelVersion | None:
    """The version with the highest number; None when there is none."""
    return max(versions, key=lambda v: int(v.version), default=None)


def quoted(value: str) -> str:
    """`value` as a string literal of an MLflow search filter. Its grammar has no escape (`\\'`
    and `''` parse, and match nothing), and a name from data may hold a quote (a variant of
    task `o'brien` failed every search of the registry, nightly runs and `models list` with
    them): single quotes, else double quotes; a value holding both cannot be searched for."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise UserError(f"{value!r} holds both ' and \": no MLflow search can name it; rename it")


def versions_of(name: str, **tags: str) -> list[ModelVersion]:
    """The versions of the model `name`, those with each tag given at its value only."""
    clauses = [f"name={quoted(name)}", *(f"tags.{k}={quoted(v)}" for k, v in tags.items())]
    return MlflowClient().search_model_versions(" and ".join(clauses))


def versions_newest_first(name: str) -> list[ModelVersion]:
    return sorted(versions_of(name), key=lambda v: -int(v.version))


def registered_models(filter_string: str | None = None) -> list[RegisteredModel]:
    """Every registered model matching `filter_string`, page after page: one search returns at
    most 100, so a fleet with more adapted cells than that lost the rest to listing, pruning
    and re-adaptation."""
    client, found, token = MlflowClient(), [], None
    while True:
        page = client.search_registered_models(filter_string=filter_string, page_token=token)
        found += page
        token = page.token
        if not token:
            return found


def variant_models(name: str) -> list[tuple[RegisteredModel, list[ModelVersion]]]:
    """Every adapted variant `<name>-<task>` with its versions, newest first. LIKE only narrows
    the search: a model sharing the name's prefix is not one unless a version's `task` makes its
    exact name (`textperf-big-cell-a` is `textperf-big`'s, and `_` is LIKE's wildcard)."""
    found = []
    for model in registered_models(f"name LIKE '{name}-%'"):
        versions = versions_newest_first(model.name)
        if any(model.name == f"{name}-{v.tags['task']}" for v in versions if "task" in v.tags):
            found.append((model, versions))
    return found


def latest_variants(name: str) -> dict[str, ModelVersion]:
    """`{task: newest version}` of every adapted variant `<name>-<task>`."""
    return {
        versions[0].tags["task"]: versions[0]
        for _, versions in variant_models(name)
        if "task" in versions[0].tags
    }


# Version tags: what a version was trained from (data snapshot and configs; it names the
# checkpoint directory), and that plus how it was calibrated, evaluated and gated, by what code.
TRAINING_KEY = "training_key"
REGISTRATION_KEY = "registration_key"
# An adapted variant's counterpart of the registration key: base version, shots, configs, code.
ADAPTATION_KEY = "adaptation_key"


def keyed_versions(
    name: str, key_tag: str, key: str
) -> tuple[ModelVersion | None, ModelVersion | None]:
    """The newest version of `name` tagged `key_tag=key` whose gate has run (making it again
    would register the same model again), and the newest whose gate has not (its run stopped
    between registering it and gating it); None where there is none. One registry search."""
    versions = versions_of(name, **{key_tag: key})
    gated = [v for v in versions if "gate_decision" in v.tags]
    return newest(gated), newest([v for v in versions if "gate_decision" not in v.tags])


# The number of records of its task in the data snapshot a variant was adapted on.
TASK_RECORDS = "task_records"


def variants_due(
    name: str,
    champion_version: str,
    always: Iterable[str] = (),
    task_records: Mapping[str, int] | None = None,
    new_records: int | None = None,
) -> list[str]:
    """Tasks to adapt now: every variant (and every task in `always`) not yet on this champion,
    or on it but left unfinished by a stopped run (`unfinished`: adapting it again finds the
    version by its key and finishes it); with `new_records`, also every variant whose task has
    gained that many records (counts now in `task_records`) since it was adapted."""
    current = model_uri(name, champion_version)
    newest = latest_variants(name)
    due = {task for task in {*newest, *always} if task not in newest}
    for task, version in newest.items():
        if version.tags.get("base_model") != current:
            due.add(task)
        elif (why := unfinished(version)) is not None:
            logger.info("%s v%s: %s: due", version.name, version.version, why)
            due.add(task)
        elif new_records and task_records is not None and TASK_RECORDS in version.tags:
            gained = task_records.get(task, 0) - int(version.tags[TASK_RECORDS])
            if gained >= new_records:
                logger.info(
                    "%s v%s: %d new records of %s since its adaptation (>= %d): due",
                    version.name,
                    version.version,
                    gained,
                    task,
                    new_records,
                )
                due.add(task)
    return sorted(due)


def model_uri(name: str, alias_or_version: str | int) -> str:
    if isinstance(alias_or_version, int) or str(alias_or_version).isdigit():
        return f"models:/{name}/{alias_or_version}"
    return f"models:/{name}@{alias_or_version}"


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    challenger: Mapping[str, float]
    champion: Mapping[str, float] | None


def beats(
    challenger: Mapping[str, float],
    champion: Mapping[str, float],
    rule: PromotionRule,
    against: str = "champion",
) -> tuple[bool, str]:
    """Not worse on every metric of the rule: a NaN of the challenger's loses, one of the other's
    loses to any number (`_no_worse`); `against` names the other. First, with
    `rule.fewer_scored_is_worse`, not fewer records scored (`n`, on the same records): a record
    whose draws held no number is in no metric, so failing on the hard records would otherwise
    look better."""
    scored = "n" in challenger and "n" in champion
    if rule.fewer_scored_is_worse and scored and challenger["n"] < champion["n"]:
        return False, (
            f"scored {challenger['n']:.0f} records, {against} {champion['n']:.0f} (the others' "
            "draws held no number)"
        )
    for metric in rule.higher_is_better:
        if not _no_worse(challenger[metric], champion[metric], higher_is_better=True):
            mine, theirs = _told_apart(challenger[metric], champion[metric])
            return False, f"{metric} {mine} < {against}'s {theirs}"
    for metric in rule.lower_is_better:
        if not _no_worse(challenger[metric], champion[metric], higher_is_better=False):
            mine, theirs = _told_apart(challenger[metric], champion[metric])
            return False, f"{metric} {mine} > {against}'s {theirs}"
    metrics = rule.higher_is_better + rule.lower_is_better
    if not metrics:
        return True, "the promotion rule compares no metric"
    reason = f"not worse than the {against} on " + ", ".join(metrics)
    unscored = [m for m in metrics if math.isnan(challenger[m]) and math.isnan(champion[m])]
    if unscored:
        reason += f" ({', '.join(unscored)}: NaN on both sides, a tie)"
    return True, reason


def _told_apart(mine: float, theirs: float) -> tuple[str, str]:
    """Both values to 4 significant digits, or as many more as it takes to tell them apart: a
    refusal read "spearman 0.8912 < champion's 0.8912"."""
    for digits in (4, 6, 8, 10, 12, 17):
        shown = f"{mine:.{digits}g}", f"{theirs:.{digits}g}"
        if shown[0] != shown[1]:
            break
    return shown


def _no_worse(mine: float, theirs: float, higher_is_better: bool) -> bool:
    """Whether the challenger's `mine` is at least as good as the champion's `theirs`: its NaN
    never is against a number (a challenger must show one), any number beats the champion's
    NaN, and NaN on both sides is a tie. (NaN lost on either side: a base predicting one value
    for a new cell has no Spearman, and no variant, however good, could pass its gate; nor
    anything a champion with no Spearman. NaN against NaN lost too: over shots whose targets
    are all one value no Spearman exists, so no variant could pass, whatever its MAPE.)"""
    if math.isnan(mine):
        return math.isnan(theirs)
    if math.isnan(theirs):
        return True
    return mine >= theirs if higher_is_better else mine <= theirs


def gate(
    name: str,
    version: ModelVersion,
    challenger_metrics: Mapping[str, float],
    champion_metrics: Mapping[str, float] | None,
    rule: PromotionRule,
    champion_alias: str = "champion",
    challenger_alias: str = "challenger",
    note: str = "",
) -> GateDecision:
    """The new version becomes `challenger`; it takes `champion` only if it beats the champion.
    `note` is appended to the recorded reason."""
    client = MlflowClient()
    client.set_registered_model_alias(name, challenger_alias, version.version)
    if champion_metrics is None:
        promoted, reason = True, "no champion yet"
    else:
        promoted, reason = beats(challenger_metrics, champion_metrics, rule)
    reason += note
    if promoted:
        # A single alias write: readers see the old champion or the new one, never neither.
        client.set_registered_model_alias(name, champion_alias, version.version)
    return _record_decision(
        name, version, promoted, reason, challenger_metrics, champion_metrics, champion_alias
    )


def gate_variant(
    name: str,
    version: ModelVersion,
    base_uri: str,
    adapted: Mapping[str, float],
    zero_shot: Mapping[str, float],
    rule: PromotionRule,
    champion_alias: str = "champion",
    challenger_alias: str = "challenger",
    note: str = "",
) -> GateDecision:
    """An adapted variant `name` becomes `challenger`; it takes `champion` (the model to use for
    its task) only when not worse than its base `base_uri` zero-shot, both scored on shots kept
    out of training, and when that base is its model's `champion` now. `note` is appended to
    the recorded reason.

    Refused on the scores, it leaves a champion adapted from the same base in place (that one
    passed against this base) and retires one adapted from another base: it was never compared
    with this base, so the task falls back to the base itself, or to a zero-shot fallback the
    caller registers (`may_serve_fallback`, `promote_fallback`). Adapted from a base that is not
    (or no longer) the champion, e.g. by hand from an older version, it leaves the variant's
    aliases but `challenger` alone: the task keeps what the champion's lineage gave it.
    """
    client = MlflowClient()
    client.set_registered_model_alias(name, challenger_alias, version.version)
    promoted, reason = beats(adapted, zero_shot, rule, against="base zero-shot")
    reason += note
    off_lineage = _not_the_champion(base_uri, champion_alias)
    if off_lineage:
        return _record_decision(
            name, version, False, reason + off_lineage, adapted, zero_shot, champion_alias
        )
    if promoted:
        client.set_registered_model_alias(name, champion_alias, version.version)
    else:
        holder = alias_version(name, champion_alias)
        if holder is not None and holder.tags.get("base_model") != base_uri:
            client.delete_registered_model_alias(name, champion_alias)
            reason += f"; retired @{champion_alias} from v{holder.version} (another base)"
    return _record_decision(name, version, promoted, reason, adapted, zero_shot, champion_alias)


def _not_the_champion(base_uri: str, champion_alias: str) -> str:
    """Why a variant of `base_uri` may not take its task's champion alias; "" when it may (its
    base holds the model's champion, or the model has none)."""
    base_name, base_version = parse_ref(base_uri)
    holder = alias_version(base_name, champion_alias)
    if holder is None or str(holder.version) == str(base_version):
        return ""
    return (
        f"; not promoted: its base {base_uri} is not @{champion_alias} "
        f"(v{holder.version} is; `textperf models promote` to use it anyway)"
    )


# On a zero-shot fallback version: the number of the refused variant version it stands in for;
# on that refused version: the fallback, as JSON (`version`, `intervals`, test `scores`).
FALLBACK_FOR = "zero_shot_for"
FALLBACK = "zero_shot_fallback"


def unfinished(version: ModelVersion) -> str | None:
    """What a run that stopped left undone of the adapted variant `version` (its task's newest),
    None when nothing: a version registered and never gated, or a fallback registered and never
    promoted. Such a version holds the champion's lineage, so without this its task was never due
    again: it stayed ungated (or its fallback unserved) until the champion changed. (A refused
    version without a fallback is not flagged: whether its gate shots fit the fallback a scale
    is known only by trying, and one that cannot would be due every night.)"""
    if FALLBACK_FOR in version.tags:
        try:
            refused = MlflowClient().get_model_version(version.name, version.tags[FALLBACK_FOR])
        except MlflowException:  # deleted by hand: nothing left to finish, and no nightly stops
            return None
        promoted = FALLBACK in refused.tags
        return None if promoted else "its zero-shot fallback was registered, never promoted"
    if "gate_decision" not in version.tags:
        return "registered, and its run stopped before its gate"
    return None


def may_serve_fallback(name: str, base_uri: str, champion_alias: str = "champion") -> bool:
    """Whether the task of variant `name`, whose version adapted from `base_uri` the gate has
    just refused, may be served by a zero-shot fallback (`adaptation.zero_shot_fallback`): the
    base is its model's champion (or the model has none), and the task's champion, if any, is
    an earlier fallback. A fine-tuned champion of the same base stays: it passed against this
    base (`gate_variant`)."""
    if _not_the_champion(base_uri, champion_alias):
        return False
    holder = alias_version(name, champion_alias)
    return holder is None or FALLBACK_FOR in holder.tags


def fallback_of(name: str, refused: str | int) -> ModelVersion | None:
    """The newest version of `name` registered as the zero-shot fallback of version `refused`,
    None if there is none."""
    return newest(versions_of(name, **{FALLBACK_FOR: str(refused)}))


def promote_fallback(
    name: str,
    fallback: ModelVersion,
    refused: ModelVersion,
    base_uri: str,
    gate_scores: Mapping[str, float],
    recorded: Mapping[str, Any],
    champion_alias: str = "champion",
) -> GateDecision:
    """Make `fallback` (the base's weights with the task's intervals) the task's champion in
    place of `refused`, and tag `refused` with it (`recorded`: what a reused outcome reports)."""
    client = MlflowClient()
    client.set_registered_model_alias(name, champion_alias, fallback.version)
    client.set_model_version_tag(name, refused.version, FALLBACK, strict_json(recorded))
    reason = (
        f"serves the task in place of v{refused.version}, which the gate refused: the weights "
        f"of {base_uri} unchanged, with intervals fitted on the task's gate shots"
    )
    decision = _record_decision(
        name, fallback, True, reason, gate_scores, gate_scores, champion_alias
    )
    describe_in_registry(name, str(refused.version), champion_alias)  # it now names its stand-in
    return decision


def _record_decision(
    name: str,
    version: ModelVersion,
    promoted: bool,
    reason: str,
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    champion_alias: str,
) -> GateDecision:
    """Tag the decision on the version, so the registry alone explains every alias move, and
    describe the version and its model in words."""
    decision = {
        "promoted": promoted,
        "reason": reason,
        "challenger": dict(challenger),
        "champion": dict(champion) if champion else None,
    }
    client = MlflowClient()
    client.set_model_version_tag(name, version.version, "gate_decision", strict_json(decision))
    describe_in_registry(name, str(version.version), champion_alias)
    return GateDecision(promoted, reason, dict(challenger), champion)


def describe_in_registry(name: str, version: str, champion_alias: str = "champion") -> None:
    """Write the version's description from its tags, and the model's from its champion's (or
    this version's, without one): what it predicts, how to predict, scores and verdict. The
    registry UI and `models show` print them. A store that refuses them (a hiccup, a length
    limit) gets a warning: the gate has decided and moved the aliases by then, and a
    description is not worth failing it."""
    client = MlflowClient()
    try:
        tags = client.get_model_version(name, version).tags
        client.update_model_version(name, version, description=version_description(tags))
        holder = alias_version(name, champion_alias)
        about = holder.tags if holder is not None else tags
        client.update_registered_model(
            name, description=model_description(name, about, champion_alias)
        )
    except MlflowException as exc:
        logger.warning("%s/%s: descriptions not written: %s", name, version, exc.message)


def promote(
    name: str,
    version: str | int,
    alias: str = "champion",
    reason: str = "manual promotion",
    champion_alias: str = "champion",
) -> dict:
    """Point `alias` at `version` by hand; the decision is tagged on the version and returned.

    The tag keeps who, when and which version held the alias before, so a manual override
    stays on record beside the automatic gate decisions.
    """
    client = MlflowClient()
    target = client.get_model_version(name, str(version))  # raises if it does not exist
    previous = alias_version(name, alias)
    client.set_registered_model_alias(name, alias, target.version)
    decision = {
        "alias": alias,
        "previous": str(previous.version) if previous is not None else None,
        "reason": reason,
        "by": getpass.getuser(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    client.set_model_version_tag(name, target.version, f"manual_{alias}", json.dumps(decision))
    describe_in_registry(name, str(target.version), champion_alias)  # the alias users ask
    logger.info("%s/%s takes @%s (was %s): %s", name, target.version, alias, previous, reason)
    return decision


def parse_ref(ref: str) -> tuple[str, str | None]:
    """'NAME', 'NAME@ALIAS' or 'NAME/VERSION' -> (name, alias or version or None)."""
    ref = ref.removeprefix("models:/")
    if "/" in ref:  # a name cannot hold one
        name, version = ref.split("/", 1)
        return name, version
    if "@" in ref:  # a name can (a task from the data: `textperf-job@host`), an alias cannot
        name, alias = ref.rsplit("@", 1)
        return name, alias
    return ref, None


def resolve(ref: str) -> ModelVersion:
    """The version a ref names; a bare NAME means its latest version. A `NotRegisteredError`
    names what is missing (the model, the version or the alias) and where to look."""
    name, which = parse_ref(ref)
    client = MlflowClient()
    if which is not None and which.isdigit():
        return existing_version(name, which)
    if which is not None and "/" in ref.removeprefix("models:/"):  # it said no alias @abc
        raise NotRegisteredError(f"{ref}: {which!r} is not a version number (NAME/VERSION)")
    if which is not None:
        found = alias_version(name, which)
        if found is not None:
            return found
    latest = newest(versions_of(name))
    if latest is None:
        raise no_such_model(name)
    if which is not None:
        raise NotRegisteredError(
            f"no version of {name!r} holds @{which}; `textperf models list {name}` shows its "
            "aliases"
        )
    return client.get_model_version(name, latest.version)  # a search leaves out aliases


def finite_json(value: Any) -> Any:
    """`value` with every NaN or infinite float, however deep, replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value


def strict_json(value: Any) -> str:
    """`value` as standard JSON, NaN and infinities as null (`finite_json`). Tags and artifacts
    are read by jq, JavaScript and Go too, which refuse the bare `NaN` `json.dumps` writes (the
    mean baseline's Spearman is always one)."""
    return json.dumps(finite_json(value), allow_nan=False)


def metrics_from_json(text: str) -> Any:
    """Metrics written by `strict_json`, each null back to NaN at any depth (tags written
    before, with a bare NaN, read the same)."""
    return _nan_for_null(json.loads(text))


def read_decision(text: str) -> dict[str, Any]:
    """A `gate_decision` tag, its challenger's and champion's metrics read as
    `metrics_from_json` reads them (a champion of None stays None: there was none)."""
    decision = json.loads(text)
    for side in ("challenger", "champion"):
        if isinstance(decision.get(side), dict):
            decision[side] = _nan_for_null(decision[side])
    return decision


def _nan_for_null(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan_for_null(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class VersionRow:
    name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    tags: Mapping[str, str]
    created: datetime | None = None  # when it was registered (UTC)


def list_versions(name: str | None = None) -> list[VersionRow]:
    """Every version of every registered model (or of `name`), with its aliases and tags."""
    rows = []
    for model in registered_models():
        if name is not None and model.name != name:
            continue
        aliases = model.aliases or {}
        versions = versions_of(model.name)
        for mv in sorted(versions, key=lambda v: int(v.version)):
            held = tuple(sorted(a for a, v in aliases.items() if str(v) == str(mv.version)))
            created = (
                datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
                if mv.creation_timestamp
                else None
            )
            rows.append(
                VersionRow(model.name, str(mv.version), held, mv.run_id, dict(mv.tags), created)
            )
    return rows


def describe(version: ModelVersion) -> dict:
    """A version as plain data for `textperf models show`: JSON-valued tags are decoded, and a
    metric that is NaN or infinite becomes null (strict JSON has no NaN: jq, JavaScript and Go
    refuse it)."""
    tags = {}
    for key, value in sorted(version.tags.items()):
        try:
            tags[key] = finite_json(json.loads(value)) if value[:1] in "{[" else value
        except json.JSONDecodeError:
            tags[key] = value
    aliases = list(version.aliases or [])
    return {
        "name": version.name,
        "version": str(version.version),
        "uri": model_uri(version.name, version.version),
        "aliases": aliases,
        "run_id": version.run_id,
        "source": version.source,
        "description": version.description or "",
        "tags": tags,
    }
