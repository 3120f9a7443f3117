"""Training and prediction speed of the encoder-decoder, each figure a ratio measured in one run.

    .venv/bin/python bench/model.py --config small|base

Prints `name: value` lines:
- `bucketing_speedup`: real training tokens/s on length-bucketed batches over the *same* batches
  padded to the maximum input length (`--pad-to`, default the config's `max_input_tokens` capped at
  1024: the way regress-lm pads every input to full length, without an 8192-token base run);
- `mfu`: model FLOPs/s of the bucketed training steps (forward + backward = 3x the forward's
  matmul FLOPs, counted analytically on the executed shapes) over the matmul peak, in the
  precision training uses here, that this script measures first on a large square matmul loop;
- `bf16_over_fp32_matmul`: the bf16 matmul peak over the fp32 one. Training and sampling run in
  bf16 only where the CPU has it in hardware (`bf16_in_hardware`, `environment.has_fast_bf16`):
  elsewhere emulated bf16 is the slow path and they run in fp32;
- `predict_over_encode`: time to draw K=64 samples per input (encoder + KV-cached constrained
  decoding) over one encoder forward of the same inputs;
- `train_tokens_per_s` (bucketed) and `predictions_per_s` (inputs predicted with K=64 each).

Compared runs alternate step by step (bucketed, padded, bucketed, ...; encode, predict, ...), so
a change in the load of shared cores hits both sides of a ratio alike.

Texts are the demo fleet's training split from `var/warehouse.duckdb`, or, without a warehouse,
a small fleet generated and ingested into a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from regressor.config import ModelConfig, SplitConfig, TrainConfig, load_model_config
from regressor.dataset import examples_by_split
from regressor.environment import fast_autocast, has_fast_bf16
from regressor.model import EncoderDecoder
from regressor.numbers import NumberCodec
from regressor.predictor import pad_batch
from regressor.sampling import sample_ids
from regressor.training import BucketBatchSampler, RegressionLM
from regressor.vocab import InputTokenizer
from regressor.warehouse import Warehouse

WAREHOUSE = Path("var/warehouse.duckdb")
Batch = dict[str, torch.Tensor]


def demo_texts() -> tuple[list[str], np.ndarray]:
    """Training texts and targets of the demo fleet (generated if no warehouse exists)."""
    if WAREHOUSE.exists():
        with Warehouse(WAREHOUSE, read_only=True) as wh:
            records = wh.query("records")
    else:
        records = generated_records()
    train = examples_by_split(records, SplitConfig())["train"]
    return train.texts, train.targets


def generated_records():
    from regressor.config import FleetSimConfig, load_source_config
    from regressor.fleetsim import generate_fleet
    from regressor.sources.fleet import ingest_fleet

    source = load_source_config("demo_fleet")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        generate_fleet(raw / source.root, FleetSimConfig(n_cells=8, n_days=60))
        with Warehouse(Path(tmp) / "wh.duckdb") as wh:
            ingest_fleet(wh, source, raw, run_id="bench")
            return wh.query("records")


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """FLOPs/s of a large square matmul loop in `dtype`: the best of three timed rounds."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: thread pool and kernel selection
    best = 0.0
    for _ in range(3):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 3:
            a @ b
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - started))
    return best


def forward_flops(cfg: ModelConfig, b: int, s: int, t: int, vocab_out: int) -> float:
    """Matmul FLOPs of one teacher-forced forward on src [b, s], tgt [b, t] (embeddings free)."""
    d, f = cfg.d_model, cfg.d_ff
    encoder = b * s * 2 * (4 * d * d + 2 * d * f) + b * 4 * s * s * d
    decoder = (
        b * t * 2 * (6 * d * d + 2 * d * f)  # qkv, self out, cross q, cross out, MLP
        + b * s * 2 * 2 * d * d  # cross-attention keys and values of the memory
        + b * 4 * t * t * d  # self-attention scores and mix
        + b * 4 * t * s * d  # cross-attention scores and mix
    )
    return (
        cfg.n_encoder_layers * encoder + cfg.n_decoder_layers * decoder + b * t * 2 * d * vocab_out
    )


def make_batch(
    rows: list[list[int]], targets: torch.Tensor, pad_id: int, width: int | None
) -> Batch:
    """A training batch, padded to its own longest row or to `width`."""
    if width is not None:
        rows = [row + [pad_id] * (width - len(row)) for row in rows]
    src, mask = pad_batch(rows, pad_id)
    if width is not None:  # the padding of pad-to-max is padding, not tokens
        mask = src != pad_id
    bos = torch.full((len(rows), 1), 1, dtype=torch.long)  # codec.bos_id
    return {
        "src": src,
        "mask": mask,
        "tgt_in": torch.cat([bos, targets[:, :-1]], 1),
        "tgt": targets,
    }


