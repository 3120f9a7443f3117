"""Synthetic configurable systems: a prior to pretrain on before a real system's few records.

A system is a set of options (0/1 flags, one-hot groups such as `ref_1/ref_5/ref_9`, a few
numeric settings) and a performance-influence model in the style of SPL Conqueror's: log
performance = a base + each option's effect (sparse: a few large, most small) + some pairwise
interactions + noise. On 30-100 records of a real system a model from scratch memorises the
configurations before it learns what the options do; pretraining on many such systems is meant
to teach the reading (bind a value to its option, add the effects up) beforehand, so that
fine-tuning has only the new options' effects to learn. Names are built from a generic
vocabulary, not from any dataset's options. Same seed, same records.

Two kinds of prior (`kind`): `independent` draws every option's effect afresh, so each system's
effects must be memorised from its own records (a model of 0.3M parameters learns little more
than each system's level that way); `words` gives every vocabulary word one effect shared by all
systems and an option the sum of its words' effects plus a small deviation of its own, so the
reading itself is what there is to learn. Measured (README "Accuracy"): `mini` learns the reading
from 20 `words` systems of 2,000 records in ~26,000 steps, not from hundreds of systems of ~100.
`numeric` is `words` with numeric settings as real mixed systems have them (Dune: cells 50-55,
pre- and post-smoothing steps 0-6): ~35% of options rather than ~10%, narrow grids as well as
wide, effects of several shapes (log, linear, diminishing returns, a bowl) rather than log only,
and interactions that grow with a setting's value rather than switch on with it (Dune is slow
when pre or post is 0). Measured on Dune at 375 (README "Accuracy"): alone no better than
`words` (MRE 7.50 vs 7.26), pooled with a `words` run 7.11. `scaled` is `words` with each
system's effects times a factor of its own: real systems' log performance spreads from ~0.05
standard deviations (LLVM, SQL) to ~1.5 (BDBC), `words` systems' from 0.3 to 1.0, `scaled`
systems' from 0.02 to 1.4. Measured on LLVM at 3n (README "Accuracy"): alone worse than
`words` (MRE 3.72 vs 3.43 over six repetitions), pooled with a `words` run 3.35.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

# Generic words that configuration options are made of (none taken from a dataset's columns).
WORDS = (
    "async", "auto", "batch", "block", "buffer", "cache", "check", "chunk", "commit", "compact",
    "compress", "core", "cpu", "debug", "deep", "delay", "direct", "disk", "dump", "eager",
    "enable", "fast", "fetch", "file", "filter", "flush", "force", "frame", "gc", "hash", "heap",
    "hint", "index", "inline", "io", "jit", "journal", "keep", "lazy", "level", "limit", "local",
    "lock", "log", "loop", "map", "max", "mem", "merge", "min", "mode", "net", "no", "opt",
    "page", "parallel", "pass", "pool", "pre", "post", "prefetch", "queue", "read", "reuse",
    "scan", "shared", "size", "skip", "slot", "sort", "spill", "split", "stat", "step", "store",
    "stream", "sync", "table", "temp", "thread", "trace", "tree", "unroll", "use", "vector",
    "verify", "wait", "write", "zero",
)  # fmt: skip
NUMERIC_GRIDS = (
    (1, 2, 4, 8, 16, 32, 64),
    (8, 16, 32, 64, 128, 256),
    (0, 1, 2, 3, 4, 5),
    (10, 20, 40, 80),
    (2, 3, 4, 5, 6, 7, 8),
)
# The `numeric` prior also draws narrow and small-integer grids, as mixed real systems have.
NUMERIC_KIND_GRIDS = (
    *NUMERIC_GRIDS,
    (50, 51, 52, 53, 54, 55),
    (0, 1, 2, 3, 4, 5, 6),
    (1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
    (100, 200, 300, 400, 500),
)
SHAPES = ("log", "linear", "diminishing", "bowl")
PRIOR_KINDS = ("independent", "words", "numeric", "scaled")
# The `scaled` prior's range of a system's effect scale (log-uniform): real systems' log
# performance spreads from 0.05 (SQL, LLVM) to 1.5 (BDBC) standard deviations, `words`' 0.3-1.0.
EFFECT_SCALES = (0.03, 2.0)
COLUMNS = ("record_id", "source", "task", "period", "config_json", "logs_json", "target")


@dataclass(frozen=True)
class Option:
    """One option column: its values, and its effect on log performance at each value."""

    name: str
    values: tuple[float, ...]
    effects: tuple[float, ...]  # same length as values
    group: int  # options of one one-hot group share a group id (exactly one of them is 1)
    # How strongly each value takes part in interactions; empty: 0 at the first value, else 1.
    strengths: tuple[float, ...] = ()

    def interaction_strengths(self) -> np.ndarray:
        """[len(values)] factor of this option in each interaction it is part of."""
        if self.strengths:
            return np.array(self.strengths)
        return (np.arange(len(self.values)) > 0).astype(float)


@dataclass(frozen=True)
class SyntheticSystem:
    task: str
    options: tuple[Option, ...]
    base: float  # log performance with every effect at zero
    interactions: tuple[tuple[int, int, float], ...]  # (option i, option j, effect when both on)
    noise: float  # standard deviation of log performance around the model


def option_name(rng: np.random.Generator, taken: set[str]) -> str:
    """A fresh name from 1-3 generic words, in one of the styles real systems use."""
    while True:
        words = list(rng.choice(WORDS, size=rng.integers(1, 4), replace=False))
        style = rng.integers(3)
        if style == 0:
            name = "_".join(words)
        elif style == 1:
            name = "".join(w.capitalize() for w in words)
        else:
            name = words[0] + "".join(w.capitalize() for w in words[1:])
        if name not in taken:
            taken.add(name)
            return name


def flag_effect(rng: np.random.Generator) -> float:
    """Sparse effects: about one option in four matters much, the rest a little."""
    return float(rng.normal(0, 0.4) if rng.random() < 0.25 else rng.normal(0, 0.03))


def word_effects(rng: np.random.Generator) -> dict[str, float]:
    """The `words` prior: one sparse effect per vocabulary word, shared by every system."""
    return {word: flag_effect(rng) for word in WORDS}


def named_effect(name: str, words: dict[str, float], rng: np.random.Generator) -> float:
    """An option's effect under the `words` prior: its words' effects plus its own deviation."""
    parts = re.findall(r"[A-Z]?[a-z]+", name)
    return sum(words[p.lower()] for p in parts) + float(rng.normal(0, 0.05))


def shape_curve(grid: tuple[int, ...], shape: str, rng: np.random.Generator) -> np.ndarray:
    """[len(grid)] a shape of effect over a numeric setting's values, scaled to [0, 1]."""
    x = np.array(grid, dtype=float)
    if shape == "log":
        curve = np.log1p(x)
    elif shape == "linear":
        curve = x
    elif shape == "diminishing":  # large steps first, then little: smoothing steps 0, 1, 2, ...
        curve = -1.0 / (1.0 + x - x.min())
    else:  # a bowl with its bottom somewhere inside the range
        position = (x - x.min()) / (x.max() - x.min())
        curve = (position - rng.uniform(0.2, 0.8)) ** 2
    return (curve - curve.min()) / (curve.max() - curve.min())


