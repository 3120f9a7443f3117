"""Soak: N nightly cycles back to back in one process, on a fleet that grows every night.

    .venv/bin/python bench/soak.py --cycles 5

Each cycle is what the nightly flow does, step by step (`regressor.pipeline`, without Prefect's
server): regenerate the demo fleet with `--days-per-cycle` more days, ingest it into the same
warehouse, load the dataset and retrain + register a tiny model in the same MLflow store. A leak
shows as RSS that keeps rising with the cycles; unbounded growth as a warehouse whose size per
record rises. Per cycle it prints

    cycle: i records: n warehouse_mb: x rss_gb: r peak_rss_gb: y wall_s: z

(`rss_gb`: this process after the cycle, with the garbage collected; `peak_rss_gb`: the highest
RSS of this process plus its live children seen so far, sampled every 50 ms), then summary lines
`name: value`:

- `rss_growth_ratio`: rss_gb of the last cycle / of the second (the first warms caches up);
- `warehouse_mb_per_record_growth`: (MB per record) last cycle / first cycle;
- `checkpoint_dirs_left`: training and adaptation checkpoint directories left behind (0: each
  was removed);
- `registered_versions`: one per cycle.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from regressor import pipeline  # noqa: E402
from regressor.config import AppConfig, load_source_config  # noqa: E402
from regressor.warehouse import Warehouse  # noqa: E402

GB = 1 << 30


class PeakRSS:
    """The highest RSS of this process plus its children, sampled in a background thread."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.peak = 0
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                with suppress(psutil.Error):  # a child that just exited
                    total += child.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self._every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def app_config(var: Path, args: argparse.Namespace, cycle: int) -> AppConfig:
    fleet = {
        "seed": 11,
        "n_cells": args.cells,
        "n_days": args.start_days + cycle * args.days_per_cycle,
        "samples_per_day": 6,
        "jobs_per_day": 5,
    }
    return AppConfig.model_validate(
        {
            "paths": {"var_dir": str(var)},
            "fleet": fleet,
            "split": {"test_days": 4},
            "model": "tiny",
            "train": "tiny",
            "eval": {"num_samples": 4},
        }
    )


def cycle_once(var: Path, args: argparse.Namespace, i: int) -> tuple[int, str]:
    app = app_config(var, args, i)
    paths = app.paths.resolve()
    source = load_source_config(app.source)
    pipeline.generate(paths, app, source)
    pipeline.ingest(paths, source, f"soak-{i}")
    data = pipeline.load_dataset(paths, app, source)
    outcome = pipeline.train_and_register(app, paths, data)
    with Warehouse(paths.warehouse, read_only=True) as wh:
        records = wh.query("records").height
    return records, outcome.version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--cells", type=int, default=6)
    parser.add_argument("--start-days", type=int, default=20)
    parser.add_argument("--days-per-cycle", type=int, default=10)
    parser.add_argument("--var-dir", type=Path, default=None, help="default: a temp dir")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    var = args.var_dir or Path(tempfile.mkdtemp(prefix="textperf-soak-"))
    rows = []
    with PeakRSS() as peak:
        for i in range(args.cycles):
            started = time.perf_counter()
            records, version = cycle_once(var, args, i)
            gc.collect()
            wall = time.perf_counter() - started
            mb = (var / "warehouse.duckdb").stat().st_size / 1e6
            rss = psutil.Process().memory_info().rss / GB
            rows.append((records, mb, rss, version))
            print(
                f"cycle: {i} records: {records} warehouse_mb: {mb:.2f} rss_gb: {rss:.3f} "
                f"peak_rss_gb: {peak.peak / GB:.3f} wall_s: {wall:.1f}",
                flush=True,
            )
    base = rows[1] if len(rows) > 1 else rows[0]
    summary = {
        "rss_growth_ratio": f"{rows[-1][2] / base[2]:.3f}",
        "warehouse_mb_per_record_growth": (
            f"{(rows[-1][1] / rows[-1][0]) / (rows[0][1] / rows[0][0]):.3f}"
        ),
        "checkpoint_dirs_left": len(list((var / "checkpoints").glob("*"))),
        "registered_versions": len({r[3] for r in rows}),
        "var_dir": var,
    }
    for name, value in summary.items():
        print(f"{name}: {value}", flush=True)


if __name__ == "__main__":
    main()
