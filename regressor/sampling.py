"""Predictions from the encoder-decoder: batched constrained sampling, scoring, and summaries.

`sample` runs the encoder once per input and decodes all B*K sequences together, one token per
step, with the KV cache; the number grammar masks logits as tensors, so every sample is a valid
number. `log_prob` scores given values under the same constrained distribution.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from regressor.calibration import percent_label
from regressor.model import EncoderDecoder
from regressor.numbers import FLOAT_MAX, NumberCodec


@torch.no_grad()
def sample(
    model: EncoderDecoder,
    codec: NumberCodec,
    src_ids: Tensor,
    src_mask: Tensor,
    num_samples: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    row_seeds: Sequence[int] | None = None,
) -> np.ndarray:
    """Draw K = num_samples values per input: src_ids [B, S], src_mask [B, S] -> float64 [B, K],
    or [B, K, M] when the codec has M > 1 objectives (one sample is one joint draw of all M).

    temperature 0 decodes greedily (every sample then equals the argmax sequence). The random
    numbers come from `generator`, or with `row_seeds` [B] from one generator per input, so an
    input's draws do not depend on the other inputs of the batch.
    """
    ids = sample_ids(
        model, codec, src_ids, src_mask, num_samples, temperature, generator, row_seeds
    )
    k = int(num_samples)  # a whole float (4.0) passes `check_sampling`
    return codec.decode(ids.cpu()).reshape(src_ids.shape[0], k, *codec.value_shape)


def check_sampling(num_samples: int, temperature: float) -> None:
    """Refuse what sampling cannot mean: no draws (every summary NaN), a negative count (numpy's
    "negative dimensions"), a negative temperature (silently greedy) or a NaN or infinite one
    (an index error deep in torch)."""
    if isinstance(num_samples, bool) or not float(num_samples).is_integer() or num_samples < 1:
        raise ValueError(f"num_samples must be a whole number >= 1, got {num_samples!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(
            f"temperature must be finite and >= 0 (0 decodes greedily), got {temperature!r}"
        )


@torch.no_grad()
def sample_ids(
    model: EncoderDecoder,
    codec: NumberCodec,
    src_ids: Tensor,
    src_mask: Tensor,
    num_samples: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    row_seeds: Sequence[int] | None = None,
) -> Tensor:
    """Like `sample` but returns the token ids long [B*K, seq_len], input-major.

    Samples that share a prefix share its decoder row: at each step the K samples of an input
    are grouped by prefix, the decoder runs once per group, and every sample then draws its
    next token from its group's distribution (the same distribution it would get from its own
    row, so the draws are exact). A trained model is sharp, so the groups are few: the sign and
    the leading digits are shared by most samples, and only the last digits fan out to K rows.
    """
    check_sampling(num_samples, temperature)
    # int: a whole float (4.0) passes the check, and torch sizes refuse it.
    b, k, device = src_ids.shape[0], int(num_samples), src_ids.device  # the model's device
    out = torch.empty(b * k, codec.seq_len, dtype=torch.long, device=device)
    if b == 0:  # no input: the model's reshapes divide by the batch size
        return out
    group_of = torch.arange(b, device=device).repeat_interleave(k)  # [B*K] sample -> its group
    groups = torch.arange(b, device=device) * k  # [G] a sample of each group (its prefix)
    uniforms = None  # [B*K, seq_len]: each input's own, drawn up front
    if row_seeds is not None and temperature > 0:
        uniforms = row_uniforms(row_seeds, k, codec.seq_len).to(device)
    with evaluating(model):
        cache = model.init_cache(model.encode(src_ids, src_mask), src_mask)
        bos = torch.full((b,), codec.bos_id, dtype=torch.long, device=device)
        logits = model.decode_step(bos, cache)
        for t in range(codec.seq_len):
            allowed = codec.allowed_mask(out[groups, :t])  # [G, V]
            logits = logits.float().masked_fill(~allowed, float("-inf"))
            u = None if uniforms is None else uniforms[:, t : t + 1]
            out[:, t] = _pick(logits[group_of], temperature, generator, u)
            if t + 1 < codec.seq_len:
                group_of, groups, parents = _regroup(group_of, out[:, t], b, k)
                cache.select_rows(parents)
                logits = model.decode_step(out[groups, t], cache)  # [G, V]
    return out


def _regroup(group_of: Tensor, token: Tensor, b: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """New prefix groups after each sample [B*K] appended `token` [B*K] to its group's prefix.

    Returns the sample -> group map [B*K], a sample of each group [G] and each group's parent
    row [G]. Rows stay input-major with the same width W per input (G = B*W, W = the most
    groups any input has), which the decoder's cross-attention needs to find each row's
    memory; an input with fewer groups fills its spare rows with its sample 0's group again
    (decoded and never read).
    """
    key = group_of * (int(token.max()) + 1) + token  # a group and a token -> one int64 key
    unique, inverse = torch.unique(key, return_inverse=True)  # sorted: input-major
    # A sample of each group; which one does not matter, all share the group's prefix.
    device = token.device
    every = torch.arange(b * k, device=device)
    sample = torch.empty(len(unique), dtype=torch.long, device=device).scatter_(0, inverse, every)
    owner = sample // k  # [U] each group's input
    counts = torch.bincount(owner, minlength=b)  # [B]
    width = int(counts.max())
    start = counts.cumsum(0) - counts  # [B] index of each input's first unique group
    slot = owner * width + torch.arange(len(unique), device=device) - start[owner]  # [U] row
    groups = (torch.arange(b, device=device) * k).repeat_interleave(width)  # spare: sample 0
    groups[slot] = sample
    parents = group_of[groups]
    return slot[inverse], groups, parents


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the block, then back to whatever mode the caller had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def row_uniforms(row_seeds: Sequence[int], k: int, steps: int) -> Tensor:
    """float32 [B*K, steps] uniforms, input-major: input b's K x steps from a generator seeded
    `row_seeds[b]` alone."""
    draws = [
        torch.rand(k, steps, generator=torch.Generator().manual_seed(seed)) for seed in row_seeds
    ]
    return torch.cat(draws) if draws else torch.empty(0, steps)


def _pick(
    logits: Tensor,
    temperature: float,
    generator: torch.Generator | None,
    u: Tensor | None = None,
) -> Tensor:
    """One token per row of logits [N, V] (disallowed tokens at -inf) -> long [N]; `u` [N, 1]:
    the rows' uniforms, else drawn from `generator`."""
    if temperature < torch.finfo(torch.float32).tiny:  # 0, or one float32 reads as 0: greedy
        return logits.argmax(dim=-1)
    # Inverse CDF: one uniform per row instead of `multinomial`'s one exponential per vocabulary
    # entry ([N, V] random numbers per step). float32 is exact enough: disallowed tokens have
    # probability exactly 0, so the CDF is flat across them and the search can never land there,
    # and the uniform is scaled by the CDF's own total, so rounding in the sum biases nothing.
    # Shifted to a row maximum of 0 first: divided by a tiny temperature, a positive logit would
    # overflow to inf, and softmax would turn the row to NaN (an index past the vocabulary).
    logits = logits.float()
    # A temperature beyond float32 became inf in the division, and -inf / inf is NaN: capped,
    # it is what it means, every allowed token about equally likely.
    temperature = min(temperature, torch.finfo(torch.float32).max)
    probs = torch.softmax((logits - logits.amax(dim=-1, keepdim=True)) / temperature, dim=-1)
    cdf = probs.cumsum(dim=-1)  # [N, V]
    total = cdf[:, -1:]  # [N, 1], ~1
    if u is None:
        on = None if generator is None else generator.device  # a generator draws on its own
        u = torch.rand(total.shape, dtype=torch.float32, generator=generator, device=on)
        u = u.to(total.device)
    # Strictly below the total, so the search lands on a token with positive probability.
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True).squeeze(1)


