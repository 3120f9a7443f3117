r"""Pool the ensemble members of several `bench/accuracy.py` runs on one split, and score each run
and the pool on the validation part (to choose) and on the test part (to report).

    .venv/bin/python bench/pool.py --dataset c3o RUN_NAME [RUN_NAME ..]

RUN_NAME is a run's name as in `<out>/<RUN_NAME>_samples.npz` (written by every accuracy run).
Runs pool when their members stopped early on the same validation records (no `--cross-fit`):
then the validation score of the pool is measured on records none of its members trained on,
and a pool is chosen over its runs only if it wins there. Members may differ in anything, the
target form included (runtime vs runtime per MB): samples are in the target's own units.

Prints `<dataset>_<label>_{val,test}_<metric>: value` for each run (label `run<i>`) and for
`pool`, with metric in spearman, kendall, mape, mse_log.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from accuracy import DEFAULT_OUT, POINT, emit, load_records

from regressor.evaluation import point_metrics


@dataclass(frozen=True)
class Run:
    test_ids: np.ndarray
    val_ids: np.ndarray
    vals: list[np.ndarray]  # per member [N_val, samples]
    tests: list[np.ndarray]  # per member [N_test, samples]


def load_run(out: Path, run_name: str) -> Run:
    """One run's members; refuses a cross-fitted run, whose members validated on different
    records."""
    path = out / f"{run_name}_samples.npz"
    if not path.exists():
        raise SystemExit(f"{path}: no such file (run bench/accuracy.py first)")
    with np.load(path) as saved:
        k = sum(1 for key in saved.files if key.startswith("test_") and key != "test_ids")
        val_ids = [saved[f"val_ids_{i}"] for i in range(k)]
        if any(not np.array_equal(ids, val_ids[0]) for ids in val_ids):
            raise SystemExit(f"{path}: members validated on different records (--cross-fit)")
        vals = [saved[f"val_{i}"] for i in range(k)]
        tests = [saved[f"test_{i}"] for i in range(k)]
        return Run(saved["test_ids"], val_ids[0], vals, tests)


def targets_by_id(records: pl.DataFrame) -> dict[str, float]:
    return dict(zip(records["record_id"], records["target"], strict=True))


def score(
    prefix: str,
    y_val: np.ndarray,
    val: list[np.ndarray],
    y_test: np.ndarray,
    test: list[np.ndarray],
) -> None:
    """Median of the pooled draws, on each part."""
    emit(f"{prefix}_val", point_metrics(y_val, np.median(np.concatenate(val, 1), 1)), POINT)
    emit(f"{prefix}_test", point_metrics(y_test, np.median(np.concatenate(test, 1), 1)), POINT)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    runs = [load_run(out, name) for name in args.runs]
    first = runs[0]
    for name, other in zip(args.runs, runs, strict=True):
        same = np.array_equal(other.val_ids, first.val_ids)
        if not (same and np.array_equal(other.test_ids, first.test_ids)):
            raise SystemExit(f"{name}: another split than {args.runs[0]}'s")
    target = targets_by_id(load_records(args.dataset, out))
    y_val = np.array([target[rid] for rid in first.val_ids])
    y_test = np.array([target[rid] for rid in first.test_ids])
    d = args.dataset
    for i, (name, one) in enumerate(zip(args.runs, runs, strict=True)):
        print(f"{d}_run{i}: {name} ({len(one.vals)} members)")
        score(f"{d}_run{i}", y_val, one.vals, y_test, one.tests)
    vals = [v for one in runs for v in one.vals]
    score(f"{d}_pool", y_val, vals, y_test, [t for one in runs for t in one.tests])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=("c3o", "deepperf", "fleet", "lumos"), required=True)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="as given to bench/accuracy.py")
    parser.add_argument("runs", nargs="+", metavar="RUN_NAME")
    return parser.parse_args()


if __name__ == "__main__":
    run(parse_args())
