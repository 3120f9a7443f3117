r"""DeepPerf's protocol on the SPL Conqueror systems: MRE over repetitions, beside published ones.

    OMP_NUM_THREADS=1 .venv/bin/python bench/deepperf_protocol.py [--systems x264 LLVM ...] \
        [--reps 30] [--textperf-systems x264 LLVM BDBC Apache] [--textperf-size 3] \
        [--textperf-reps 3] [--textperf-first-rep 0] [--minutes 1] [--ensemble 1] \
        [--model small] [--seed 0] [--recipe scratch|pretrain] [--pretrain-minutes 3] \
        [--steps 1500] [--select-by val_error] [--booleans digits|words] [--rescore] \
        [--temperature 1] [--recipe synthetic --prior-kind words --prior-systems 20 \
        --prior-records 2000 --prior-seed 0 --pretrain-minutes 30 | --pretrain-steps 60000] \
        [--fine-tune-steps 1500 --fine-tune-exact] [--store DIR|URL] [--neighbours 3]
        [--number-order exponent-first]

Protocol (`deepperf/README.txt`, AutoDeepPerf.py):
- binary systems (Apache, x264, LLVM, BDBC, BDBJ, SQL): sample sizes n, 2n, 3n, 4n, 5n with n the
  number of options; the training configurations of repetition m are DeepPerf's own indices
  (`<sys>_training_index.csv`: row 0 holds each column's sample size, row m the indices);
- binary-numeric systems (Dune, hipacc, hsmgp): the README's sample sizes, random samples drawn
  with seed `seed * 30 + m` (numpy's `default_rng`), since no index file is shipped; likewise
  SQL at 5n (195), which its index file does not cover. These are not DeepPerf's samples: its
  generator (AutoDeepPerf.py, `np.random.seed(i * 30 + m)` and a permutation, `i` the size's
  place, `m` from 1) made the shipped index files and would give them;
- test on ALL remaining configurations; MRE % = mean(|pred - actual| / actual) * 100, averaged
  over the repetitions (`--reps`, 30 as published).
The records come from the project's `deepperf` source (`conf/sources/deepperf.yaml`), ingested into
`<out>/warehouse.duckdb`; a record's row in the CSV is its line number - 2.

Peers, all systems and sizes: LightGBM (the project's baseline, raw target), LightGBM on log target
and XGBoost on log target, on the option columns. textperf (small budget, `--minutes` or
`--steps` per fit; the last 20% of the sample picks the checkpoint and stops training early, by
the error of the sampled median by default, `--select-by`; `--recipe pretrain` first pretrains
one model per system on all the other systems' records for `--pretrain-minutes`, then
fine-tunes every weight on each repetition's sample (`--recipe synthetic`: one model pretrained
on generated systems, `regressor.configprior`, shared by every system, saved for reuse and kept
in MLflow, `--store`, whence another machine or a later run fetches it instead of pretraining a
different one; `--fine-tune-exact` lets `--fine-tune-steps` alone, not the clock, end each
fine-tuning);
`--ensemble K` fits K such models with
seeds 1000 apart and pools their samples, with `--cross-fit` each validating on its own fold of
the sample) on `--textperf-systems` at `--textperf-size` x n for `--textperf-reps` repetitions.
`--textperf-first-rep` starts at a later repetition (more repetitions from another process), and
`--rescore` re-samples a finished run's members from their best checkpoints instead of training.
Prints `deepperf_<sys>_<size>_<model>_mre: value` lines (and `..._val_mre`, the members on their
own validation records, to choose recipes with; `..._weighted_median_[val_]mre` score the
samples' 1/y-weighted median, the MRE-optimal point, instead of their median) and the published
`..._deepperf_published_mre` / `..._decart_published_mre` (`..._splconqueror_published_mre` for
the binary-numeric Dune, hipacc and hsmgp) beside them. Each repetition's members'
draws go to `<out>/deepperf_<sys>_<size>_<recipe>_<rep>_samples.npz`: runs with the same seed and
`--ensemble` pool with `bench/pool.py --dataset deepperf` (their folds are the same).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch
from accuracy import (
    DEFAULT_OUT,
    MemberSamples,
    Recipe,
    add_number_order,
    budget_config,
    concat,
    exponent_first,
    load_records,
    member_predictor,
    save_member_samples,
    source_recipe,
    train_textperf,
)
from c3o_fewshot import fine_tuned, pretrain, pretrain_sides
from sklearn.model_selection import KFold

from regressor import baselines, tabular
from regressor.bundle_store import fetch_bundle, keep_bundle
from regressor.config import PROJECT_ROOT, load_model_config, load_source_config
from regressor.configprior import PRIOR_KINDS, prior_records
from regressor.dataset import Examples, to_examples
from regressor.environment import TRAINED_WITH
from regressor.neighbours import with_neighbours
from regressor.predictor import BUNDLE_FILE, Predictor
from regressor.sampling import finite_median, relative_error_point
from regressor.tracking import store_paths
from regressor.training import load_checkpoint_weights

DATA = PROJECT_ROOT.parent / "shared" / "datasets" / "deepperf" / "Data"
# System -> (number of options, index file stem or None, sample sizes).
SYSTEMS: dict[str, tuple[int, str | None, list[int]]] = {
    "Apache": (9, "Apache", [9, 18, 27, 36, 45]),
    "x264": (16, "X264", [16, 32, 48, 64, 80]),
    "LLVM": (11, "LLVM", [11, 22, 33, 44, 55]),
    "BDBC": (18, "BDBC", [18, 36, 54, 72, 90]),
    "BDBJ": (26, "BDBJ", [26, 52, 78, 104, 130]),
    "SQL": (39, "SQL", [39, 78, 117, 156, 195]),
    "Dune": (11, None, [49, 78, 240, 375]),
    "hipacc": (33, None, [261, 528, 736, 1281]),
    "hsmgp": (14, None, [77, 173, 384, 480]),
}
# Published MRE % (DeepPerf paper Tables III/IV, as listed in deepperf/README.txt), per size.
DEEPPERF = {
    "Apache": [17.87, 10.24, 8.25, 6.97, 6.29],
    "x264": [10.43, 3.61, 2.13, 1.49, 0.87],
    "BDBJ": [7.25, 2.07, 1.73, 1.67, 1.61],
    "LLVM": [5.09, 3.87, 2.54, 2.27, 1.99],
    "BDBC": [133.6, 16.77, 13.1, 6.95, 5.82],
    "SQL": [5.04, 4.63, 4.48, 4.40, 4.27],
    "Dune": [15.73, 13.67, 8.19, 7.20],
    "hipacc": [9.39, 6.38, 5.06, 3.75],
    "hsmgp": [6.76, 3.60, 2.53, 2.24],
}
BINARY_NUMERIC = frozenset({"Dune", "hipacc", "hsmgp"})
DECART = {  # DECART for binary systems, SPLConqueror for binary-numeric ones; None: NA
    "Apache": [None, 15.83, 11.03, 9.49, 7.84],
    "x264": [17.71, 9.31, 6.37, 4.26, 2.94],
    "BDBJ": [10.04, 2.23, 2.03, 1.72, 1.67],
    "LLVM": [6.00, 4.66, 3.96, 3.54, 2.84],
    "BDBC": [151.0, 43.8, 31.9, 6.93, 5.02],
    "SQL": [4.87, 4.67, 4.36, 4.21, 4.11],
    "Dune": [20.1, 22.1, 10.6, 18.8],
    "hipacc": [14.2, 13.8, 13.9, 13.9],
    "hsmgp": [4.5, 2.8, 2.2, 1.7],
}


# An option line whose value is 0 or 1: `no_cabac=1`.
BOOLEAN_LINE = re.compile(r"^([^=\n<]+)=([01])$", re.MULTILINE)


def mre(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - y) / np.abs(y)) * 100)


def system_records(records: pl.DataFrame, system: str) -> pl.DataFrame:
    """The system's records in CSV row order (record ids end in ':<line>', line 2 = row 0)."""
    own = records.filter(pl.col("task") == f"{system}_AllNumeric")
    rows = [int(re.search(r":(\d+)$", rid)[1]) - 2 for rid in own["record_id"]]
    own = own.with_columns(pl.Series("row", rows)).sort("row")
    if own["row"].to_list() != list(range(len(own))):
        raise ValueError(f"{system}: record rows are not 0..{len(own) - 1}")
    return own


