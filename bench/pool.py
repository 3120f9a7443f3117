r"""Pool the ensemble members of several `bench/accuracy.py` runs on one split, and score each run
and the pool on the validation part (to choose) and on the test part (to report).

    .venv/bin/python bench/pool.py --dataset c3o RUN_NAME [RUN_NAME ..]

RUN_NAME is a run's name as in `<out>/<RUN_NAME>_samples.npz` (written by every accuracy run, and
by every repetition of `bench/deepperf_protocol.py`: `deepperf_<sys>_<size>_<recipe>_<rep>`).
A run's members are grouped by the records they stopped early on: one group holding every member
(members sharing the split's validation part), or with `--cross-fit` one group per fold, each
member validating on its own fold. Runs pool when their groups validated on the same records
(the same split and the same folds: the same seed and ensemble size); the pool's validation score
is then out of fold, measured on records none of its members of that group trained on, and a pool
is chosen over its runs only if it wins there. Members may differ in anything else, the model
and the target form included (runtime vs runtime per MB): samples are in the target's own units.

Prints `<dataset>_<label>_{val,test,members_test}_<metric>: value` for each run (label `run<i>`)
and for `pool`, with metric in spearman, kendall, mape, mse_log; `members_test` is the members'
own test scores averaged (with `--cross-fit` the validation score is one member's per record, so
it estimates this, not the pool's test score). Runs of `--refit` members validated on nothing:
they pool like any other run, but only their test scores print, so validation cannot choose
between them and their pool; that choice has to be a rule fixed before the runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from accuracy import DEFAULT_OUT, POINT, emit, load_records

from regressor.evaluation import point_metrics
from regressor.sampling import finite_median


@dataclass(frozen=True)
class Fold:
    """Members that stopped early on the same validation records."""

    val_ids: np.ndarray
    vals: list[np.ndarray]  # per member [N_val, samples]


@dataclass(frozen=True)
class Run:
    test_ids: np.ndarray
    folds: list[Fold]
    tests: list[np.ndarray]  # per member [N_test, samples]

    @property
    def n_members(self) -> int:
        return len(self.tests)


def load_run(out: Path, run_name: str) -> Run:
    """One run's members, grouped by the validation records each stopped early on."""
    path = out / f"{run_name}_samples.npz"
    if not path.exists():
        raise SystemExit(f"{path}: no such file (run bench/accuracy.py first)")
    with np.load(path) as saved:
        k = sum(1 for key in saved.files if key.startswith("test_") and key != "test_ids")
        folds: list[Fold] = []
        for i in range(k):
            val_ids, val = saved[f"val_ids_{i}"], saved[f"val_{i}"]
            same = [f for f in folds if np.array_equal(f.val_ids, val_ids)]
            if same:
                same[0].vals.append(val)
            else:
                folds.append(Fold(val_ids, [val]))
        return Run(saved["test_ids"], folds, [saved[f"test_{i}"] for i in range(k)])


def pooled(runs: list[Run]) -> Run:
    """All members of runs whose folds validated on the same records, fold by fold."""
    first = runs[0]
    for other in runs[1:]:
        same_folds = len(other.folds) == len(first.folds) and all(
            np.array_equal(a.val_ids, b.val_ids)
            for a, b in zip(first.folds, other.folds, strict=True)
        )
        if not (same_folds and np.array_equal(other.test_ids, first.test_ids)):
            raise SystemExit("runs on another split or other folds do not pool")
    folds = [
        Fold(fold.val_ids, [v for run in runs for v in run.folds[j].vals])
        for j, fold in enumerate(first.folds)
    ]
    return Run(first.test_ids, folds, [t for run in runs for t in run.tests])


def targets_by_id(records: pl.DataFrame) -> dict[str, float]:
    return dict(zip(records["record_id"], records["target"], strict=True))


def score(prefix: str, run: Run, target: dict[str, float]) -> None:
    """Median of the pooled draws: on validation each fold's own members (out of fold), on test
    every member; and `members_test`, the members' own test scores averaged, which is what the
    validation score estimates when each validation record has one member (`--cross-fit`)."""
    y_val = np.array([target[rid] for fold in run.folds for rid in fold.val_ids])
    if len(y_val):  # a refit's members (`--refit`) validated on nothing: no score to choose by
        val = np.concatenate([median(f.vals) for f in run.folds])
        emit(f"{prefix}_val", point_metrics(y_val, val), POINT)
    y_test = np.array([target[rid] for rid in run.test_ids])
    emit(f"{prefix}_test", point_metrics(y_test, median(run.tests)), POINT)
    emit(f"{prefix}_members_test", members_mean_metrics(y_test, run.tests), POINT)


def members_mean_metrics(y: np.ndarray, members: list[np.ndarray]) -> dict[str, float]:
    """Each member's metrics on its own draws' median, averaged over the members. Against the
    pool's, it shows how much pooling buys: a member that mis-levels a record is outvoted."""
    each = [point_metrics(y, median([draws])) for draws in members]
    return {key: float(np.mean([m[key] for m in each])) for key in each[0]}


def median(members: list[np.ndarray]) -> np.ndarray:
    """[N] the median of the members' pooled draws ([N, samples] each), as the predictor takes
    it: a draw that decoded to no number is left out, not allowed to make the median NaN."""
    return finite_median(np.concatenate(members, axis=1))


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    runs = [load_run(out, name) for name in args.runs]
    pool = pooled(runs)  # refuses runs that do not pool before any scoring
    target = targets_by_id(load_records(args.dataset, out))
    d = args.dataset
    for i, (name, one) in enumerate(zip(args.runs, runs, strict=True)):
        print(f"{d}_run{i}: {name} ({one.n_members} members, {len(one.folds)} folds)")
        score(f"{d}_run{i}", one, target)
    score(f"{d}_pool", pool, target)


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