def train_steps(module: RegressionLM, *runs: list[Batch]) -> list[float]:
    """Seconds of one optimiser step per batch of each run (in `auto` precision's arithmetic,
    clipping, training's own AdamW). The runs' steps alternate, so a change in the machine's
    load (other processes on the same cores) hits every run alike and their ratio stays fair."""
    optimizer = module.configure_optimizers()["optimizer"]
    module.model.train()

    def step(batch: Batch) -> float:
        started = time.perf_counter()
        with fast_autocast():
            loss = module.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    for run in runs:  # warm-up, untimed
        step(run[0])
    seconds = [0.0] * len(runs)
    for batches in zip(*runs, strict=True):
        for i, batch in enumerate(batches):
            seconds[i] += step(batch)
    return seconds


def median_seconds(*runs: Callable[[], object], repeats: int) -> list[float]:
    """Median seconds of each callable, calls alternating between them (see `train_steps`)."""
    for run in runs:  # warm-up
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            run()
            times[i].append(time.perf_counter() - started)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=0, help="0: 24 for small, 4 for base")
    parser.add_argument("--pad-to", type=int, default=0, help="0: min(max_input_tokens, 1024)")
    parser.add_argument("--inputs", type=int, default=16, help="inputs per prediction batch")
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = load_model_config(args.config)
    codec = NumberCodec()
    report("config", args.config)
    bf16 = has_fast_bf16()  # what training and sampling run in here (`precision: auto`)
    bf16_peak, fp32_peak = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    report("bf16_in_hardware", bf16)
    report("bf16_matmul_peak_gflops", f"{bf16_peak / 1e9:.1f}")
    report("fp32_matmul_peak_gflops", f"{fp32_peak / 1e9:.1f}")
    report("bf16_over_fp32_matmul", f"{bf16_peak / fp32_peak:.3f}")
    peak = bf16_peak if bf16 else fp32_peak
    texts, targets = demo_texts()
    tokenizer = InputTokenizer.train(texts, cfg.input_vocab_size)
    ids = tokenizer.encode_batch(texts, cfg.max_input_tokens)
    model = EncoderDecoder(cfg, tokenizer.vocab_size, codec.vocab_size)
    module = RegressionLM(model, TrainConfig())
    report("parameters", model.num_parameters())

    steps = args.steps or (4 if model.num_parameters() > 20e6 else 24)
    pad_to = args.pad_to or min(cfg.max_input_tokens, 1024)
    lengths = np.array([len(row) for row in ids])
    for name, value in [
        ("input_tokens_mean", f"{lengths.mean():.0f}"),
        ("input_tokens_max", lengths.max()),
        ("pad_to", pad_to),
        ("train_steps_each", steps),
    ]:
        report(name, value)
    order = list(BucketBatchSampler(lengths, args.batch_size, seed=0))[:steps]
    target_ids, pad = codec.encode(targets), tokenizer.pad_id
    bucketed = [make_batch([ids[i] for i in b], target_ids[b], pad, None) for b in order]
    padded = [make_batch([ids[i] for i in b], target_ids[b], pad, pad_to) for b in order]
    tokens = sum(int(b["mask"].sum()) for b in bucketed)
    flops = 3 * sum(
        forward_flops(cfg, *b["src"].shape, b["tgt"].shape[1], codec.vocab_size) for b in bucketed
    )
    t_bucket, t_pad = train_steps(module, bucketed, padded)
    report("train_tokens_per_s", f"{tokens / t_bucket:.1f}")
    report("train_tokens_per_s_padded", f"{tokens / t_pad:.1f}")
    report("bucketing_speedup", f"{t_pad / t_bucket:.2f}")
    report("model_gflops_per_s", f"{flops / t_bucket / 1e9:.1f}")
    report("mfu", f"{flops / t_bucket / peak:.3f}")

    src, mask = pad_batch([ids[i] for i in order[0][: args.inputs]], pad)
    model.eval()
    with torch.no_grad(), fast_autocast():
        t_encode, t_predict = median_seconds(
            lambda: model.encode(src, mask),
            lambda: sample_ids(model, codec, src, mask, args.samples),
            repeats=5,
        )
    report("encode_ms", f"{t_encode * 1e3:.1f}")
    report(f"predict_k{args.samples}_ms", f"{t_predict * 1e3:.1f}")
    report("predict_over_encode", f"{t_predict / t_encode:.2f}")
    report("predictions_per_s", f"{len(src) / t_predict:.1f}")


def report(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


if __name__ == "__main__":
    main()
