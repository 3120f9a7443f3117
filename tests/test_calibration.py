"""Conformal recalibration: fitted on a validation split, coverage on held-out data -> nominal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from regressor.calibration import IntervalScale, fit_interval_scale
from regressor.evaluation import uncertainty_metrics
from regressor.sampling import summarize


def synthetic(n: int, sample_std: float, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Truths y ~ mu + N(0, sigma_i) (heteroscedastic, skewed by exp), and a model whose K=64
    samples have the right centre but a spread `sample_std` times the true one."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(1, 5, n)
    sigma = rng.uniform(0.1, 0.5, n)
    y = np.exp(mu + sigma * rng.standard_normal(n))
    samples = np.exp(mu[:, None] + sample_std * sigma[:, None] * rng.standard_normal((n, 64)))
    return y, summarize(samples)


def coverage(y: np.ndarray, summary: dict[str, np.ndarray]) -> float:
    s = summary
    return uncertainty_metrics(y, s["median"], s["q10"], s["q90"], s["std"])["interval_coverage"]


@pytest.mark.parametrize("sample_std", [0.4, 2.5])  # over-confident, under-confident
def test_held_out_coverage_moves_to_nominal(sample_std: float) -> None:
    y_val, val = synthetic(2000, sample_std, seed=1)
    y_test, test = synthetic(4000, sample_std, seed=2)
    before = coverage(y_test, test)
    assert abs(before - 0.8) > 0.12  # miscalibrated to start with

    scale = fit_interval_scale(y_val, val["median"], val["q10"], val["q90"], nominal=0.8)
    after = coverage(y_test, scale.apply_summary(test))
    assert abs(after - 0.8) < 0.03
    assert (scale.scale > 1) == (sample_std < 1)  # stretch narrow intervals, shrink wide ones


def test_calibrated_model_keeps_its_scale_and_ranking() -> None:
    y_val, val = synthetic(3000, 1.0, seed=3)
    scale = fit_interval_scale(y_val, val["median"], val["q10"], val["q90"])
    assert 0.85 < scale.scale < 1.2
    _y_test, test = synthetic(1000, 1.0, seed=4)
    out = scale.apply_summary(test)
    assert np.array_equal(
        np.argsort(out["q90"] - out["q10"]), np.argsort(test["q90"] - test["q10"])
    )
    assert out["median"] is test["median"]


def test_non_finite_records_are_ignored_and_empty_is_an_error() -> None:
    y = np.array([1.0, 2.0, np.nan, 4.0])
    m = np.array([1.0, 2.5, 3.0, np.inf])
    scale = fit_interval_scale(y, m, m - 1, m + 1, nominal=0.5)
    assert scale.n_fit == 2
    with pytest.raises(ValueError, match="no finite"):
        fit_interval_scale(y[2:], m[2:], m[2:] - 1, m[2:] + 1)


def test_a_scale_is_fitted_only_where_the_conformal_quantile_exists() -> None:
    """Below 4 records (at 80%) the k-th score does not exist: clipping k to n gave a scale that
    covered n / (n + 1), 50% on one record. The caller keeps the raw bounds instead."""
    y, m = np.array([3.0, -1.0, 2.0, 0.5]), np.zeros(4)
    with pytest.raises(ValueError, match="3 records; a scale for 80% coverage needs 4"):
        fit_interval_scale(y[:3], m[:3], m[:3] - 1, m[:3] + 1)
    assert fit_interval_scale(y, m, m - 1, m + 1).scale == pytest.approx(3.0)


def test_medians_equal_to_their_truths_do_not_collapse_every_interval() -> None:
    """Targets with few significant digits: most medians exact, every score 0 up to the k-th.
    The scale was 0: every later interval and std shrank onto the median."""
    y = np.arange(1.0, 11.0)
    m = y.copy()
    m[9] = 12.0  # one miss, 2 half-widths away
    scale = fit_interval_scale(y, m, m - 1, m + 1)
    assert scale.scale == pytest.approx(2.0)  # the smallest positive score: covers no fewer
    with pytest.raises(ValueError, match="every truth equals its median"):
        fit_interval_scale(y, y, y - 1, y + 1)
    # A task whose every record is exact keeps the pooled scale.
    tasks = ["a"] * 5 + ["b"] * 5
    assert fit_interval_scale(y, m, m - 1, m + 1, tasks=tasks, min_task_records=5).by_task == {
        "b": pytest.approx(2.0)
    }


def test_an_infinite_scale_keeps_a_zero_std_at_zero() -> None:
    summary = summarize(np.array([[5.0, 5.0], [1.0, 3.0]]))
    out = IntervalScale(scale=np.inf, nominal=0.8, n_fit=10).apply_summary(summary)
    assert out["std"][0] == 0.0
    assert out["q10"][0] == 5.0
    assert out["std"][1] == np.inf


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    nominal=st.floats(0.5, 0.95),
    n=st.integers(20, 400),
)
@example(seed=2189, nominal=0.65625, n=20)  # the defining record on the bound: rounding
def test_fitted_scale_covers_its_own_split(seed: int, nominal: float, n: int) -> None:
    """By construction the calibration split itself is covered at >= nominal."""
    rng = np.random.default_rng(seed)
    y, m = rng.standard_normal(n), np.zeros(n)
    half = rng.uniform(0.1, 2.0, n)
    scale = fit_interval_scale(y, m, m - half, m + half, nominal)
    low, high = scale.apply(m, m - half, m + half)
    assert np.mean((y >= low) & (y <= high)) >= nominal
    assert isinstance(scale, IntervalScale)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sharp=st.floats(0.0, 0.6), n=st.integers(20, 300))
def test_a_scale_fitted_with_sharp_halves_covers_its_own_split(
    seed: int, sharp: float, n: int
) -> None:
    """A sharp model draws one value on a side in most samples (q10 = median). The fit floored
    that zero half at 1e-300 while the bounds kept it at zero: the calibration split itself was
    covered 74% at a nominal 80%, and records like it 0%. Both now floor it at the codec's
    resolution."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(1.0, 100.0, n)
    y = m * np.exp(0.1 * rng.standard_normal(n))
    half = np.where(rng.uniform(size=n) < sharp, 0.0, m * rng.uniform(0.01, 0.2, n))
    scale = fit_interval_scale(y, m, m - half, m + half, 0.8, min_half_rel=1e-4)
    low, high = scale.apply(m, m - half, m + half)
    assert np.mean((y >= low) & (y <= high)) >= 0.8