def numeric_option(rng: np.random.Generator, taken: set[str], group: int) -> Option:
    """A numeric setting of the `numeric` prior: a shaped effect, and interactions that grow
    with the effect's curve (or its reverse: strongest where the setting is smallest)."""
    grid = NUMERIC_KIND_GRIDS[rng.integers(len(NUMERIC_KIND_GRIDS))]
    curve = shape_curve(grid, SHAPES[rng.integers(len(SHAPES))], rng)
    effects = tuple(float(v) for v in rng.normal(0, 0.5) * curve)
    strengths = tuple(float(v) for v in (curve if rng.random() < 0.5 else 1.0 - curve))
    values = tuple(map(float, grid))
    return Option(option_name(rng, taken), values, effects, group, strengths)


def system_options(
    rng: np.random.Generator,
    n_options: int,
    words: dict[str, float] | None,
    numeric_share: float = 0.0,
) -> list[Option]:
    """`numeric_share` > 0 (the `numeric` prior): that share of draws are `numeric_option`s."""
    taken: set[str] = set()
    options: list[Option] = []
    group = 0
    while len(options) < n_options:
        kind = rng.random()
        if kind < numeric_share:
            options.append(numeric_option(rng, taken, group))
        elif kind < 0.15 + numeric_share:  # a one-hot group: `ref_1`, `ref_5`, `ref_9`
            stem = option_name(rng, taken)
            levels = sorted(rng.choice(np.arange(1, 65), size=rng.integers(2, 5), replace=False))
            for level in levels:
                taken.add(f"{stem}_{level}")
                effect = float(rng.normal(0, 0.3))
                options.append(Option(f"{stem}_{level}", (0.0, 1.0), (0.0, effect), group))
        elif kind < 0.25 and not numeric_share:  # numeric: its effect grows with log(value)
            grid = NUMERIC_GRIDS[rng.integers(len(NUMERIC_GRIDS))]
            slope = float(rng.normal(0, 0.5))
            effects = tuple(float(v) for v in slope * shape_curve(grid, "log", rng))
            options.append(Option(option_name(rng, taken), tuple(map(float, grid)), effects, group))
        elif words is None:  # effect, then name: the draw order the README's runs used
            effect = flag_effect(rng)
            options.append(Option(option_name(rng, taken), (0.0, 1.0), (0.0, effect), group))
        else:
            name = option_name(rng, taken)
            options.append(Option(name, (0.0, 1.0), (0.0, named_effect(name, words, rng)), group))
        group += 1
    return options


