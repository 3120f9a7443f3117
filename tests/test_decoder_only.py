"""The decoder-only ablation: cached steps equal teacher forcing, padding changes nothing, and it
trains, samples, saves and adapts through the same code as the encoder-decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from test_model import decode_incrementally  # the same step-by-step decode serves both models

from regressor.adaptation import freeze_for
from regressor.config import (
    AdaptConfig,
    CodecConfig,
    ModelConfig,
    TrainConfig,
    load_model_config,
)
from regressor.decoder_only import DecoderOnly, build_model
from regressor.lora import merge_lora
from regressor.model import EncoderDecoder
from regressor.numbers import NAN, NumberCodec
from regressor.predictor import Predictor, pad_batch
from regressor.sampling import log_prob, sample, sample_ids
from regressor.training import fit
from regressor.vocab import InputTokenizer

IN_VOCAB, OUT_VOCAB = 300, 40
CFG = ModelConfig(
    name="t",
    architecture="decoder_only",
    d_model=32,
    n_heads=4,
    n_encoder_layers=0,
    n_decoder_layers=2,
    d_ff=64,
)


def make_model(cfg: ModelConfig = CFG, out_vocab: int = OUT_VOCAB) -> DecoderOnly:
    torch.manual_seed(0)
    return DecoderOnly(cfg, IN_VOCAB, out_vocab).eval()


def batch(
    lengths: tuple[int, ...] = (12, 6, 0), s: int = 12, t: int = 6
) -> tuple[torch.Tensor, ...]:
    """Right-padded inputs of the given lengths (0: an empty input) and random targets."""
    gen = torch.Generator().manual_seed(1)
    src = torch.randint(0, IN_VOCAB, (len(lengths), s), generator=gen)
    mask = torch.arange(s)[None, :] < torch.tensor(lengths)[:, None]
    tgt = torch.randint(0, OUT_VOCAB, (len(lengths), t), generator=gen)
    return src, mask, tgt


@torch.no_grad()
def test_cached_steps_equal_teacher_forcing_with_mixed_lengths() -> None:
    model = make_model()
    src, mask, tgt = batch()
    full = model(src, mask, tgt)
    assert full.shape == (3, 6, OUT_VOCAB)
    assert full.isfinite().all()  # the empty input included
    torch.testing.assert_close(decode_incrementally(model, src, mask, tgt), full)


@torch.no_grad()
def test_rows_per_input_share_one_prefix() -> None:
    """W rows per input against one copy of its prefix equal the input copied W times."""
    model = make_model()
    src, mask, _ = batch()
    w = 4
    tgt = torch.randint(0, OUT_VOCAB, (3 * w, 5), generator=torch.Generator().manual_seed(2))
    copied = model(src.repeat_interleave(w, 0), mask.repeat_interleave(w, 0), tgt)
    torch.testing.assert_close(decode_incrementally(model, src, mask, tgt), copied)


@torch.no_grad()
def test_selected_rows_continue_their_own_sequences() -> None:
    """`select_rows` mid-decode (rows regrouped and widened from W=2 to W=3, as sampling does)
    gives each new row the logits of its parent's sequence continued by its own tokens."""
    model = make_model()
    src, mask, _ = batch(lengths=(12, 5))
    gen = torch.Generator().manual_seed(3)
    early = torch.randint(0, OUT_VOCAB, (4, 2), generator=gen)  # 2 steps, W = 2
    late = torch.randint(0, OUT_VOCAB, (6, 3), generator=gen)  # 3 steps, W = 3
    parents = torch.tensor([1, 0, 1, 2, 2, 3])  # rows of input 0 stay input 0's
    cache = model.init_cache(model.encode(src, mask), mask)
    for i in range(2):
        model.decode_step(early[:, i], cache)
    cache.select_rows(parents)
    steps = torch.stack([model.decode_step(late[:, i], cache) for i in range(3)], 1)
    whole = torch.cat([early[parents], late], 1)  # [6, 5]
    full = model(src.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), whole)
    torch.testing.assert_close(steps, full[:, 2:])


