"""Sampling, scoring and summaries, on untrained and briefly trained tiny models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from regressor.config import CodecConfig, load_model_config
from regressor.model import EncoderDecoder
from regressor.numbers import NAN, NumberCodec
from regressor.predictor import pad_batch
from regressor.sampling import (
    finite_median,
    log_prob,
    relative_error_point,
    sample,
    sample_ids,
    summarize,
)
from regressor.vocab import InputTokenizer

TINY = load_model_config("tiny")
TOY = {"x=3": 300.0, "x=5": 0.052, "x=7": -7100.0, "x=9": 9.9e9, "x=1": 0.0}
TEXTS = list(TOY)


def tokenize(tokenizer: InputTokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_batch(tokenizer.encode_batch(texts, 32), tokenizer.pad_id)


@pytest.fixture(scope="module")
def toy() -> tuple[EncoderDecoder, NumberCodec, InputTokenizer]:
    """A tiny model fitted to TOY for 200 full-batch steps (about a second on a CPU)."""
    torch.manual_seed(0)
    codec = NumberCodec(CodecConfig(mantissa_digits=3))
    tokenizer = InputTokenizer.train(TEXTS * 5, vocab_size=300)
    model = EncoderDecoder(TINY, tokenizer.vocab_size, codec.vocab_size)
    src, mask = tokenize(tokenizer, TEXTS)
    target = codec.encode(list(TOY.values()))
    tgt_in = torch.cat([torch.full((len(target), 1), codec.bos_id), target[:, :-1]], 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(src, mask, tgt_in)
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), codec, tokenizer


def untrained(codec: NumberCodec) -> tuple[EncoderDecoder, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = EncoderDecoder(TINY, 300, codec.vocab_size).eval()
    src = torch.randint(0, 300, (2, 9))
    mask = torch.arange(9)[None, :] < torch.tensor([[9], [4]])
    return model, src, mask


def test_trained_model_samples_its_targets(
    toy: tuple[EncoderDecoder, NumberCodec, InputTokenizer],
) -> None:
    model, codec, tokenizer = toy
    src, mask = tokenize(tokenizer, TEXTS)
    gen = torch.Generator().manual_seed(0)
    samples = sample(model, codec, src, mask, num_samples=16, generator=gen)
    assert samples.shape == (len(TOY), 16)
    np.testing.assert_array_equal(np.median(samples, axis=1), list(TOY.values()))
    greedy = sample(model, codec, src, mask, num_samples=1, temperature=0.0)
    np.testing.assert_array_equal(greedy[:, 0], list(TOY.values()))


def test_trained_model_scores_its_targets_highest(
    toy: tuple[EncoderDecoder, NumberCodec, InputTokenizer],
) -> None:
    model, codec, tokenizer = toy
    src, mask = tokenize(tokenizer, TEXTS)
    right = log_prob(model, codec, src, mask, list(TOY.values()))
    wrong = log_prob(model, codec, src, mask, list(TOY.values())[::-1])
    assert right.shape == (len(TOY),)
    assert (right > np.log(0.5)).all()
    assert (right[[0, 1, 3, 4]] > wrong[[0, 1, 3, 4]] + 3).all()  # index 2 is its own reverse


def naive_greedy(
    model: EncoderDecoder, codec: NumberCodec, src: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """What regress-lm does: re-run the whole decoder on the prefix at every step, no cache."""
    prefix = torch.full((len(src), 1), codec.bos_id)
    for t in range(codec.seq_len):
        logits = model(src, mask, prefix)[:, -1]
        logits = logits.masked_fill(~codec.allowed_mask(prefix[:, 1:]), float("-inf"))
        prefix = torch.cat([prefix, logits.argmax(-1, keepdim=True)], 1)
        assert prefix.shape[1] == t + 2
    return prefix[:, 1:]


@torch.no_grad()
def test_cached_greedy_equals_naive_greedy() -> None:
    codec = NumberCodec(CodecConfig(mantissa_digits=4))
    model, src, mask = untrained(codec)
    cached = sample_ids(model, codec, src, mask, num_samples=3, temperature=0.0)
    expected = naive_greedy(model, codec, src, mask).repeat_interleave(3, 0)
    assert torch.equal(cached, expected)


def decoder_rows(model: EncoderDecoder) -> list[int]:
    """Rows the output head sees at each decode step, recorded as sampling runs."""
    rows: list[int] = []
    model.head.register_forward_hook(lambda _m, _i, out: rows.append(out.shape[0]))
    return rows


def test_samples_sharing_a_prefix_share_a_decoder_row() -> None:
    codec = NumberCodec(CodecConfig(mantissa_digits=4))
    model, src, mask = untrained(codec)
    rows = decoder_rows(model)
    sample_ids(model, codec, src, mask, 64, temperature=0.0)
    assert rows == [2] * codec.seq_len  # greedy: one prefix per input at every step

    rows.clear()
    ids = sample_ids(model, codec, src, mask, 64, generator=torch.Generator().manual_seed(1))
    for t, n in enumerate(rows):  # B * (the most distinct prefixes any input has)
        distinct = max(
            len({tuple(r) for r in ids[i * 64 : (i + 1) * 64, :t].tolist()}) for i in (0, 1)
        )
        assert n == 2 * distinct
    assert sum(rows) < codec.seq_len * 2 * 64


def test_samples_decode_to_numbers_and_are_reproducible() -> None:
    codec = NumberCodec()
    model, src, mask = untrained(codec)
    ids = sample_ids(model, codec, src, mask, 64, generator=torch.Generator().manual_seed(3))
    values = codec.decode(ids)
    assert np.array_equal(np.isnan(values), (ids[:, 0] == NAN).numpy())  # NaN only if sampled
    again = sample(model, codec, src, mask, 64, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(again, values.reshape(2, 64))


def test_a_whole_float_count_and_an_empty_batch_sample_as_they_should() -> None:
    """`check_sampling` accepts 4.0 ("a whole number"), which torch's sizes then refused; and a
    batch of no inputs divided by its size in the model's reshapes."""
    codec = NumberCodec()
    model, src, mask = untrained(codec)
    seeded = torch.Generator().manual_seed(3)
    as_float = sample(model, codec, src, mask, 4.0, generator=seeded)  # type: ignore[arg-type]
    np.testing.assert_array_equal(
        as_float, sample(model, codec, src, mask, 4, generator=torch.Generator().manual_seed(3))
    )
    assert sample(model, codec, src[:0], mask[:0], 4).shape == (0, 4)
    assert log_prob(model, codec, src[:0], mask[:0], []).shape == (0,)


