"""Few-shot adaptation methods change only what they should; merged LoRA equals the adapters."""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from test_reliability_training import sigkill, start_child, wait_for_line

from regressor import jobs, pipeline, registry, report
from regressor.adaptation import (
    MIN_CALIBRATION_SHOTS,
    adaptation_train_config,
    fine_tune,
    freeze_for,
    hold_out_gate,
    recalibrate,
    scratch_train_config,
    split_shots,
    train_from_scratch,
)
from regressor.calibration import IntervalScale, fit_interval_scale
from regressor.config import (
    AdaptConfig,
    AppConfig,
    CodecConfig,
    EvalConfig,
    PromotionRule,
    ResolvedPaths,
    TrainConfig,
    load_model_config,
    load_train_config,
)
from regressor.dataset import Examples
from regressor.environment import TRAINED_WITH, numeric_environment
from regressor.lora import LoRALinear, add_lora, merge_lora
from regressor.predictor import Predictor, pad_batch
from regressor.tracking import configure_mlflow
from regressor.training import fit_examples
from regressor.vocab import InputTokenizer


def _shots(n: int = 16) -> Examples:
    texts = [f"<task>\ncell-z\n<config>\nthreads={i % 5}\nmem={i % 3}" for i in range(n)]
    targets = np.array([0.1 + 0.05 * (i % 5) + 0.01 * (i % 3) for i in range(n)])
    return Examples([str(i) for i in range(n)], ["cell-z"] * n, texts, targets, ["{}"] * n)


def untrained_base() -> Predictor:
    shots = _shots()
    torch.manual_seed(0)
    predictor = Predictor.create(
        load_model_config("tiny").model_copy(update={"n_decoder_layers": 2}),
        CodecConfig(exponent_min=-3, exponent_max=3),
        InputTokenizer.train(shots.texts, 300),
    )
    predictor.model.eval()
    return predictor


@pytest.fixture(scope="module")
def base() -> Predictor:
    return untrained_base()


def _adapt(base: Predictor, tmp_path: Path, **update) -> Predictor:
    cfg = AdaptConfig(n_shots=16, max_steps=4, lr=1e-2, val_fraction=0.25, **update)
    adapted, _ = fine_tune(base, _shots(), cfg, load_train_config("tiny"), tmp_path)
    return adapted


def _changed(before: Predictor, after: Predictor) -> set[str]:
    old, new = before.model.state_dict(), after.model.state_dict()
    assert old.keys() == new.keys()  # merged adapters leave the original layout
    return {k for k in old if not torch.equal(old[k], new[k])}


def test_last_layers_changes_only_the_last_decoder_block_norm_and_head(base, tmp_path: Path):
    changed = _changed(base, _adapt(base, tmp_path, method="last_layers"))
    assert changed
    allowed = ("decoder.1.", "decoder_norm.", "head.")
    assert all(k.startswith(allowed) for k in changed), changed
    assert any(k.startswith("head.") for k in changed)


def test_lora_changes_only_attention_and_mlp_linears(base, tmp_path: Path):
    changed = _changed(base, _adapt(base, tmp_path, method="lora", lora_rank=2))
    assert changed
    linears = (".qkv.weight", ".q.weight", ".kv.weight", ".out.weight", ".up.weight")
    assert all(k.endswith(linears) for k in changed), changed
    assert not any("embed" in k or "norm" in k or k.startswith("head.") for k in changed)


def test_full_fine_tuning_leaves_the_base_untouched(base, tmp_path: Path):
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    adapted = _adapt(base, tmp_path, method="full")
    changed = _changed(base, adapted)
    assert any(k.startswith("src_embed") for k in changed)
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())
    # the adapted weights carry where they were trained (a bundle keeps it); the base does not
    assert adapted.metadata[TRAINED_WITH] == numeric_environment()
    assert TRAINED_WITH not in base.metadata


def test_fine_tuning_picks_its_checkpoint_by_the_train_configs_monitor(base, tmp_path: Path):
    """A few shots' cross-entropy rises while the median still improves (README "Accuracy"), so
    fine-tuning honours `select_by` like a fit from scratch."""
    adapt = AdaptConfig(n_shots=16, max_steps=4, lr=1e-2, val_fraction=0.25)
    cfg = load_train_config("tiny").model_copy(
        update={"select_by": "val_error", "val_error_samples": 2}
    )
    _, fitted = fine_tune(base, _shots(), adapt, cfg, tmp_path)
    assert fitted.monitor == "val_error"
    saved = torch.load(fitted.best_checkpoint, weights_only=False)["callbacks"]
    (checkpointing,) = [state for name, state in saved.items() if "Checkpoint" in name]
    assert checkpointing["monitor"] == "val_error"
    best = float(checkpointing["best_model_score"])
    assert 0.0 <= best <= 2.0  # |median - y| / max(|median|, |y|), capped at 2
    assert fitted.best_val_score == pytest.approx(best)


def test_a_lora_adaptation_is_the_same_whatever_ran_before_it(base, tmp_path: Path):
    """The adapters were initialised from the global RNG before `fit` seeded it: the same
    adaptation in the nightly process, the CLI or a Dask worker gave other weights."""
    adapted = []
    for state in (1, 2):
        torch.manual_seed(state)
        adapted.append(_adapt(base, tmp_path / str(state), method="lora", lora_rank=2))
    first, second = (a.model.state_dict() for a in adapted)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_freeze_for_lora_trains_only_adapters(base):
    clone = Predictor.create(base.model_config, base.codec_config, base.tokenizer).model
    trainable = freeze_for(clone, AdaptConfig(method="lora", lora_rank=2))
    assert trainable
    assert all(n.endswith(("lora_a", "lora_b")) for n in trainable)


def test_merged_lora_predicts_the_same_as_the_adapter_model(base):
    model = Predictor.create(base.model_config, base.codec_config, base.tokenizer).model.eval()
    add_lora(model, rank=2, alpha=4.0)
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, LoRALinear):  # non-zero B, or the test would compare W with W
            torch.nn.init.normal_(module.lora_b, std=0.05)
    src, mask = pad_batch(base.encode_texts(_shots(4).texts), base.tokenizer.pad_id)
    tgt_in = torch.zeros(4, 3, dtype=torch.long)
    with torch.no_grad():
        adapter_logits = model(src, mask, tgt_in)
        before = torch.get_rng_state()
        assert merge_lora(model) > 0
        # A fresh nn.Linear per layer drew its initialisation from the global generator.
        assert torch.equal(torch.get_rng_state(), before)
        merged_logits = model(src, mask, tgt_in)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-4)