@torch.no_grad()
def test_padding_does_not_change_a_row() -> None:
    """A row alone, unpadded, gives the logits it gives in a batch padded well past it."""
    model = make_model()
    src, mask, tgt = batch(lengths=(12, 6, 1), s=20)
    padded = model(src, mask, tgt)
    cached = decode_incrementally(model, src, mask, tgt)
    for row, length in enumerate((12, 6, 1)):
        one = slice(row, row + 1)
        alone = model(src[one, :length], mask[one, :length], tgt[one])
        torch.testing.assert_close(padded[one], alone)
        torch.testing.assert_close(cached[one], alone)
    other_pad = src.masked_fill(~mask, 7)  # padding is masked whatever token it holds
    torch.testing.assert_close(model(other_pad, mask, tgt), padded)


@torch.no_grad()
def test_cached_steps_match_teacher_forcing_under_bf16() -> None:
    model = make_model()
    src, mask, tgt = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        steps = decode_incrementally(model, src, mask, tgt)
        full = model(src, mask, tgt)
    torch.testing.assert_close(steps.float(), full.float(), atol=5e-2, rtol=5e-2)


def test_gradients_reach_every_parameter() -> None:
    model = make_model().train()
    src, mask, tgt = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, mask, tgt)
    torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tgt.flatten()).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