def index_table(system: str) -> np.ndarray | None:
    stem = SYSTEMS[system][1]
    if stem is None:
        return None
    return np.loadtxt(DATA / f"{stem}_training_index.csv", delimiter=",")


def training_rows(system: str, size: int, rep: int, n_rows: int, seed: int) -> np.ndarray:
    """DeepPerf's indices of repetition `rep` (0-based) for `size`, else a seeded random sample
    (the numeric systems, and SQL at 5n, whose index file stops at 4n)."""
    table = index_table(system)
    if table is not None and (table[0] == size).any():
        return table[1 + rep, table[0] == size].astype(int)
    rng = np.random.default_rng(seed * 30 + rep)
    return rng.choice(n_rows, size, replace=False)


def has_indices(system: str, size: int) -> bool:
    table = index_table(system)
    return table is not None and bool((table[0] == size).any())


def booleans_as_words(examples: Examples) -> Examples:
    """The `--booleans words` ablation: `opt=1` / `opt=0` written `opt=on` / `opt=off`, so with
    line-bound merges (`Recipe.split_lines`) an option's state can become one token of its own
    instead of a name token followed by a digit token."""
    texts = [
        BOOLEAN_LINE.sub(lambda m: f"{m[1]}={'on' if m[2] == '1' else 'off'}", text)
        for text in examples.texts
    ]
    return dataclasses.replace(examples, texts=texts)


