"""The decoder-only ablation: one causal stack reads the input tokens, then writes the number's.

The paper compares its encoder-decoder against a decoder-only model of equal size; this is that
model, built from `regressor.model`'s parts (pre-norm blocks of SelfAttention + MLP, RMSNorm,
RoPE, SDPA) and with the same interface, so `Predictor`, `regressor.sampling`, training and
adaptation use it unchanged. `build_model` picks the architecture from `ModelConfig`.

The sequence is [input tokens, target tokens]: separate input and output embeddings write into
one residual stream, the output head is untied (as in `EncoderDecoder`). Inputs are
right-padded, so positions are per row: input token i sits at position i and the target tokens
of row b at len_b, len_b + 1, ...; attention is causal and never looks at padding. A row's
logits therefore do not depend on how much padding its batch has.

The input never attends to the target, so the stack runs in two parts that together equal one
causal pass over the whole sequence:
- `encode` runs every layer over the input prefix and keeps each layer's keys/values;
- the target tokens then attend to those plus their own (`forward` all at once for teacher
  forcing, `decode_step` one token at a time for sampling). As with the encoder-decoder's
  memory, the W rows of one input are W query positions against one copy of its prefix keys,
  never W copies.

Shapes: B inputs, W rows per input (N = B*W), S input tokens, T target tokens, t target steps
already cached, D model width, H heads of width Dh = D / H, V output vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from regressor.config import ModelConfig
from regressor.model import (
    DecoderCache,
    EncoderBlock,
    EncoderDecoder,
    Rope,
    init_unit_gain,
    rotary,
    rotary_head_dim,
)

KV = tuple[Tensor, Tensor]  # keys, values [B, H, length, Dh]


class PrefixCache(DecoderCache):
    """`DecoderCache` with the input prefix in place of the encoder memory.

    memory_kv: per layer, the prefix keys and values [B, H, S, Dh], once per input.
    memory_mask: bool [B, 1, 1, S], True at real input tokens.
    self_kv: per layer, each row's own target keys and values [N, H, t, Dh] (`select_rows`
    reorders these, as for the encoder-decoder).
    position: target tokens fed so far; a row of input b feeds its next one at len_b + position.
    """

    def positions(self) -> Tensor:
        """Each input's next target position, long [B]."""
        return self.memory_mask.flatten(1).sum(1) + self.position


class CausalBlock(EncoderBlock):
    """An encoder block (norm, self-attention, norm, MLP) used causally: takes the keys/values
    the queries may look at besides their own (`past`) and returns the full keys/values."""

    def forward(  # type: ignore[override]
        self,
        x: Tensor,  # [B, Q, D]
        rope: Rope,  # [B, 1, Q, Dh] each, or broadcastable to it
        mask: Tensor,  # bool [B, 1, Q, K], K = past length + Q
        past: KV | None = None,
    ) -> tuple[Tensor, KV]:
        h, kv = self.attn(self.norm1(x), rope, mask=mask, past=past)
        x = x + self.drop(h)
        return x + self.drop(self.mlp(self.norm2(x))), kv


