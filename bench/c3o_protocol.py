r"""C3O's published protocol: per-job MAPE on median runtimes, over random 90/10 splits.

    OMP_NUM_THREADS=1 .venv/bin/python bench/c3o_protocol.py [--splits 300] [--textperf-splits 3] \
        [--recipe pretrain|scratch] [--pretrain-minutes 3] [--minutes 2] [--model mini] [--seed 0] \
        [--out var/bench/c3o_protocol]

Protocol, as C3O's `evaluation/model_performance.ipynb` (`get_training_data`, global split):
1. ingest c3o through `conf/sources/c3o.yaml` (as bench/accuracy.py does) into `<out>`;
2. per job, keep only the notebook's rows (`NOTEBOOK_FILTERS`: the one machine type the full
   experiments were run on, and for sort line_length 100, for sgd and kmeans instance_count > 2)
   and replace each configuration's ~5 repeated runs by one record with their MEDIAN runtime;
3. `--splits` seeded random splits of those configurations, 10% test (rounded up, as sklearn's
   `train_test_split(test_size=.1)` does), the rest train;
4. on every split: LightGBM (raw target, the project's baseline; and log target) and XGBoost
   (log target) on the flattened config fields; MAPE (%) per split, mean over splits per job;
5. textperf on the first `--textperf-splits` splits only (training is costly), model `--model`,
   one of two recipes (`--recipe`):
   - `pretrain` (default): per job, pretrain from scratch (tokenizer too) on the OTHER four jobs'
     runs, all machine types, within `--pretrain-minutes` (`c3o_fewshot.pretrain`: 10% of their
     configurations stop it early), then fine-tune every weight on the split's training medians
     within `--minutes` (`regressor.adaptation.fine_tune`, c3o_fewshot's settings; a random
     tenth of them stops it early, the patience kept in steps as below);
   - `scratch`: from scratch on the split's training medians alone within `--minutes`, a seeded
     tenth of them held out for early stopping, the patience kept in steps
     (`regressor.adaptation.scratch_train_config`).
   The peers fit all of train. textperf predicts by the median of 32 samples.

Differences from the notebook: the peers and textperf see the project's config fields (all TSV
columns but the runtime), not only the notebook's feature subset; within a job's filtered rows
the extra columns (machine type, slots, memory, data size, lines) are constant or follow from the
notebook's features, so they add no information. The notebook's peers are its own models
(Ernest, GBM, BOM, OGB, C3O); their figures are read from its `performance_results.csv`.

Prints `name: value` lines: `<job>_<model>_mape` (mean over the splits the model ran on),
`<job>_<peer>_mape_textperf_splits` (the peers on textperf's splits only, a like-for-like
comparison), `<job>_published_<method>_mape`, `<job>_n_configs`, `<job>_n_test`, `splits`,
`textperf_splits`; writes a markdown table to `<out>/table.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from accuracy import absolute_recipe, budget_config, load_records, train_textperf
from c3o_fewshot import fine_tuned, mape_of, pretrain

from regressor import baselines, tabular
from regressor.adaptation import scratch_train_config
from regressor.config import AdaptConfig, data_root, load_model_config, load_source_config
from regressor.dataset import Examples, to_examples
from regressor.evaluation import point_metrics
from regressor.predictor import Predictor
from regressor.splits import config_group, split_groups

DEFAULT_OUT = Path("var/bench/c3o_protocol")
# The notebook's `get_training_data` filters, (field, op, value), per job (file stem).
NOTEBOOK_FILTERS: dict[str, tuple[tuple[str, str, object], ...]] = {
    "sort": (("machine_type", "==", "c4.2xlarge"), ("line_length", "==", 100)),
    "grep": (("machine_type", "==", "m4.2xlarge"),),
    "sgd": (("machine_type", "==", "r4.2xlarge"), ("instance_count", ">", 2)),
    "kmeans": (("machine_type", "==", "r4.2xlarge"), ("instance_count", ">", 2)),
    "pagerank": (("machine_type", "==", "r4.2xlarge"),),
}
# The notebook's job names in performance_results.csv.
PUBLISHED_JOB = {
    "sort": "Sort",
    "grep": "Grep",
    "sgd": "SGDLR",
    "kmeans": "K-Means",
    "pagerank": "Page Rank",
}
METHODS = ("Ernest", "GBM", "BOM", "OGB", "C3O")
PEERS = ("lightgbm", "lightgbm_log", "xgboost_log")
TEST_FRACTION = 0.1
RECIPES = {
    "pretrain": "textperf `{a.model}` pretrained {a.pretrain_minutes:g} min on the other four jobs'"
    " runs, fine-tuned {a.minutes:g} min on the job's training medians",
    "scratch": "textperf `{a.model}` from scratch on the job's training medians, {a.minutes:g} min",
}


def keeps(config_json: str, filters: tuple[tuple[str, str, object], ...]) -> bool:
    config = json.loads(config_json)
    for field, op, value in filters:
        have = config.get(field)
        if (op == "==" and have != value) or (op == ">" and not have > value):
            return False
    return True


def job_medians(records: pl.DataFrame, job: str) -> pl.DataFrame:
    """The notebook's rows of `job`, one record per configuration with its median runtime."""
    own = records.filter(pl.col("task") == job)
    kept = own.filter(pl.Series([keeps(c, NOTEBOOK_FILTERS[job]) for c in own["config_json"]]))
    groups = [config_group(t, c) for t, c in zip(kept["task"], kept["config_json"], strict=True)]
    return (
        kept.with_columns(pl.Series("group", groups))
        .group_by("group", maintain_order=True)
        .agg(
            pl.all().exclude("target", "group").first(),
            pl.col("target").median(),
            pl.len().alias("runs"),
        )
        .sort("group")
    )