def textperf_recipe(args: argparse.Namespace) -> Recipe:
    recipe = source_recipe(args.model, "deepperf")
    return dataclasses.replace(
        recipe,
        split_lines=args.booleans == "words",
        exponent_first=exponent_first(args),
    )


# the time budget of a fine-tuning the clock must not end (`--fine-tune-exact`): none comes near
A_WEEK_IN_MINUTES = 7 * 24 * 60.0

Peer = Callable[[Examples, Examples, int], np.ndarray]


def peers() -> dict[str, Peer]:
    flat = baselines.flatten_configs

    def on_log(kind: str) -> Peer:
        def run(train: Examples, test: Examples, seed: int) -> np.ndarray:
            x_train, x_test = flat(train.config_json), flat(test.config_json)
            return tabular.fit_predict(kind, x_train, train.targets, x_test, seed, True)

        return run

    return {
        "lightgbm": lambda tr, te, seed: baselines.lightgbm_baseline(
            tr.config_json, tr.targets, te.config_json, seed
        ),
        "lightgbm_log": on_log("lightgbm"),
        "xgboost_log": on_log("xgboost"),
    }


def emit_published(prefix: str, system: str, k: int) -> None:
    """The published MREs at size k: DeepPerf's, and the other published learner's, named as
    what it is (`DECART`'s table holds SPLConqueror's figures for binary-numeric systems)."""
    other = "splconqueror" if system in BINARY_NUMERIC else "decart"
    for name, table in (("deepperf", DEEPPERF), (other, DECART)):
        value = table[system][k]
        print(f"{prefix}_{name}_published_mre: {'NA' if value is None else value}")