def sample_system(
    rng: np.random.Generator,
    index: int,
    words: dict[str, float] | None = None,
    numeric_share: float = 0.0,
    scaled_effects: bool = False,
) -> SyntheticSystem:
    """System `index`; its flags' effects from `words` (the `words` prior) or drawn afresh;
    `scaled_effects` (the `scaled` prior): all of them times a factor of the system's own."""
    n_options = int(rng.integers(6, 41))
    options = system_options(rng, n_options, words, numeric_share)
    pairs = rng.poisson(len(options) / 4)
    interactions = tuple(
        (int(i), int(j), float(rng.normal(0, 0.25)))
        for i, j in (rng.choice(len(options), size=2, replace=False) for _ in range(pairs))
    )
    if numeric_share:
        interactions += numeric_pairs(rng, options)
    stem = "".join(w.capitalize() for w in rng.choice(WORDS, size=2, replace=False))
    system = SyntheticSystem(
        task=f"{stem}{index}_AllNumeric",
        options=tuple(options),
        base=float(rng.uniform(np.log(0.3), np.log(30000))),
        interactions=interactions,
        noise=float(rng.uniform(0.002, 0.03)),
    )
    return scaled(system, rng) if scaled_effects else system


def scaled(system: SyntheticSystem, rng: np.random.Generator) -> SyntheticSystem:
    """The `scaled` prior: every effect and interaction of `system` times one factor drawn
    log-uniformly in EFFECT_SCALES, so that some systems are as flat as LLVM and some as steep
    as BDBC (drawn last, so the other kinds' draws stay as they were)."""
    factor = float(np.exp(rng.uniform(*np.log(EFFECT_SCALES))))
    options = tuple(
        replace(o, effects=tuple(e * factor for e in o.effects)) for o in system.options
    )
    interactions = tuple((i, j, effect * factor) for i, j, effect in system.interactions)
    return replace(system, options=options, interactions=interactions)


