"""What training under DDP costs and gains here, as ratios measured in one run.

    .venv/bin/python bench/ddp.py [--steps 60] [--rounds 2] [--devices 2]

The demo's model and recipe (`conf/default.yaml`: `mini`, `demo`) on the demo fleet's training
texts, trained `--steps` steps without validation, once in this process (strategy `auto`, all
cores as threads) and once under `strategy: ddp` on `--devices` CPU processes, which
`training.fit` starts as a process group of its own (`regressor.fit_worker`). The two alternate
for `--rounds` rounds, so a change in the machine's load hits both alike.

Prints `name: value` lines:
- `ddp_samples_per_s_ratio`: training samples per second inside `trainer.fit`, DDP over one
  process (a DDP step trains one batch per rank). Under DDP, rank 0's `trainer.fit` also
  launches the other ranks and waits for their rendezvous, so this ratio is biased low;
- `ddp_wall_ratio`: the same per wall second of the caller, process start included;
- `worker_start_seconds`: what a DDP fit costs beyond `trainer.fit` (pickling the call,
  starting the worker, handing the weights back; the other ranks' launch and rendezvous fall
  inside `trainer.fit`, above): the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model import demo_texts

from regressor.config import (
    load_app_config,
    load_model_config,
    load_train_config,
)
from regressor.predictor import Predictor
from regressor.training import fit
from regressor.vocab import InputTokenizer


def timed_fit(
    texts: list[str], targets, tokenizer: InputTokenizer, overrides: dict, directory: Path
) -> tuple[float, float, int, int]:
    """Wall seconds, seconds inside `trainer.fit`, steps and processes of one fresh fit."""
    app = load_app_config()
    cfg = load_train_config(app.train).model_copy(update={"progress_bar": False, **overrides})
    predictor = Predictor.create(load_model_config(app.model), app.codec, tokenizer, seed=0)
    started = time.perf_counter()
    result = fit(predictor, (texts, targets), ([], targets[:0]), cfg, directory, resume=False)
    return time.perf_counter() - started, result.seconds, result.steps, result.processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()
    texts, targets = demo_texts()
    tokenizer = InputTokenizer.train(
        texts, load_model_config(load_app_config().model).input_vocab_size
    )
    steps = {"max_steps": args.steps, "min_steps": 0, "max_minutes": 60.0, "ema_decay": None}
    sides = {"single": {}, "ddp": {"strategy": "ddp", "devices": args.devices}}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    walls: dict[str, list[float]] = {name: [] for name in sides}
    overheads = []
    batch = load_train_config(load_app_config().train).batch_size
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, overrides in sides.items():
                directory = Path(tmp) / f"{name}-{round_}"
                wall, inside, n, processes = timed_fit(
                    texts, targets, tokenizer, steps | overrides, directory
                )
                samples = n * batch * processes
                rates[name].append(samples / inside)
                walls[name].append(samples / wall)
                if name == "ddp":
                    overheads.append(wall - inside)
                print(
                    f"# {name} round {round_}: {n} steps x {processes} processes, "
                    f"{inside:.1f} s in fit, {wall:.1f} s wall",
                    flush=True,
                )
    ratio = statistics.median(rates["ddp"]) / statistics.median(rates["single"])
    wall_ratio = statistics.median(walls["ddp"]) / statistics.median(walls["single"])
    print(f"ddp_samples_per_s_ratio: {ratio:.3f}")
    print(f"ddp_wall_ratio: {wall_ratio:.3f}")
    print(f"worker_start_seconds: {statistics.median(overheads):.1f}")


if __name__ == "__main__":
    main()
