"""What the registry says about a model and a version, in words (MLflow's description fields).

The tags hold the lineage as data; these texts are what someone browsing the registry reads
first: what the model predicts, how to predict with it, how good a version was and why it holds
(or not) its aliases. They are built from the version's tags alone, so a gate finished late (by
the next run) describes its version as the original run would have.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping


def model_description(name: str, tags: Mapping[str, str], champion_alias: str) -> str:
    """A registered model's description: what it predicts and how to ask it; for an adapted
    variant (`base_model` tag), which task it serves and what serves the task without it."""
    what = f"`{tags.get('target', 'the target')}` of a `{tags.get('source', '?')}` record"
    if "base_model" in tags:
        base_name = tags["base_model"].removeprefix("models:/").split("/")[0].split("@")[0]
        task = tags.get("task", "?")
        return (
            f"`{base_name}` fine-tuned on a few records of task `{task}` to predict {what}. "
            f"Predict `{task}` with `models:/{name}@{champion_alias}` when it exists: a "
            "version fine-tuned from the champion that the gate promoted or, when the gate "
            "refused it, a zero-shot fallback (the base's weights unchanged, with intervals "
            "fitted on the task's own records). Otherwise "
            f"`models:/{base_name}@{champion_alias}` is the model for `{task}`."
        )
    return (
        f"Predicts {what} (its task, config and, where the source has them, period and log "
        "summary, serialized to text) by text-to-text regression: the median of sampled "
        "decodes, with their 10-90% interval (rescaled by split conformal prediction unless "
        "`eval.conformal` is off).\n\nPredict: "
        f"`textperf predict --model models:/{name}@{champion_alias} RECORD.json` "
        "(`textperf record TASK` writes a stored record as that JSON). "
        f"`@{champion_alias}` is the version to use; `textperf models list` shows each "
        "version's scores and gate verdict."
    )


def version_description(tags: Mapping[str, str]) -> str:
    """A version's description: data, code and scores, and for a variant its base, method and
    shots; then the gate's verdict when it has one."""
    if "zero_shot_for" in tags:
        parts = _fallback_parts(tags)
    elif "base_model" in tags:
        task = tags.get("task", "?")
        parts = [
            f"`{tags['base_model']}` adapted to `{task}` by `{tags.get('method', '?')}` "
            f"fine-tuning on {_shots(tags)}.",
            f"On `{task}`'s test records: adapted {scores(_json(tags, 'adapted_metrics'))}; "
            f"its base zero-shot {scores(_json(tags, 'zero_shot_metrics'))}.",
        ]
        if "intervals" in tags:
            parts.append(f"Intervals: {tags['intervals']}.")
    else:
        parts = [
            f"Trained from random initialization on data `{tags.get('data_hash', '?')[:12]}` "
            f"at commit `{tags.get('git_commit', '?')[:10]}`.",
            f"Held-out test: {scores(_json(tags, 'test_metrics'))}.",
        ]
    decision = _json(tags, "gate_decision")
    if decision:
        parts.append(f"Gate: {_verdict(tags)} ({decision.get('reason', '')}).")
    if stand_in := _json(tags, "zero_shot_fallback"):
        parts.append(
            f"Its task is served in its place by v{stand_in.get('version', '?')}, a zero-shot "
            "fallback: the base's weights with intervals fitted on the gate's shots."
        )
    for alias, moved in _manual_moves(tags).items():
        parts.append(
            f"Made @{alias} by hand by {moved.get('by', '?')} ({moved.get('reason', '')})."
        )
    return "\n\n".join(parts)


def _fallback_parts(tags: Mapping[str, str]) -> list[str]:
    """What a zero-shot fallback version is (`adaptation.zero_shot_fallback`)."""
    task = tags.get("task", "?")
    parts = [
        f"The weights of `{tags.get('base_model', '?')}` unchanged, serving `{task}` in place of "
        f"v{tags['zero_shot_for']}, which the gate refused.",
        f"On `{task}`'s test records: {scores(_json(tags, 'zero_shot_metrics'))}.",
    ]
    if "intervals" in tags:
        parts.append(f"Intervals: {tags['intervals']}.")
    return parts


def one_line(tags: Mapping[str, str], aliases: Collection[str] = ()) -> str:
    """A version's scores and gate verdict for `textperf models list`: the held-out test scores
    (for a variant, the adapted scores on its task's test records; for a zero-shot fallback,
    its own), then "gate: ...", and the aliases moved onto it by hand: "@champion by hand"
    while it holds `aliases`' one, "was @champion by hand" once another version took it (the
    marker stayed, beside another version holding the alias)."""
    key = "adapted_metrics" if "base_model" in tags else "test_metrics"
    metrics = _json(tags, "zero_shot_metrics" if "zero_shot_for" in tags else key)
    by_hand = "".join(
        f", {'' if alias in aliases else 'was '}@{alias} by hand" for alias in _manual_moves(tags)
    )
    return f"{scores(metrics)}  gate: {_verdict(tags)}{by_hand}"


def _manual_moves(tags: Mapping[str, str]) -> dict[str, dict]:
    """The aliases moved onto the version by `textperf models promote` (`manual_<alias>`)."""
    return {
        k.removeprefix("manual_"): _json(tags, k) for k in sorted(tags) if k.startswith("manual_")
    }


def _verdict(tags: Mapping[str, str]) -> str:
    """A variant the gate turns down is "refused" (its task falls back to the base, or to a
    zero-shot fallback, which no gate compared: it "serves in place of v<N>"); a trained
    version is "not promoted" (it stays the challenger)."""
    decision = _json(tags, "gate_decision")
    if "zero_shot_for" in tags:
        return f"serves in place of refused v{tags['zero_shot_for']}"
    if not decision:
        return "not gated yet"
    if decision.get("promoted"):
        return "promoted"
    return "refused" if "base_model" in tags else "not promoted"


def scores(metrics: Mapping[str, float]) -> str:
    """e.g. "Spearman 0.892, MAPE 19.2%, 10-90% coverage 0.86 (n=690)"; missing ones left out."""
    parts = []
    if _finite(metrics.get("spearman")):
        parts.append(f"Spearman {metrics['spearman']:.3f}")
    if _finite(metrics.get("mape")):
        parts.append(f"MAPE {metrics['mape']:.1f}%")
    if _finite(metrics.get("interval_coverage")):
        parts.append(f"10-90% coverage {metrics['interval_coverage']:.2f}")
    n = metrics.get("n")
    text = ", ".join(parts) or "no scores"
    return text + (f" (n={int(n)})" if _finite(n) else "")


def _shots(tags: Mapping[str, str]) -> str:
    fit = _json(tags, "fit")
    shots = f"{tags.get('n_shots', '?')} shots"
    if "n_train" in fit and "n_val" in fit:
        shots += f" ({fit['n_train']} trained, {fit['n_val']} stopped the fine-tuning)"
    return shots


def _json(tags: Mapping[str, str], key: str) -> dict:
    try:
        value = json.loads(tags.get(key, "{}"))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
