"""Predictions from the encoder-decoder: batched constrained sampling, scoring, and summaries.

`sample` runs the encoder once per input and decodes all B*K sequences together, one token per
step, with the KV cache; the number grammar masks logits as tensors, so every sample is a valid
number. `log_prob` scores given values under the same constrained distribution.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from regressor.model import EncoderDecoder
from regressor.numbers import NumberCodec


@torch.no_grad()
def sample(
    model: EncoderDecoder,
    codec: NumberCodec,
    src_ids: Tensor,
    src_mask: Tensor,
    num_samples: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Draw K = num_samples values per input: src_ids [B, S], src_mask [B, S] -> float64 [B, K],
    or [B, K, M] when the codec has M > 1 objectives (one sample is one joint draw of all M).

    temperature 0 decodes greedily (every sample then equals the argmax sequence).
    """
    ids = sample_ids(model, codec, src_ids, src_mask, num_samples, temperature, generator)
    return codec.decode(ids).reshape(src_ids.shape[0], num_samples, *codec.value_shape)


@torch.no_grad()
def sample_ids(
    model: EncoderDecoder,
    codec: NumberCodec,
    src_ids: Tensor,
    src_mask: Tensor,
    num_samples: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Like `sample` but returns the token ids long [B*K, seq_len], input-major."""
    b = src_ids.shape[0]
    out = torch.empty(b * num_samples, codec.seq_len, dtype=torch.long)
    with evaluating(model):
        cache = model.init_cache(model.encode(src_ids, src_mask), src_mask)
        # Step 0: the K samples of an input share one prefix (bos), so one decoder row per input
        # serves them all; its logits and self-attention cache are then repeated K times.
        first = model.decode_step(torch.full((b,), codec.bos_id, dtype=torch.long), cache)
        logits = first.float().repeat_interleave(num_samples, dim=0)  # [B*K, V]
        cache.repeat_samples(num_samples)
        for t in range(codec.seq_len):
            logits = logits.masked_fill(~codec.allowed_mask(out[:, :t]), float("-inf"))
            out[:, t] = _pick(logits, temperature, generator)
            if t + 1 < codec.seq_len:
                logits = model.decode_step(out[:, t], cache).float()  # [B*K, V]
    return out


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the block, then back to whatever mode the caller had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _pick(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """One token per row of logits [N, V] (disallowed tokens at -inf) -> long [N]."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    # Inverse CDF: one uniform per row instead of `multinomial`'s one exponential per vocabulary
    # entry ([N, V] random numbers per step). float32 is exact enough: disallowed tokens have
    # probability exactly 0, so the CDF is flat across them and the search can never land there,
    # and the uniform is scaled by the CDF's own total, so rounding in the sum biases nothing.
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [N, V]
    cdf = probs.cumsum(dim=-1)  # [N, V]
    total = cdf[:, -1:]  # [N, 1], ~1
    u = torch.rand(total.shape, dtype=torch.float32, generator=generator)
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
    target = codec.encode(values)  # [B, T]
    bos = torch.full((len(target), 1), codec.bos_id, dtype=torch.long)
    with evaluating(model):
        logits = model(src_ids, src_mask, torch.cat([bos, target[:, :-1]], dim=1)).float()
    allowed = torch.stack([codec.allowed_mask(target[:, :t]) for t in range(codec.seq_len)], 1)
    logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return logp.gather(2, target[:, :, None]).squeeze(2).sum(1).double().numpy()


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
            "median": np.nanmedian(finite, axis=1),
            "mean": np.nanmean(finite, axis=1),
            "std": np.nanstd(finite, axis=1),
        }
        for q in quantiles:
            out[f"q{q * 100:g}"] = np.nanquantile(finite, q, axis=1)
    out["finite_fraction"] = np.isfinite(samples).mean(axis=1)
    return out