def run_tabular(system: str, examples: Examples, args: argparse.Namespace) -> None:
    for k, size in enumerate(SYSTEMS[system][2]):
        scores: dict[str, list[float]] = {}
        for rep in range(args.reps):
            rows = training_rows(system, size, rep, len(examples), args.seed)
            test = np.setdiff1d(np.arange(len(examples)), rows)
            train, held = examples.take(rows), examples.take(test)
            for name, peer in peers().items():
                scores.setdefault(name, []).append(
                    mre(held.targets, peer(train, held, rep_seed(args, rep)))
                )
        prefix = f"deepperf_{system}_{size}"
        print(f"{prefix}_sample: {'deepperf_indices' if has_indices(system, size) else 'random'}")
        for name, values in scores.items():
            print(f"{prefix}_{name}_mre: {np.mean(values):.2f}")
        emit_published(prefix, system, k)


def member_parts(
    sample: Examples, i: int, args: argparse.Namespace, rep: int
) -> tuple[Examples, Examples]:
    """Member i's training and validation records: with `--cross-fit`, fold i of K (so every
    record of the sample trains K - 1 members and picks one member's checkpoint), else the
    sample's last fifth."""
    if args.cross_fit:
        folds = KFold(args.ensemble, shuffle=True, random_state=args.seed * 1000 + rep)
        train_rows, val_rows = list(folds.split(np.arange(len(sample))))[i]
        return sample.take(train_rows), sample.take(val_rows)
    cut = max(1, round(len(sample) * 0.8))
    return sample.take(np.arange(cut)), sample.take(np.arange(cut, len(sample)))


def textperf_fit(
    base: Predictor | None,
    train: Examples,
    val: Examples,
    args: argparse.Namespace,
    seed: int,
    ckpt: Path,
    priority: tuple[str, ...],
) -> Predictor:
    """From scratch (`base` None) or `base` with every weight fine-tuned; `val` picks the
    checkpoint and stops training early."""
    if args.rescore:
        return saved_member(base, train, val, args, seed, ckpt, priority)
    if base is not None:  # the shots' last len(val) records validate: exactly `val`
        val_fraction = len(val) / (len(train) + len(val))
        shots = concat(train, val)
        # `--fine-tune-exact`: the step cap (or validation) ends it, not the clock
        minutes = A_WEEK_IN_MINUTES if args.fine_tune_exact else args.minutes
        tuned, fitted = fine_tuned(
            base, shots, minutes, seed, val_fraction, ckpt, args.select_by, args.fine_tune_steps
        )
        print(f"{member_label(ckpt)}_fine_tune_steps: {fitted.steps}", flush=True)
        return tuned
    # A fixed step plan (`--steps`) is not cut by the clock, so results do not follow the load.
    minutes = args.minutes if args.steps is None else 100 * args.minutes
    cfg = budget_config(minutes, seed, args.select_by)
    return train_textperf(textperf_recipe(args), train, val, cfg, ckpt, priority, args.steps)[0]


def member_label(ckpt: Path) -> str:
    """A member's name in printed lines: its repetition's checkpoint directory, plus `member<i>`
    in an ensemble."""
    return ckpt.name if ckpt.parent.name == "checkpoints" else f"{ckpt.parent.name}_{ckpt.name}"


def saved_member(
    base: Predictor | None,
    train: Examples,
    val: Examples,
    args: argparse.Namespace,
    seed: int,
    ckpt: Path,
    priority: tuple[str, ...],
) -> Predictor:
    """A finished member rebuilt from its best checkpoint (`--rescore`), so it draws what the run
    drew: a from-scratch member's tokenizer and codec are functions of the same records and seed,
    a fine-tuned one's are its `base`'s."""
    best = ckpt / "best.ckpt"
    if not best.exists():
        raise SystemExit(f"{best}: no such checkpoint (run once without --rescore)")
    if base is None:
        predictor = member_predictor(textperf_recipe(args), train, val, priority, seed)
    else:
        predictor = copy.deepcopy(base)
    load_checkpoint_weights(predictor.model, best)
    predictor.model.eval()
    return predictor


def prior_shape(args: argparse.Namespace) -> str:
    """The prior's kind, size and model, and `_nb<k>` if its texts carry k neighbours (`_ef` if
    it writes numbers exponent first: a prior's members keep its codec)."""
    shape = f"{args.prior_kind}_{args.prior_systems}x{args.prior_records}_{args.model}"
    return shape + input_output_tag(args)