class DecoderOnly(nn.Module):
    def __init__(self, cfg: ModelConfig, input_vocab_size: int, output_vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.head_dim = rotary_head_dim(cfg)
        self.src_embed = nn.Embedding(input_vocab_size, cfg.d_model)
        self.tgt_embed = nn.Embedding(output_vocab_size, cfg.d_model)
        # Named `decoder` like EncoderDecoder's, so adaptation's `last_layers` finds it.
        self.decoder = nn.ModuleList(CausalBlock(cfg) for _ in range(cfg.n_decoder_layers))
        self.decoder_norm = nn.RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, output_vocab_size, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        init_unit_gain(self, ((self.decoder, 2),))  # attention + MLP: 2 branches a block

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> list[KV]:
        """src_ids long [B, S], src_mask bool [B, S] (True = real token) -> per layer the prefix
        keys/values [B, H, S, Dh], what the target tokens attend to."""
        s = src_ids.shape[1]
        x = self.drop(self.src_embed(src_ids))  # [B, S, D]
        # [S, Dh]: the prefix starts at 0 in every row
        rope = rotary(s, self.head_dim, device=src_ids.device)
        causal = torch.ones(s, s, dtype=torch.bool, device=src_mask.device).tril()
        itself = torch.eye(s, dtype=torch.bool, device=src_mask.device)
        # Real keys only; each query also sees itself, so a padding query (whose output nothing
        # reads) never has an empty row, which softmax would turn into NaN.
        mask = (causal & src_mask[:, None, None, :]) | itself  # [B, 1, S, S]
        prefix = []
        for block in self.decoder:
            x, kv = block(x, rope, mask)
            prefix.append(kv)
        return prefix

    def init_cache(self, prefix: list[KV], src_mask: Tensor) -> PrefixCache:
        """The cache for `decode_step`, from `encode`'s prefix keys/values.

        Any number W of rows per input can then decode against it: `decode_step` takes B*W
        tokens, input-major (rows b*W .. b*W+W-1 belong to input b).
        """
        return PrefixCache(
            memory_kv=prefix,
            memory_mask=src_mask[:, None, None, :],
            self_kv=[None] * len(self.decoder),
        )

    def decode_step(self, tokens: Tensor, cache: PrefixCache) -> Tensor:
        """Feed one token per row, long [B*W] or [B*W, 1] -> next-token logits [B*W, V].

        The W rows of input b become W queries of one sequence [B, W, D]: each sees the real
        prefix tokens, its own earlier target keys and itself (not its sibling rows).
        """
        b = cache.memory_mask.shape[0]
        w = tokens.numel() // b
        x = self.drop(self.tgt_embed(tokens.reshape(b, w)))  # [B, W, D]
        positions = cache.positions()[:, None]  # [B, 1]: an input's rows share their position
        bound = cache.memory_mask.shape[-1] + cache.position + 1  # above every position
        rope = rotary_at(positions, self.head_dim, bound)  # [B, 1, 1, Dh]
        own_rows = see_own_row(w, cache.position, tokens.device).expand(b, -1, -1, -1)
        mask = torch.cat([see_prefix(cache.memory_mask, w), own_rows], -1)  # [B, 1, W, S+W*t+W]
        for i, block in enumerate(self.decoder):
            own = cache.self_kv[i]
            x, kv = block(x, rope, mask, prefix_and_rows(cache.memory_kv[i], own))
            new = tuple(rows_of(part[:, :, -w:]) for part in kv)  # [N, H, 1, Dh] each
            if own is not None:
                new = tuple(torch.cat(pair, 2) for pair in zip(own, new, strict=True))
            cache.self_kv[i] = new  # [N, H, t + 1, Dh] each
        cache.position += 1
        return self.head(self.decoder_norm(x)).flatten(0, 1)  # [N, V]

    def forward(self, src_ids: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: tgt_in long [B, T] = [bos, t0 .. t_{T-2}] -> logits [B, T, V]."""
        return self.decode(self.encode(src_ids, src_mask), src_mask, tgt_in)

    def decode(self, prefix: list[KV], src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """The whole target after the prefix: tgt_in [B, T] -> logits [B, T, V]."""
        t = tgt_in.shape[1]
        x = self.drop(self.tgt_embed(tgt_in))  # [B, T, D]
        steps = torch.arange(t, device=src_mask.device)
        positions = src_mask.sum(1, keepdim=True) + steps  # [B, T], each below S + T
        rope = rotary_at(positions, self.head_dim, src_mask.shape[1] + t)  # [B, 1, T, Dh]
        causal = (steps[None, :] <= steps[:, None]).expand(len(x), 1, t, t)  # [B, 1, T, T]
        mask = torch.cat([see_prefix(src_mask[:, None, None, :], t), causal], -1)  # [B,1,T,S+T]
        for block, kv in zip(self.decoder, prefix, strict=True):
            x, _ = block(x, rope, mask, kv)
        return self.head(self.decoder_norm(x))


def rotary_at(positions: Tensor, head_dim: int, bound: int) -> Rope:
    """RoPE tables at per-row positions long [B, Q], each below `bound`, -> [B, 1, Q, Dh] each
    (broadcast on heads). The bound comes from shapes, not `positions.max()`: reading a value
    back stalls an accelerator at every decoding step (and a `meta` tensor has none)."""
    cos, sin = rotary(bound, head_dim, device=positions.device)
    return cos[positions][:, None], sin[positions][:, None]


def see_prefix(prefix_mask: Tensor, queries: int) -> Tensor:
    """bool [B, 1, 1, S] -> [B, 1, Q, S]: every query sees its input's real tokens."""
    b, _, _, s = prefix_mask.shape
    return prefix_mask.expand(b, 1, queries, s)


def see_own_row(w: int, t: int, device: torch.device) -> Tensor:
    """bool [1, 1, W, W*t + W]: row w sees its own t cached keys (laid out as `prefix_and_rows`
    lays them) and its new token, none of its sibling rows'."""
    row = torch.arange(w, device=device)
    cached = row[:, None] == row.repeat_interleave(t)[None, :]  # [W, W*t]
    return torch.cat([cached, row[:, None] == row[None, :]], 1)[None, None]


def prefix_and_rows(prefix: KV, own: KV | None) -> KV:
    """Keys/values one step attends to besides the new token's: the prefix [B, H, S, Dh], then
    the rows' own cached [N, H, t, Dh] laid end to end per input ([B, H, S + W*t, Dh])."""
    if own is None:
        return prefix
    b = prefix[0].shape[0]
    return tuple(torch.cat([p, rows_as_keys(o, b)], 2) for p, o in zip(prefix, own, strict=True))


def rows_as_keys(rows: Tensor, b: int) -> Tensor:
    """[B*W, H, t, Dh] -> [B, H, W*t, Dh]: input b's rows one after the other (row-major)."""
    n, h, t, dh = rows.shape
    return rows.view(b, n // b, h, t, dh).transpose(1, 2).reshape(b, h, n // b * t, dh)


def rows_of(keys: Tensor) -> Tensor:
    """[B, H, W, Dh] (one new key per row) -> [B*W, H, 1, Dh]."""
    b, h, w, dh = keys.shape
    return keys.transpose(1, 2).reshape(b * w, h, 1, dh)


def build_model(
    cfg: ModelConfig, input_vocab_size: int, output_vocab_size: int
) -> EncoderDecoder | DecoderOnly:
    """The model `cfg.architecture` names, freshly initialised."""
    if cfg.architecture == "decoder_only":
        return DecoderOnly(cfg, input_vocab_size, output_vocab_size)
    return EncoderDecoder(cfg, input_vocab_size, output_vocab_size)
