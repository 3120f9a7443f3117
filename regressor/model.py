"""The encoder-decoder: reads text tokens, writes the tokens of a number.

A plain pre-norm transformer (RMSNorm, GELU MLP, no biases). The encoder is bidirectional over the
input with a key padding mask; the decoder is causal over the few number tokens and attends to
the encoder output. Positions are rotary (RoPE) in both self-attentions: relative, so a
right-padded batch gives real tokens the same positions whatever the padding, and without
length limit or learnt table. Every attention is `F.scaled_dot_product_attention`.

Decoding reuses work instead of re-running the prefix:
- `encode` runs once per input; `init_cache` turns its output into each decoder layer's
  cross-attention keys/values once, also once per input however many samples are drawn: the K
  samples of one input become K query rows against one copy of its memory (no copy by K);
- `decode_step` feeds one token per sequence and appends its self-attention keys/values;
  `DecoderCache.select_rows` reorders those rows, so samples that share a prefix can share one
  row (`regressor.sampling`).

The output head is untied from the decoder's token embedding: the output vocabulary is a few
hundred tokens, so tying would save <1% of the parameters while forcing "what this token means as
the previous token" and "how likely this token is next" to share one vector.

Shapes: B inputs, K samples per input, S input tokens, T decoder tokens, D model width,
H heads of width Dh = D / H, V output vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regressor.config import ModelConfig

Rope = tuple[Tensor, Tensor]  # cos, signed sin: [T, Dh] each


def rotary(
    length: int,
    head_dim: int,
    offset: int = 0,
    base: float = 10_000.0,
    device: torch.device | None = None,
) -> Rope:
    """RoPE tables for positions offset .. offset+length-1; cheap enough to build per call.

    Full width, with the sign folded into the sine ([-sin, sin]), so that rotating is
    `x * cos + swap_halves(x) * sin`: four tensor ops instead of eight on the hot path. Built on
    the activations' `device`: always on the CPU, they failed the first step on an accelerator.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    positions = torch.arange(offset, offset + length, dtype=torch.float32, device=device)
    angles = positions[:, None] * base**-exponents
    cos, sin = angles.cos(), angles.sin()  # [T, Dh / 2]
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rotary(x: Tensor, rope: Rope) -> Tensor:
    """Rotate pairs (x_i, x_{i+Dh/2}) of x [..., T, Dh] by their position's angles."""
    # Cast the tables, not x: under bf16 autocast x is bf16, and a float32 table would promote
    # q and k to float32 while v stays bf16, which scaled_dot_product_attention rejects.
    cos, sin = (r.to(x.dtype) for r in rope)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([x2, x1], dim=-1) * sin


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """[B, T, D] -> [B, H, T, Dh]"""
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, T, Dh] -> [B, T, D]"""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


@dataclass
class DecoderCache:
    """What incremental decoding keeps between steps.

    memory_kv: per decoder layer, cross-attention keys and values [B, H, S, Dh], once per input.
    memory_mask: bool [B, 1, 1, S], True where attention may look.
    self_kv: per decoder layer, self-attention keys and values [B*K, H, t, Dh] of past steps.
    position: how many tokens each sequence has fed so far (the next token's position).
    """

    memory_kv: list[tuple[Tensor, Tensor]]
    memory_mask: Tensor
    self_kv: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)
    position: int = 0

    def select_rows(self, rows: Tensor) -> None:
        """Keep self-attention rows `rows` long [N'] of [N, ...], in that order (repeats allowed):
        decoding continues each kept row's sequence. The memory stays once per input."""
        self.self_kv = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in self.self_kv]


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.attention_dropout_rate
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(
        self,
        x: Tensor,  # [B, T, D]
        rope: Rope,
        mask: Tensor | None = None,  # bool [B, 1, 1, T] key padding (encoder)
        causal: bool = False,
        past: tuple[Tensor, Tensor] | None = None,  # cached keys/values [B, H, t, Dh]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, t, d = x.shape
        # One projection, then q and k rotated together: [3, B, H, T, Dh] views, no copies.
        qkv = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(qkv[:2], rope).unbind(0)  # [B, H, T, Dh] each
        v = qkv[2]
        if past is not None:  # one new query looks at every earlier step: no mask needed
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self._dropout_p()
        )
        return self.out(merge_heads(y)), (k, v)

    def _dropout_p(self) -> float:
        return self.dropout if self.training else 0.0


class CrossAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.attention_dropout_rate
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output [B, S, D] -> keys, values [B, H, S, Dh]; computed once per input."""
        k, v = self.kv(memory).chunk(2, dim=-1)
        return split_heads(k, self.n_heads), split_heads(v, self.n_heads)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], mask: Tensor) -> Tensor:
        """x [B*K, T, D] (the K sequences of input b at rows b*K .. b*K+K-1) -> [B*K, T, D]."""
        bk, t, d = x.shape
        b = kv[0].shape[0]
        # The K samples of one input become K*T query rows of that input: [B, H, K*T, Dh].
        q = split_heads(self.q(x).reshape(b, (bk // b) * t, d), self.n_heads)
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, *kv, attn_mask=mask, dropout_p=dropout_p)
        return self.out(merge_heads(y).reshape(bk, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.out = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.gelu(self.up(x)))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(cfg.d_model), nn.RMSNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, rope: Rope, mask: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), rope, mask=mask)[0])
        return x + self.drop(self.mlp(self.norm2(x)))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.RMSNorm(cfg.d_model) for _ in range(3))
        self.self_attn = SelfAttention(cfg)
        self.cross_attn = CrossAttention(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,  # [B*K, T, D]
        rope: Rope,
        memory_kv: tuple[Tensor, Tensor],
        memory_mask: Tensor,
        past: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        # Teacher forcing (no past) needs the causal mask; a cached step has one query, no mask.
        h, kv = self.self_attn(self.norm1(x), rope, causal=past is None, past=past)
        x = x + self.drop(h)
        x = x + self.drop(self.cross_attn(self.norm2(x), memory_kv, memory_mask))
        return x + self.drop(self.mlp(self.norm3(x))), kv


class EncoderDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig, input_vocab_size: int, output_vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.head_dim = rotary_head_dim(cfg)
        self.src_embed = nn.Embedding(input_vocab_size, cfg.d_model)
        self.tgt_embed = nn.Embedding(output_vocab_size, cfg.d_model)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_decoder_layers))
        self.encoder_norm = nn.RMSNorm(cfg.d_model)
        self.decoder_norm = nn.RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, output_vocab_size, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        init_unit_gain(self, ((self.encoder, 2), (self.decoder, 3)))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> Tensor:
        """src_ids long [B, S], src_mask bool [B, S] (True = real token) -> memory [B, S, D]."""
        x = self.drop(self.src_embed(src_ids))
        rope = rotary(src_ids.shape[1], self.head_dim, device=src_ids.device)
        mask = key_mask(src_mask)
        for block in self.encoder:
            x = block(x, rope, mask)
        return self.encoder_norm(x)

    def init_cache(self, memory: Tensor, src_mask: Tensor) -> DecoderCache:
        """Cross-attention keys/values of each decoder layer, from memory [B, S, D], once.

        Any number K of sequences per input can then decode against it: `decode_step` takes
        B*K tokens, input-major (rows b*K .. b*K+K-1 belong to input b).
        """
        return DecoderCache(
            memory_kv=[block.cross_attn.memory_kv(memory) for block in self.decoder],
            memory_mask=key_mask(src_mask),
            self_kv=[None] * len(self.decoder),
        )

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Feed one token per sequence, long [B*K] or [B*K, 1] -> next-token logits [B*K, V].

        The token sits at position `cache.position`; its keys/values are appended to the cache.
        """
        x = self.drop(self.tgt_embed(tokens.reshape(-1, 1)))  # [B*K, 1, D]
        rope = rotary(1, self.head_dim, offset=cache.position, device=tokens.device)
        for i, block in enumerate(self.decoder):
            x, cache.self_kv[i] = block(
                x, rope, cache.memory_kv[i], cache.memory_mask, cache.self_kv[i]
            )
        cache.position += 1
        return self.head(self.decoder_norm(x))[:, 0]

    def forward(self, src_ids: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: tgt_in long [B, T] = [bos, t0 .. t_{T-2}] -> logits [B, T, V]."""
        return self.decode(self.encode(src_ids, src_mask), src_mask, tgt_in)

    def decode(self, memory: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """The decoder over a whole target prefix: memory [B, S, D], tgt_in [B, T] -> [B, T, V]."""
        cache = self.init_cache(memory, src_mask)
        x = self.drop(self.tgt_embed(tgt_in))
        rope = rotary(tgt_in.shape[1], self.head_dim, device=tgt_in.device)
        for i, block in enumerate(self.decoder):
            x, _ = block(x, rope, cache.memory_kv[i], cache.memory_mask, None)
        return self.head(self.decoder_norm(x))


def rotary_head_dim(cfg: ModelConfig) -> int:
    """Dh = d_model / n_heads, which rotary positions need even (they rotate pairs)."""
    if (cfg.d_model // cfg.n_heads) % 2:
        raise ValueError("rotary positions need an even head width d_model / n_heads")
    return cfg.d_model // cfg.n_heads


def init_unit_gain(model: nn.Module, stacks: tuple[tuple[nn.ModuleList, int], ...]) -> None:
    """Every projection N(0, 1/fan_in), so each starts with unit gain; the residual output
    projections of each stack of blocks are further shrunk by sqrt(its residual branches per
    block x its depth) so the residual stream's variance does not grow with depth; embeddings
    N(0, 0.02). `stacks` pairs each stack with its branches per block (encoder 2, decoder 3).

    Why not GPT-2's N(0, 0.02) everywhere: at d_model ~100 that is 5x below unit gain, and
    the attention logits q.k and the value path Wv.Wo are products of two such matrices, so
    their gradients start near zero (a saddle). From there the model spends ~1,000 steps
    predicting only the target's marginal before it reads the text; with unit-gain
    projections it leaves that plateau after ~300 steps (README, "The early plateau").
    """
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
    for blocks, branches in stacks:
        for module in blocks.modules():
            if isinstance(module, SelfAttention | CrossAttention | MLP):
                std = (module.out.in_features * branches * len(blocks)) ** -0.5
                nn.init.normal_(module.out.weight, std=std)


def key_mask(src_mask: Tensor) -> Tensor:
    """bool [B, S] -> [B, 1, 1, S] for attention over the input.

    An input with no token at all would leave its attention rows fully masked, which softmax
    turns into NaN; such a row attends to its padding instead and stays finite.
    """
    empty = ~src_mask.any(dim=1, keepdim=True)
    return (src_mask | empty)[:, None, None, :]