def input_output_tag(args: argparse.Namespace) -> str:
    """What the texts carry beyond the options, and how the decoder writes a number."""
    tag = f"_nb{args.neighbours}" if args.neighbours else ""
    return tag + ("_ef" if exponent_first(args) else "")


def recipe_tag(args: argparse.Namespace) -> str:
    """The recipe in member checkpoint (and samples) names: members fine-tuned from different
    priors apart (a `--prior-seed` other than `--seed` named too), and members of another
    `--seed` (other folds and weights), `--model` or `--cross-fit` too, so a run never
    overwrites another's samples and `--rescore` never re-samples another run's members. The
    defaults (seed 0, `small`, no cross-fit) keep the older names."""
    if args.recipe != "synthetic":
        tag = args.recipe + ("" if args.model == "small" else f"_{args.model}")
        tag += input_output_tag(args)
    else:  # the prior's shape names the model
        tag = f"synthetic_{prior_shape(args)}_{prior_length(args)}"
        tag += "" if prior_seed(args) == args.seed else f"_prior{prior_seed(args)}"
    return tag + ("_cf" if args.cross_fit else "") + (f"_seed{args.seed}" if args.seed else "")


def rep_seed(args: argparse.Namespace, rep: int) -> int:
    """Repetition `rep`'s seed under `--seed` (the peers', the members' and their sampling's;
    member i adds 1000 i): `rep` itself at the default seed 0, so those runs keep their figures.
    Before, the peers and the sampling took `rep` whatever `--seed` said, and the members
    `seed + rep`, so `--seed 1` repetition 0 trained as `--seed 0` repetition 1."""
    return args.seed * 100_003 + rep


def prior_seed(args: argparse.Namespace) -> int:
    """The synthetic prior's seed (its systems, split and initial weights): `--prior-seed`, by
    default `--seed`. Apart from it, priors of one kind are separate draws whose members pool
    (`bench/pool.py`), since the fine-tuning folds follow `--seed` alone."""
    return args.seed if args.prior_seed is None else args.prior_seed


def prior_length(args: argparse.Namespace) -> str:
    """The prior's training length in its name: a step count, or a wall-clock budget."""
    if args.pretrain_steps is not None:
        return f"{args.pretrain_steps}steps"
    return f"{args.pretrain_minutes:g}min"


def synthetic_base(args: argparse.Namespace, out: Path, priority: tuple[str, ...]) -> Predictor:
    """One model pretrained on `--prior-systems` synthetic systems (`regressor.configprior`),
    shared by every system and saved as a bundle, so later runs and other processes reuse it."""
    seed = prior_seed(args)
    name = f"deepperf_synthetic_{prior_shape(args)}"
    ckpt = out / "checkpoints" / f"{name}_{prior_length(args)}_seed{seed}"
    bundle = ckpt / "bundle"
    records = prior_records(args.prior_systems, args.prior_records, seed, args.prior_kind)
    store = store_paths(args.store, out)  # where priors are kept: regressor.bundle_store
    if not (bundle / BUNDLE_FILE).exists() and fetch_bundle(store, ckpt.name, bundle):
        print(f"prior_fetched_from: {store.tracking_uri}", flush=True)
    if (bundle / BUNDLE_FILE).exists():
        base = Predictor.load(bundle)
        report_prior(base, records, seed, priority, args.neighbours)
        return base
    if args.rescore:  # re-sampling must never start a pretraining of its own
        raise SystemExit(f"{bundle}: no saved prior to rescore from (run once without --rescore)")
    print(f"prior_records: {len(records)}", flush=True)
    recipe = textperf_recipe(args)
    prior_args = argparse.Namespace(**(vars(args) | {"seed": seed}))
    base = pretrain(
        records, prior_args, priority, ckpt, recipe, args.pretrain_steps, args.neighbours
    )
    base.save(bundle)
    scores = report_prior(base, records, seed, priority, args.neighbours)
    made_with = {
        "kind": args.prior_kind,
        "systems": args.prior_systems,
        "records": args.prior_records,
        "seed": seed,
        "model": args.model,
        "length": prior_length(args),
    }
    keep_bundle(store, ckpt.name, bundle, made_with | base.metadata.get(TRAINED_WITH, {}), scores)
    print(f"prior_kept_in: {store.tracking_uri}", flush=True)
    return base