def test_sampling_keeps_the_callers_mode() -> None:
    codec = NumberCodec()
    model, src, mask = untrained(codec)
    model.train()
    sample(model, codec, src, mask, 2)
    assert model.training


@torch.no_grad()
def test_log_prob_is_a_distribution_matching_the_sampler() -> None:
    """Tiny codec (58 possible numbers): probabilities sum to one and sampling follows them."""
    codec = NumberCodec(CodecConfig(mantissa_digits=1, exponent_min=-1, exponent_max=1))
    model, src, mask = untrained(codec)
    grid = [float(s * d * 10.0**e) for s in (1, -1) for d in range(1, 10) for e in (-1, 0, 1)]
    values = [0.0, float("nan"), float("inf"), -float("inf"), *grid]
    probs = np.stack([np.exp(log_prob(model, codec, src, mask, [v, v])) for v in values], 1)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-4)

    draws = sample(model, codec, src, mask, 4000, generator=torch.Generator().manual_seed(0))
    for row in range(2):
        freq = [np.mean(same(draws[row], v)) for v in values]
        np.testing.assert_allclose(freq, probs[row], atol=0.03)


def same(draws: np.ndarray, value: float) -> np.ndarray:
    return np.isnan(draws) if np.isnan(value) else draws == value


def test_summarize_excludes_non_finite_samples() -> None:
    samples = np.array(
        [
            [1.0, 2.0, 3.0, 4.0, np.nan, np.inf],
            [np.nan, np.inf, -np.inf, np.nan, np.nan, np.nan],
            [5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
        ]
    )
    out = summarize(samples, quantiles=(0.1, 0.5, 0.9, 0.025))
    assert set(out) == {"median", "mean", "std", "q10", "q50", "q90", "q2.5", "finite_fraction"}
    np.testing.assert_allclose(out["median"][[0, 2]], [2.5, 5.0])
    np.testing.assert_allclose(out["mean"][[0, 2]], [2.5, 5.0])
    np.testing.assert_allclose(out["std"][[0, 2]], [np.std([1, 2, 3, 4]), 0.0])
    np.testing.assert_allclose(out["q10"][0], np.quantile([1, 2, 3, 4], 0.1))
    np.testing.assert_allclose(out["finite_fraction"], [4 / 6, 0.0, 1.0])
    assert all(np.isnan(out[key][1]) for key in out if key != "finite_fraction")


def test_the_50_percent_quantile_is_the_median_to_the_last_bit() -> None:
    # Four draws whose interpolated 50% quantile is one ulp off the mean of the middle two.
    samples = np.array([[-4716.803289, -3757.167235, 1706.244147, 1471.895116]])
    assert np.nanquantile(samples, 0.5) != np.nanmedian(samples)  # the case this guards
    out = summarize(samples, quantiles=(0.5,))
    assert out["q50"][0] == out["median"][0] == np.nanmedian(samples)


def test_finite_median_ignores_non_finite_draws_per_objective() -> None:
    """[B, K, M] draws: the median over K of each objective's finite draws, NaN (and no warning)
    where an objective has none; a plain median would let one inf or NaN draw move or void it."""
    draws = np.array(
        [
            [[1.0, np.nan], [2.0, np.nan], [np.inf, np.nan]],
            [[-3.0, 7.0], [np.nan, 8.0], [-1.0, -np.inf]],
        ]
    )  # B = 2 inputs, K = 3 draws, M = 2 objectives
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an all-NaN objective must not warn
        median = finite_median(draws)
    assert median.shape == (2, 2)
    np.testing.assert_allclose(median, [[1.5, np.nan], [-2.0, 7.5]])
    np.testing.assert_allclose(median, summarize(draws)["median"])


@torch.no_grad()
def test_several_objectives_sample_and_score() -> None:
    """M = 3 objectives: samples [B, K, M], all numbers or sampled specials; log-probs finite."""
    codec = NumberCodec(CodecConfig(mantissa_digits=2, num_objectives=3))
    model, src, mask = untrained(codec)
    draws = sample(model, codec, src, mask, 16, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (2, 16, 3)
    ids = sample_ids(model, codec, src, mask, 16, generator=torch.Generator().manual_seed(0))
    signs = ids[:, :: codec.number_len].reshape(2, 16, 3)
    assert np.array_equal(np.isnan(draws), (signs == NAN).numpy())
    summary = summarize(draws)
    assert summary["median"].shape == (2, 3)
    scores = log_prob(model, codec, src, mask, [[1.0, 2.0, 3.0], [0.5, -4.0, 1e10]])
    assert scores.shape == (2,)
    assert np.isfinite(scores).all()


def test_inverse_cdf_pick_follows_the_softmax_and_never_picks_a_masked_token() -> None:
    from regressor.sampling import _pick

    logits = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf"), 2.0]]).repeat(60_000, 1)
    picks = _pick(logits, 1.0, torch.Generator().manual_seed(0))
    counts = torch.bincount(picks, minlength=5).double() / len(picks)
    expected = torch.softmax(logits[0].double(), dim=0)
    assert counts[1] == counts[3] == 0
    assert torch.allclose(counts, expected, atol=0.01)


@torch.no_grad()
@pytest.mark.parametrize("temperature", [1e-30, 1e-45, 1e-300])
def test_a_tiny_temperature_samples_greedily_instead_of_crashing(temperature: float) -> None:
    """Divided by 1e-300 a positive logit overflowed to inf, softmax gave NaN and the pick an
    index past the vocabulary (an IndexError from the next decode step)."""
    codec = NumberCodec(CodecConfig(mantissa_digits=4))
    model, src, mask = untrained(codec)
    greedy = sample_ids(model, codec, src, mask, num_samples=3, temperature=0.0)
    tiny = sample_ids(model, codec, src, mask, 3, temperature, torch.Generator().manual_seed(0))
    assert torch.equal(tiny, greedy)


@pytest.mark.parametrize(
    ("num_samples", "temperature"), [(2, -1.0), (2, float("nan")), (2, float("inf")), (0, 1.0)]
)
def test_the_sampler_refuses_what_sampling_cannot_mean(num_samples: int, temperature: float):
    """Checked in the sampler itself, not only by the predictor: called directly, a negative
    temperature decoded greedily without a word and NaN or inf failed with an IndexError."""
    codec = NumberCodec(CodecConfig(mantissa_digits=2))
    model, src, mask = untrained(codec)
    with pytest.raises(ValueError, match="must be"):
        sample(model, codec, src, mask, num_samples, temperature)


def test_statistics_of_finite_samples_near_the_float_maximum_stay_finite() -> None:
    top = np.finfo(np.float64).max
    out = summarize(np.array([[top, top], [1e308, 1.7e308]]), quantiles=(0.1, 0.5, 0.9))
    for key in ("median", "mean", "q10", "q50", "q90"):
        assert np.isfinite(out[key]).all(), key
    assert out["median"][0] == top


def test_quantile_keys_are_never_in_exponent_notation() -> None:
    """`q5e-05` (from 5e-7) was no quantile key to the conformal scale: left unscaled, it could
    lie above a widened q10."""
    from regressor.calibration import IntervalScale, is_quantile

    out = summarize(np.array([[1.0, 2.0, 3.0, 4.0]]), quantiles=(5e-7, 0.1, 0.9))
    assert set(out) >= {"q0.00005", "q10", "q90"}
    assert is_quantile("q0.00005")
    stretched = IntervalScale(scale=3.0, nominal=0.8, n_fit=10).apply_summary(out)
    assert stretched["q0.00005"][0] <= stretched["q10"][0] < out["q10"][0]


def test_relative_error_point_minimises_the_samples_relative_error() -> None:
    rng = np.random.default_rng(0)
    samples = rng.lognormal(3.0, 0.6, size=(40, 31))  # wide: the point leaves the median
    points = relative_error_point(samples)
    for row, point in zip(samples, points, strict=True):
        expected = [np.mean(np.abs(row - p) / row) for p in (point, *row)]
        assert expected[0] <= min(expected[1:]) + 1e-12  # the optimum lies on a sample
    assert (points < np.median(samples, axis=1)).all()  # skewed right: the point sits lower
    # small values weigh most: the answer to [1, 2, 100] is 1, not the median 2
    assert relative_error_point(np.array([[2.0, 100.0, 1.0]]))[0] == 1.0
    # subnormal samples: 1 / 5e-324 overflowed, and the point was 1e-320
    assert relative_error_point(np.array([[5e-324, 1e-320, 1.0]]))[0] == 5e-324


def test_relative_error_point_leaves_out_samples_that_are_not_positive() -> None:
    samples = np.array(
        [
            [10.0, 20.0, 30.0, -1.0, np.nan],
            [5.0, 5.0, 5.0, 5.0, 0.0],
            [4.0, np.inf, 4.0, np.nan, -np.inf],
            [np.nan, -2.0, 0.0, np.inf, np.nan],
        ]
    )
    points = relative_error_point(samples)
    assert points[:3].tolist() == [10.0, 5.0, 4.0]
    assert np.isnan(points[3])


def test_a_records_samples_do_not_depend_on_the_rest_of_the_call() -> None:
    """Alone, in a batch, in another order, among other records or twice: the same samples
    (each input draws from its own generator, `predictor.input_seed`). Before, one generator
    served the call, so a record's interval moved with what else was predicted beside it."""
    from regressor.predictor import Predictor

    texts = [f"load={v}\nqueue={v % 7}" + "\nnoise=1" * (v % 4) for v in range(12)]
    torch.manual_seed(0)
    predictor = Predictor.create(TINY, CodecConfig(), InputTokenizer.train(texts, vocab_size=300))
    batched = predictor.sample_texts(texts, 16, batch_size=5)
    alone = np.stack([predictor.sample_texts([text], 16)[0] for text in texts])
    np.testing.assert_array_equal(batched, alone)
    mixed = predictor.sample_texts([texts[7], texts[2], texts[7]], 16, batch_size=2)
    np.testing.assert_array_equal(mixed, batched[[7, 2, 7]])
    assert not np.array_equal(batched[0], batched[1])  # each record its own draws
    # The call's seed still chooses the draws.
    assert not np.array_equal(predictor.sample_texts(texts[:1], 16, seed=1)[0], batched[0])
    np.testing.assert_array_equal(predictor.sample_texts(texts, 16.0)[:3], alone[:3])  # float ok
    # Beside a far longer record (a wider pad), as alone: attention over masked padding is not
    # bit-exact across widths, so each input's pad width follows its own length only.
    longer = predictor.sample_texts([*texts, "load=1\nqueue=2\n" * 40], 16, batch_size=13)
    np.testing.assert_array_equal(longer[:-1], alone)


def test_an_inputs_pad_width_follows_its_own_length_and_batches_keep_to_one_width() -> None:
    from regressor.predictor import PAD_STEP, sampled_width, width_batches

    assert [sampled_width(n, 100) for n in (0, 1, PAD_STEP, PAD_STEP + 1, 99)] == [
        PAD_STEP,
        PAD_STEP,
        PAD_STEP,
        2 * PAD_STEP,
        100,  # never past the model's input length
    ]
    lengths = [3, 40, 5, 70, 33, 2]
    widths = [sampled_width(n, 512) for n in lengths]
    order = np.argsort(lengths, kind="stable")
    batches = width_batches(order, widths, batch_size=2)
    assert [b.tolist() for b in batches] == [[5, 0], [2], [4, 1], [3]]


def test_quantiles_of_draws_near_the_float64_limit_do_not_overflow() -> None:
    """Between an untrained model's draws of ±1e308 the interpolation overflowed: q10 read
    +inf (clipped to 1.8e308) and q90 -inf, an interval excluding every truth, and the
    calibration plot's curve came out upside down; two large draws' median was inf."""
    from regressor.plots import calibration

    wide = np.array([[-1e308, 1e308]] * 3)
    out = summarize(wide)
    assert np.allclose(out["q10"], -0.8e308)
    assert np.allclose(out["q90"], 0.8e308)
    assert out["median"].tolist() == [0.0] * 3
    assert summarize(np.array([[1e308, 1.5e308]]))["median"][0] == 1.25e308
    ordinary = np.random.default_rng(0).lognormal(3, 1, (20, 16))
    assert summarize(ordinary)["q10"].tolist() == np.quantile(ordinary, 0.1, axis=1).tolist()
    curve = calibration(np.array([1.0, 2.0, 3.0]), wide, "wide").axes[0].lines[0].get_ydata()
    assert list(curve) == sorted(curve)  # the fraction below rises with the level
