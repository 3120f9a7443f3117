"""KV-cached sampling against re-running the whole prefix each step, side by side in one run.

Same model (random weights: speed does not depend on them), same inputs, same number of samples,
in the precision serving uses here (bf16 autocast where the CPU has bf16 in hardware, else
fp32). The baseline is how regress-lm decodes: the encoder runs once, its output is repeated
for the K samples, and every step re-runs the decoder over the full prefix.

    .venv/bin/python bench/decode.py [--model small] [--inputs 8] [--tokens 512] [--samples 32]

Prints `name: value` lines; `kv_cache_speedup` is cached samples/s over baseline samples/s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from regressor.config import load_model_config
from regressor.environment import fast_autocast
from regressor.model import EncoderDecoder
from regressor.numbers import NumberCodec
from regressor.sampling import sample_ids


@torch.no_grad()
def sample_ids_no_cache(
    model: EncoderDecoder,
    codec: NumberCodec,
    src_ids: torch.Tensor,
    src_mask: torch.Tensor,
    num_samples: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """The baseline: memory repeated K times, the decoder re-run on the whole prefix per step."""
    memory = model.encode(src_ids, src_mask).repeat_interleave(num_samples, 0)
    mask = src_mask.repeat_interleave(num_samples, 0)
    prefix = torch.full((len(memory), 1), codec.bos_id)
    for _ in range(codec.seq_len):
        logits = model.decode(memory, mask, prefix)[:, -1].float()
        logits = logits.masked_fill(~codec.allowed_mask(prefix[:, 1:]), float("-inf"))
        token = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        prefix = torch.cat([prefix, token], 1)
    return prefix[:, 1:]


def samples_per_second(run: Callable[[], torch.Tensor], repeats: int) -> float:
    run()  # warm-up: first-call allocations and kernel selection
    started = time.perf_counter()
    n = sum(len(run()) for _ in range(repeats))
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = load_model_config(args.model)
    codec = NumberCodec()
    model = EncoderDecoder(cfg, cfg.input_vocab_size, codec.vocab_size).eval()
    src = torch.randint(0, cfg.input_vocab_size, (args.inputs, args.tokens))
    mask = torch.ones_like(src, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)

    with fast_autocast():
        cached = samples_per_second(
            lambda: sample_ids(model, codec, src, mask, args.samples, generator=gen), args.repeats
        )
        naive = samples_per_second(
            lambda: sample_ids_no_cache(model, codec, src, mask, args.samples, gen), args.repeats
        )
    print(f"model: {args.model}")
    print(f"inputs_x_tokens_x_samples: {args.inputs}x{args.tokens}x{args.samples}")
    print(f"samples_per_s_kv_cache: {cached:.1f}")
    print(f"samples_per_s_no_cache: {naive:.1f}")
    print(f"kv_cache_speedup: {cached / naive:.2f}")


if __name__ == "__main__":
    main()