def report_prior(
    base: Predictor,
    records: pl.DataFrame,
    seed: int,
    priority: tuple[str, ...],
    neighbours: int = 0,
) -> dict[str, float]:
    """Whether the pretrained model reads the options: its MRE on (up to 600 of) the prior's
    validation records beside that of each system's median training target, which knows the
    system's level and nothing of its options; first, what it was pretrained with
    (`numeric_environment`): a prior pretrained again matches it only where those match."""
    sides = pretrain_sides(records, seed)
    train = records.filter(pl.Series(sides == "train"))
    val = records.filter(pl.Series(sides == "test"))
    val = val.sample(min(600, len(val)), seed=0)
    level = train.group_by("task").agg(pl.col("target").median().alias("level"))
    val = val.join(level, on="task", how="left")
    budget = base.model_config.max_input_tokens
    sample = to_examples(val, priority, budget)
    if neighbours:  # as pretrained: the nearest training records of the same system
        sample = with_neighbours(sample, to_examples(train, priority, budget), neighbours)
    median = finite_median(base.sample_texts(sample.texts, 16, seed=0))
    for key, value in sorted(base.metadata.get(TRAINED_WITH, {}).items()):
        print(f"prior_{key}: {value}")  # sorted, as the saved bundle has them; older have none
    scores = {
        "prior_val_mre": mre(sample.targets, median),
        "prior_level_mre": mre(sample.targets, val["level"].to_numpy()),
    }
    for key, value in scores.items():
        print(f"{key}: {value:.2f}", flush=True)
    return scores


# The point estimates scored from draws [N, K], by the prefix of their lines: the median (the
# project's), and the 1/y-weighted median, which minimises the expected MRE under the draws.
POINTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "": finite_median,
    "weighted_median_": relative_error_point,
}
SCORES = tuple(f"{point}{score}" for point in POINTS for score in ("val_mre", "mre"))


def point_estimates(draws: np.ndarray) -> dict[str, np.ndarray]:
    return {key: estimate(draws) for key, estimate in POINTS.items()}


