"""Ensembles in the product: K member models behind one predictor, their samples pooled.

Sampling splits the requested samples among the members, each with its own generator; bundles
hold every member's weights and still load when written before ensembles; members must share
the tokenizer and codec; relative targets scale pooled samples; adaptation keeps the members.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_adaptation import _shots

from regressor.adaptation import fine_tune, train_from_scratch
from regressor.config import AdaptConfig, CodecConfig, TrainConfig, load_model_config
from regressor.dataset import Examples
from regressor.ensemble import (
    absolute_members_of,
    combine_fits,
    member_config,
    member_dir,
    train_member,
)
from regressor.environment import TRAINED_WITH, numeric_environment
from regressor.predictor import (
    BUNDLE_DIGEST,
    BUNDLE_FILE,
    CorruptBundleError,
    Predictor,
    member_seed,
    sample_shares,
)
from regressor.sampling import summarize
from regressor.training import FitResult
from regressor.vocab import InputTokenizer

TEXTS = [f"<config>\nload={i}\nqueue={i % 7}" + "\nnote=x" * (i % 4) for i in range(11)]
CODEC = CodecConfig(exponent_min=-3, exponent_max=3)


def single(seed: int, tokenizer: InputTokenizer, **create) -> Predictor:
    torch.manual_seed(seed)
    return Predictor.create(load_model_config("tiny"), CODEC, tokenizer, **create)


@pytest.fixture(scope="module")
def tokenizer() -> InputTokenizer:
    return InputTokenizer.train(TEXTS, 300)


@pytest.fixture(scope="module")
def members(tokenizer: InputTokenizer) -> list[Predictor]:
    return [single(seed, tokenizer) for seed in (0, 1, 2)]


def draws(predictor: Predictor, num_samples: int, seed: int, **kw) -> np.ndarray:
    return predictor.sample_texts(TEXTS, num_samples, seed=seed, batch_size=4, **kw)


def test_samples_split_evenly_first_members_take_the_rest() -> None:
    assert sample_shares(32, 1) == [32]
    assert sample_shares(8, 3) == [3, 3, 2]
    assert sample_shares(2, 3) == [1, 1, 0]
    assert member_seed(5, 0) == 5  # a single model samples as it always did


def test_ensemble_samples_are_each_members_own_draws_concatenated(members) -> None:
    ensemble = Predictor.ensemble(members)
    pooled = draws(ensemble, 8, seed=3)
    assert pooled.shape == (len(TEXTS), 8)
    shares = [3, 3, 2]
    expected = [
        draws(m, n, member_seed(3, j)) for j, (m, n) in enumerate(zip(members, shares, strict=True))
    ]
    np.testing.assert_array_equal(pooled, np.concatenate(expected, axis=1))
    # The members differ, and so do their draws: the pool is not one model's samples repeated.
    assert not np.array_equal(pooled[:, :2], pooled[:, 3:5])
    # Fewer samples than members: the last member draws nothing, the shape still holds.
    few = [draws(m, 1, member_seed(3, j)) for j, m in enumerate(members[:2])]
    np.testing.assert_array_equal(draws(ensemble, 2, seed=3), np.concatenate(few, axis=1))


def test_one_member_samples_exactly_as_a_single_model(members, tokenizer) -> None:
    one = Predictor.ensemble(members[:1])
    np.testing.assert_array_equal(draws(one, 5, seed=7), draws(members[0], 5, seed=7))
    assert one.model is members[0].model
    # Built the way it was before ensembles, from one bare model.
    legacy = Predictor(members[0].model, tokenizer, members[0].codec, one.model_config, CODEC)
    assert legacy.members == [members[0].model]
    assert legacy.ensemble_size == 1


def test_save_and_load_give_identical_samples(members, tmp_path: Path) -> None:
    ensemble = Predictor.ensemble(members)
    ensemble.save(tmp_path / "bundle")
    bundle = json.loads((tmp_path / "bundle" / BUNDLE_FILE).read_text())
    assert bundle["ensemble_size"] == 3
    assert set(bundle["checksums"]) == {
        "tokenizer.json",
        "weights.pt",
        "weights_1.pt",
        "weights_2.pt",
    }
    loaded = Predictor.load(tmp_path / "bundle")
    assert loaded.ensemble_size == 3
    np.testing.assert_array_equal(draws(loaded, 9, seed=1), draws(ensemble, 9, seed=1))


def test_a_corrupted_member_fails_the_load(members, tmp_path: Path) -> None:
    bundle = Predictor.ensemble(members[:2]).save(tmp_path / "bundle")
    weights = bundle / "weights_1.pt"
    weights.write_bytes(weights.read_bytes()[:-16])
    with pytest.raises(CorruptBundleError, match=r"weights_1\.pt is corrupted"):
        Predictor.load(bundle)


def test_an_altered_bundle_json_fails_the_load_naming_it(members, tmp_path: Path) -> None:
    """bundle.json was the one file no checksum covered: one changed digit of the conformal
    scale loaded without a word and moved every served interval. Content that parses but
    builds no model (a key gone) was a KeyError, a traceback through `textperf predict`."""
    bundle = members[0].save(tmp_path / "bundle")
    path = bundle / BUNDLE_FILE
    saved = json.loads(path.read_text())
    altered = {**saved, "metadata": {**saved["metadata"], "note": "edited"}}
    path.write_text(json.dumps(altered))
    with pytest.raises(CorruptBundleError, match=r"bundle\.json is corrupted"):
        Predictor.load(bundle)
    incomplete = {k: v for k, v in saved.items() if k not in ("model_config", BUNDLE_DIGEST)}
    path.write_text(json.dumps(incomplete))
    with pytest.raises(CorruptBundleError, match=r"bundle\.json does not build a model: KeyError"):
        Predictor.load(bundle)
    path.write_text(json.dumps(saved, indent=4))  # other whitespace, same content: loads
    assert Predictor.load(bundle).ensemble_size == 1


def test_a_bundle_saved_before_ensembles_still_loads(members, tmp_path: Path) -> None:
    """The old layout: no `ensemble_size` (nor `relative_to`), one `weights.pt`."""
    bundle = members[0].save(tmp_path / "old")
    meta = json.loads((bundle / BUNDLE_FILE).read_text())
    for key in ("ensemble_size", "relative_to", BUNDLE_DIGEST):
        del meta[key]
    assert set(meta["checksums"]) == {"tokenizer.json", "weights.pt"}
    (bundle / BUNDLE_FILE).write_text(json.dumps(meta))
    loaded = Predictor.load(bundle)
    assert loaded.ensemble_size == 1
    np.testing.assert_array_equal(draws(loaded, 6, seed=2), draws(members[0], 6, seed=2))


def test_members_must_share_tokenizer_and_codec(members, tokenizer) -> None:
    other_tokenizer = InputTokenizer.train([t.upper() * 2 for t in TEXTS], 290)
    with pytest.raises(ValueError, match=r"predictor 1 differs .* in its tokenizer"):
        Predictor.ensemble([members[0], single(1, other_tokenizer)])
    torch.manual_seed(1)
    other_codec = Predictor.create(load_model_config("tiny"), CodecConfig(), tokenizer)
    with pytest.raises(ValueError, match=r"predictor 1 differs .* in its codec config"):
        Predictor.ensemble([members[0], other_codec])
    relative = single(1, tokenizer, relative_to="reference.t")
    with pytest.raises(ValueError, match="relative_to"):
        Predictor.ensemble([members[0], relative])
    with pytest.raises(ValueError, match="at least one"):
        Predictor.ensemble([])


def test_relative_scales_multiply_pooled_samples(tokenizer) -> None:
    ensemble = Predictor.ensemble([single(s, tokenizer, relative_to="reference.t") for s in (0, 1)])
    scales = np.linspace(0.5, 30.0, len(TEXTS))
    with pytest.raises(ValueError, match="pass each text's scale"):
        draws(ensemble, 4, seed=0)
    ratios = ensemble.sample_texts(TEXTS, 4, scales=np.ones(len(TEXTS)))
    scaled = ensemble.sample_texts(TEXTS, 4, scales=scales)
    np.testing.assert_array_equal(scaled, ratios * scales[:, None])
    summary = ensemble.predict_texts(TEXTS, 4, scales=scales)  # the pyfunc's and evaluation's path
    np.testing.assert_array_equal(summary["samples"], scaled)


def mixed_pair(tokenizer: InputTokenizer) -> Predictor:
    """Member 0 learns target / reference.t, member 1 the target itself."""
    relative = single(0, tokenizer, relative_to="reference.t")
    absolute = single(1, tokenizer, relative_to="reference.t", absolute_members=(0,))
    return Predictor.ensemble([relative, absolute])


def test_a_mixed_ensemble_scales_only_its_relative_members(tokenizer, tmp_path: Path) -> None:
    mixed = mixed_pair(tokenizer)
    assert mixed.absolute_members == (1,)
    assert [mixed.learns_relative(j) for j in (0, 1)] == [True, False]
    assert [mixed.member(j).absolute_members for j in (0, 1)] == [(), (0,)]
    scales = np.linspace(0.5, 30.0, len(TEXTS))
    pooled = draws(mixed, 6, seed=3, scales=scales)
    unscaled = draws(mixed, 6, seed=3, scales=np.ones(len(TEXTS)))
    np.testing.assert_array_equal(pooled[:, :3], unscaled[:, :3] * scales[:, None])
    np.testing.assert_array_equal(pooled[:, 3:], unscaled[:, 3:])  # the target itself
    loaded = Predictor.load(mixed.save(tmp_path / "mixed"))
    assert loaded.absolute_members == (1,)
    np.testing.assert_array_equal(draws(loaded, 6, seed=3, scales=scales), pooled)
    # Pooling re-numbers: [mixed, mixed] has absolute members 1 and 3.
    assert Predictor.ensemble([mixed, mixed]).absolute_members == (1, 3)
    with pytest.raises(ValueError, match="name no member"):
        Predictor.create(load_model_config("tiny"), CODEC, tokenizer, absolute_members=(1,))


def test_each_member_learns_its_own_form() -> None:
    examples = Examples(
        record_ids=["a", "b"],
        tasks=["t", "t"],
        texts=["x", "y"],
        targets=np.array([50.0, 8.0]),
        config_json=["{}", "{}"],
        scales=np.array([100.0, 4.0]),
    )
    tokenizer = InputTokenizer.train(TEXTS, 300)
    mixed = mixed_pair(tokenizer)
    np.testing.assert_allclose(mixed.member(0).model_targets(examples), [0.5, 2.0])
    np.testing.assert_array_equal(mixed.member(1).model_targets(examples), [50.0, 8.0])
    plain = single(0, tokenizer)  # an absolute predictor ignores any baselines it is given
    np.testing.assert_array_equal(plain.model_targets(examples), [50.0, 8.0])
    assert absolute_members_of(5, True) == (1, 3)
    assert absolute_members_of(5, False) == absolute_members_of(1, True) == ()


def test_calibration_and_summaries_run_on_the_pool(members) -> None:
    ensemble = Predictor.ensemble(members)
    targets = np.linspace(1.0, 10.0, len(TEXTS))
    scale = ensemble.calibrate(TEXTS, targets, num_samples=6)
    assert np.isfinite(scale)  # the pooled samples are finite (exponents -3..3): it fits
    assert ensemble.metadata["interval_scale"]["scale"] == scale
    summary = ensemble.predict_texts(TEXTS, 6)
    assert summary["samples"].shape == (len(TEXTS), 6)
    np.testing.assert_array_equal(summary["median"], summarize(summary["samples"])["median"])
    # Combining drops a member's conformal scale: it does not fit the pooled intervals.
    assert "interval_scale" not in Predictor.ensemble([ensemble]).metadata


def test_member_configs_dirs_and_combined_fits(tmp_path: Path) -> None:
    cfg = TrainConfig(seed=7)
    assert member_config(cfg, 0) is cfg
    assert [member_config(cfg, i).seed for i in (1, 2)] == [1007, 2007]
    assert member_dir(tmp_path, 0, 1) == tmp_path
    assert member_dir(tmp_path, 1, 3) == tmp_path / "member1"
    fits = [FitResult(10, 1.5, 0.4, "a"), FitResult(6, 2.5, 0.6, "b")]
    combined = combine_fits(fits)
    assert (combined.steps, combined.seconds, combined.best_checkpoint) == (16, 4.0, "a")
    assert combined.best_val_score == pytest.approx(0.5)
    assert combine_fits(fits[:1]) is fits[0]


@pytest.fixture(scope="module")
def base_pair() -> Predictor:
    """A 2-member ensemble on the adaptation tests' shots (2 decoder layers, as there)."""
    shots = _shots()
    tokenizer = InputTokenizer.train(shots.texts, 300)
    model_cfg = load_model_config("tiny").model_copy(update={"n_decoder_layers": 2})
    pair = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        pair.append(Predictor.create(model_cfg, CODEC, tokenizer))
    return Predictor.ensemble(pair)