def numeric_pairs(
    rng: np.random.Generator, options: list[Option]
) -> tuple[tuple[int, int, float], ...]:
    """A few interactions between two numeric settings (Dune's pre x post), beside the pairs
    drawn among all options, which seldom land on two numeric ones."""
    numeric = [k for k, o in enumerate(options) if len(o.values) > 2]
    if len(numeric) < 2:
        return ()
    return tuple(
        (int(i), int(j), float(rng.normal(0, 0.4)))
        for i, j in (rng.choice(numeric, size=2, replace=False) for _ in range(rng.poisson(1.0)))
    )


def sample_levels(rng: np.random.Generator, system: SyntheticSystem, n: int) -> np.ndarray:
    """[n, n_options] indices into each option's values; one-hot groups get exactly one 1."""
    options = system.options
    levels = np.zeros((n, len(options)), dtype=int)
    for group in sorted({o.group for o in options}):
        members = [k for k, o in enumerate(options) if o.group == group]
        if len(members) > 1:
            chosen = rng.integers(len(members), size=n)
            levels[np.arange(n), np.array(members)[chosen]] = 1
        else:
            k = members[0]
            if len(options[k].values) == 2:  # a flag, on with its own probability
                levels[:, k] = rng.random(n) < rng.uniform(0.2, 0.8)
            else:
                levels[:, k] = rng.integers(len(options[k].values), size=n)
    return levels


def performance(
    rng: np.random.Generator, system: SyntheticSystem, levels: np.ndarray
) -> np.ndarray:
    """[n] performance values of the configurations `levels` ([n, n_options])."""
    effects = np.array(
        [[o.effects[v] for o, v in zip(system.options, row, strict=True)] for row in levels]
    )
    log_y = system.base + effects.sum(axis=1)
    strengths = [o.interaction_strengths() for o in system.options]
    for i, j, effect in system.interactions:
        log_y += effect * strengths[i][levels[:, i]] * strengths[j][levels[:, j]]
    return np.exp(log_y + rng.normal(0, system.noise, size=len(levels)))


def system_records(rng: np.random.Generator, system: SyntheticSystem, n: int) -> list[dict]:
    levels = np.unique(sample_levels(rng, system, n), axis=0)  # distinct configurations
    targets = performance(rng, system, levels)
    rows = []
    for r, (row, target) in enumerate(zip(levels, targets, strict=True)):
        config = {
            o.name: int(o.values[v]) if float(o.values[v]).is_integer() else o.values[v]
            for o, v in zip(system.options, row, strict=True)
        }
        rows.append(
            {
                "record_id": f"configprior/{system.task}:{r}",
                "source": "configprior",
                "task": system.task,
                "period": None,
                "config_json": json.dumps(config),
                "logs_json": "{}",
                "target": float(target),
            }
        )
    return rows


def prior_records(
    systems: int, records_per_system: int, seed: int = 0, kind: str = "independent"
) -> pl.DataFrame:
    """`systems` synthetic systems with up to `records_per_system` distinct configurations each,
    in the warehouse's `records` columns (so `to_examples` serialises them like real ones)."""
    if kind not in PRIOR_KINDS:
        raise ValueError(f"prior kind {kind!r}: expected one of {PRIOR_KINDS}")
    rng = np.random.default_rng(seed)
    words = word_effects(rng) if kind != "independent" else None  # every later kind builds on it
    numeric_share = 0.35 if kind == "numeric" else 0.0
    rows: list[dict] = []
    for index in range(systems):
        system = sample_system(rng, index, words, numeric_share, kind == "scaled")
        rows += system_records(rng, system, records_per_system)
    schema = dict.fromkeys(COLUMNS, pl.Utf8) | {"target": pl.Float64}
    return pl.DataFrame(rows, schema=schema)