def test_a_merged_lora_layer_keeps_its_base_dtype():
    """A bf16 layer came back float32 (the default dtype of a fresh nn.Linear)."""
    torch.manual_seed(0)
    wrapped = LoRALinear(torch.nn.Linear(6, 4).to(torch.bfloat16), rank=2, alpha=2.0)
    torch.nn.init.normal_(wrapped.lora_b, std=0.5)
    merged = wrapped.merged()
    assert merged.weight.dtype == torch.bfloat16
    expected = (wrapped.base.weight.float() + wrapped.delta()).to(torch.bfloat16)
    torch.testing.assert_close(merged.weight, expected)
    torch.testing.assert_close(merged.bias, wrapped.base.bias)


def test_from_scratch_reuses_the_base_tokenizer_and_the_same_split(base, tmp_path: Path):
    cfg = AdaptConfig(n_shots=16, max_steps=4, val_fraction=0.25, scratch_max_minutes=0.5)
    scratch, result = train_from_scratch(base, _shots(), cfg, load_train_config("tiny"), tmp_path)
    assert scratch.tokenizer is base.tokenizer
    assert result.steps > 0
    train, val = split_shots(_shots(), 0.25)
    assert (len(train), len(val)) == (12, 4)
    assert (result.n_train, result.n_val) == (12, 4)


