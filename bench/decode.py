"""textperf's sampling against regress-lm's decoding, side by side in one run.

textperf's (`regressor.sampling.sample_ids`) keeps a KV cache and runs one decoder row per
distinct prefix: samples whose tokens so far agree share a row. The baseline is how regress-lm
decodes: the encoder runs once, its output is repeated for the K samples, and every step re-runs
the decoder over the full prefix of every sample. Same model, same inputs, same number of
samples, in the precision serving uses here (bf16 autocast where the CPU has bf16 in hardware,
else fp32); the two sides' repeats alternate, so a change of load on a shared machine falls on
both.

The weights are random. The cache's gain does not depend on them, the sharing's does: an
untrained model spreads its samples widest, so its groups are many and sharing saves least (a
trained model shares the sign and leading digits across most samples). `decoder_rows_per_step`
says how many rows the cached side ran per step on average, against inputs x samples for the
baseline.

    .venv/bin/python bench/decode.py [--model small] [--inputs 8] [--tokens 512] [--samples 32]

Prints `name: value` lines; `decode_speedup` is textperf's samples/s over the baseline's.
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


def samples_per_second(*runs: Callable[[], torch.Tensor], repeats: int) -> list[float]:
    """Samples/s of each callable, calls alternating between them after one warm-up each
    (first-call allocations and kernel selection)."""
    for run in runs:
        run()
    seconds, samples = [0.0] * len(runs), [0] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            samples[i] += len(run())
            seconds[i] += time.perf_counter() - started
    return [n / s for n, s in zip(samples, seconds, strict=True)]


class RowCounter:
    """Wraps a model's `decode_step` to count the decoder rows it runs."""

    def __init__(self, model: EncoderDecoder) -> None:
        self.steps, self.rows = 0, 0
        self._step = model.decode_step
        model.decode_step = self  # type: ignore[method-assign]

    def __call__(self, tokens: torch.Tensor, cache: object) -> torch.Tensor:
        self.steps += 1
        self.rows += tokens.numel()
        return self._step(tokens, cache)


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
        rows = RowCounter(model)  # only `sample_ids` calls decode_step
        cached, naive = samples_per_second(
            lambda: sample_ids(model, codec, src, mask, args.samples, generator=gen),
            lambda: sample_ids_no_cache(model, codec, src, mask, args.samples, gen),
            repeats=args.repeats,
        )
    print(f"model: {args.model}")
    print(f"inputs_x_tokens_x_samples: {args.inputs}x{args.tokens}x{args.samples}")
    print(f"samples_per_s_textperf: {cached:.1f}")
    print(f"samples_per_s_regress_lm_style: {naive:.1f}")
    print(
        f"decoder_rows_per_step: {rows.rows / rows.steps:.1f} (baseline: {len(src) * args.samples})"
    )
    print(f"decode_speedup: {cached / naive:.2f}")


if __name__ == "__main__":
    main()