def split_masks(n: int, splits: int, seed: int) -> list[np.ndarray]:
    """Boolean test masks: ceil(10%) of the rows each, as sklearn's train_test_split."""
    n_test = math.ceil(n * TEST_FRACTION)
    masks = []
    for i in range(splits):
        mask = np.zeros(n, dtype=bool)
        mask[np.random.default_rng([seed, i]).permutation(n)[:n_test]] = True
        masks.append(mask)
    return masks


def peer_mapes(train: Examples, test: Examples, seed: int) -> dict[str, float]:
    x_train = baselines.flatten_configs(train.config_json)
    x_test = baselines.flatten_configs(test.config_json, like=x_train)
    preds = {
        "lightgbm": baselines.lightgbm_baseline(
            train.config_json, train.targets, test.config_json, seed
        ),
        "lightgbm_log": tabular.fit_predict("lightgbm", x_train, train.targets, x_test, seed, True),
        "xgboost_log": tabular.fit_predict("xgboost", x_train, train.targets, x_test, seed, True),
    }
    return {name: point_metrics(test.targets, p)["mape"] for name, p in preds.items()}


def scratch_mape(
    train: Examples, test: Examples, args: argparse.Namespace, ckpt: Path, priority: tuple
) -> float:
    """From scratch on `train` (a seeded tenth of its configurations stops it early).

    `fit` validates every `val_every_steps` across epochs, so on ~30-250 records the patience
    spans the same steps as on the fleet (validating every few-step epoch once stopped it
    within ~40 steps).
    """
    sides = split_groups(train.config_json, TEST_FRACTION, 0.0, args.seed)  # "test" = val here
    fit_part = train.take(np.flatnonzero(sides == "train"))
    val = train.take(np.flatnonzero(sides == "test"))
    adapt = AdaptConfig(scratch_max_minutes=args.minutes)
    cfg = scratch_train_config(budget_config(args.minutes, args.seed), adapt, len(fit_part))
    predictor, fitted, _ = train_textperf(
        absolute_recipe(args.model, "c3o"), fit_part, val, cfg, ckpt, priority
    )
    print(f"textperf_steps: {fitted.steps}\ntextperf_train_s: {fitted.seconds:.0f}", flush=True)
    return mape_of(predictor, test, args.seed)


def fine_tuned_mape(
    base: Predictor, train: Examples, test: Examples, args: argparse.Namespace, ckpt: Path
) -> float:
    """`base` fine-tuned on `train` (shuffled: its last tenth, random configs, stops it early)."""
    shuffled = train.take(np.random.default_rng(args.seed).permutation(len(train)))
    adapted, fitted = fine_tuned(base, shuffled, args.minutes, args.seed, 0.1, ckpt)
    print(f"textperf_steps: {fitted.steps}\ntextperf_train_s: {fitted.seconds:.0f}", flush=True)
    return mape_of(adapted, test, args.seed)


def published(root: Path) -> dict[str, dict[str, float]]:
    """Mean global-split MAPE (%) per job and method from the notebook's results file."""
    frame = pl.read_csv(
        root / "evaluation" / "performance_results.csv",
        has_header=False,
        new_columns=["job", "method", "dataset", "mape"],
    )
    means = (
        frame.filter(pl.col("dataset") == "global")
        .group_by("job", "method")
        .agg(pl.col("mape").mean() * 100)
    )
    out: dict[str, dict[str, float]] = {}
    for row in means.iter_rows(named=True):
        out.setdefault(row["job"], {})[row["method"]] = row["mape"]
    return out


