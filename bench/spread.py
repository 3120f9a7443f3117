r"""How well does the sample spread of a registered model rank its errors, and how well could it?

    OMP_NUM_THREADS=1 .venv/bin/python bench/spread.py --var-dir var \
        [--model models:/textperf@champion] [--config conf/default.yaml] [--samples 32]

Predicts the validation and test splits once (seeded), then prints for the test split the
Spearman between each record's absolute error and its spread, with:

- `spread_samples`: the raw std of the samples;
- `spread_pooled`: std scaled by one split-conformal factor fitted on validation (a rank no-op);
- `spread_per_task`: std scaled by each task's own conformal factor (Mondrian; here every task
  with at least `--min-task-records` validation records, whatever the config says);

and each one's 10-90% coverage (`coverage_<same>`) and the mean absolute gap between a task's
coverage and the nominal 0.8 (`coverage_task_gap_<same>`: what per-task scales are for). Two
reference figures bound what those can reach, computed from the test errors themselves (never
used by the model, only for comparison):

- `bound_task_oracle`: the spread of every record set to its task's mean absolute *test* error,
  i.e. the best any spread that is constant within a task could do;
- `bound_self_consistent`: what this model would score if its samples were exactly right (each
  truth replaced by one held-back sample of the record's own distribution); low when the model's
  spread barely varies between records.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from regressor import pipeline, registry
from regressor.calibration import fit_interval_scale
from regressor.config import load_app_config, load_source_config
from regressor.evaluation import rank_correlations, uncertainty_metrics
from regressor.sampling import summarize
from regressor.tracking import configure_mlflow


def task_oracle(errors: np.ndarray, tasks: list[str]) -> float:
    """Spearman of each error with its task's mean error on the same records."""
    names = np.asarray(tasks)
    means = {t: errors[names == t].mean() for t in np.unique(names)}
    return rank_correlations(errors, np.array([means[t] for t in names]))["spearman"]


def task_coverage_gap(y: np.ndarray, summary: dict[str, np.ndarray], tasks: list[str]) -> float:
    """Mean over tasks of |coverage of the task's 10-90% intervals - 0.8|."""
    names = np.asarray(tasks)
    inside = (y >= summary["q10"]) & (y <= summary["q90"])
    return float(np.mean([abs(inside[names == t].mean() - 0.8) for t in np.unique(names)]))


def self_consistent(samples: np.ndarray, rng: np.random.Generator, repeats: int = 20) -> float:
    """Mean Spearman of spread vs error when the truth is one of the record's own samples.
    Each row's draws are shuffled first: an ensemble lays them out member by member, so the
    held-back half was other members' draws, not the record's own distribution."""
    samples = rng.permuted(samples, axis=1)
    half = samples.shape[1] // 2
    summary = summarize(samples[:, :half], quantiles=())
    rows = np.arange(len(samples))
    scores = []
    for _ in range(repeats):
        truth = samples[rows, half + rng.integers(0, samples.shape[1] - half, len(samples))]
        error = np.abs(summary["median"] - truth)
        scores.append(rank_correlations(error, summary["std"])["spearman"])
    return float(np.nanmean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--var-dir", type=Path, default=Path("var"))
    parser.add_argument("--config", type=Path, default=None, help="default: conf/default.yaml")
    parser.add_argument("--model", default="models:/textperf@champion")
    parser.add_argument("--samples", type=int, default=32, help="decodes per record")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-task-records", type=int, default=8)
    args = parser.parse_args()

    app = load_app_config(args.config, var_dir=args.var_dir.resolve())
    paths = app.paths.resolve()
    configure_mlflow(paths, app.registry.experiment)
    splits = pipeline.load_dataset(paths, app, load_source_config(app.source)).splits
    val, test = splits["val"], splits["test"]
    predictor = registry.load_predictor(args.model)
    raw = {
        name: summarize(predictor.sample_texts(part.texts, args.samples, seed=args.seed))
        for name, part in (("val", val), ("test", test))
    }
    print(f"model: {args.model}\nrecords_val: {len(val)}\nrecords_test: {len(test)}")
    v, t = raw["val"], raw["test"]
    fits = {
        "samples": None,
        "pooled": fit_interval_scale(val.targets, v["median"], v["q10"], v["q90"]),
        "per_task": fit_interval_scale(
            val.targets, v["median"], v["q10"], v["q90"], 0.8, val.tasks, args.min_task_records
        ),
    }
    for name, scale in fits.items():
        out = t if scale is None else scale.apply_summary(t, test.tasks)
        m = uncertainty_metrics(test.targets, out["median"], out["q10"], out["q90"], out["std"])
        print(f"spread_{name}: {m['uncertainty_spearman']:.4f}")
        print(f"coverage_{name}: {m['interval_coverage']:.4f}")
        print(f"coverage_task_gap_{name}: {task_coverage_gap(test.targets, out, test.tasks):.4f}")
    errors = np.abs(t["median"] - test.targets)
    samples = predictor.sample_texts(test.texts, 2 * args.samples, seed=args.seed + 1)
    print(f"bound_task_oracle: {task_oracle(errors, test.tasks):.4f}")
    rng = np.random.default_rng(args.seed)
    print(f"bound_self_consistent: {self_consistent(samples, rng):.4f}")


if __name__ == "__main__":
    main()