@torch.no_grad()
def log_prob(
    model: EncoderDecoder,
    codec: NumberCodec,
    src_ids: Tensor,
    src_mask: Tensor,
    values: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Log-probability of each input's value [B] (or its M values [B, M]) -> float64 [B].

    With several objectives this is the joint log-probability of all M. The value is first
    rounded as the codec encodes it, so this is the probability of its token sequence: the
    probability mass of the interval of numbers that round to it.
    """
    target = codec.encode(values).to(src_ids.device)  # [B, T]
    if len(target) == 0:  # no input: the model's reshapes divide by the batch size
        return np.zeros(0)
    bos = torch.full((len(target), 1), codec.bos_id, dtype=torch.long, device=src_ids.device)
    with evaluating(model):
        logits = model(src_ids, src_mask, torch.cat([bos, target[:, :-1]], dim=1)).float()
    allowed = torch.stack([codec.allowed_mask(target[:, :t]) for t in range(codec.seq_len)], 1)
    logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return logp.gather(2, target[:, :, None]).squeeze(2).sum(1).double().cpu().numpy()


HALF_MAX = FLOAT_MAX / 2  # a draw beyond it can make an interpolation overflow


def _within_range(values: np.ndarray) -> np.ndarray:
    """Statistics of finite samples stay finite: the midpoint or mean of two samples near the
    float64 maximum overflows to inf (NaN stays NaN)."""
    return np.clip(values, -FLOAT_MAX, FLOAT_MAX)


def finite_median(samples: np.ndarray) -> np.ndarray:
    """Per input, the median of its finite samples [B, K] -> float64 [B] (NaN with none): the
    point estimate users get, without the rest of `summarize`'s statistics."""
    finite = np.where(np.isfinite(samples), samples, np.nan)
    with warnings.catch_warnings():  # all-NaN rows are expected and documented: NaN out
        warnings.simplefilter("ignore", RuntimeWarning)
        return _within_range(_without_overflow(lambda x: np.nanmedian(x, axis=1), finite))


def nan_quantile(finite: np.ndarray, q: float | np.ndarray, axis: int = 1) -> np.ndarray:
    """`np.nanquantile` along `axis` that cannot overflow (`_without_overflow`)."""
    return _without_overflow(lambda x: np.nanquantile(x, q, axis=axis), finite)


def _without_overflow(
    statistic: Callable[[np.ndarray], np.ndarray], finite: np.ndarray
) -> np.ndarray:
    """`statistic(finite)` computed on halves and doubled back when a draw is beyond half
    float64's range (a barely trained model's ±1e308; the codec spans every float64): there an
    interpolation's difference, or two draws' midpoint, was inf, so every quantile level below
    the middle read +inf and every one above -inf. Halving is exact for normal floats; arrays
    without such a draw are computed as they are (their results bit for bit)."""
    if not np.nanmax(np.abs(finite), initial=0.0) > HALF_MAX:
        return statistic(finite)
    with np.errstate(over="ignore"):
        return statistic(finite * 0.5) * 2.0


def summarize(
    samples: np.ndarray, quantiles: Sequence[float] = (0.1, 0.5, 0.9)
) -> dict[str, np.ndarray]:
    """Per-input statistics of samples [B, K] -> each float64 [B].

    Keys: `median`, `mean`, `std` (population, ddof=0), `q10`-style keys for each quantile
    (`q` + percent, e.g. 0.025 -> `q2.5`) and `finite_fraction`. NaN and ±inf samples are left out
    of every statistic (one inf would make the mean and std meaningless); `finite_fraction` says
    how many samples remained. An input with no finite sample gets NaN everywhere.
    """
    finite = np.where(np.isfinite(samples), samples, np.nan)
    with warnings.catch_warnings():  # all-NaN rows are expected and documented: NaN out
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {
            "median": finite_median(samples),
            "mean": _within_range(np.nanmean(finite, axis=1)),
            "std": np.nanstd(finite, axis=1),
        }
        for q in quantiles:
            # The 50% quantile is the median itself: interpolating between the two middle
            # samples can land one ulp off their mean, and users read p50 == median.
            point = out["median"] if q == 0.5 else nan_quantile(finite, q)
            out[f"q{percent_label(q)}"] = _within_range(point)
    out["finite_fraction"] = np.isfinite(samples).mean(axis=1)
    return out


def relative_error_point(samples: np.ndarray) -> np.ndarray:
    """Per input, the value that minimises the expected relative error |p - y| / y over its
    positive samples [B, K] -> float64 [B]: their median weighted by 1 / y.

    MAPE and MRE charge an over-estimate of a small value more than an under-estimate of a large
    one, so their Bayes point sits below the median, by about the squared relative spread (a
    lognormal's exp(mu - sigma^2)); a sharp sample set leaves it at the median. Samples that are
    not positive (or not finite) carry no weight; an input with none left gets NaN.
    """
    ordered = np.sort(np.where(samples > 0, samples, np.nan), axis=1)  # [B, K], NaN last
    with np.errstate(over="ignore", invalid="ignore"):
        weights = 1.0 / ordered  # [B, K]; left-out (NaN) samples NaN, +inf samples 0
        # 1 / 5e-324 is inf, and the cumulative sum then picked the wrong sample: such rows
        # weigh 1 / y scaled by their smallest sample (the same median, every weight <= 1);
        # other rows keep plain 1 / y, so their points stay bit for bit what they were.
        overflow = np.isinf(weights).any(axis=1)
        weights[overflow] = ordered[overflow, :1] / ordered[overflow]
    weights = np.nan_to_num(weights, nan=0.0)
    cumulative = np.cumsum(weights, axis=1)
    total = cumulative[:, -1]  # [B]
    # the first sample whose cumulative weight reaches half the total: a weighted median
    first = np.argmax(cumulative >= total[:, None] / 2, axis=1)
    point = np.take_along_axis(ordered, first[:, None], axis=1)[:, 0]
    return np.where(total > 0, point, np.nan)