def run_job(job: str, records: pl.DataFrame, args: argparse.Namespace, out: Path) -> dict:
    priority = tuple(load_source_config("c3o").section_priority)
    budget = load_model_config(args.model).max_input_tokens
    medians = to_examples(job_medians(records, job), priority, budget)
    masks = split_masks(len(medians), args.splits, args.seed)
    print(f"{job}_n_configs: {len(medians)}\n{job}_n_test: {int(masks[0].sum())}", flush=True)
    peers: dict[str, list[float]] = {name: [] for name in PEERS}
    tp: list[float] = []
    ckpt = out / "checkpoints" / f"{job}_{args.model}_{args.recipe}_seed{args.seed}"
    base = None
    if args.recipe == "pretrain" and args.textperf_splits > 0:
        others = records.filter(pl.col("task") != job)
        base = pretrain(
            others, args, priority, ckpt / "pretrain", absolute_recipe(args.model, "c3o")
        )
    for i, mask in enumerate(masks):
        train, test = medians.take(np.flatnonzero(~mask)), medians.take(np.flatnonzero(mask))
        for name, mape in peer_mapes(train, test, args.seed).items():
            peers[name].append(mape)
        if i < args.textperf_splits:
            if base is None:
                tp.append(scratch_mape(train, test, args, ckpt / f"split{i}", priority))
            else:
                tp.append(fine_tuned_mape(base, train, test, args, ckpt / f"split{i}"))
            print(f"{job}_textperf_split{i}_mape: {tp[-1]:.4f}", flush=True)
    result = {f"{name}_mape": float(np.mean(v)) for name, v in peers.items()}
    if tp:
        k = len(tp)
        result |= {f"{n}_mape_textperf_splits": float(np.mean(peers[n][:k])) for n in PEERS}
        result["textperf_mape"] = float(np.mean(tp))
    return result | {"n_configs": len(medians)}


def table(results: dict[str, dict], pub: dict[str, dict[str, float]], args) -> str:
    k = min(args.textperf_splits, args.splits)
    head = (
        ["job", "configs"]
        + [f"published {m}" for m in METHODS]
        + [f"{p} ({args.splits} splits)" for p in PEERS]
        + [f"textperf ({k} splits)", f"lightgbm_log ({k} splits)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for job, r in results.items():
        cells = [job, str(r["n_configs"])]
        cells += [f"{pub[PUBLISHED_JOB[job]][m]:.2f}" for m in METHODS]
        cells += [f"{r[f'{p}_mape']:.2f}" for p in PEERS]
        for key in ("textperf_mape", "lightgbm_log_mape_textperf_splits"):
            cells.append(f"{r[key]:.2f}" if key in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    recipe = RECIPES[args.recipe].format(a=args)
    note = f"MAPE %, C3O global protocol, seed {args.seed}; {recipe}."
    return "\n".join(lines) + f"\n\n{note}\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", nargs="+", choices=sorted(NOTEBOOK_FILTERS), default=None)
    parser.add_argument("--splits", type=int, default=300, help="random 90/10 splits (peers)")
    parser.add_argument("--textperf-splits", type=int, default=3, help="first splits for textperf")
    parser.add_argument("--recipe", choices=("pretrain", "scratch"), default="pretrain")
    parser.add_argument("--pretrain-minutes", type=float, default=3.0, help="per job (pretrain)")
    parser.add_argument("--minutes", type=float, default=2.0, help="textperf budget per split")
    parser.add_argument("--model", default="mini", help="conf/model/<name>.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="warehouse, checkpoints, table")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = Path(args.out)
    records = load_records("c3o", out)
    pub = published(data_root(load_source_config("c3o").root))
    results = {}
    for job in args.jobs or list(NOTEBOOK_FILTERS):
        results[job] = run_job(job, records, args, out)
        for name, value in results[job].items():
            if name != "n_configs":
                print(f"{job}_{name}: {value:.4f}")
        for method in METHODS:
            print(f"{job}_published_{method.lower()}_mape: {pub[PUBLISHED_JOB[job]][method]:.4f}")
    print(f"splits: {args.splits}\ntextperf_splits: {min(args.textperf_splits, args.splits)}")
    print(f"textperf_recipe: {RECIPES[args.recipe].format(a=args)}")
    (out / "table.md").write_text(table(results, pub, args))
    print(f"wall_s: {time.perf_counter() - started:.0f}")


if __name__ == "__main__":
    main()
