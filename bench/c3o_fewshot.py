r"""Few-shot adaptation on c3o, leave one job out: textperf pretrained on four jobs vs LightGBM.

    OMP_NUM_THREADS=1 .venv/bin/python bench/c3o_fewshot.py [--jobs sort grep ...] \
        [--shots 50 200] [--pretrain-minutes 5] [--adapt-minutes 1.5] [--model small] [--seed 0]

Protocol, for each held-out job J (issue #5's c3o acceptance):
1. pretrain textperf from scratch (tokenizer too) on the other four jobs, within
   `--pretrain-minutes`; 10% of their distinct configurations are validation for early stopping;
2. shuffle J's distinct configurations (seeded); N shots (`--shots`, counted in runs, i.e.
   records, as `textperf adapt --shots` counts them) are all the repeated runs of the first
   configurations until N runs are reached (whole configurations: ~5 runs each, so 50 shots are
   ~10 configurations), and the test part is every run of the configurations that are never
   shots (the same test set for every N; at least 20% of J's configurations, else N is skipped);
3. adapt the pretrained model to the shots (`regressor.adaptation.fine_tune`, full fine-tuning,
   the last 20% of the shots, whole configurations, stop it early), and score it and the
   pretrained model zero-shot on J's test part;
4. beside it, on the same shots and test part: LightGBM on the shots only, and LightGBM on the
   other four jobs' data plus the shots with a `job` column (both on flattened config fields,
   raw target as the project's baseline and log target).

Prints `name: value` lines `fewshot_<job>_<N>_<model>_mape` (MAPE %, per run), and the zero-shot
`fewshot_<job>_zeroshot_textperf_mape`. Ingests into `<out>/warehouse.duckdb` like accuracy.py.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from accuracy import (
    DEFAULT_OUT,
    Recipe,
    absolute_recipe,
    budget_config,
    load_records,
    train_textperf,
)

from regressor import baselines, tabular
from regressor.adaptation import fine_tune
from regressor.config import AdaptConfig, load_model_config, load_source_config
from regressor.dataset import Examples, to_examples
from regressor.evaluation import point_metrics
from regressor.neighbours import with_neighbours
from regressor.predictor import Predictor
from regressor.splits import config_group, split_groups
from regressor.training import FitResult

JOBS = ("sort", "grep", "sgd", "kmeans", "pagerank")
MIN_TEST_SHARE = 0.2


def job_parts(
    records: pl.DataFrame, job: str, shots: list[int], seed: int
) -> tuple[dict[int, pl.DataFrame], pl.DataFrame]:
    """Shots per N (whole shuffled configurations, N runs) and the common test part of `job`."""
    own = records.filter(pl.col("task") == job)
    groups = [config_group(t, c) for t, c in zip(own["task"], own["config_json"], strict=True)]
    distinct = sorted(set(groups))
    order = [distinct[i] for i in np.random.default_rng(seed).permutation(len(distinct))]
    rank = {g: i for i, g in enumerate(order)}
    ranked = own.with_columns(pl.Series("rank", [rank[g] for g in groups])).sort("rank")
    runs_to = np.cumsum(ranked.group_by("rank").len().sort("rank")["len"].to_numpy())
    # configurations needed to reach N runs; keep at least MIN_TEST_SHARE of them for the test
    n_configs = {n: int(np.searchsorted(runs_to, n)) + 1 for n in shots}
    limit = len(order) * (1 - MIN_TEST_SHARE)
    usable = {n: k for n, k in n_configs.items() if k <= limit}
    test = ranked.filter(pl.col("rank") >= max(usable.values(), default=0))
    return {n: ranked.filter(pl.col("rank") < k) for n, k in usable.items()}, test


def pretrain_sides(records: pl.DataFrame, seed: int) -> np.ndarray:
    """`pretrain`'s split of its records by distinct configuration: "test" is its validation
    tenth, which stops pretraining early."""
    groups = [
        config_group(t, c) for t, c in zip(records["task"], records["config_json"], strict=True)
    ]
    return split_groups(groups, 0.1, 0.0, seed)


def pretrain(
    others: pl.DataFrame,
    args: argparse.Namespace,
    priority: tuple[str, ...],
    ckpt: Path,
    recipe: Recipe,
    steps: int | None = None,
    neighbours: int = 0,
) -> Predictor:
    """`recipe` trained from scratch on `others` within `--pretrain-minutes`, or for exactly
    `steps` steps (then the clock does not cut it, so the result does not follow the load);
    with `neighbours` k, every text ends with its k nearest training records of its task
    (`regressor.neighbours`)."""
    sides = pretrain_sides(others, args.seed)
    budget = load_model_config(args.model).max_input_tokens
    train = to_examples(others.filter(pl.Series(sides == "train")), priority, budget)
    val = to_examples(others.filter(pl.Series(sides == "test")), priority, budget)
    if neighbours:
        train, val = (
            with_neighbours(train, train, neighbours),
            with_neighbours(val, train, neighbours),
        )
    minutes = args.pretrain_minutes if steps is None else 100 * args.pretrain_minutes
    cfg = budget_config(minutes, args.seed)
    predictor, fitted, _ = train_textperf(recipe, train, val, cfg, ckpt, priority, steps)
    print(f"pretrain_steps: {fitted.steps}\npretrain_s: {fitted.seconds:.0f}", flush=True)
    return predictor


def fine_tuned(
    base: Predictor,
    shots: Examples,
    minutes: float,
    seed: int,
    val_fraction: float,
    ckpt: Path,
    select_by: str = "val_loss",
    max_steps: int = 600,
) -> tuple[Predictor, FitResult]:
    """`base` with every weight fine-tuned on `shots`, their last `val_fraction` stopping it early
    and picking the checkpoint by `select_by` (`TrainConfig.select_by`): the benches' one
    fine-tuning recipe, up to `max_steps` steps at lr 1e-3 within `minutes`."""
    adapt = AdaptConfig(
        max_steps=max_steps, lr=1e-3, max_minutes=minutes, val_fraction=val_fraction
    )
    return fine_tune(base, shots, adapt, budget_config(minutes, seed, select_by), ckpt)


def with_job(config_json: list[str], tasks: list[str]) -> list[str]:
    """The config plus a `job` field: how the pooled peer tells the jobs apart."""
    return [json.dumps(json.loads(c) | {"job": t}) for c, t in zip(config_json, tasks, strict=True)]


def gbm_peers(
    shots: Examples, others: Examples, test: Examples, seed: int
) -> dict[str, np.ndarray]:
    pooled_x = with_job(others.config_json + shots.config_json, others.tasks + shots.tasks)
    pooled_y = np.concatenate([others.targets, shots.targets])
    test_x = with_job(test.config_json, test.tasks)
    flat = baselines.flatten_configs
    return {
        "lightgbm_shots": baselines.lightgbm_baseline(
            shots.config_json, shots.targets, test.config_json, seed
        ),
        "lightgbm_log_shots": tabular.fit_predict(
            "lightgbm", flat(shots.config_json), shots.targets, flat(test.config_json), seed, True
        ),
        "lightgbm_pooled": baselines.lightgbm_baseline(pooled_x, pooled_y, test_x, seed),
        "lightgbm_log_pooled": tabular.fit_predict(
            "lightgbm", flat(pooled_x), pooled_y, flat(test_x), seed, True
        ),
    }


def mape_of(predictor: Predictor, test: Examples, seed: int) -> float:
    summary = predictor.predict_texts(test.texts, num_samples=32, seed=seed)
    return point_metrics(test.targets, summary["median"])["mape"]


def run_job(job: str, records: pl.DataFrame, args: argparse.Namespace, out: Path) -> None:
    priority = tuple(load_source_config("c3o").section_priority)
    budget = load_model_config(args.model).max_input_tokens
    shots_by_n, test_rows = job_parts(records, job, args.shots, args.seed)
    others_rows = records.filter(pl.col("task") != job)
    ckpt = out / "checkpoints" / f"fewshot_{job}_{args.model}_seed{args.seed}"
    base = pretrain(
        others_rows, args, priority, ckpt / "pretrain", absolute_recipe(args.model, "c3o")
    )
    test = to_examples(test_rows, priority, budget)
    others = to_examples(others_rows, priority, budget)
    print(f"fewshot_{job}_n_test: {len(test)}")
    print(f"fewshot_{job}_zeroshot_textperf_mape: {mape_of(base, test, args.seed):.4f}", flush=True)
    for n, rows in shots_by_n.items():
        shots = to_examples(rows, priority, budget)  # ordered by config rank: val = whole configs
        adapted, fitted = fine_tuned(
            base, shots, args.adapt_minutes, args.seed, 0.2, ckpt / f"adapt_{n}"
        )
        prefix = f"fewshot_{job}_{n}"
        n_configs = rows["rank"].n_unique()
        print(f"{prefix}_shot_configs: {n_configs}\n{prefix}_adapt_steps: {fitted.steps}")
        print(f"{prefix}_textperf_mape: {mape_of(adapted, test, args.seed):.4f}", flush=True)
        for name, pred in gbm_peers(shots, others, test, args.seed).items():
            print(f"{prefix}_{name}_mape: {point_metrics(test.targets, pred)['mape']:.4f}")
    skipped = sorted(set(args.shots) - set(shots_by_n))
    if skipped:
        print(f"fewshot_{job}_skipped_shots: {skipped}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    parser.add_argument("--shots", nargs="+", type=int, default=[50, 200], help="shot runs")
    parser.add_argument("--pretrain-minutes", type=float, default=5.0)
    parser.add_argument("--adapt-minutes", type=float, default=1.5, help="per fine-tuning")
    parser.add_argument("--model", default="small", help="conf/model/<name>.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="warehouse and checkpoints")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    records = load_records("c3o", out)
    for job in args.jobs:
        started = time.perf_counter()
        run_job(job, records, args, out)
        print(f"fewshot_{job}_wall_s: {time.perf_counter() - started:.0f}", flush=True)


if __name__ == "__main__":
    main()
