"""The encoder-decoder: sizes, padding invariance, KV-cached steps equal to teacher forcing."""

from __future__ import annotations

import pytest
import torch

from regressor.config import ModelConfig, load_model_config
from regressor.model import EncoderDecoder, key_mask, rotary
from regressor.numbers import NumberCodec

OUT_VOCAB = NumberCodec().vocab_size  # 650 with the default codec
TINY = load_model_config("tiny")
SMALL = ModelConfig(
    name="t", d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=64
)


def make_model(cfg: ModelConfig = SMALL, in_vocab: int = 300) -> EncoderDecoder:
    torch.manual_seed(0)
    return EncoderDecoder(cfg, in_vocab, OUT_VOCAB).eval()


def batch(b: int = 3, s: int = 12, t: int = 6, in_vocab: int = 300) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    src = torch.randint(0, in_vocab, (b, s), generator=gen)
    lengths = torch.tensor([s, s // 2, 1][:b])
    mask = torch.arange(s)[None, :] < lengths[:, None]
    tgt = torch.randint(0, OUT_VOCAB, (b, t), generator=gen)
    return src, mask, tgt


def decode_incrementally(
    model: torch.nn.Module, src: torch.Tensor, mask: torch.Tensor, tgt: torch.Tensor
) -> torch.Tensor:
    """tgt [B*W, T] (W rows per input, input-major) -> logits [B*W, T, V], one step at a time."""
    cache = model.init_cache(model.encode(src, mask), mask)
    return torch.stack([model.decode_step(tgt[:, i], cache) for i in range(tgt.shape[1])], 1)


@pytest.mark.parametrize(
    ("name", "expected"), [("tiny", 78_688), ("small", 1_544_448), ("base", 59_405_312)]
)
def test_parameter_counts(name: str, expected: int) -> None:
    cfg = load_model_config(name)
    model = EncoderDecoder(cfg, cfg.input_vocab_size, OUT_VOCAB)
    assert model.num_parameters() == expected
    if name == "base":  # the paper's ~60M
        assert 55e6 < expected < 65e6


def test_shapes() -> None:
    model = make_model()
    src, mask, tgt = batch()
    assert model.encode(src, mask).shape == (3, 12, SMALL.d_model)
    assert model(src, mask, tgt).shape == (3, 6, OUT_VOCAB)


@torch.no_grad()
def test_cached_steps_equal_teacher_forcing_fp32() -> None:
    model = make_model()
    src, mask, tgt = batch()
    torch.testing.assert_close(
        decode_incrementally(model, src, mask, tgt), model(src, mask, tgt), atol=1e-5, rtol=1e-5
    )


@torch.no_grad()
def test_cached_steps_equal_teacher_forcing_bf16() -> None:
    model = make_model()
    src, mask, tgt = batch()
    full = model(src, mask, tgt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        steps = decode_incrementally(model, src, mask, tgt)
        full_bf16 = model(src, mask, tgt)
    assert full_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(steps.float(), full_bf16.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(steps.float(), full, atol=5e-2, rtol=5e-2)


@torch.no_grad()
def test_samples_share_one_memory() -> None:
    """K sequences per input against one copy of the cross K/V equal copying the input K times."""
    model = make_model()
    src, mask, _ = batch()
    k = 4
    tgt = torch.randint(0, OUT_VOCAB, (3 * k, 5), generator=torch.Generator().manual_seed(2))
    shared = decode_incrementally(model, src, mask, tgt)
    copied = model(src.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), tgt)
    torch.testing.assert_close(shared, copied, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padding_does_not_change_real_positions() -> None:
    model = make_model()
    src, mask, tgt = batch()
    pad = torch.full((3, 7), 299)  # any id: padding is masked, whatever token it holds
    src_padded = torch.cat([src, pad], 1)
    mask_padded = torch.cat([mask, torch.zeros(3, 7, dtype=torch.bool)], 1)
    memory = model.encode(src, mask)
    memory_padded = model.encode(src_padded, mask_padded)
    torch.testing.assert_close(memory_padded[:, :12][mask], memory[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        model(src_padded, mask_padded, tgt), model(src, mask, tgt), atol=1e-5, rtol=1e-5
    )


@torch.no_grad()
def test_empty_input_stays_finite() -> None:
    model = make_model()
    src, _, tgt = batch(b=2)
    mask = torch.zeros_like(src, dtype=torch.bool)
    assert model(src, mask, tgt[:2]).isfinite().all()


def test_trains_under_bf16_autocast() -> None:
    model = make_model(TINY).train()
    src, mask, tgt = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, mask, tgt)
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tgt.flatten())
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.isfinite().all() for g in grads)


def test_odd_head_width_is_rejected() -> None:
    cfg = ModelConfig(
        name="odd", d_model=24, n_heads=8, n_encoder_layers=1, n_decoder_layers=1, d_ff=32
    )
    with pytest.raises(ValueError, match="even"):
        EncoderDecoder(cfg, 300, OUT_VOCAB)


@torch.no_grad()
def test_attention_dropout_zero_keeps_residual_dropout_only() -> None:
    """attention_dropout=0 makes attention deterministic in training; the blocks still drop."""
    cfg = SMALL.model_copy(update={"dropout": 0.5, "attention_dropout": 0.0})
    model = make_model(cfg).train()
    src, mask, tgt = batch()
    x = model.src_embed(src)
    attn = model.encoder[0].attn
    rope = rotary(src.shape[1], model.head_dim)
    padding = key_mask(mask)
    assert torch.equal(attn(x, rope, padding)[0], attn(x, rope, padding)[0])
    assert not torch.equal(model(src, mask, tgt), model(src, mask, tgt))
    inherited = SMALL.model_copy(update={"dropout": 0.3})
    assert make_model(inherited).encoder[0].attn.dropout == 0.3