@torch.no_grad()
def test_sample_gives_numbers_and_cached_greedy_equals_rerunning() -> None:
    codec = NumberCodec(CodecConfig(mantissa_digits=3))
    model = make_model(out_vocab=codec.vocab_size)
    src, mask, _ = batch()
    values = sample(model, codec, src, mask, 16, generator=torch.Generator().manual_seed(0))
    ids = sample_ids(model, codec, src, mask, 16, generator=torch.Generator().manual_seed(0))
    assert values.shape == (3, 16)
    # Every sample is a grammatical number: NaN only where the <nan> token itself was drawn.
    assert np.array_equal(np.isnan(values).ravel(), (ids[:, 0] == NAN).numpy())
    assert not np.isnan(values).all()
    greedy = sample_ids(model, codec, src, mask, num_samples=2, temperature=0.0)
    prefix = torch.full((3, 1), codec.bos_id)
    for _ in range(codec.seq_len):  # the cache-free reference: the whole prefix every step
        logits = model(src, mask, prefix)[:, -1]
        logits = logits.masked_fill(~codec.allowed_mask(prefix[:, 1:]), float("-inf"))
        prefix = torch.cat([prefix, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, prefix[:, 1:].repeat_interleave(2, 0))
    assert np.isfinite(log_prob(model, codec, src, mask, values[:, 0])).all()


def toy_data(n: int) -> tuple[list[str], np.ndarray]:
    """A target read straight off the text: trivially learnable."""
    x = np.arange(n) % 4
    return [f"load={v}" for v in x], 10.0 * (x + 1)


def toy_predictor(cfg: ModelConfig = CFG) -> Predictor:
    torch.manual_seed(0)
    texts, _ = toy_data(8)
    tokenizer = InputTokenizer.train(texts * 4, vocab_size=IN_VOCAB)
    return Predictor.create(
        cfg, CodecConfig(mantissa_digits=2, exponent_min=0, exponent_max=3), tokenizer
    )


def mean_nll(predictor: Predictor, texts: list[str], targets: np.ndarray) -> float:
    src, mask = pad_batch(predictor.encode_texts(texts), predictor.tokenizer.pad_id)
    return float(-log_prob(predictor.model, predictor.codec, src, mask, targets).mean())


def test_fit_through_predictor_lowers_the_loss(tmp_path: Path) -> None:
    predictor = toy_predictor()
    assert isinstance(predictor.model, DecoderOnly)
    train, val = toy_data(64), toy_data(16)
    before = mean_nll(predictor, *val)
    cfg = TrainConfig(
        batch_size=16,
        lr=1e-2,
        warmup_steps=2,
        max_steps=30,
        max_minutes=2,
        val_every_steps=10,
        early_stopping_patience=100,
        progress_bar=False,
    )
    result = fit(predictor, train, val, cfg, tmp_path, resume=False)
    assert result.steps == 30
    after = mean_nll(predictor, *val)
    assert after < 0.5 * before, (before, after)


def test_save_and_load_give_the_same_samples(tmp_path: Path) -> None:
    predictor = toy_predictor()
    loaded = Predictor.load(predictor.save(tmp_path / "bundle"))
    assert isinstance(loaded.model, DecoderOnly)
    assert loaded.model_config.architecture == "decoder_only"
    texts, _ = toy_data(5)
    np.testing.assert_array_equal(
        loaded.sample_texts(texts, num_samples=8, seed=3),
        predictor.sample_texts(texts, num_samples=8, seed=3),
    )


def test_config_ties_encoder_layers_to_the_architecture() -> None:
    sizes = {"name": "t", "d_model": 32, "n_heads": 4, "n_decoder_layers": 2, "d_ff": 64}
    with pytest.raises(ValidationError, match="decoder_only model has no encoder"):
        ModelConfig(architecture="decoder_only", n_encoder_layers=1, **sizes)
    with pytest.raises(ValidationError, match="needs n_encoder_layers >= 1"):
        ModelConfig(n_encoder_layers=0, **sizes)
    assert isinstance(build_model(CFG, IN_VOCAB, OUT_VOCAB), DecoderOnly)
    encoder_decoder = CFG.model_copy(update={"architecture": "encoder_decoder"})
    assert ModelConfig.model_validate(encoder_decoder.model_dump() | {"n_encoder_layers": 1})
    assert isinstance(build_model(load_model_config("tiny"), 512, 40), EncoderDecoder)


@pytest.mark.parametrize(("name", "reference"), [("small", "small"), ("mini", "mini")])
def test_shipped_configs_match_their_encoder_decoder_in_size(name: str, reference: str) -> None:
    out_vocab = NumberCodec(CodecConfig(mantissa_digits=4, exponent_min=-1, exponent_max=6))
    ours = load_model_config(f"{name}_decoder_only")
    theirs = load_model_config(reference)
    counts = [
        build_model(cfg, 2048, out_vocab.vocab_size).num_parameters() for cfg in (ours, theirs)
    ]
    assert isinstance(build_model(ours, 2048, 25), DecoderOnly)
    assert abs(counts[0] / counts[1] - 1) < 0.05, counts


def test_freeze_last_layers_keeps_only_the_last_block_norm_and_head() -> None:
    model = make_model()
    trainable = freeze_for(model, AdaptConfig(method="last_layers", last_layers=1))
    assert trainable
    assert all(n.startswith(("decoder.1.", "decoder_norm.", "head.")) for n in trainable)
    assert any(n.startswith("head.") for n in trainable)


def test_lora_trains_only_adapters_and_merges_back() -> None:
    model = make_model()
    keys = model.state_dict().keys()
    src, mask, tgt = batch()
    with torch.no_grad():
        before = model(src, mask, tgt)
    trainable = freeze_for(model, AdaptConfig(method="lora", lora_rank=2))
    assert trainable
    assert all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(model(src, mask, tgt), before)  # B starts at zero
    assert merge_lora(model) > 0
    assert model.state_dict().keys() == keys


@pytest.mark.parametrize("name", ["tiny", "mini_decoder_only"])
def test_both_models_compute_on_their_inputs_device(name: str) -> None:
    """Every tensor a pass builds (rotary tables, masks) follows its inputs: built on the CPU,
    they failed the first training step on an accelerator. No accelerator here, so the `meta`
    device stands in: it holds shapes and no values, and refuses any mix with the CPU."""
    cfg = load_model_config(name)
    model = build_model(cfg, 300, NumberCodec().vocab_size).to("meta")
    src = torch.zeros(2, 7, dtype=torch.long, device="meta")
    mask = torch.ones(2, 7, dtype=torch.bool, device="meta")
    tgt = torch.zeros(2, 5, dtype=torch.long, device="meta")
    assert model(src, mask, tgt).shape == (2, 5, NumberCodec().vocab_size)
    steps = decode_incrementally(model, src, mask, tgt)
    assert steps.shape == (2, 5, NumberCodec().vocab_size)
    assert steps.device.type == "meta"
