"""The synthetic configurable systems pretrained on before a DeepPerf system's few records."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from regressor.configprior import (
    EFFECT_SCALES,
    named_effect,
    performance,
    prior_records,
    sample_levels,
    sample_system,
    word_effects,
)
from regressor.dataset import to_examples


def test_same_seed_same_records_and_another_seed_others() -> None:
    a, b, c = prior_records(4, 30, seed=1), prior_records(4, 30, seed=1), prior_records(4, 30, 2)
    assert a.equals(b)
    assert not a.equals(c)


def test_configurations_are_distinct_within_a_system_and_targets_positive() -> None:
    records = prior_records(6, 80, seed=0)
    assert records["task"].n_unique() == 6
    for _, group in records.group_by("task"):
        assert group["config_json"].n_unique() == len(group) <= 80
    assert (records["target"] > 0).all()
    assert records["target"].is_finite().all()


def test_one_hot_groups_hold_exactly_one_set_option() -> None:
    rng = np.random.default_rng(3)
    systems = [sample_system(rng, i) for i in range(20)]
    grouped = [s for s in systems if len({o.group for o in s.options}) < len(s.options)]
    assert grouped, "no system with a one-hot group among 20: the test would prove nothing"
    for system in grouped:
        levels = sample_levels(rng, system, 50)
        for group in {o.group for o in system.options}:
            members = [k for k, o in enumerate(system.options) if o.group == group]
            if len(members) > 1:
                assert (levels[:, members].sum(axis=1) == 1).all()


def test_an_option_moves_log_performance_by_its_effect_plus_its_interactions() -> None:
    rng = np.random.default_rng(5)
    system = dataclasses.replace(sample_system(rng, 0), noise=0.0)
    k = next(i for i, o in enumerate(system.options) if o.values == (0.0, 1.0))
    levels = sample_levels(rng, system, 40)
    off, on = levels.copy(), levels.copy()
    off[:, k], on[:, k] = 0, 1
    shift = np.log(performance(rng, system, on)) - np.log(performance(rng, system, off))
    expected = np.full(len(levels), system.options[k].effects[1])
    for i, j, effect in system.interactions:
        if k in (i, j) and i != j:
            partner = j if i == k else i
            expected += effect * (levels[:, partner] > 0)
    np.testing.assert_allclose(shift, expected, atol=1e-9)


def test_records_serialise_like_the_warehouse_rows_they_imitate() -> None:
    records = prior_records(2, 10, seed=0)
    sample = to_examples(records, ("task", "config", "logs"), 768)
    lines = sample.texts[0].splitlines()
    assert lines[:3] == ["<task>", records["task"][0], "<config>"]
    assert lines[1].endswith("_AllNumeric")
    config = json.loads(records["config_json"][0])
    assert lines[3:] == [f"{k}={v}" for k, v in sorted(config.items())]
    np.testing.assert_array_equal(sample.targets, records["target"].to_numpy())


def test_the_words_prior_shares_each_words_effect_across_systems() -> None:
    rng = np.random.default_rng(0)
    words = word_effects(rng)
    for name, parts in (("cacheFlush", ("cache", "flush")), ("no_sync_io", ("no", "sync", "io"))):
        shared = sum(words[p] for p in parts)
        effects = [named_effect(name, words, rng) for _ in range(200)]
        assert abs(np.mean(effects) - shared) < 0.01  # its own deviation averages out
        assert 0.03 < np.std(effects) < 0.07
    with pytest.raises(ValueError, match="prior kind 'other'"):
        prior_records(1, 5, kind="other")
    assert not prior_records(3, 20, kind="words").equals(prior_records(3, 20))


def test_the_numeric_prior_has_shaped_settings_whose_interactions_grow_with_their_value() -> None:
    rng = np.random.default_rng(7)
    words = word_effects(rng)
    systems = [sample_system(rng, i, words, numeric_share=0.35) for i in range(12)]
    options = [o for s in systems for o in s.options]
    numeric = [o for o in options if len(o.values) > 2]
    assert 0.25 < len(numeric) / len(options) < 0.45  # ~10% in the `words` prior
    assert any(0 < s < 1 for o in numeric for s in o.strengths)  # graded, not on/off
    # A setting in an interaction with another setting: moving it from its first value to a
    # middle one shifts log performance by its effect plus each interaction times its strength.
    system, k = next(
        (s, i)
        for s in systems
        for i, j, _ in s.interactions
        if len(s.options[i].values) > 2 and len(s.options[j].values) > 2
    )
    system = dataclasses.replace(system, noise=0.0)
    option = system.options[k]
    middle = len(option.values) // 2
    levels = sample_levels(rng, system, 40)
    low, mid = levels.copy(), levels.copy()
    low[:, k], mid[:, k] = 0, middle
    shift = np.log(performance(rng, system, mid)) - np.log(performance(rng, system, low))
    gain = option.strengths[middle] - option.strengths[0]
    expected = np.full(len(levels), option.effects[middle] - option.effects[0])
    for i, j, effect in system.interactions:
        if k in (i, j):
            partner = j if i == k else i
            strengths = system.options[partner].interaction_strengths()
            expected += effect * gain * strengths[levels[:, partner]]
    np.testing.assert_allclose(shift, expected, atol=1e-9)
    a, b = prior_records(3, 50, kind="numeric"), prior_records(3, 50, kind="words")
    assert not a.equals(b)


def test_scaled_prior_multiplies_a_words_systems_effects_by_one_factor_of_its_own() -> None:
    words = word_effects(np.random.default_rng(3))
    factors = []
    for seed in range(6):
        plain = sample_system(np.random.default_rng(seed), 0, words)
        steep_or_flat = sample_system(np.random.default_rng(seed), 0, words, scaled_effects=True)
        assert [o.name for o in plain.options] == [o.name for o in steep_or_flat.options]
        pairs = [
            (a, b)
            for p, s in zip(plain.options, steep_or_flat.options, strict=True)
            for a, b in zip(p.effects, s.effects, strict=True)
            if a != 0
        ] + [
            (p[2], s[2])
            for p, s in zip(plain.interactions, steep_or_flat.interactions, strict=True)
        ]
        ratios = np.array([b / a for a, b in pairs])
        np.testing.assert_allclose(ratios, ratios[0])
        assert EFFECT_SCALES[0] <= ratios[0] <= EFFECT_SCALES[1]
        factors.append(ratios[0])
    assert max(factors) / min(factors) > 3  # systems differ in steepness, not only in effects
    assert not prior_records(3, 50, kind="scaled").equals(prior_records(3, 50, kind="words"))