def test_sharp_records_the_model_gets_right_leave_the_others_intervals_alone() -> None:
    """Sharp and right within the codec's resolution (q10 = median = q90, the truth 0.5e-4
    away): each such record scored 5e295 on the 1e-300 floor, so a third of them pushed the
    scale, and every other record's interval and std, to ~1e300."""
    y_val, val = synthetic(300, 1.0, seed=5)
    sharp = np.arange(300) % 3 == 0
    for key in ("q10", "q90"):
        val[key] = np.where(sharp, val["median"], val[key])
    y_val = np.where(sharp, val["median"] * (1 + 0.5e-4), y_val)
    args = (y_val, val["median"], val["q10"], val["q90"])
    assert fit_interval_scale(*args).scale > 1e100  # the old floor
    scale = fit_interval_scale(*args, min_half_rel=1e-4)
    assert 0.5 < scale.scale < 2
    _y_test, test = synthetic(100, 1.0, seed=6)
    out = scale.apply_summary(test)
    assert np.all(out["std"] < 2 * test["std"])


def test_the_floor_widens_a_zero_half_and_leaves_a_missing_bound_missing() -> None:
    scale = IntervalScale(scale=2.0, nominal=0.8, n_fit=10, min_half_rel=1e-4)
    median, q10 = np.array([10.0, 10.0, 10.0]), np.array([10.0, np.nan, 9.0])
    out = scale.apply_summary({"median": median, "q10": q10, "std": np.array([0.0, 1.0, 1.0])})
    np.testing.assert_allclose(out["q10"], [10.0 - 2 * 1e-3, np.nan, 8.0])
    np.testing.assert_allclose(out["std"], [2 * 1e-3, 2.0, 2.0])


