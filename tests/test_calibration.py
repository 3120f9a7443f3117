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
    scale = predictor.calibrate(texts[8:], np.linspace(1, 100, 32), num_samples=16)
    assert np.isfinite(scale)
    assert scale > 0
    loaded = Predictor.load(predictor.save(tmp_path / "bundle"))
    assert loaded.interval_scale().scale == scale
    calibrated = loaded.predict_texts(texts[:8], num_samples=16)
    np.testing.assert_array_equal(calibrated["samples"], raw["samples"])
    np.testing.assert_array_equal(calibrated["median"], raw["median"])
    with np.errstate(over="ignore"):  # an untrained model samples up to ~1e308
        expected = scale * (raw["median"] - raw["q10"])
    ok = np.isfinite(raw["median"]) & np.isfinite(expected)
    assert ok.any()
    np.testing.assert_allclose((calibrated["median"] - calibrated["q10"])[ok], expected[ok])