def changed_keys(before: torch.nn.Module, after: torch.nn.Module) -> set[str]:
    old, new = before.state_dict(), after.state_dict()
    assert old.keys() == new.keys()
    return {k for k in old if not torch.equal(old[k], new[k])}


def tiny_train() -> TrainConfig:
    return TrainConfig(
        batch_size=4, lr=1e-2, warmup_steps=1, max_steps=4, val_every_steps=2, progress_bar=False
    )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fine_tuning_an_ensemble_adapts_every_member(base_pair, tmp_path: Path, method) -> None:
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in base_pair.members]
    cfg = AdaptConfig(n_shots=16, max_steps=4, lr=1e-2, val_fraction=0.25, method=method)
    curves: list[str] = []  # the prefixes each member's curves would be logged under
    adapted, fitted = fine_tune(
        base_pair, _shots(), cfg, tiny_train(), tmp_path, lambda p: curves.append(p) or False
    )
    assert curves == ["adapt/member0", "adapt/member1"]
    assert adapted.ensemble_size == 2
    assert adapted.tokenizer is not base_pair.tokenizer  # a copy: the base stays untouched
    for j, (old, new) in enumerate(zip(base_pair.members, adapted.members, strict=True)):
        changed = changed_keys(old, new)
        assert changed, f"member {j} was not adapted"
        if method == "lora":  # merged: plain weights, only the attention and MLP linears moved
            linears = (".qkv.weight", ".q.weight", ".kv.weight", ".out.weight", ".up.weight")
            assert all(k.endswith(linears) for k in changed), changed
        assert all(torch.equal(before[j][k], v) for k, v in old.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["member0", "member1"]
    # Both members' steps, summed: 4 each (patience outlasts 4 validations), and the records
    # each trained and stopped on (12 and the latest 4 of the 16 shots).
    assert fitted.steps == 2 * cfg.max_steps
    assert (fitted.n_train, fitted.n_val) == (12, 4)
    # fine_tune sets it on the ensemble itself: the members' views only write their own copies
    assert adapted.metadata[TRAINED_WITH] == numeric_environment()
    assert TRAINED_WITH not in base_pair.metadata
    assert adapted.sample_texts(_shots(3).texts, 5).shape == (3, 5)


def test_from_scratch_on_an_ensemble_trains_as_many_members(base_pair, tmp_path: Path) -> None:
    cfg = AdaptConfig(n_shots=16, max_steps=4, val_fraction=0.25, scratch_max_minutes=0.5)
    scratch, fitted = train_from_scratch(base_pair, _shots(), cfg, tiny_train(), tmp_path)
    assert scratch.ensemble_size == 2
    assert scratch.tokenizer is base_pair.tokenizer
    assert changed_keys(scratch.members[0], scratch.members[1])  # seeded apart
    assert fitted.steps > 0


def test_an_absolute_member_trains_and_reloads_in_its_own_form(tmp_path: Path) -> None:
    """`train_member(absolute=True)` of a relative template: flagged absolute when trained and
    when a rerun loads it finished (its weights were fitted to the targets themselves)."""
    shots = _shots()
    shots = Examples(*dataclasses.astuple(shots)[:5], scales=np.full(len(shots), 10.0))
    tokenizer = InputTokenizer.train(shots.texts, 300)
    template = single(0, tokenizer, relative_to="reference.t")
    train, val = shots.take(list(range(12))), shots.take(list(range(12, 16)))
    args = (template, train, val, tiny_train(), tmp_path, False)
    member, fitted = train_member(*args, absolute=True)
    assert member.absolute_members == (0,)
    assert fitted.steps > 0
    np.testing.assert_array_equal(member.model_targets(train), train.targets)
    again, _ = train_member(*args, absolute=True)  # finished: loaded, not trained
    assert again.absolute_members == (0,)
    for name, tensor in member.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name])