def test_predictor_ships_its_conformal_scale_and_applies_it(tmp_path):
    """`calibrate` fits on validation records, the scale survives save/load, and predictions
    stretch q10/q90 around the median by it (median, mean and samples unchanged)."""
    import torch

    from regressor.config import CodecConfig, load_model_config
    from regressor.predictor import Predictor
    from regressor.vocab import InputTokenizer

    torch.manual_seed(0)
    texts = [f"load={v}\nqueue={v % 7}" for v in range(40)]
    tokenizer = InputTokenizer.train(texts, vocab_size=300)
    predictor = Predictor.create(load_model_config("tiny"), CodecConfig(), tokenizer)
    raw = predictor.predict_texts(texts[:8], num_samples=16)
    targets = np.linspace(1, 100, 32)
    held = predictor.predict_texts(texts[8:], num_samples=16, quantiles=(0.1, 0.5, 0.9))
    scale = predictor.calibrate(texts[8:], targets, num_samples=16)
    # The scale that the held-out records' own targets call for (sampling is seeded: the same
    # draws as inside `calibrate`), so a calibration blind to the targets would differ.
    quartiles = (held["median"], held["q10"], held["q90"])
    fitted = fit_interval_scale(targets, *quartiles, 0.8, min_half_rel=1e-4)  # 4 digits
    assert np.isfinite(scale)
    assert scale == fitted.scale
    loaded = Predictor.load(predictor.save(tmp_path / "bundle"))
    assert loaded.interval_scale().scale == scale
    assert loaded.interval_scale().min_half_rel == 1e-4  # the codec's resolution, shipped
    calibrated = loaded.predict_texts(texts[:8], num_samples=16)
    np.testing.assert_array_equal(calibrated["samples"], raw["samples"])
    np.testing.assert_array_equal(calibrated["median"], raw["median"])
    with np.errstate(over="ignore"):  # an untrained model samples up to ~1e308
        expected = scale * (raw["median"] - raw["q10"])
    ok = np.isfinite(raw["median"]) & np.isfinite(expected)
    assert ok.any()
    np.testing.assert_allclose((calibrated["median"] - calibrated["q10"])[ok], expected[ok])


def test_the_scale_is_fitted_and_applied_at_one_temperature(tmp_path, caplog):
    """The draws' spread depends on the temperature, so `calibrate` samples at the one it is
    given, the scale keeps it through save/load, and draws at another stay as sampled, with a
    warning (a scale fitted at 1.0 covered 0.45 for 0.8 at 0.25)."""
    import torch

    from regressor.config import CodecConfig, load_model_config
    from regressor.predictor import Predictor
    from regressor.vocab import InputTokenizer

    torch.manual_seed(0)
    texts = [f"load={v}\nqueue={v % 7}" for v in range(40)]
    tokenizer = InputTokenizer.train(texts, vocab_size=300)
    predictor = Predictor.create(load_model_config("tiny"), CodecConfig(), tokenizer)
    targets = np.linspace(1, 100, 32)
    cool = predictor.predict_texts(texts[8:], num_samples=16, temperature=0.5)
    scale = predictor.calibrate(texts[8:], targets, num_samples=16, temperature=0.5)
    fitted = fit_interval_scale(targets, cool["median"], cool["q10"], cool["q90"], 0.8)
    assert scale == pytest.approx(fitted.scale)  # the draws at 0.5, not at 1.0
    loaded = Predictor.load(predictor.save(tmp_path / "bundle"))
    assert loaded.interval_scale().temperature == 0.5
    with caplog.at_level("WARNING", logger="regressor.predictor"):
        at_half = loaded.predict_texts(texts[:8], num_samples=16, temperature=0.5)
        assert not caplog.records
        at_one = loaded.predict_texts(texts[:8], num_samples=16, temperature=1.0)
    assert "fitted at temperature 0.5, and these draws are at 1" in caplog.text
    loaded.metadata.pop("interval_scale")
    bare = {t: loaded.predict_texts(texts[:8], num_samples=16, temperature=t) for t in (0.5, 1)}
    np.testing.assert_array_equal(at_one["q10"], bare[1]["q10"])  # as sampled
    ok = np.isfinite(bare[0.5]["q10"]) & (bare[0.5]["median"] != bare[0.5]["q10"])
    assert ok.any()
    assert scale != 1.0
    assert not np.array_equal(at_half["q10"][ok], bare[0.5]["q10"][ok])  # applied at 0.5


