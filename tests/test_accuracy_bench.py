"""bench/accuracy.py's pure parts: the MAPE-optimal point, the scientific-number ablation, the
recipe's run names."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
import torch

from regressor import bundle_store
from regressor.config import PROJECT_ROOT, ResolvedPaths
from regressor.dataset import Examples
from regressor.environment import numeric_environment
from regressor.evaluation import point_metrics
from regressor.sources.runs import EXTRA_PAIR_MARK

sys.path.insert(0, str(PROJECT_ROOT / "bench"))  # the bench scripts import each other flat
import accuracy
import deepperf_protocol
import pool
import samples


def test_scientific_rewrites_numbers_only() -> None:
    assert accuracy.scientific("15150") == "1.515e4"
    assert accuracy.scientific("0.001") == "1e-3"
    assert accuracy.scientific("-4065") == "-4.065e3"
    for kept in ("c4.2xlarge", "0", "nan", "true", "[1,2]"):
        assert accuracy.scientific(kept) == kept


def test_run_names_say_what_differs_from_the_model_config() -> None:
    plain = accuracy.Recipe("mini")
    ablated = accuracy.Recipe("mini", 256, False, 0.2, 0.0)
    assert plain.run_suffix() == ""
    assert ablated.run_suffix() == "_in256_whole_numbers_dropout0.2_attn0"
    assert ablated.model_config().attention_dropout_rate == 0.0
    assert accuracy.Recipe("mini", dropout=0.2).model_config().attention_dropout_rate == 0.2


def examples(n: int, prefix: str) -> Examples:
    """n records of n // 3 distinct configurations (three repeated runs each)."""
    configs = [json.dumps({"nodes": i // 3}) for i in range(n)]
    ids = [f"{prefix}{i}" for i in range(n)]
    return Examples(ids, ["job"] * n, [f"nodes={i // 3}" for i in range(n)], np.ones(n), configs)


def test_cross_fit_validates_each_record_once_and_keeps_configurations_whole() -> None:
    parts = accuracy.Parts(examples(60, "t"), examples(9, "v"), examples(6, "x"), {})
    args = argparse.Namespace(cross_fit=True, refit=False, ensemble=4, dataset="c3o", seed=0)
    members = accuracy.member_parts(args, parts)
    pool = parts.fit_part()
    assert len(members) == 4
    validated = [rid for _, val in members for rid in val.record_ids]
    assert sorted(validated) == sorted(pool.record_ids)
    for train, val in members:
        assert len(train) + len(val) == len(pool)
        assert not set(train.config_json) & set(val.config_json)
    plain = argparse.Namespace(cross_fit=False, ensemble=3, refit=False)
    assert accuracy.member_parts(plain, parts) == [(parts.train, parts.val)] * 3


def test_refit_members_train_on_all_of_train_and_val_and_validate_on_nothing() -> None:
    parts = accuracy.Parts(examples(60, "t"), examples(9, "v"), examples(6, "x"), {})
    args = argparse.Namespace(cross_fit=False, ensemble=3, refit=True)
    members = accuracy.member_parts(args, parts)
    assert len(members) == 3
    for train, val in members:
        assert sorted(train.record_ids) == sorted(parts.fit_part().record_ids)
        assert len(val) == 0
    crossed = argparse.Namespace(cross_fit=True, refit=True, ensemble=3, steps=10)
    with pytest.raises(SystemExit, match="--refit"):
        accuracy.check_member_plan(crossed)
    with pytest.raises(SystemExit, match="--steps"):
        accuracy.check_member_plan(argparse.Namespace(cross_fit=False, refit=True, steps=None))


def test_extra_reference_pairs_train_but_are_never_scored() -> None:
    """`--reference-pairs all`: test and each member's validation keep the matched pairs only;
    the training pool (the members' and the peers') keeps every pairing."""
    ids = ["lumos/a/run_1", f"lumos/a/run_1{EXTRA_PAIR_MARK}ref_2", "lumos/b/run_1"]
    records = pl.DataFrame({"record_id": ids * 2})
    sides = np.array(["test"] * 3 + ["train"] * 3)
    kept, kept_sides = accuracy.matched_test_only(records, sides)
    assert kept["record_id"].to_list() == [ids[0], ids[2], *ids]
    assert kept_sides.tolist() == ["test"] * 2 + ["train"] * 3
    train = examples(60, "t")  # two of each configuration's three records are extra pairs
    extra = [
        f"{rid}{EXTRA_PAIR_MARK}ref" if i % 3 else rid for i, rid in enumerate(train.record_ids)
    ]
    paired = dataclasses.replace(train, record_ids=extra)
    parts = accuracy.Parts(paired, examples(9, "v"), examples(6, "x"), {})
    args = argparse.Namespace(cross_fit=True, refit=False, ensemble=4, dataset="c3o", seed=0)
    members = accuracy.member_parts(args, parts)
    assert sum(len(val) for _, val in members) == 20 + 9  # matched training records + val
    for fit, val in members:
        assert not any(EXTRA_PAIR_MARK in rid for rid in val.record_ids)
        assert any(EXTRA_PAIR_MARK in rid for rid in fit.record_ids)


def recipe_args(**given) -> argparse.Namespace:
    defaults = {
        "model": "mini",
        "dataset": "lumos",
        "number_tokens": None,
        "relative_to": None,
        "target": None,
        "max_input_tokens": None,
        "shuffle_fields": False,
        "dropout": None,
        "attention_dropout": None,
        "number_order": "mantissa-first",
    }
    return argparse.Namespace(**(defaults | given))


def test_target_forms_come_from_the_source_or_the_command_line() -> None:
    lumos = accuracy.recipe_of(recipe_args())
    assert (lumos.relative_to, lumos.mixed_target_forms) == ("reference.elapsed_time", False)
    mixed = accuracy.recipe_of(recipe_args(target="mixed"))
    assert mixed.mixed_target_forms
    assert mixed.run_suffix().endswith("_mixed")
    assert accuracy.recipe_of(recipe_args(target="absolute")).relative_to is None
    per_mb = accuracy.recipe_of(recipe_args(dataset="c3o", target="mixed", relative_to="size"))
    assert (per_mb.relative_to, per_mb.mixed_target_forms) == ("size", True)
    ordered = accuracy.recipe_of(recipe_args(number_order="exponent-first"))
    assert ordered.exponent_first
    assert ordered.run_suffix().endswith("_exponent_first")


def member_draws(seed: int, val_ids: list[str]) -> accuracy.MemberSamples:
    rng = np.random.default_rng(seed)
    return accuracy.MemberSamples(rng.random((3, 4)), rng.random((2, 4)), val_ids)


def test_member_samples_round_trip_and_group_by_validation_fold(tmp_path) -> None:
    members = [member_draws(0, ["v1", "v2"]), member_draws(1, ["v1", "v2"])]
    accuracy.save_member_samples(tmp_path / "a_samples.npz", ["t1", "t2", "t3"], members)
    run = pool.load_run(tmp_path, "a")
    assert run.test_ids.tolist() == ["t1", "t2", "t3"]
    assert [fold.val_ids.tolist() for fold in run.folds] == [["v1", "v2"]]
    for saved, member in zip(
        run.tests + run.folds[0].vals,
        [m.test for m in members] + [m.val for m in members],
        strict=True,
    ):
        np.testing.assert_array_equal(saved, member)
    folds = [member_draws(2, ["v1", "v2"]), member_draws(3, ["v3", "v4"])]
    accuracy.save_member_samples(tmp_path / "b_samples.npz", ["t1", "t2", "t3"], folds)
    crossed = pool.load_run(tmp_path, "b")
    assert [fold.val_ids.tolist() for fold in crossed.folds] == [["v1", "v2"], ["v3", "v4"]]
    with pytest.raises(SystemExit, match="other folds"):
        pool.pooled([run, crossed])
    again = [member_draws(4, ["v1", "v2"]), member_draws(5, ["v3", "v4"])]
    accuracy.save_member_samples(tmp_path / "c_samples.npz", ["t1", "t2", "t3"], again)
    both = pool.pooled([crossed, pool.load_run(tmp_path, "c")])
    assert both.n_members == 4
    np.testing.assert_array_equal(both.folds[1].vals[1], again[1].val)  # fold 1: b's, then c's


def test_refit_runs_pool_and_score_on_test_only(tmp_path, capsys) -> None:
    """Refit members validated on nothing (`--refit` saves empty draws): two such runs pool, and
    the scores print for test only, never a NaN validation score to choose by."""
    for name, seed in (("r1", 0), ("r2", 1)):
        rng = np.random.default_rng(seed)
        refit = [accuracy.MemberSamples(1 + rng.random((3, 4)), np.empty((0, 4)), [])] * 2
        accuracy.save_member_samples(tmp_path / f"{name}_samples.npz", ["t1", "t2", "t3"], refit)
    both = pool.pooled([pool.load_run(tmp_path, "r1"), pool.load_run(tmp_path, "r2")])
    assert both.n_members == 4
    assert [len(fold.val_ids) for fold in both.folds] == [0]
    y = np.array([1.5, 1.2, 1.8])
    pool.score("lumos_pool", both, dict(zip(["t1", "t2", "t3"], y, strict=True)))
    printed = capsys.readouterr().out
    assert "_val_" not in printed
    expected = point_metrics(y, pool.median(both.tests))["mape"]
    assert f"lumos_pool_test_mape: {expected:.4f}" in printed


def test_members_mean_metrics_score_each_member_alone_so_an_outvoted_member_counts() -> None:
    """Two members on the truth and one at ten times it: alone they average 300% MAPE, pooled the
    median is the truth. The validation score of cross-fitted members estimates the first."""
    y = np.array([1.0, 2.0, 3.0])
    exact = np.repeat(y[:, None], 4, axis=1)  # [N, draws]
    members = [exact, exact.copy(), exact * 10]
    alone = pool.members_mean_metrics(y, members)
    assert alone["mape"] == pytest.approx(300.0)
    assert alone["spearman"] == pytest.approx(1.0)
    assert point_metrics(y, pool.median(members))["mape"] == pytest.approx(0.0)


def test_patience_is_half_the_plan_in_validation_intervals() -> None:
    cfg = accuracy.load_train_config("demo")  # validates every 100 steps, patience 10
    assert (cfg.val_every_steps, cfg.early_stopping_patience) == (100, 10)
    assert accuracy.patience_for(cfg, 2300) == 11  # 1,100 steps, half the plan
    assert accuracy.patience_for(cfg, 600) == 10  # at least the config's 1,000 steps


def test_deepperf_cross_fit_members_validate_on_disjoint_folds_of_the_sample() -> None:
    sample = examples(23, "s")
    args = argparse.Namespace(cross_fit=True, ensemble=5, seed=0)
    parts = [deepperf_protocol.member_parts(sample, i, args, rep=1) for i in range(5)]
    vals = [set(val.record_ids) for _, val in parts]
    assert sorted(rid for v in vals for rid in v) == sorted(sample.record_ids)
    for (train, _), val in zip(parts, vals, strict=True):
        assert set(train.record_ids) == set(sample.record_ids) - val
    held_out = deepperf_protocol.member_parts(sample, 3, argparse.Namespace(cross_fit=False), 1)
    assert held_out[1].record_ids == sample.record_ids[18:]  # the last fifth, for every member


def test_deepperf_booleans_as_words_rewrites_only_zero_one_options() -> None:
    text = "<task>\nx264_AllNumeric\n<config>\nno_cabac=1\nref_1=0\nrc_lookahead=10\nscale=0.5"
    sample = dataclasses.replace(examples(1, "s"), texts=[text])
    words = deepperf_protocol.booleans_as_words(sample).texts[0]
    assert words.splitlines()[3:] == ["no_cabac=on", "ref_1=off", "rc_lookahead=10", "scale=0.5"]
    args = argparse.Namespace(model="mini", booleans="words", number_order="mantissa-first")
    assert deepperf_protocol.textperf_recipe(args).split_lines


def test_deepperf_rescore_rebuilds_a_member_that_draws_what_it_drew(tmp_path) -> None:
    """`--rescore` re-samples a finished member from its best checkpoint: the same draws as the
    trained member, not those of a fresh model (a real tiny fit, then the rebuild)."""
    rng = np.random.default_rng(0)
    options = rng.integers(0, 2, size=(24, 3))
    texts = [f"<task>\nS\n<config>\na={a}\nb={b}\nc={c}" for a, b, c in options]
    targets = 100.0 + 50.0 * options[:, 0] + 10.0 * options[:, 1]
    sample = Examples([f"r{i}" for i in range(24)], ["S"] * 24, texts, targets, ["{}"] * 24)
    train, val = sample.take(range(18)), sample.take(range(18, 24))
    # past the EMA's start (step 100), so the checkpoint holds trained weights
    args = argparse.Namespace(
        model="tiny", booleans="digits", minutes=1.0, steps=300, select_by="val_loss",
        rescore=False, number_order="mantissa-first",
    )  # fmt: skip
    priority = ("task", "config")
    trained = deepperf_protocol.textperf_fit(None, train, val, args, 3, tmp_path, priority)
    rebuilt = deepperf_protocol.saved_member(None, train, val, args, 3, tmp_path, priority)
    recipe, learnt = deepperf_protocol.textperf_recipe(args), sample.model_targets
    fresh = accuracy.new_predictor(recipe, train.texts, learnt, priority, 3)
    draws = [p.sample_texts(val.texts, 8, seed=1) for p in (trained, rebuilt, fresh)]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2], equal_nan=True)
    with pytest.raises(SystemExit, match="no such checkpoint"):
        deepperf_protocol.saved_member(None, train, val, args, 3, tmp_path / "none", priority)
    # a member fine-tuned from a base (as from the synthetic prior) is rebuilt from that base
    tuned_args = argparse.Namespace(**vars(args), fine_tune_steps=150, fine_tune_exact=False)
    tuned_dir = tmp_path / "tuned"
    tuned = deepperf_protocol.textperf_fit(trained, train, val, tuned_args, 4, tuned_dir, priority)
    again = deepperf_protocol.saved_member(trained, train, val, tuned_args, 4, tuned_dir, priority)
    tuned_draws = [p.sample_texts(val.texts, 8, seed=1) for p in (tuned, again)]
    np.testing.assert_array_equal(tuned_draws[0], tuned_draws[1])
    assert not np.array_equal(tuned_draws[0], draws[0], equal_nan=True)  # it did fine-tune


PRIOR_PRIORITY = ("task", "config", "logs")


def tiny_prior_args(rescore: bool) -> argparse.Namespace:
    """`--recipe synthetic`'s prior at test size: 3 systems x 20 records, `tiny`, 30 steps."""
    return argparse.Namespace(
        prior_systems=3, prior_records=20, prior_kind="words", model="tiny",
        pretrain_minutes=5, pretrain_steps=30, seed=0, booleans="digits", rescore=rescore,
        prior_seed=None, recipe="synthetic", store=None, neighbours=0,
        number_order="mantissa-first", cross_fit=False,
    )  # fmt: skip


def prior_report(printed: str) -> list[str]:
    """The prior's report lines: what it was trained with and its two MREs, not where it came
    from or went."""
    provenance = ("prior_records:", "prior_kept_in:", "prior_fetched_from:")
    lines = printed.splitlines()
    return [line for line in lines if line.startswith("prior_") and not line.startswith(provenance)]


def assert_same_weights(model: torch.nn.Module, other: torch.nn.Module) -> None:
    weights, others = model.state_dict(), other.state_dict()
    assert weights.keys() == others.keys()
    for name, value in weights.items():
        assert torch.equal(value, others[name]), name


def test_deepperf_synthetic_base_is_pretrained_once_then_loaded(tmp_path, capsys) -> None:
    """`--recipe synthetic` pretrains one model on generated systems (a real, tiny fit) and
    saves it under its length in steps; a second call, as from another system or process, loads
    the same weights."""
    args = tiny_prior_args(rescore=True)
    with pytest.raises(SystemExit, match="no saved prior to rescore"):
        deepperf_protocol.synthetic_base(args, tmp_path, PRIOR_PRIORITY)
    args.rescore = False
    first = deepperf_protocol.synthetic_base(args, tmp_path, PRIOR_PRIORITY)
    printed = capsys.readouterr().out
    assert "prior_records: " in printed
    assert "pretrain_steps: 30\n" in printed  # exactly the steps asked, not the minutes' worth
    saved = tmp_path / "checkpoints" / "deepperf_synthetic_words_3x20_tiny_30steps_seed0"
    assert (saved / "bundle").is_dir()
    assert "prior_val_mre: " in printed
    assert "prior_level_mre: " in printed
    assert f"prior_torch_threads: {torch.get_num_threads()}\n" in printed
    assert first.metadata["trained_with"] == numeric_environment()  # saved in the bundle
    again = deepperf_protocol.synthetic_base(args, tmp_path, PRIOR_PRIORITY)
    printed_again = capsys.readouterr().out
    assert "prior_records" not in printed_again  # loaded, not pretrained again
    assert printed_again.splitlines() == prior_report(printed)  # the same report, nothing else
    assert_same_weights(first.model, again.model)
    text = ["<task>\nLLVM_AllNumeric\n<config>\ngvn=1"]
    assert first.encode_texts(text) == again.encode_texts(text)


def test_deepperf_prior_is_kept_in_mlflow_and_fetched_where_it_is_missing(tmp_path, capsys):
    """A pretrained prior is logged to the MLflow store `--store` names (its bundle, what made
    it, its scores); a run elsewhere whose own directory lacks it, even with `--rescore`, fetches
    that prior instead of failing or pretraining another (a real tiny pretraining, a real store)."""
    store = tmp_path / "store"
    args = tiny_prior_args(rescore=False)
    args.store = str(store)
    first = deepperf_protocol.synthetic_base(args, tmp_path / "a", PRIOR_PRIORITY)
    printed = capsys.readouterr().out
    assert f"prior_kept_in: sqlite:///{store.resolve() / 'mlflow.db'}\n" in printed
    name = "deepperf_synthetic_words_3x20_tiny_30steps_seed0"
    paths = ResolvedPaths(var_dir=store.resolve())
    run = mlflow.get_run(bundle_store.kept_run_id(paths, name))
    assert run.data.params["kind"] == "words"
    assert run.data.params["length"] == "30steps"
    assert run.data.params["torch_threads"] == str(torch.get_num_threads())
    reported = float(re.search(r"prior_val_mre: ([\d.]+)", printed)[1])
    assert run.data.metrics["prior_val_mre"] == pytest.approx(reported, abs=0.005)
    args.rescore = True  # elsewhere, nothing local: fetched, never pretrained
    again = deepperf_protocol.synthetic_base(args, tmp_path / "b", PRIOR_PRIORITY)
    printed_again = capsys.readouterr().out
    assert "prior_fetched_from: " in printed_again
    assert "prior_records" not in printed_again
    assert prior_report(printed_again) == prior_report(printed)
    assert_same_weights(first.model, again.model)
    assert (tmp_path / "b" / "checkpoints" / name / "bundle" / "bundle.json").exists()
    assert bundle_store.kept_run_id(paths, name.replace("seed0", "seed1")) is None


def test_bundle_store_finds_nothing_in_an_empty_store_and_refuses_odd_names(tmp_path) -> None:
    paths = ResolvedPaths(var_dir=tmp_path)
    assert not bundle_store.fetch_bundle(paths, "prior_seed0", tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    with pytest.raises(ValueError, match="letters, digits"):
        bundle_store.kept_run_id(paths, "x' or tags.y = 'z")


def kept_prior(tmp_path: Path) -> ResolvedPaths:
    """A store under `tmp_path` keeping a two-file bundle as `prior_seed0`; its paths."""
    paths = ResolvedPaths(var_dir=tmp_path / "var")
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "bundle.json").write_text("{}")
    (kept / "weights.pt").write_bytes(b"w")
    bundle_store.keep_bundle(paths, "prior_seed0", kept, {}, {})
    mlflow.set_tracking_uri(None)
    return paths


def test_a_fetched_bundle_replaces_a_save_cut_short(tmp_path) -> None:
    """An interrupted save leaves the bundle folder without `bundle.json`: the fetch moved the
    download inside it (`bundle/bundle/`) and said it had succeeded."""
    paths = kept_prior(tmp_path)
    cut_short = tmp_path / "ckpt" / "bundle"
    cut_short.mkdir(parents=True)
    (cut_short / "weights.pt").write_bytes(b"half")
    assert bundle_store.fetch_bundle(paths, "prior_seed0", cut_short)
    mlflow.set_tracking_uri(None)
    assert sorted(p.name for p in cut_short.iterdir()) == ["bundle.json", "weights.pt"]
    assert (cut_short / "weights.pt").read_bytes() == b"w"


def test_a_bundle_another_process_landed_is_left_in_place(tmp_path) -> None:
    """Two processes fetching the same prior (`--textperf-first-rep` runs side by side): the
    later one deleted the bundle the first had landed and was loading, then moved its own in."""
    paths = kept_prior(tmp_path)
    landed = tmp_path / "ckpt" / "bundle"
    landed.mkdir(parents=True)
    (landed / "weights.pt").write_bytes(b"loading")
    (landed / "bundle.json").write_text("{}")
    before = (landed / "weights.pt").stat().st_ino
    assert bundle_store.fetch_bundle(paths, "prior_seed0", landed)
    mlflow.set_tracking_uri(None)
    assert (landed / "weights.pt").stat().st_ino == before  # the same file, never replaced
    assert sorted(p.name for p in landed.parent.iterdir()) == ["bundle"]  # no scratch left


def test_deepperf_exact_fine_tuning_is_not_cut_by_the_clock(tmp_path, capsys) -> None:
    """`--fine-tune-exact`: a fine-tuning whose minutes ran out long ago still takes its
    `--fine-tune-steps` (a real tiny prior, real fine-tunings), where without it the clock
    stops it; each fine-tuning prints its step count."""
    base = deepperf_protocol.synthetic_base(tiny_prior_args(False), tmp_path, PRIOR_PRIORITY)
    rng = np.random.default_rng(0)
    options = rng.integers(0, 2, size=(20, 2))
    texts = [f"<task>\nS\n<config>\na={a}\nb={b}" for a, b in options]
    sample = Examples(
        [f"r{i}" for i in range(20)], ["S"] * 20, texts, 10.0 + options[:, 0], ["{}"] * 20
    )
    train, val = sample.take(range(16)), sample.take(range(16, 20))
    steps = {}
    for exact in (False, True):
        args = argparse.Namespace(
            model="tiny", booleans="digits", minutes=1e-4, select_by="val_loss", rescore=False,
            fine_tune_steps=25, fine_tune_exact=exact,
        )  # fmt: skip
        capsys.readouterr()
        ckpt = tmp_path / "checkpoints" / f"exact_{exact}"
        deepperf_protocol.textperf_fit(base, train, val, args, 1, ckpt, PRIOR_PRIORITY)
        printed = capsys.readouterr().out
        steps[exact] = int(re.search(rf"exact_{exact}_fine_tune_steps: (\d+)", printed)[1])
    assert steps[True] == 25
    assert steps[False] < 25


def test_deepperf_prior_with_neighbours_reads_them_and_is_named_apart(tmp_path, capsys) -> None:
    """`--neighbours k`: the prior pretrains (a real tiny fit) on texts that end with each
    record's k nearest training records of its system, its report reads them too, and it and
    its members are named apart from a prior without them."""
    args = tiny_prior_args(rescore=False)
    plain_tag = deepperf_protocol.recipe_tag(args)
    args.neighbours = 2
    base = deepperf_protocol.synthetic_base(args, tmp_path, PRIOR_PRIORITY)
    assert "prior_val_mre: " in capsys.readouterr().out
    name = "deepperf_synthetic_words_3x20_tiny_nb2_30steps_seed0"
    assert (tmp_path / "checkpoints" / name / "bundle").is_dir()
    assert deepperf_protocol.recipe_tag(args) == plain_tag.replace("_tiny_", "_tiny_nb2_")
    args.neighbours = 0  # the same seed, records and steps without them
    plain = deepperf_protocol.synthetic_base(args, tmp_path, PRIOR_PRIORITY)
    # its tokenizer learnt from texts with the section: its header costs fewer tokens
    header = "<neighbours>"
    assert base.tokenizer.count_tokens(header) < plain.tokenizer.count_tokens(header)


def test_deepperf_prior_writing_exponents_first_is_named_apart_and_kept_so(tmp_path) -> None:
    """`--number-order exponent-first`: the prior (a real tiny fit) writes `[sign][exponent]
    [digits]`, is saved and named apart from the usual order, and loads back with its codec, so
    the members fine-tuned from it write numbers the same way."""
    args = tiny_prior_args(rescore=False)
    plain_tag = deepperf_protocol.recipe_tag(args)
    args.number_order = "exponent-first"
    base = deepperf_protocol.synthetic_base(args, tmp_path, PRIOR_PRIORITY)
    name = "deepperf_synthetic_words_3x20_tiny_ef_30steps_seed0"
    assert (tmp_path / "checkpoints" / name / "bundle").is_dir()
    assert deepperf_protocol.recipe_tag(args) == plain_tag.replace("_tiny_", "_tiny_ef_")
    assert base.codec.exponent_first
    assert base.codec.describe(base.codec.encode([12.5]))[0].startswith("+ E1 1 2 5")
    args.rescore = True  # loads the saved prior, never pretrains another
    assert deepperf_protocol.synthetic_base(args, tmp_path, PRIOR_PRIORITY).codec.exponent_first


def test_deepperf_prior_pretrained_again_on_the_same_threads_has_the_same_weights(
    tmp_path,
) -> None:
    """Pretraining is a function of its seed, data, configs and `numeric_environment`: a second
    pretraining in another directory, on the same threads and CPU, gives bit-identical weights
    (one thread and two do not: README, "Accuracy")."""
    args = tiny_prior_args(rescore=False)
    first, second = (
        deepperf_protocol.synthetic_base(args, tmp_path / out, PRIOR_PRIORITY) for out in ("a", "b")
    )
    assert first.metadata["trained_with"] == second.metadata["trained_with"]
    assert_same_weights(first.model, second.model)


def test_deepperf_member_names_tell_seeds_models_and_cross_fits_apart() -> None:
    """Members' checkpoints and samples were named by recipe and repetition only: `--seed 1`
    (other folds, other weights) wrote over `--seed 0`'s samples, and `--rescore --seed 1`
    re-sampled seed 0's members as if they were its own; `--model` and `--cross-fit` likewise.
    The defaults keep the older names, so earlier runs still load and pool."""
    args = tiny_prior_args(rescore=False)
    args.recipe, args.model = "scratch", "small"
    assert deepperf_protocol.recipe_tag(args) == "scratch"
    tags = {deepperf_protocol.recipe_tag(args)}
    for change in ({"seed": 1}, {"model": "tiny"}, {"cross_fit": True}):
        tags.add(deepperf_protocol.recipe_tag(argparse.Namespace(**{**vars(args), **change})))
    args.recipe = "synthetic"
    tags.add(deepperf_protocol.recipe_tag(args))
    tags.add(deepperf_protocol.recipe_tag(argparse.Namespace(**{**vars(args), "seed": 1})))
    assert len(tags) == 6, tags


def test_deepperf_prior_seed_draws_another_prior_of_the_same_kind(tmp_path) -> None:
    """`--prior-seed` draws another prior (other systems, initial weights) saved beside the
    first, and names its members apart; without it the prior follows `--seed` and the member
    names stay as they were, so older runs' checkpoints and samples still load and pool."""
    args = tiny_prior_args(rescore=False)
    first = deepperf_protocol.synthetic_base(args, tmp_path, PRIOR_PRIORITY)
    tag = deepperf_protocol.recipe_tag(args)
    assert tag == "synthetic_words_3x20_tiny_30steps"
    args.prior_seed = 1
    other = deepperf_protocol.synthetic_base(args, tmp_path, PRIOR_PRIORITY)
    assert (tmp_path / "checkpoints" / "deepperf_synthetic_words_3x20_tiny_30steps_seed1").is_dir()
    assert deepperf_protocol.recipe_tag(args) == f"{tag}_prior1"
    assert args.seed == 0  # pretrained on a copy: --seed, which the folds follow, is untouched
    weights, others = first.model.state_dict(), other.model.state_dict()
    assert any(not torch.equal(value, others[name]) for name, value in weights.items())


def test_peers_read_the_logs_where_the_targets_depend_on_them() -> None:
    small = "lightgbm_smallcat"  # LightGBM splitting on categories of a few rows
    config_only = {"mean", "lightgbm", "xgboost", "lightgbm_log", "xgboost_log"}
    config_only |= {small, f"{small}_log"}
    with_logs = config_only | {"lightgbm_logs", "xgboost_logs", f"{small}_logs"}
    assert set(accuracy.peers_of("c3o")) == set(accuracy.peers_of("deepperf")) == config_only
    assert set(accuracy.peers_of("fleet")) == with_logs
    ratio = {"lightgbm_ratio", "xgboost_ratio", f"{small}_ratio", "ratio_rule"}
    assert set(accuracy.peers_of("lumos")) == with_logs | ratio


def test_the_peers_go_without_the_field_the_split_groups_by() -> None:
    """lumos' test workloads are none of training's, so the column was missing on every test
    row, and XGBoost sent them down branches fitted on rows that had it. Other configs keep
    every field; `--peers-keep-group-field` gives it as before."""
    configs = [json.dumps({"workload": f"w{i % 3}", "size": i}) for i in range(6)]
    sample = Examples([f"r{i}" for i in range(6)], ["t"] * 6, ["x"] * 6, np.ones(6), configs)
    parts = accuracy.Parts(sample.take([0, 1]), sample.take([2, 3]), sample.take([4, 5]), {})
    peers = accuracy.for_peers(parts, "lumos")
    for side in accuracy.SIDES:
        kept = [json.loads(c) for c in getattr(peers, side).config_json]
        assert [set(c) for c in kept] == [{"size"}, {"size"}]
        assert getattr(peers, side).texts == getattr(parts, side).texts  # textperf's unchanged
    assert accuracy.for_peers(parts, "lumos", keep_group_field=True) is parts
    assert accuracy.for_peers(parts, "c3o") is parts


def test_log_peers_use_the_log_summary_columns() -> None:
    """A target set by one log statistic: the peer with the logs predicts it, the config-only
    LightGBM cannot (a real fit on both)."""
    rng = np.random.default_rng(0)
    load = rng.uniform(0.1, 0.9, size=300)
    targets = 100.0 * np.exp(2.0 * load)
    logs = [json.dumps({"util": {"mean": float(v)}}) for v in load]
    sample = Examples(
        [f"r{i}" for i in range(300)], ["t"] * 300, ["x"] * 300, targets, ['{"cell": "a"}'] * 300
    )
    parts = accuracy.Parts(
        sample.take(range(200)), sample.take(range(200, 220)), sample.take(range(220, 300)),
        dict(zip(sample.record_ids, logs, strict=True)),
    )  # fmt: skip
    y = parts.test.targets
    with_logs = accuracy.peers_of("fleet")["lightgbm_logs"](parts, 0)
    config_only = accuracy.peers_of("fleet")["lightgbm"](parts, 0)
    assert np.mean(np.abs(with_logs - y) / y) < 0.05
    assert np.mean(np.abs(config_only - y) / y) > 0.2


def test_deepperf_runs_save_their_members_draws_for_pool_to_score_the_same(
    tmp_path, capsys
) -> None:
    """A real tiny cross-fitted repetition on a made-up binary-numeric system: its members' draws
    land where `bench/pool.py` reads them, one validation fold per member, and the pool's score
    of that single run is the MRE the protocol printed."""
    rng = np.random.default_rng(0)
    n = 70
    cells, pre = rng.integers(50, 56, size=n), rng.integers(0, 7, size=n)
    config = zip(cells, pre, strict=True)
    texts = [f"<task>\nDune_AllNumeric\n<config>\ncells={c}\npre={p}" for c, p in config]
    targets = 1000.0 + 40.0 * (cells - 50) - 30.0 * pre
    ids = [f"deepperf/Dune:{i}" for i in range(n)]
    sample = Examples(ids, ["Dune"] * n, texts, targets, ["{}"] * n)
    args = argparse.Namespace(
        model="tiny", booleans="digits", minutes=1.0, steps=300, select_by="val_loss",
        rescore=False, recipe="scratch", textperf_size=1, textperf_reps=1, textperf_first_rep=0,
        ensemble=2, cross_fit=True, seed=0, temperature=1.0, neighbours=0,
        number_order="mantissa-first",
    )  # fmt: skip
    deepperf_protocol.run_textperf("Dune", sample, None, args, tmp_path)
    printed = capsys.readouterr().out
    mre, val_mre = (
        float(re.search(rf"deepperf_Dune_49_textperf_rep0_{key}: ([\d.]+)", printed).group(1))
        for key in ("mre", "val_mre")
    )
    run = pool.load_run(tmp_path, "deepperf_Dune_49_scratch_tiny_cf_0")
    assert run.n_members == 2
    assert len(run.folds) == 2
    validated = sorted(rid for fold in run.folds for rid in fold.val_ids)
    assert len(validated) == 49 == len(set(validated))  # the sample, each record once
    assert len(run.test_ids) == n - 49
    target = dict(zip(ids, targets, strict=True))
    pool.score("deepperf_pool", run, target)
    scored = capsys.readouterr().out
    mape, val_mape = (
        float(re.search(rf"deepperf_pool_{part}_mape: ([\d.]+)", scored).group(1))
        for part in ("test", "val")
    )
    assert mape == pytest.approx(mre, abs=0.01)
    assert val_mape == pytest.approx(val_mre, abs=0.01)  # one member per fold: its own error


def test_the_samples_sweep_scores_every_k_on_the_records_served():
    """One undecodable draw made a record NaN under plain `np.median`, so each K was scored on
    fewer, other records; now each chunk's finite draws count, as served, and `n_failed` says
    how many records had none."""
    y = np.arange(1.0, 9.0)
    draws = np.repeat(y[:, None], 4, axis=1)
    draws[0, 1] = np.nan  # one bad draw of record 0
    draws[1, :2] = np.nan  # record 1: no number in the first 2-draw chunk
    scores = dict(samples.sweep(y, draws))
    assert scores[4]["median_mape"] == scores[4]["mean_mape"] == 0.0
    assert scores[4]["median_n_failed"] == 0.0
    assert scores[2]["median_n_failed"] == 0.5  # chunk 1 lost record 1, chunk 2 nothing
    assert scores[1]["mean_n_failed"] == 0.75  # 3 bad draws over 4 one-draw chunks


def test_the_samples_sweep_mixes_an_ensembles_members():
    """An ensemble's draws come member by member, so a K-chunk held one member's draws only
    and small K scored that member alone; shuffled per row, every chunk of two holds both."""
    y = np.ones(200)
    laid_out = np.repeat([[0.7] * 8 + [1.3] * 8], 200, axis=0)  # two members, 30% off each way
    mixed = samples.mixed_draws(laid_out, seed=0)
    assert np.array_equal(np.sort(mixed, 1), np.sort(laid_out, 1))  # the same draws per row
    assert dict(samples.sweep(y, laid_out))[4]["mean_mape"] == pytest.approx(30.0)
    assert dict(samples.sweep(y, mixed))[4]["mean_mape"] < 20.0


def test_deepperf_seed_reaches_every_repetition_and_keeps_seed_0s():
    """`--seed` did not reach the peers or the sampling, and `--seed 1` repetition 0 trained as
    `--seed 0` repetition 1; seed 0's repetitions keep the seeds its reported runs used."""
    seeds = {
        (seed, rep): deepperf_protocol.rep_seed(argparse.Namespace(seed=seed), rep)
        for seed in range(3)
        for rep in range(30)
    }
    assert [seeds[0, rep] for rep in range(30)] == list(range(30))
    assert len(set(seeds.values())) == len(seeds)


def test_deepperf_names_the_published_peer_of_each_system(capsys) -> None:
    """DeepPerf's README lists DECART for binary systems and SPLConqueror for binary-numeric
    ones; the protocol printed both as `decart_published_mre`."""
    deepperf_protocol.emit_published("p", "x264", 2)
    deepperf_protocol.emit_published("q", "Dune", 2)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "p_deepperf_published_mre: 2.13",
        "p_decart_published_mre: 6.37",
        "q_deepperf_published_mre: 8.19",
        "q_splconqueror_published_mre: 10.6",
    ]
