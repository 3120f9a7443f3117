"""The registry's descriptions and `models list` lines, from tags alone (as late gates have)."""

from __future__ import annotations

import json

from regressor import descriptions

VARIANT = {
    "base_model": "models:/textperf/3",
    "task": "cell-b08",
    "method": "full",
    "n_shots": "120",
    "fit": json.dumps({"steps": 300, "seconds": 53.0, "processes": 1, "n_train": 77, "n_val": 19}),
    "adapted_metrics": json.dumps({"spearman": 0.733, "mape": 27.2, "n": 30.0}),
    "zero_shot_metrics": json.dumps({"spearman": 0.828, "mape": 23.1, "n": 30.0}),
    "intervals": "a conformal scale of its own, 1.228, fitted on 24 of its 24 gate shots",
    "source": "demo_fleet",
    "target": "efficiency",
}


def test_scores_leave_out_what_is_missing_or_not_finite():
    assert descriptions.scores({"spearman": float("nan"), "mape": 45.64, "n": 690.0}) == (
        "MAPE 45.6% (n=690)"
    )
    assert descriptions.scores({}) == "no scores"


def test_a_variant_is_described_by_its_base_shots_scores_intervals_and_verdict():
    refused = {"promoted": False, "reason": "mape 22.02 > base zero-shot's 19.56"}
    text = descriptions.version_description(VARIANT | {"gate_decision": json.dumps(refused)})
    assert text.split("\n\n") == [
        "`models:/textperf/3` adapted to `cell-b08` by `full` fine-tuning on 120 shots "
        "(77 trained, 19 stopped the fine-tuning).",
        "On `cell-b08`'s test records: adapted Spearman 0.733, MAPE 27.2% (n=30); its base "
        "zero-shot Spearman 0.828, MAPE 23.1% (n=30).",
        f"Intervals: {VARIANT['intervals']}.",
        "Gate: refused (mape 22.02 > base zero-shot's 19.56).",
    ]
    line = descriptions.one_line(VARIANT | {"gate_decision": json.dumps(refused)})
    assert line == "Spearman 0.733, MAPE 27.2% (n=30)  gate: refused"


def test_a_zero_shot_fallback_says_whose_weights_it_holds_and_whom_it_stands_in_for():
    refused = {"promoted": False, "reason": "mape 22.02 > base zero-shot's 19.56"}
    stood_in = VARIANT | {
        "gate_decision": json.dumps(refused),
        "zero_shot_fallback": json.dumps({"version": "5", "intervals": "...", "scores": {}}),
    }
    assert descriptions.version_description(stood_in).endswith(
        "Its task is served in its place by v5, a zero-shot fallback: the base's weights with "
        "intervals fitted on the gate's shots."
    )
    served = {"promoted": True, "reason": "serves the task in place of v4"}
    fallback = {
        "base_model": "models:/textperf/3",
        "task": "cell-b08",
        "method": "zero_shot",
        "zero_shot_for": "4",
        "intervals": "a conformal scale of its own, 1.736, fitted on 24 of its 24 gate shots",
        "zero_shot_metrics": json.dumps({"spearman": 0.828, "mape": 23.1, "n": 30}),
        "gate_decision": json.dumps(served),
    }
    assert descriptions.version_description(fallback).split("\n\n") == [
        "The weights of `models:/textperf/3` unchanged, serving `cell-b08` in place of v4, "
        "which the gate refused.",
        "On `cell-b08`'s test records: Spearman 0.828, MAPE 23.1% (n=30).",
        f"Intervals: {fallback['intervals']}.",
        "Gate: serves in place of refused v4 (serves the task in place of v4).",
    ]
    line = descriptions.one_line(fallback)
    assert line == "Spearman 0.828, MAPE 23.1% (n=30)  gate: serves in place of refused v4"


def test_a_variant_model_names_the_fallback_for_its_task():
    text = descriptions.model_description("textperf-cell-b08", VARIANT, "champion")
    assert "`models:/textperf-cell-b08@champion` when it exists" in text
    assert "`models:/textperf@champion` is the model for `cell-b08`" in text
    assert "to predict `efficiency` of a `demo_fleet` record" in text


def test_a_version_before_its_gate_or_with_a_broken_tag_is_still_described():
    tags = {"data_hash": "f" * 64, "git_commit": "c" * 40, "test_metrics": "{not json"}
    text = descriptions.version_description(tags)
    assert text == (
        f"Trained from random initialization on data `{'f' * 12}` at commit `{'c' * 10}`."
        "\n\nHeld-out test: no scores."
    )
    assert descriptions.one_line(tags) == "no scores  gate: not gated yet"