def two_tasks(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """The samples of both tasks spread by 0.3 around the model's centre; task `easy`'s truths
    scatter that much, task `hard`'s 3x more: a model as sure where it errs as where it does not."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(1, 5, 2 * n)
    y = mu + np.repeat([0.3, 0.9], n) * rng.standard_normal(2 * n)
    samples = mu[:, None] + 0.3 * rng.standard_normal((2 * n, 64))
    return y, summarize(samples), ["easy"] * n + ["hard"] * n


def per_task_coverage(y, summary, tasks) -> dict[str, float]:
    names = np.asarray(tasks)
    return {
        t: coverage(y[names == t], {k: v[names == t] for k, v in summary.items()}) for t in {*tasks}
    }


def test_per_task_scales_fix_each_tasks_coverage_and_rank_the_errors() -> None:
    y_val, val, tasks_val = two_tasks(1000, seed=5)
    y_test, test, tasks_test = two_tasks(2000, seed=6)
    pooled = fit_interval_scale(y_val, val["median"], val["q10"], val["q90"])
    mondrian = fit_interval_scale(
        y_val, val["median"], val["q10"], val["q90"], tasks=tasks_val, min_task_records=8
    )
    assert pooled.by_task == {}
    assert mondrian.by_task["hard"] > 2 * mondrian.by_task["easy"]
    pooled_cov = per_task_coverage(y_test, pooled.apply_summary(test, tasks_test), tasks_test)
    assert pooled_cov["easy"] > 0.9  # one scale fits neither task
    assert pooled_cov["hard"] < 0.7
    out = mondrian.apply_summary(test, tasks_test)
    for task, value in per_task_coverage(y_test, out, tasks_test).items():
        assert abs(value - 0.8) < 0.04, task
    before = uncertainty_metrics(y_test, test["median"], test["q10"], test["q90"], test["std"])
    after = uncertainty_metrics(y_test, out["median"], out["q10"], out["q90"], out["std"])
    assert before["uncertainty_spearman"] < 0.1
    assert after["uncertainty_spearman"] > 0.3
    rows = mondrian.row_scales(len(y_test), tasks_test)
    np.testing.assert_allclose(out["std"], test["std"] * rows)


def test_tasks_without_enough_records_or_unseen_use_the_pooled_scale() -> None:
    y, summary, tasks = two_tasks(30, seed=7)
    tasks = tasks[:30] + ["hard"] * 5 + ["rare"] * 25  # `hard` keeps 5 records: below 8
    scale = fit_interval_scale(
        y, summary["median"], summary["q10"], summary["q90"], tasks=tasks, min_task_records=8
    )
    assert set(scale.by_task) == {"easy", "rare"}
    rows = scale.row_scales(3, ["hard", "never-seen", None])
    np.testing.assert_array_equal(rows, np.full(3, scale.scale))
    np.testing.assert_array_equal(scale.row_scales(2), np.full(2, scale.scale))


def test_predictor_ships_per_task_scales_and_picks_them_by_task(tmp_path):
    """Per-task scales survive save/load; a row's task picks its scale for q10/q90 and std."""
    import torch

    from regressor.config import CodecConfig, load_model_config
    from regressor.predictor import Predictor
    from regressor.vocab import InputTokenizer

    torch.manual_seed(0)
    texts = [f"load={v}\nqueue={v % 7}" for v in range(40)]
    predictor = Predictor.create(
        load_model_config("tiny"),
        CodecConfig(exponent_min=-3, exponent_max=3),  # an untrained model's samples stay finite
        InputTokenizer.train(texts, vocab_size=300),
    )
    tasks = ["a"] * 16 + ["b"] * 16
    targets = np.concatenate([np.linspace(1, 2, 16), np.linspace(1, 900, 16)])
    predictor.calibrate(texts[8:], targets, 16, tasks, min_task_records=8)
    loaded = Predictor.load(predictor.save(tmp_path / "bundle"))
    scale = loaded.interval_scale()
    assert set(scale.by_task) == {"a", "b"}
    assert len({scale.by_task["a"], scale.by_task["b"], scale.scale}) == 3
    out = loaded.predict_texts(texts[:4], num_samples=16, tasks=["b", "b", "a", None])
    raw = summarize(out["samples"])  # the uncalibrated summary of the same samples
    want = np.array([scale.by_task["b"], scale.by_task["b"], scale.by_task["a"], scale.scale])
    np.testing.assert_allclose(out["median"] - out["q10"], want * (raw["median"] - raw["q10"]))
    np.testing.assert_allclose(out["std"], want * raw["std"])
    # std is the calibrated distribution's whatever quantiles are asked for (it once stayed raw
    # unless both q10 and q90 were)
    asked = loaded.predict_texts(texts[:4], 16, quantiles=(0.25, 0.75), tasks=["b", "b", "a", None])
    np.testing.assert_allclose(asked["std"], out["std"])


def test_every_quantile_moves_alike_whichever_quantiles_are_asked() -> None:
    """The summary is one rescaled distribution: p5 never lies inside a widened p10 (only q10
    and q90 used to move), and p25 moves by the same factor as p10."""
    scale = IntervalScale(scale=2.0, nominal=0.8, n_fit=100)
    rng = np.random.default_rng(5)
    samples = np.exp(rng.uniform(1, 5, (200, 1)) + 0.3 * rng.standard_normal((200, 64)))
    raw = summarize(samples, (0.05, 0.1, 0.25, 0.5, 0.9, 0.95))
    out = scale.apply_summary(raw)
    ordered = np.stack([out[k] for k in ("q5", "q10", "q25", "q50", "q90", "q95")])
    assert (np.diff(ordered, axis=0) >= 0).all()
    for key in ("q5", "q10", "q25", "q90", "q95"):
        np.testing.assert_allclose(out[key] - out["median"], 2.0 * (raw[key] - raw["median"]))
    np.testing.assert_array_equal(out["q50"], raw["median"])
    np.testing.assert_array_equal(out["std"], 2.0 * raw["std"])


def test_records_whose_every_draw_is_zero_leave_the_others_intervals_alone() -> None:
    """A median of exactly 0 (every draw 0: a count-like target) has no relative floor: each
    such record scored ~1e300 on the 1e-300 floor, and a fifth of them pushed the scale, and
    every other record's interval, to ~1e300. Its floor is now `min_half_rel` of the
    calibration truths' median size, which the scale keeps for the records it serves."""
    y_val, val = synthetic(300, 1.0, seed=7)
    zero = np.arange(300) % 4 == 0
    for key in ("median", "q10", "q90"):
        val[key] = np.where(zero, 0.0, val[key])
    y_val = np.where(zero, 1e-4 * np.median(np.abs(y_val)), y_val)  # one floor away
    scale = fit_interval_scale(y_val, val["median"], val["q10"], val["q90"], min_half_rel=1e-4)
    assert 0.5 < scale.scale < 5  # ~1e300 before
    assert scale.zero_half == pytest.approx(1e-4 * np.median(np.abs(y_val)))
    low, high = scale.apply(np.array([0.0, 10.0]), np.array([0.0, 9.0]), np.array([0.0, 11.0]))
    np.testing.assert_allclose(high, [scale.scale * scale.zero_half, 10 + scale.scale])
    assert low[0] == -high[0]
    std = scale.apply_summary({"median": np.zeros(1), "std": np.zeros(1)})["std"]
    np.testing.assert_allclose(std, [scale.scale * scale.zero_half])
    old = IntervalScale(scale=2.0, nominal=0.8, n_fit=10, min_half_rel=1e-4)  # before the field
    assert old.apply(np.zeros(1), np.zeros(1), np.zeros(1))[1][0] == 2.0 * 1e-300