def run_textperf(
    system: str,
    examples: Examples,
    others: pl.DataFrame,
    args: argparse.Namespace,
    out: Path,
    prior: Predictor | None = None,
) -> None:
    """textperf's repetitions on `system`: from scratch, from a model pretrained on the other
    systems (`--recipe pretrain`), or from `prior`, the synthetic base shared by all systems."""
    k = min(args.textperf_size, len(SYSTEMS[system][2])) - 1
    size = SYSTEMS[system][2][k]
    priority = tuple(load_source_config("deepperf").section_priority)
    base = prior
    if args.recipe == "pretrain":
        ckpt = out / "checkpoints" / f"deepperf_{system}_pretrain"
        base = pretrain(others, args, priority, ckpt, textperf_recipe(args))
    prefix = f"deepperf_{system}_{size}_textperf"
    scores: dict[str, list[float]] = {key: [] for key in SCORES}
    first = args.textperf_first_rep
    for rep in range(first, first + args.textperf_reps):
        rows = training_rows(system, size, rep, len(examples), args.seed)
        sample = examples.take(rows)
        test = examples.take(np.setdiff1d(np.arange(len(examples)), rows))
        # the word-form members' tokenizers differ: `--rescore` must never load one for the other
        words = "_words" if args.booleans == "words" else ""
        ckpt = out / "checkpoints" / f"deepperf_{system}_{size}_{recipe_tag(args)}{words}_{rep}"
        draws: list[np.ndarray] = []  # per member: test draws [N_test, 32]
        val_errors = defaultdict(list)  # point estimate -> per member: val relative errors
        members: list[MemberSamples] = []
        for i in range(args.ensemble):
            seed = rep_seed(args, rep) + 1000 * i  # member 0: the single model's seed
            member_ckpt = ckpt if args.ensemble == 1 else ckpt / f"member{i}"
            train, val = member_parts(sample, i, args, rep)
            test_texts = test.texts
            if args.neighbours:  # every text reads the member's own training records
                nb = args.neighbours
                test_texts = with_neighbours(test, train, nb).texts
                train, val = with_neighbours(train, train, nb), with_neighbours(val, train, nb)
            predictor = textperf_fit(base, train, val, args, seed, member_ckpt, priority)
            t = args.temperature
            draws.append(predictor.sample_texts(test_texts, 32, t, seed=seed))
            val_draws = predictor.sample_texts(val.texts, 32, t, seed=rep_seed(args, rep))
            members.append(MemberSamples(draws[-1], val_draws, val.record_ids))
            for key, point in point_estimates(val_draws).items():
                val_errors[key].append(np.abs(point - val.targets) / np.abs(val.targets))
        # runs whose members share folds (same seed and --ensemble) pool: bench/pool.py
        save_member_samples(out / f"{ckpt.name}_samples.npz", test.record_ids, members)
        for key, point in point_estimates(np.concatenate(draws, axis=1)).items():
            scores[f"{key}mre"].append(mre(test.targets, point))
            # members on their own validation records (out of fold with --cross-fit): to choose
            # recipes and point estimates with
            val_mre = float(np.mean(np.concatenate(val_errors[key])) * 100)
            scores[f"{key}val_mre"].append(val_mre)
            # three decimals: a mean of a few repetitions is set beside a published figure of two
            print(f"{prefix}_rep{rep}_{key}val_mre: {val_mre:.3f}", flush=True)
            print(f"{prefix}_rep{rep}_{key}mre: {scores[f'{key}mre'][-1]:.3f}", flush=True)
    if not scores["mre"]:  # --textperf-reps 0: the base's report only
        return
    for key in SCORES:
        print(f"{prefix}_{key}: {np.mean(scores[key]):.3f}")
    emit_published(f"deepperf_{system}_{size}", system, k)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--reps", type=int, default=30, help="repetitions for the tabular peers")
    parser.add_argument("--textperf-systems", nargs="*", default=["x264", "LLVM", "BDBC", "Apache"])
    parser.add_argument("--textperf-size", type=int, default=3, help="k for the k-th sample size")
    parser.add_argument("--textperf-reps", type=int, default=3)
    parser.add_argument(
        "--textperf-first-rep",
        type=int,
        default=0,
        help="the first repetition textperf runs (0-based): more repetitions in another process",
    )
    parser.add_argument("--minutes", type=float, default=1.0, help="textperf budget per fit")
    parser.add_argument(
        "--ensemble", type=int, default=1, help="textperf models per repetition, samples pooled"
    )
    parser.add_argument("--model", default="small", help="conf/model/<name>.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="warehouse and checkpoints")
    parser.add_argument(
        "--recipe",
        choices=("scratch", "pretrain", "synthetic"),
        default="scratch",
        help="pretrain: one model per system pretrained on all the OTHER systems' records, then "
        "every weight fine-tuned on each repetition's sample; synthetic: one model pretrained "
        "on generated systems (regressor.configprior), shared by all systems, then the same",
    )
    parser.add_argument(
        "--prior-systems", type=int, default=20, help="with --recipe synthetic: how many systems"
    )
    parser.add_argument(
        "--prior-records", type=int, default=2000, help="with --recipe synthetic: records each"
    )
    parser.add_argument(
        "--prior-kind",
        choices=PRIOR_KINDS,
        default="words",
        help="with --recipe synthetic: options' effects drawn per system, or from effects of "
        "their names' words shared by all systems, or that with more numeric settings of "
        "several effect shapes and graded interactions (regressor.configprior)",
    )
    parser.add_argument(
        "--prior-seed",
        type=int,
        help="with --recipe synthetic: the prior's seed (default --seed): another draw of the "
        "same prior kind, whose members pool with --seed's (same folds)",
    )
    parser.add_argument("--pretrain-minutes", type=float, default=3.0, help="per system")
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        help="with --recipe synthetic: pretrain exactly this many steps, not within the minutes",
    )
    parser.add_argument(
        "--fine-tune-steps",
        type=int,
        default=600,
        help="with --recipe pretrain|synthetic: the step cap of each fine-tuning (within "
        "--minutes unless --fine-tune-exact)",
    )
    parser.add_argument(
        "--fine-tune-exact",
        action="store_true",
        help="fine-tunings stop at --fine-tune-steps or on validation, never on the clock, so "
        "the members do not follow the machine's load or how many processes share it",
    )
    parser.add_argument(
        "--store",
        help="where synthetic priors are kept and looked up (regressor.bundle_store): an MLflow "
        "tracking server's URL or a directory for a local store (default: --out)",
    )
    parser.add_argument(
        "--neighbours",
        type=int,
        default=0,
        help="end every text with its k nearest training records of its system, their targets "
        "and differing options (regressor.neighbours), in the prior and the members alike",
    )
    add_number_order(parser)
    parser.add_argument(
        "--cross-fit",
        action="store_true",
        help="with --ensemble K: member i validates on fold i of K of the sample and trains on "
        "the rest, instead of every member holding out the same last fifth",
    )
    parser.add_argument(
        "--steps", type=int, help="a fixed step plan per from-scratch fit instead of --minutes"
    )
    parser.add_argument(
        "--select-by",
        choices=("val_loss", "val_error"),
        default="val_error",
        help="what picks the checkpoint (TrainConfig.select_by): on these few records val "
        "cross-entropy rises as the model memorises digits while the median still improves",
    )
    parser.add_argument(
        "--booleans",
        choices=("digits", "words"),
        default="digits",
        help="ablation: 0/1 options as written, or as on/off with merges kept within a line "
        "(one token per option state)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="sampling temperature of the scored draws (with --rescore: inference-only)",
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="re-sample each member from the best.ckpt a finished run of the same flags left "
        "under --out instead of training it (scratch and synthetic recipes)",
    )
    args = parser.parse_args()
    if args.rescore and args.recipe == "pretrain":
        parser.error("--rescore needs a saved base: from-scratch or synthetic-prior members")
    if args.pretrain_steps is not None and args.recipe != "synthetic":
        parser.error("--pretrain-steps sets the synthetic prior's length (--recipe synthetic)")
    if args.neighbours and args.recipe == "pretrain":
        parser.error(
            "--neighbours: the synthetic prior and from-scratch members read them, not "
            "--recipe pretrain's per-system base"
        )
    if args.prior_seed is not None and args.recipe != "synthetic":
        parser.error("--prior-seed seeds the synthetic prior (--recipe synthetic)")
    if args.booleans == "words" and args.recipe != "scratch":
        parser.error(
            "--booleans words rewrites the system's own records only, not a pretraining recipe's"
        )
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    records = load_records("deepperf", out)
    priority = tuple(load_source_config("deepperf").section_priority)
    budget = load_model_config(args.model).max_input_tokens
    for system in args.systems:
        examples = to_examples(system_records(records, system), priority, budget)
        run_tabular(system, examples, args)
    # one synthetic base for every system: loaded (or pretrained) and reported once
    synthetic = args.recipe == "synthetic" and args.textperf_systems
    prior = synthetic_base(args, out, priority) if synthetic else None
    for system in args.textperf_systems:
        examples = to_examples(system_records(records, system), priority, budget)
        if args.booleans == "words":
            examples = booleans_as_words(examples)
        others = records.filter(pl.col("task") != f"{system}_AllNumeric")
        run_textperf(system, examples, others, args, out, prior)


if __name__ == "__main__":
    main()
