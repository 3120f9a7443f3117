r"""Ablation: how many samples K, and median vs mean, for one registered model on one split.

    OMP_NUM_THREADS=1 .venv/bin/python bench/samples.py --var-dir var \
        [--model models:/textperf@champion] [--config conf/default.yaml] [--max-k 64] [--split val]

Draws `--max-k` samples per record of the split once (seeded), then scores every K = 1, 2, 4, ..
max-k on disjoint chunks of those draws (samples are i.i.d., so chunk j of size K is a new K-sample
run) and averages over the chunks: for each K the point estimate from the median and from the mean.
An ensemble lays out member 0's draws first, then member 1's (`Predictor.sample_texts`), so each
record's draws are shuffled first (`mixed_draws`): a chunk then holds draws of every member, as a
K-sample prediction does, not one member's only. The default split is validation, where a choice
of K or estimator may be made. Prints `k<K>_<median|mean>_<spearman|mape>` and `k<K>_chunks`
lines. Nothing is retrained.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from regressor import pipeline, registry
from regressor.config import load_app_config, load_source_config
from regressor.evaluation import point_metrics
from regressor.sampling import finite_median
from regressor.tracking import configure_mlflow


def chunk_scores(y_true: np.ndarray, samples: np.ndarray, k: int) -> dict[str, float]:
    """Mean over the disjoint K-sample chunks of samples [N, max_k] of each estimator's metrics,
    over each chunk's finite draws (as served: `finite_median`), with `n_failed`, the records
    left without a number. Plain `np.median` made a record NaN for one undecodable draw, so each
    K was scored on fewer, other records."""
    scores: dict[str, list[float]] = {}
    for start in range(0, samples.shape[1] - k + 1, k):
        chunk = samples[:, start : start + k]
        for name, estimate in (("median", finite_median(chunk)), ("mean", finite_mean(chunk))):
            metrics = point_metrics(y_true, estimate)
            for metric in ("spearman", "mape", "n_failed"):
                scores.setdefault(f"{name}_{metric}", []).append(metrics[metric])
    return {key: float(np.mean(values)) for key, values in scores.items()}


def finite_mean(samples: np.ndarray) -> np.ndarray:
    """Per record the mean of its finite draws [N, K] -> [N] (NaN with none)."""
    finite = np.isfinite(samples)
    total = np.where(finite, samples, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite.any(1), total / finite.sum(1), np.nan)


def mixed_draws(samples: np.ndarray, seed: int = 0) -> np.ndarray:
    """samples [N, K] with each row's draws in a seeded random order: an ensemble's columns are
    member by member, so the first chunks of a row held one member's draws only."""
    return np.random.default_rng(seed).permuted(samples, axis=1)


def sweep(y_true: np.ndarray, samples: np.ndarray) -> Iterator[tuple[int, dict[str, float]]]:
    """(K, `chunk_scores`) for K = 1, 2, 4 .. the number of draws in samples [N, max_k]."""
    k = 1
    while k <= samples.shape[1]:
        yield k, chunk_scores(y_true, samples, k)
        k *= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--var-dir", type=Path, default=Path("var"))
    parser.add_argument("--config", type=Path, default=None, help="default: conf/default.yaml")
    parser.add_argument("--model", default="models:/textperf@champion")
    parser.add_argument("--max-k", type=int, default=64)
    parser.add_argument("--split", default="val", choices=("val", "test"))
    args = parser.parse_args()

    app = load_app_config(args.config, var_dir=args.var_dir.resolve())
    paths = app.paths.resolve()
    configure_mlflow(paths, app.registry.experiment)
    part = pipeline.load_dataset(paths, app, load_source_config(app.source)).splits[args.split]
    predictor = registry.load_predictor(args.model)
    samples = mixed_draws(predictor.predict_texts(part.texts, args.max_k)["samples"])
    print(f"model: {args.model}\nsplit: {args.split}\nrecords: {len(part)}", flush=True)
    for k, scores in sweep(part.targets, samples):
        print(f"k{k}_chunks: {args.max_k // k}")
        for key, value in scores.items():
            print(f"k{k}_{key}: {value:.4f}", flush=True)


if __name__ == "__main__":
    main()