@pytest.fixture(scope="module")
def half_trained(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    """The untrained base after 25 real steps (~1 s): finite medians with a spread, which the
    untrained one lacks (it decodes NaN or collapses every sample onto one value)."""
    predictor = untrained_base()
    shots = _shots(48)
    cfg = load_train_config("tiny").model_copy(update={"max_steps": 25, "min_steps": 0})
    fit_examples(
        predictor,
        shots.take(range(36)),
        shots.take(range(36, 48)),
        cfg,
        tmp_path_factory.mktemp("half-trained"),
        resume=False,
    )
    return predictor


def _with_scale(base: Predictor, scale: float | None) -> Predictor:
    """A view of `base` (its weights, a metadata copy) shipping a pooled conformal scale, as
    a calibrated base does, or none."""
    copied = base.member(0)
    copied.metadata.pop("interval_scale", None)
    if scale is not None:
        copied.metadata["interval_scale"] = asdict(IntervalScale(scale, 0.8, 230))
    return copied


def test_a_variant_refits_its_interval_scale_on_the_gate_shots(half_trained):
    """The base's scale was fitted on other tasks with other weights; the variant's comes from
    the gate's shots, on its own raw intervals (not ones already stretched by the base's)."""
    gate = _shots(60).take(range(48, 60))
    variant = _with_scale(half_trained, 7.0)
    said = recalibrate(variant, gate, EvalConfig(num_samples=8))
    raw = _with_scale(half_trained, None).predict_texts(gate.texts, 8, quantiles=(0.1, 0.5, 0.9))
    quartiles = (raw["median"], raw["q10"], raw["q90"])
    expected = fit_interval_scale(gate.targets, *quartiles, min_half_rel=variant.codec.resolution)
    assert expected.n_fit >= MIN_CALIBRATION_SHOTS  # the fixture's premise
    assert variant.interval_scale() == expected
    assert said == (
        f"a conformal scale of its own, {expected.scale:.4g}, fitted on {expected.n_fit} of "
        "its 12 gate shots"
    )


def test_a_variant_keeps_its_base_scale_without_enough_finite_gate_predictions(half_trained):
    """Below `MIN_CALIBRATION_SHOTS` records the conformal quantile is the largest score, and
    one collapsed interval that misses makes it ~1e299: the variant keeps what it had."""
    few = _shots(MIN_CALIBRATION_SHOTS - 1)
    variant = _with_scale(half_trained, 7.0)
    said = recalibrate(variant, few, EvalConfig(num_samples=4))
    assert variant.interval_scale().scale == 7.0
    assert said == (
        f"the base's conformal scale ({MIN_CALIBRATION_SHOTS - 1} gate shots; a scale of its "
        f"own needs {MIN_CALIBRATION_SHOTS})"
    )
    # Enough shots, but only the finite records count: 4 of these 12 have no target.
    gate = _shots(60).take(range(48, 60))
    gate = dataclasses.replace(gate, targets=np.where(np.arange(12) < 4, np.nan, gate.targets))
    said = recalibrate(variant, gate, EvalConfig(num_samples=4))
    assert variant.interval_scale().scale == 7.0
    assert "(8 of its 12 gate shots have a finite prediction and target)" in said
    bare = _with_scale(half_trained, None)
    assert recalibrate(bare, gate, EvalConfig(num_samples=4)).startswith(
        "the raw sampled quantiles ("
    )
    assert bare.interval_scale() is None
    # Off, the intervals are the raw quantiles, as said: the base's scale, which the variant
    # is copied with, was kept and served (7x as wide) under that label.
    off = recalibrate(variant, gate, EvalConfig(conformal=False))
    assert off == "the raw sampled quantiles (eval.conformal is off)"
    assert variant.interval_scale() is None


def test_the_gate_shots_are_the_latest_and_nothing_else_sees_them():
    """The gate's shots judge the variant only: fine-tuning trains and stops on the others."""
    shots = _shots(20)
    tuning, gate = hold_out_gate(shots, AdaptConfig(gate_fraction=0.2, val_fraction=0.25))
    train, stop = split_shots(tuning, 0.25)
    assert gate.record_ids == [str(i) for i in range(16, 20)]  # the latest
    assert stop.record_ids == [str(i) for i in range(12, 16)]  # then the ones stopping it
    assert train.record_ids + stop.record_ids + gate.record_ids == shots.record_ids


def _repeated_runs(n: int = 40) -> Examples:
    """Shots of a table without periods: 13 configurations, each run 2-4 times, interleaved
    as a warehouse orders them (by record id)."""
    configs = [json.dumps({"machines": i % 13}) for i in range(n)]
    targets = np.array([1.0 + 0.1 * (i % 13) for i in range(n)])
    texts = [f"<config>\nmachines={i % 13}" for i in range(n)]
    ids = [f"r{i:02d}" for i in range(n)]
    return Examples(ids, ["job-z"] * n, texts, targets, configs, by_configuration=True)


def test_shots_without_periods_are_cut_between_configurations():
    """A repeated run of a configuration in the gate, with another in the fine-tuning, made
    the variant look better than it is on configurations it never saw."""
    shots = _repeated_runs()
    tuning, gate = hold_out_gate(shots, AdaptConfig(gate_fraction=0.2, val_fraction=0.25))
    train, stop = split_shots(tuning, 0.25)
    parts = [set(part.config_json) for part in (train, stop, gate)]
    assert all(not a & b for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert sorted(train.record_ids + stop.record_ids + gate.record_ids) == shots.record_ids
    assert 6 <= len(gate) <= 10  # about the fraction (8), in whole configurations
    assert gate.by_configuration  # kept by every cut
    assert train.by_configuration
    # Dated shots are cut by time, as before.
    dated = dataclasses.replace(shots, by_configuration=False)
    gate_of_dated = hold_out_gate(dated, AdaptConfig(gate_fraction=0.2))[1]
    assert gate_of_dated.record_ids == shots.record_ids[32:]


def test_shots_of_one_configuration_cannot_be_cut():
    shots = dataclasses.replace(_repeated_runs(4), config_json=["{}"] * 4)
    too_few = "4 shots of 1 configurations are too few .* needs a configuration of its own"
    with pytest.raises(ValueError, match=too_few):
        hold_out_gate(shots, AdaptConfig())


def test_a_configuration_run_many_times_does_not_take_the_whole_gate():
    """Whole configurations were added until the gate's fraction was reached, however far
    past it: 6 configurations run once and one run 14 times, that one last, made a gate of 14
    of 20 shots."""
    configs = [f'{{"m": {i}}}' for i in range(6)] + ['{"m": "big"}'] * 14
    shots = dataclasses.replace(_repeated_runs(20), config_json=configs)
    tuning, gate = hold_out_gate(shots, AdaptConfig(gate_fraction=0.2, val_fraction=0.25))
    train, stop = split_shots(tuning, 0.25)
    assert (len(train), len(stop), len(gate)) == (14, 2, 4)
    assert set(train.config_json) == {'{"m": "big"}'}


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_few_shots_to_cut_three_ways_are_refused(n: int):
    with pytest.raises(ValueError, match=f"{n} shots are too few to train on, stop early on and"):
        hold_out_gate(_shots(n), AdaptConfig())
    assert len(hold_out_gate(_shots(3), AdaptConfig())[1]) == 1  # one each from 3 shots


EXAMPLE = {"task": "cell-z", "period": "2026-01-01", "config": {"n": 1}, "logs": {}}


def _registered_base(
    base: Predictor, tmp_path: Path, champion: bool = False, holdout: str | None = None
) -> tuple[ResolvedPaths, pipeline.Dataset]:
    """`textperf` version 1 (= `base`, `@champion` if `champion`, tagged as trained with
    `holdout` held out if given) in a temp store that is left current, and `_cell_z`."""
    paths = ResolvedPaths(var_dir=tmp_path)
    configure_mlflow(paths, "adapt-test")
    tags = {} if holdout is None else {pipeline.HOLDOUT_TAG: holdout}
    with mlflow.start_run():
        registry.log_and_register(
            base.save(tmp_path / "bundle"), "textperf", registry.input_example(EXAMPLE), tags
        )
    if champion:
        MlflowClient().set_registered_model_alias("textperf", "champion", "1")
    return paths, _cell_z()


def _cell_z(n_pool: int = 16) -> pipeline.Dataset:
    """A dataset whose holdout task `cell-z` has `n_pool` adaptation shots and 8 test records
    (its snapshot hash changes with them, as the warehouse's does)."""
    shots = _shots(n_pool + 8)
    return pipeline.Dataset(
        {
            "adapt_pool": shots.take(range(n_pool)),
            "adapt_test": shots.take(range(n_pool, n_pool + 8)),
        },
        "cell-z",
        "hash-1" if n_pool == 16 else f"hash-{n_pool}",
        EXAMPLE,
    )


LORA_APP = AppConfig(
    model="tiny",
    train="tiny",
    eval=EvalConfig(num_samples=4),
    adapt=AdaptConfig(n_shots=12, max_steps=4, method="lora", lora_rank=2),
)


@pytest.mark.parametrize("holdout", ["cell-a", "cell-z"])
def test_a_base_that_trained_on_the_task_is_said_so(base, tmp_path: Path, holdout: str):
    """Adapting to a task the base did not hold out (`textperf adapt --task`, a re-adapted
    variant): its "zero-shot" scores on the shots, which the gate compares with, are
    in-sample, which the report and the version now say, and a reused adaptation too."""
    app = LORA_APP.model_copy(
        update={"adapt": LORA_APP.adapt.model_copy(update={"from_scratch_reference": False})}
    )
    try:
        paths, data = _registered_base(base, tmp_path, holdout=holdout)
        outcome = pipeline.adapt_version(app, paths, data, "1")
        again = pipeline.adapt_version(app, paths, data, "1")
        tags = MlflowClient().get_model_version("textperf-cell-z", outcome.version).tags
    finally:
        mlflow.set_tracking_uri(None)
    saw = holdout != "cell-z"
    assert again.reused
    assert outcome.base_trained_on_task == again.base_trained_on_task == saw
    assert (tags.get(pipeline.BASE_TRAINED_ON_TASK) == "cell-a") == saw
    assert ("The base trained on `cell-z`'s records" in report.adaptation_lineage(again)) == saw


def test_adapt_version_registers_lineage_and_three_scores(base, tmp_path: Path):
    """End to end on a temp store: LoRA-adapt version 1, register `textperf-cell-z`, load it."""
    app = LORA_APP
    try:
        paths, data = _registered_base(base, tmp_path)
        shots = _shots(24)
        # What adaptations killed mid-fit left: this variant's, and another variant's; each
        # names its run, which still reads RUNNING.
        experiment = mlflow.get_experiment_by_name("adapt-test").experiment_id
        killed = [MlflowClient().create_run(experiment).info.run_id for _ in range(2)]
        mine = pipeline.adaptation_checkpoints(paths, "textperf-cell-z", killed[0]) / "adapted"
        other = pipeline.adaptation_checkpoints(paths, "textperf-cell-y", killed[1]) / "adapted"
        for left in (mine, other):
            left.mkdir(parents=True)
            (left / "last.ckpt").write_bytes(b"weights of a killed adaptation")
        outcome = pipeline.adapt_version(app, paths, data, "1")
        tags = MlflowClient().get_model_version("textperf-cell-z", outcome.version).tags
        loaded = mlflow.pyfunc.load_model(outcome.uri)
        champion = registry.alias_version("textperf-cell-z", "champion")
        described = MlflowClient().get_model_version("textperf-cell-z", outcome.version)
        tables = {
            kind: mlflow.load_table(f"predictions/{kind}_cell-z.json", run_ids=[described.run_id])
            for kind in ("adapted", "zero_shot")
        }
        model_text = MlflowClient().get_registered_model("textperf-cell-z").description
        adapt_run = MlflowClient().get_run(described.run_id)
        inputs = adapt_run.inputs.dataset_inputs
        statuses = [MlflowClient().get_run(run_id).info.status for run_id in killed]
    finally:
        mlflow.set_tracking_uri(None)
    assert statuses == ["KILLED", "RUNNING"]  # the other variant's run may be alive
    assert adapt_run.info.status == "FINISHED"
    assert tags["base_model"] == "models:/textperf/1"
    assert (tags["n_shots"], tags["method"]) == ("12", "lora")
    assert adapt_run.info.run_name == "adapt-cell-z-lora-hash-1"  # task, method, snapshot
    # Its own checkpoints gone, and the killed one's of the same variant; the other's stay,
    # since another variant's adaptation may be alive.
    assert list(paths.checkpoints.iterdir()) == [other.parent]
    for kind in pipeline.SCORES:
        assert f"{kind}_spearman" in tags
        assert 0 < json.loads(tags[f"{kind}_metrics"])["n"] <= 8  # n counts finite medians
    out = loaded.predict(pd.DataFrame({"text": shots.texts[:2]}), params={"num_samples": 3})
    assert list(out.columns) == ["median", "mean", "std", "p10", "p90", "finite_fraction"]
    # Of the 12 shots the latest 2 (gate_fraction 0.2) are the gate's; of the other 10, the
    # latest 2 (val_fraction 0.2) stopped the fine-tuning and 8 trained it.
    assert (outcome.fit.n_train, outcome.fit.n_val) == (8, 2)
    assert json.loads(tags["fit"])["n_train"] == 8
    # The from-scratch reference's cost, on the same 8 and 2: tagged, and in the report's line.
    scratch = outcome.scratch_fit
    assert (scratch.n_train, scratch.n_val) == (8, 2)
    assert json.loads(tags["scratch_fit"])["steps"] == scratch.steps > 0
    cost = f"The from-scratch reference trained {scratch.steps} steps in {scratch.seconds:.0f} s"
    assert cost in report.reference_cost(outcome)
    assert (
        report.shots_used(outcome)
        == "12 shots: 8 trained, 2 stopped the fine-tuning, 2 for the gate"
    )
    # The gate compared the two on those 2 latest shots, not the test.
    verdict = registry.beats(
        outcome.validation["adapted"],
        outcome.validation["zero_shot"],
        app.registry.promotion,
        "base zero-shot",
    )
    assert (outcome.promoted, outcome.reason) == (verdict[0], verdict[1])
    assert json.loads(tags["gate_decision"])["promoted"] == outcome.promoted
    assert outcome.validation["adapted"]["n"] <= 2
    # Both fits' loss curves, side by side in the adaptation's run.
    assert {"adapt/train_loss", "adapt/val_loss", "scratch/train_loss", "scratch/val_loss"} <= set(
        adapt_run.data.metrics
    )
    # The run's datasets: the 10 tuning shots, the gate's 2 and the 8 test records.
    rows = {
        tag.value: json.loads(i.dataset.profile)["num_rows"]
        for i in inputs
        for tag in i.tags
        if tag.key == "mlflow.data.context"
    }
    assert rows == {"fine_tuning": 10, "gate": 2, "test": 8}
    # Per-record predictions of both on the task's 8 test records, for error analysis.
    for table in tables.values():
        assert list(table["record_id"].astype(str)) == data.splits["adapt_test"].record_ids
        assert {"task", "actual", "median", "q10", "q90", "std"} <= set(table.columns)
    # The variant is not its base (4 LoRA steps at lr 3e-4 may move no median of 8 records).
    assert _changed(base, loaded.unwrap_python_model().predictor)
    # 2 gate shots are too few for a scale of its own: said on the version and the report.
    assert tags["intervals"] == outcome.intervals
    # (the test's base ships no scale of its own: the raw quantiles it had)
    assert (
        outcome.intervals == "the raw sampled quantiles (2 gate shots; a scale of its own needs 9)"
    )
    assert f"Its intervals: {outcome.intervals}." in report.intervals_used(outcome)
    assert "`models:/textperf/1` adapted to `cell-z` by `lora` fine-tuning on 12 shots (8 " in (
        described.description
    )
    verdict = "promoted" if outcome.promoted else "refused"
    assert f"Gate: {verdict} ({outcome.reason})." in described.description
    assert "`textperf` fine-tuned on a few records of task `cell-z`" in model_text
    assert "Otherwise `models:/textperf@champion` is the model for `cell-z`." in model_text
    if outcome.promoted:
        assert str(champion.version) == outcome.version
        assert outcome.use_uri == "models:/textperf-cell-z@champion"
    else:
        assert champion is None
        assert outcome.use_uri == "models:/textperf/1"


def test_adapting_the_same_base_on_unchanged_data_again_reports_the_variant(base, tmp_path):
    """A second adaptation with the same base, data and configs trains and registers nothing:
    it reports the first (scores, gate) and names it; `force` adapts again; another base or
    another adaptation config is a new adaptation."""
    try:
        paths, data = _registered_base(base, tmp_path)
        first = pipeline.adapt_version(LORA_APP, paths, data, "1")
        runs_after_first = len(mlflow.search_runs(search_all_experiments=True))
        again = pipeline.adapt_version(LORA_APP, paths, data, "1")
        # The nightly flow names the task the config leaves to the data (None): the same key.
        split = LORA_APP.split.model_copy(update={"holdout_task": "cell-z"})
        named = pipeline.adapt_version(
            LORA_APP.model_copy(update={"split": split}), paths, data, "1"
        )
        runs_after_again = len(mlflow.search_runs(search_all_experiments=True))
        forced = pipeline.adapt_version(LORA_APP, paths, data, "1", force=True)
        other = LORA_APP.model_copy(
            update={"adapt": LORA_APP.adapt.model_copy(update={"lora_rank": 3})}
        )
        other_config = pipeline.adapt_version(other, paths, data, "1")
        versions = MlflowClient().search_model_versions("name='textperf-cell-z'")
    finally:
        mlflow.set_tracking_uri(None)
    assert (first.reused, again.reused, forced.reused, other_config.reused) == (
        False,
        True,
        False,
        False,
    )
    assert runs_after_again == runs_after_first  # no run started, nothing trained
    assert again.version == named.version == first.version
    assert named.reused
    for kind in (*pipeline.SCORES, "validation"):  # as JSON: NaN (n/a) equals NaN there
        assert json.dumps(getattr(again, kind)) == json.dumps(getattr(first, kind)), kind
    assert (again.promoted, again.reason, again.n_shots) == (
        first.promoted,
        first.reason,
        first.n_shots,
    )
    assert (again.method, again.base_uri, again.task) == ("lora", first.base_uri, "cell-z")
    assert again.fit.steps == first.fit.steps
    assert again.scratch_fit.steps == first.scratch_fit.steps > 0  # the reference's cost too
    assert again.use_uri == first.use_uri  # nothing moved the aliases in between
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    assert {forced.version, other_config.version} == {"2", "3"}
    text = report.adaptation_lineage(again)
    assert "not adapted again" in text
    assert "--force" in text


def test_without_the_from_scratch_reference_nothing_is_trained_from_scratch(base, tmp_path):
    """`adapt.from_scratch_reference: false`: the adaptation is registered and gated as ever,
    with no from-scratch fit, scores, tags or report row, fresh or reused."""
    adapt = LORA_APP.adapt.model_copy(update={"from_scratch_reference": False})
    app = LORA_APP.model_copy(update={"adapt": adapt})
    try:
        paths, data = _registered_base(base, tmp_path)
        outcome = pipeline.adapt_version(app, paths, data, "1")
        again = pipeline.adapt_version(app, paths, data, "1")
        version = MlflowClient().get_model_version("textperf-cell-z", outcome.version)
        metrics = MlflowClient().get_run(version.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri(None)
    assert (outcome.reused, again.reused) == (False, True)
    assert outcome.from_scratch == again.from_scratch == {}
    assert outcome.adapted["n"] > 0
    assert {"zero_shot_spearman", "adapted_spearman", "adapt_steps"} <= set(metrics)
    assert not [name for name in metrics if name.startswith(("from_scratch", "scratch"))]
    assert not [tag for tag in version.tags if tag.startswith(("from_scratch", "scratch"))]
    assert outcome.scratch_fit is None
    assert again.scratch_fit is None
    assert "gate_decision" in version.tags
    for text in (jobs.render_adapt(outcome, "sqlite://"), jobs.render_adapt(again, "sqlite://")):
        assert "| adapted |" in text
        assert "from scratch" not in text


def test_an_adapted_variant_ships_the_scale_fitted_on_its_gate_shots(half_trained, tmp_path):
    """60 shots: the latest 12 gate the variant as fine-tuned, then fit the scale its bundle
    ships (on its own raw intervals); the reports and a reused outcome say so."""
    adapt = LORA_APP.adapt.model_copy(update={"n_shots": 60, "from_scratch_reference": False})
    app = LORA_APP.model_copy(update={"adapt": adapt})
    data = _cell_z(60)
    gate = data.splits["adapt_pool"].take(range(48, 60))
    try:
        paths, _ = _registered_base(half_trained, tmp_path)
        outcome = pipeline.adapt_version(app, paths, data, "1")
        again = pipeline.adapt_version(app, paths, data, "1")
        shipped = registry.load_predictor(outcome.uri)
    finally:
        mlflow.set_tracking_uri(None)
    scale = shipped.interval_scale()
    as_tuned = _with_scale(shipped, None)
    raw = as_tuned.predict_texts(gate.texts, app.eval.num_samples, quantiles=(0.1, 0.5, 0.9))
    quartiles = (raw["median"], raw["q10"], raw["q90"])
    resolution = shipped.codec.resolution
    assert scale == fit_interval_scale(gate.targets, *quartiles, min_half_rel=resolution)
    # The gate scored it before the refit: as fine-tuned, here with no scale (as its base).
    as_gated = pipeline.evaluate_model(as_tuned, gate, app.eval)[0]
    assert outcome.validation["adapted"] == pytest.approx(as_gated, nan_ok=True)
    expected = (
        f"a conformal scale of its own, {scale.scale:.4g}, fitted on {scale.n_fit} of its 12 "
        "gate shots"
    )
    assert outcome.intervals == again.intervals == expected
    assert f"Its intervals: {expected}." in jobs.render_adapt(again, "sqlite://")


def _wrecked_app(**update) -> AppConfig:
    """60 shots (12 for the gate) and a fine-tuning at a learning rate that wrecks the model:
    the gate refuses it, whatever the host's precision."""
    adapt = LORA_APP.adapt.model_copy(
        update={"n_shots": 60, "method": "full", "lr": 100.0, "from_scratch_reference": False}
        | update
    )
    return LORA_APP.model_copy(update={"adapt": adapt})


def test_a_fallback_from_a_base_that_trained_on_the_task_says_its_intervals_are_in_sample(
    half_trained, tmp_path
):
    """Split conformal needs records the model never trained on. A base that held out another
    task may have trained on the gate's shots, yet its fallback said its scale rested on them
    as if they were new, and did not carry the base's tag the variant carries."""
    app, data = _wrecked_app(), _cell_z(60)
    try:
        paths, _ = _registered_base(half_trained, tmp_path, champion=True, holdout="cell-a")
        outcome = pipeline.adapt_version(app, paths, data, "1")
        served = MlflowClient().get_model_version("textperf-cell-z", outcome.fallback.version)
    finally:
        mlflow.set_tracking_uri(None)
    assert not outcome.promoted  # the premise
    note = "; in-sample: the base trained on this task's records (it held out cell-a)"
    assert outcome.fallback.intervals.startswith("a conformal scale of its own, ")
    assert note in outcome.fallback.intervals
    assert served.tags[pipeline.INTERVALS_TAG] == outcome.fallback.intervals
    assert served.tags[pipeline.BASE_TRAINED_ON_TASK] == "cell-a"
    # Only a scale fitted on those shots is in-sample: a kept or raw one is as it said.
    kept = "the base's conformal scale (8 gate shots; a scale of its own needs 9)"
    assert pipeline.fitted_in_sample(kept, "cell-a") == kept


def _same_fallback(got: pipeline.ZeroShotFallback, expected: pipeline.ZeroShotFallback) -> bool:
    """Equal, a NaN score (a constant prediction's Spearman) equal to NaN."""
    same_scores = got.scores == pytest.approx(expected.scores, nan_ok=True)
    return (got.version, got.intervals) == (expected.version, expected.intervals) and same_scores


def test_a_refused_variant_leaves_its_task_a_zero_shot_fallback_with_its_own_intervals(
    half_trained, tmp_path
):
    """Refused, the variant's task gets v2: the base's weights unchanged, with a conformal
    scale fitted on the gate's 12 shots, as the task's champion; a reused outcome reports it,
    a forced re-adaptation replaces it, and the task is not due again."""
    app, data = _wrecked_app(), _cell_z(60)
    gate = data.splits["adapt_pool"].take(range(48, 60))
    try:
        paths, _ = _registered_base(half_trained, tmp_path, champion=True)
        client = MlflowClient()
        outcome = pipeline.adapt_version(app, paths, data, "1")
        again = pipeline.adapt_version(app, paths, data, "1")
        fallback = registry.load_predictor("models:/textperf-cell-z/2")
        refused, served = (client.get_model_version("textperf-cell-z", v) for v in ("1", "2"))
        due = pipeline.adaptations_due(app, paths, data)
        forced = pipeline.adapt_version(app, paths, data, "1", force=True)
        holder = registry.alias_version("textperf-cell-z", "champion")
        retired = client.get_model_version("textperf-cell-z", "2")
        # As if the forced run had stopped between its gate and its fallback: the next run
        # that reuses v3 serves the fallback it lacks, in v3's run, whose status it keeps.
        client.delete_model_version("textperf-cell-z", "4")
        client.delete_model_version_tag("textperf-cell-z", "3", registry.FALLBACK)
        client.set_registered_model_alias("textperf-cell-z", "champion", "2")
        repaired = pipeline.adapt_version(app, paths, data, "1")
        repaired_holder = registry.alias_version("textperf-cell-z", "champion")
        forced_run = client.get_run(client.get_model_version("textperf-cell-z", "3").run_id)
        reused_again = pipeline.adapt_version(app, paths, data, "1")
        # Lost again, and v3's run deleted since: the fallback goes to a run of its own.
        client.delete_model_version("textperf-cell-z", repaired.fallback.version)
        client.delete_model_version_tag("textperf-cell-z", "3", registry.FALLBACK)
        client.delete_run(forced_run.info.run_id)
        without_run = pipeline.adapt_version(app, paths, data, "1")
        (own_run,) = mlflow.search_runs(
            search_all_experiments=True,
            filter_string="attributes.run_name = 'fallback-cell-z-hash-60'",
            output_format="list",
        )
        # Stopped after registering that fallback, before promoting it: the next run promotes
        # it, and registers nothing.
        client.delete_model_version_tag("textperf-cell-z", "3", registry.FALLBACK)
        client.set_registered_model_alias("textperf-cell-z", "champion", "2")
        registered = registry.versions_newest_first("textperf-cell-z")
        promoted_late = pipeline.adapt_version(app, paths, data, "1")
        late_holder = registry.alias_version("textperf-cell-z", "champion")
        after = registry.versions_newest_first("textperf-cell-z")
    finally:
        mlflow.set_tracking_uri(None)
    assert not outcome.promoted  # the premise
    assert outcome.fallback is not None
    assert outcome.fallback.version == "2"
    assert outcome.use_uri == "models:/textperf-cell-z@champion"
    assert not _changed(half_trained, fallback)  # the base's weights
    raw = half_trained.predict_texts(gate.texts, app.eval.num_samples, quantiles=(0.1, 0.5, 0.9))
    quartiles = (raw["median"], raw["q10"], raw["q90"])
    scale = fit_interval_scale(gate.targets, *quartiles, min_half_rel=fallback.codec.resolution)
    assert fallback.interval_scale() == scale
    assert outcome.fallback.intervals == (
        f"a conformal scale of its own, {scale.scale:.4g}, fitted on {scale.n_fit} of its 12 "
        "gate shots"
    )
    # Its medians are the base's zero-shot ones: only the intervals differ.
    for metric in ("spearman", "mape", "n"):
        assert outcome.fallback.scores[metric] == pytest.approx(outcome.zero_shot[metric])
    assert served.tags[registry.FALLBACK_FOR] == "1"
    assert served.tags["base_model"] == "models:/textperf/1"
    assert json.loads(served.tags["gate_decision"])["promoted"]
    assert registry.ADAPTATION_KEY not in served.tags  # never mistaken for the adaptation
    assert served.description.startswith(
        "The weights of `models:/textperf/1` unchanged, serving `cell-z` in place of v1"
    )
    assert "served in its place by v2, a zero-shot fallback" in refused.description
    assert json.loads(refused.tags[registry.FALLBACK])["version"] == "2"
    # Reused: nothing adapted, the same fallback reported; nor is the task due again.
    assert again.reused
    assert _same_fallback(again.fallback, outcome.fallback)
    assert again.use_uri == outcome.use_uri
    text = jobs.render_adapt(again, "sqlite://")
    assert "| zero-shot fallback |" in text
    assert "(v2, its zero-shot fallback: the base's weights unchanged; its intervals: a " in text
    assert due == []
    # Forced, refused again: its own fallback (v4) takes over from the earlier one.
    assert (forced.version, forced.fallback.version, str(holder.version)) == ("3", "4", "4")
    assert "champion" not in retired.aliases
    assert (repaired.version, repaired.reused) == ("3", True)
    assert repaired.fallback is not None
    assert repaired.fallback.version == str(repaired_holder.version) != "2"
    assert repaired.fallback.intervals == outcome.fallback.intervals  # the same gate shots
    assert forced_run.info.status == "FINISHED"
    assert "fallback_interval_coverage" in forced_run.data.metrics
    assert _same_fallback(reused_again.fallback, repaired.fallback)  # made once
    assert without_run.fallback is not None
    assert "fallback_interval_coverage" in own_run.data.metrics
    assert [v.version for v in after] == [v.version for v in registered]
    assert _same_fallback(promoted_late.fallback, without_run.fallback)
    assert str(late_holder.version) == without_run.fallback.version


def test_a_fallback_takes_only_a_task_its_base_lineage_left_without_a_fine_tuned_champion(
    half_trained, tmp_path
):
    """Refused, a variant of the champion leaves a fine-tuned champion of the same base in
    place (it passed against that base): no fallback. Of a new champion, it retires the old
    base's variant and the fallback takes the task. Of a base that is not the champion (by
    hand), it changes nothing."""
    always = PromotionRule(  # promotes anything
        higher_is_better=(), lower_is_better=(), fewer_scored_is_worse=False
    )
    passing = _wrecked_app().model_copy(
        update={"registry": LORA_APP.registry.model_copy(update={"promotion": always})}
    )
    refusing, data = _wrecked_app(), _cell_z(60)
    try:
        paths, _ = _registered_base(half_trained, tmp_path, champion=True)
        client = MlflowClient()
        fine_tuned = pipeline.adapt_version(passing, paths, data, "1")
        kept = pipeline.adapt_version(refusing, paths, data, "1")
        kept_holder = registry.alias_version("textperf-cell-z", "champion")
        with mlflow.start_run():  # v2, the new champion
            registry.log_and_register(
                half_trained.save(tmp_path / "v2"), "textperf", registry.input_example(EXAMPLE), {}
            )
        client.set_registered_model_alias("textperf", "champion", "2")
        of_new_base = pipeline.adapt_version(refusing, paths, data, "2")
        new_holder = registry.alias_version("textperf-cell-z", "champion")
        by_hand = pipeline.adapt_version(refusing, paths, data, "1", force=True)
        hand_holder = registry.alias_version("textperf-cell-z", "champion")
    finally:
        mlflow.set_tracking_uri(None)
    assert fine_tuned.promoted  # the premises
    assert [kept.promoted, of_new_base.promoted, by_hand.promoted] == [False] * 3
    assert kept.fallback is None
    assert str(kept_holder.version) == fine_tuned.version
    assert of_new_base.fallback is not None
    assert "retired @champion from v1 (another base)" in of_new_base.reason
    assert str(new_holder.version) == of_new_base.fallback.version
    assert new_holder.tags["base_model"] == "models:/textperf/2"
    assert by_hand.fallback is None
    assert str(hand_holder.version) == of_new_base.fallback.version


def test_a_variant_is_due_again_once_its_task_has_gained_enough_records(base, tmp_path):
    """By default a variant whose base is the champion is never due; with
    `schedule.readapt_new_records` N it is once N records of its task arrived since it was
    adapted, and the re-adaptation (a new snapshot, so a new key) resets the count."""

    def due(threshold: int | None, data: pipeline.Dataset) -> list[str]:
        schedule = LORA_APP.schedule.model_copy(update={"readapt_new_records": threshold})
        return pipeline.adaptations_due(
            LORA_APP.model_copy(update={"schedule": schedule}), paths, data
        )

    try:
        paths, data = _registered_base(base, tmp_path, champion=True)
        assert due(None, data) == ["cell-z"]  # no variant yet
        first = pipeline.adapt_version(LORA_APP, paths, data, "1")
        grown = _cell_z(n_pool=22)  # six more records of cell-z
        verdicts = {
            "policy off": due(None, grown),
            "six new, five wanted": due(5, grown),
            "six new, seven wanted": due(7, grown),
            "none new": due(1, data),
        }
        again = pipeline.adapt_version(LORA_APP, paths, grown, "1")
        after = due(5, grown)
        versions = MlflowClient().search_model_versions("name='textperf-cell-z'")
    finally:
        mlflow.set_tracking_uri(None)
    assert verdicts == {
        "policy off": [],
        "six new, five wanted": ["cell-z"],
        "six new, seven wanted": [],
        "none new": [],
    }
    assert (first.version, again.version, again.reused) == ("1", "2", False)
    assert after == []
    tagged = {v.version: v.tags[registry.TASK_RECORDS] for v in versions}
    assert {str(k): v for k, v in tagged.items()} == {"1": "24", "2": "30"}


def test_a_variant_adapted_from_a_base_that_is_not_the_champion_never_takes_champion(
    base, tmp_path
):
    """Adapted by hand from an older version (v1) while v2 is the champion: whatever its
    scores, the variant only becomes `challenger`; the task keeps the champion of v2's
    lineage, and the recorded reason says why."""
    try:
        paths, data = _registered_base(base, tmp_path)
        with mlflow.start_run():  # v2, the champion
            registry.log_and_register(
                base.save(tmp_path / "bundle2"), "textperf", registry.input_example(EXAMPLE), {}
            )
        client = MlflowClient()
        client.set_registered_model_alias("textperf", "champion", "2")
        from_champion = pipeline.adapt_version(LORA_APP, paths, data, "2")
        # Whatever its gate decided (untrained, both sides may tie on NaN), the task starts
        # with no variant champion: the hand-adapted variant below meets the model's champion.
        if registry.alias_version("textperf-cell-z", "champion") is not None:
            client.delete_registered_model_alias("textperf-cell-z", "champion")
        first_by_hand = pipeline.adapt_version(LORA_APP, paths, data, "1")
        client.set_registered_model_alias("textperf-cell-z", "champion", from_champion.version)
        by_hand = pipeline.adapt_version(LORA_APP, paths, data, "1", force=True)
        holder = registry.alias_version("textperf-cell-z", "champion")
        challenger = registry.alias_version("textperf-cell-z", "challenger")
        decision = json.loads(
            client.get_model_version("textperf-cell-z", "2").tags["gate_decision"]
        )
    finally:
        mlflow.set_tracking_uri(None)
    assert (from_champion.version, first_by_hand.version, by_hand.version) == ("1", "2", "3")
    assert first_by_hand.use_uri == "models:/textperf/2"  # the model's champion, not v1
    assert not by_hand.promoted
    assert "its base models:/textperf/1 is not @champion (v2 is" in by_hand.reason
    assert decision["reason"] == by_hand.reason
    assert (str(holder.version), str(challenger.version)) == ("1", "3")
    assert by_hand.use_uri == "models:/textperf-cell-z@champion"


def test_two_adaptations_of_one_variant_at_once_register_it_once(base, tmp_path):
    """Two runs adapting the same base to the same task at once (the nightly run and an ad-hoc
    one): the lock on the variant makes one wait, then report the other's version."""
    try:
        paths, data = _registered_base(base, tmp_path)
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = [pool.submit(pipeline.adapt_version, LORA_APP, paths, data, "1") for _ in "ab"]
            outcomes = [run.result(timeout=300) for run in runs]
        versions = MlflowClient().search_model_versions("name='textperf-cell-z'")
    finally:
        mlflow.set_tracking_uri(None)
    assert sorted(o.reused for o in outcomes) == [False, True]
    assert [o.version for o in outcomes] == ["1", "1"]
    assert len(versions) == 1


def child_adapt_until_the_gate(var: str) -> None:
    """Register the base, adapt it, and stop for good where the variant's gate would start
    (the parent kills it there)."""
    torch.set_num_threads(1)

    def stop_here(*args: object, **kwargs: object) -> None:
        print("registered, gate next", flush=True)
        time.sleep(600)

    registry.gate_variant = stop_here
    paths, data = _registered_base(untrained_base(), Path(var))
    pipeline.adapt_version(LORA_APP, paths, data, "1")


def test_an_adaptation_killed_before_its_gate_is_gated_by_the_next(tmp_path: Path):
    """The next adaptation with the same key gates the variant the killed run registered (on
    the validation scores tagged on it, which its run logged too), adapts and registers
    nothing, and closes the run."""
    var = tmp_path / "var"
    proc = start_child(
        "from test_adaptation import child_adapt_until_the_gate\n"
        f"        child_adapt_until_the_gate({str(var)!r})"
    )
    try:
        wait_for_line(proc, "registered, gate next")
    finally:
        sigkill(proc)
    paths = ResolvedPaths(var_dir=var)
    try:
        configure_mlflow(paths, "adapt-test")
        client = MlflowClient()
        (stopped,) = client.search_model_versions("name='textperf-cell-z'")
        assert "gate_decision" not in stopped.tags
        outcome = pipeline.adapt_version(LORA_APP, paths, _cell_z(), "1")
        versions = client.search_model_versions("name='textperf-cell-z'")
        run = client.get_run(stopped.run_id)
        adapt_runs = mlflow.search_runs(
            search_all_experiments=True, filter_string="attributes.run_name LIKE 'adapt-%'"
        )
    finally:
        mlflow.set_tracking_uri(None)
    assert (outcome.version, outcome.reused) == ("1", True)
    assert len(versions) == 1
    assert len(adapt_runs) == 1  # nothing adapted again
    assert run.info.status == "KILLED"
    decision = registry.read_decision(versions[0].tags["gate_decision"])
    assert decision["reason"].endswith("stopped before its gate")
    # The late gate describes the version from its tags, as the killed run would have.
    assert f"({decision['reason']})." in versions[0].description
    assert versions[0].description.startswith("`models:/textperf/1` adapted to `cell-z`")
    for kind, side in (("zero_shot", "champion"), ("adapted", "challenger")):
        prefix = f"validation_{kind}_"  # the killed run logged the finite ones
        logged = {
            k.removeprefix(prefix): v for k, v in run.data.metrics.items() if k.startswith(prefix)
        }
        assert logged
        assert {k: decision[side][k] for k in logged} == logged
        for metric in ("spearman", "mape"):  # the rule's; NaN (worse) where none was logged
            assert metric in logged or np.isnan(decision[side][metric])
    verdict = registry.beats(decision["challenger"], decision["champion"], PromotionRule())
    assert outcome.promoted == decision["promoted"] == verdict[0]


def test_fine_tuning_drops_the_step_floor_and_the_scratch_baseline_keeps_it() -> None:
    """`fit` re-counts patience for short epochs itself (tests/test_training_stops.py); the
    fine-tuning is capped by its own max_steps, so the base's step floor does not apply to it."""
    base = TrainConfig(
        batch_size=16, val_every_steps=100, early_stopping_patience=10, min_steps=1000
    )
    adapt = AdaptConfig(max_steps=300)
    tuned, scratch = adaptation_train_config(base, adapt, 40), scratch_train_config(base, adapt, 40)
    assert (tuned.val_every_steps, tuned.early_stopping_patience, tuned.min_steps) == (60, 10, 0)
    assert (scratch.val_every_steps, scratch.early_stopping_patience, scratch.min_steps) == (
        100,
        10,
        1000,
    )  # the baseline from scratch keeps the floor: it must leave the plateau to compare
    with_ema = base.model_copy(update={"ema_decay": 0.99})
    assert adaptation_train_config(with_ema, adapt, 40).ema_decay is None
