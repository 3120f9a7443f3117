"""The demo fleet: cells with YAML configs, daily text logs and a daily efficiency target.

The target mixes three kinds of signal so that neither half of the input suffices alone:

* config only: bin-packing strategy, platform age, preemption policy, CPU overcommit;
* logs only: the day's load (utilisation samples), machine failures, preemption storms, incidents;
* interactions: overcommit costs more on high-load days; a storm costs more under some policies.

Every log-side driver is visible through compact summaries (template counts, field means), so a
model that reads `regressor.sources.logs` summaries can learn it. Same seed, same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from regressor.config import FleetSimConfig

# name: (cores, mem_gb, age); age 1 = oldest; old machines fail more and run less efficiently.
PLATFORMS: dict[str, tuple[int, int, float]] = {
    "haswell-2s": (36, 256, 1.0),
    "skylake-2s": (56, 384, 0.6),
    "icelake-2s": (64, 512, 0.25),
    "sapphire-2s": (96, 1024, 0.0),
}
BIN_PACKING = {"best_fit": 0.3, "first_fit": 0.0, "worst_fit": -0.3}
# policy: (base effect, cost of a preemption storm, share of contention resolved by preemption)
PREEMPTION = {"none": (-0.2, 0.35, 0.2), "priority": (0.1, 0.9, 1.0), "cost_aware": (0.2, 0.5, 0.6)}
BANDS = ("prod", "batch", "best_effort")
KERNELS = ("5.4.0-150-generic", "5.15.0-91-generic", "6.1.0-18-amd64", "6.8.0-31-generic")
REGIONS = ("us-east", "us-west", "eu-west", "eu-north", "ap-south")
FAIL_REASONS = ("kernel_panic", "disk_error", "ecc_error", "nic_down")
JOB_ERRORS = ("oom", "crash", "timeout")
CELLS_PER_LETTER = 16
Event = tuple[int, str, str]  # (second of the day, level, message)


@dataclass(frozen=True)
class FleetSummary:
    n_cells: int
    n_days: int
    n_files: int
    n_bytes: int  # total size of the fleet's files
    files_written: int  # files whose bytes changed (0 on an identical re-run)


@dataclass(frozen=True)
class Cell:
    """A cell's config plus the hidden per-cell quantities the simulation derives from it."""

    name: str
    config: dict[str, Any]
    base_load: float  # not in the config: only the utilisation samples reveal it
    old_share: float
    overcommit: float
    bin_packing: str
    policy: str
    hosts: int


@dataclass(frozen=True)
class Days:
    """One cell's daily drivers, arrays of length n_days."""

    load: np.ndarray
    failures: np.ndarray
    storm: np.ndarray
    preemptions: np.ndarray
    incidents: np.ndarray
    efficiency: np.ndarray


def cell_name(i: int, n_cells: int) -> str:
    """`cell-a01`..`cell-a16`, `cell-b01`..; more letters for huge fleets, so names sort."""
    width = 1
    while 26**width * CELLS_PER_LETTER < n_cells:
        width += 1
    group, letters = i // CELLS_PER_LETTER, ""
    for _ in range(width):
        group, digit = divmod(group, 26)
        letters = chr(ord("a") + digit) + letters
    return f"cell-{letters}{i % CELLS_PER_LETTER + 1:02d}"


def make_cell(i: int, n_cells: int, seed: int) -> Cell:
    rng = np.random.default_rng([seed, 0, i])
    name = cell_name(i, n_cells)
    kinds = rng.choice(len(PLATFORMS), size=int(rng.integers(1, 4)), replace=False)
    names = [list(PLATFORMS)[k] for k in sorted(kinds)]
    counts = [int(rng.integers(4, 40)) * 10 for _ in names]
    machines = [
        {"platform": p, "cores": PLATFORMS[p][0], "mem_gb": PLATFORMS[p][1], "count": c}
        for p, c in zip(names, counts, strict=True)
    ]
    old_share = sum(PLATFORMS[p][2] * c for p, c in zip(names, counts, strict=True)) / sum(counts)
    overcommit = round(float(rng.uniform(1.0, 1.6)), 2)
    bin_packing = str(rng.choice(list(BIN_PACKING)))
    policy = str(rng.choice(list(PREEMPTION)))
    mix = rng.dirichlet([3.0, 4.0, 2.0])
    cores = sum(m["cores"] * m["count"] for m in machines)
    config = {
        "cell": name,
        "region": str(rng.choice(REGIONS)),
        "kernel": str(rng.choice(KERNELS)),
        "scheduler": {
            "version": f"3.{int(rng.integers(8, 15))}.{int(rng.integers(0, 6))}",
            "bin_packing": bin_packing,
            "overcommit": {"cpu": overcommit, "memory": round(float(rng.uniform(1.0, 1.2)), 2)},
            "preemption": {"policy": policy, "grace_period_s": int(rng.choice([0, 10, 30, 60]))},
            "quota": {
                "prod_cores": int(cores * rng.uniform(0.3, 0.5)),
                "batch_cores": int(cores * rng.uniform(0.2, 0.4)),
            },
            "priority_bands": {"prod": 200, "batch": 100, "best_effort": 0},
        },
        "machines": machines,
        "job_mix": {b: round(float(s), 2) for b, s in zip(BANDS, mix, strict=True)},
    }
    return Cell(
        name=name,
        config=config,
        base_load=float(rng.uniform(0.4, 0.75)),
        old_share=old_share,
        overcommit=overcommit,
        bin_packing=bin_packing,
        policy=policy,
        hosts=sum(counts),
    )


def simulate_days(
    cell: Cell, n_days: int, start: date, noise: float, rng: np.random.Generator
) -> Days:
    """Daily drivers and the efficiency target of one cell (vectorised over days)."""
    weekday = np.array([(start + timedelta(d)).weekday() for d in range(n_days)])
    shock = np.zeros(n_days)
    eps = rng.normal(0.0, 0.08, n_days)
    for d in range(n_days):  # AR(1): busy days cluster
        shock[d] = (0.6 * shock[d - 1] if d else 0.0) + eps[d]
    surge = rng.random(n_days) < 0.08
    load = cell.base_load + shock + 0.18 * surge - 0.08 * (weekday >= 5)
    load = np.clip(load, 0.15, 0.97)
    bad_hw = rng.random(n_days) < 0.07
    failures = rng.poisson((0.5 + 2.5 * cell.old_share) * np.where(bad_hw, 4.0, 1.0))
    storm = rng.random(n_days) < 0.04 + 0.3 * np.maximum(load - 0.7, 0.0)
    base_cost, storm_cost, preempt_share = PREEMPTION[cell.policy]
    contention = 1.0 + 8.0 * (cell.overcommit - 1.0) * load
    preemptions = rng.poisson(preempt_share * (contention + storm * 25.0))
    incidents = rng.poisson(0.3 + 0.1 * failures)
    hot = np.maximum(load - 0.6, 0.0)
    z = (
        1.0
        + BIN_PACKING[cell.bin_packing]
        + base_cost
        - 1.0 * cell.old_share
        - 0.8 * (cell.overcommit - 1.0)
        + 1.5 * (load - 0.55)
        - 6.0 * np.maximum(load - 0.8, 0.0)
        - 5.0 * (cell.overcommit - 1.0) * hot  # interaction: overcommit x load
        - 0.18 * failures
        - storm_cost * storm  # interaction: storm x policy
        - 0.25 * incidents
    )
    eff = 1.0 / (1.0 + np.exp(-z)) + rng.normal(0.0, noise, n_days)
    return Days(load, failures, storm, preemptions, incidents, np.clip(eff, 0.01, 0.99))


def hms(seconds: int) -> str:
    h, rest = divmod(int(seconds), 3600)
    return f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"


def host(cell: Cell, rng: np.random.Generator) -> str:
    return f"m-{cell.name.removeprefix('cell-')}-{int(rng.integers(cell.hosts)):04d}"


def day_lines(
    cell: Cell, days: Days, d: int, cfg: FleetSimConfig, rng: np.random.Generator
) -> list[Event]:
    """One day's events, unsorted."""
    load = float(days.load[d])
    events: list[Event] = []
    events += utilisation(cell, load, cfg.samples_per_day, rng)
    n_jobs = max(1, int(rng.poisson(cfg.jobs_per_day)))
    # The day prefix guarantees a digit, so every id masks the same way.
    job_ids = [f"j{d:03d}-{v:05x}" for v in rng.integers(0, 1 << 20, n_jobs)]
    events += jobs(cell, load, job_ids, int(days.failures[d]), rng)
    for _ in range(int(days.preemptions[d])):
        t, victim, h = int(rng.integers(86400)), rng.choice(job_ids), host(cell, rng)
        events.append((t, "WARN", f"sched: job {victim} preempted on {h} by band=prod"))
    for _ in range(int(days.failures[d])):
        events += machine_failure(cell, job_ids, rng)
    for k in range(int(days.incidents[d])):
        t = int(rng.integers(86400))
        events.append((t, "ERROR", f"monitor: incident INC-{d:03d}{k} opened severity=major"))
    for h in range(0, 24, 6):  # routine noise a template miner must learn to ignore
        t = h * 3600 + int(rng.integers(600))
        events.append((t, "DEBUG", f"master: checkpoint written to /var/lib/sched/ckpt/{t:05d}"))
    return events


def utilisation(cell: Cell, load: float, n: int, rng: np.random.Generator) -> list[Event]:
    t = (np.arange(n) * 86400 // n + rng.integers(0, max(1, 86400 // n), n)).astype(int)
    diurnal = 1.0 + 0.2 * np.sin(2 * math.pi * (t / 86400.0 - 0.3))
    cpu = np.clip(load * diurnal + rng.normal(0, 0.03, n), 0.01, 1.0)
    mem = np.clip(0.25 + 0.6 * load + rng.normal(0, 0.03, n), 0.01, 1.0)
    queue = rng.poisson(2.0 + 80.0 * np.maximum(cpu - 0.6, 0.0) * cell.overcommit)
    return [
        (int(t[k]), "INFO", f"monitor: util cpu={cpu[k]:.3f} mem={mem[k]:.3f} queue={queue[k]}")
        for k in range(n)
    ]


def jobs(
    cell: Cell, load: float, job_ids: list[str], failures: int, rng: np.random.Generator
) -> list[Event]:
    n = len(job_ids)
    mix = np.array([cell.config["job_mix"][b] for b in BANDS])
    band = rng.choice(len(BANDS), n, p=mix / mix.sum())
    submit = rng.integers(0, 80000, n)
    wait = rng.exponential(5.0 + 600.0 * max(load - 0.6, 0.0) * cell.overcommit, n).astype(int)
    duration = rng.lognormal(7.0, 0.8, n).astype(int)
    cores = rng.lognormal(0.8, 0.6, n)
    mem = cores * rng.uniform(2.0, 6.0, n)
    failed = rng.random(n) < 0.02 + 0.01 * failures
    events: list[Event] = []
    for k, jid in enumerate(job_ids):
        user = int(rng.integers(1, 200))
        events.append(
            (
                int(submit[k]),
                "INFO",
                f"sched: job {jid} submitted band={BANDS[band[k]]} user=u{user:03d}",
            )
        )
        end = min(int(submit[k] + wait[k] + duration[k]), 86399)
        if failed[k]:
            reason = JOB_ERRORS[int(rng.integers(len(JOB_ERRORS)))]
            events.append(
                (end, "ERROR", f"sched: job {jid} failed reason={reason} on {host(cell, rng)}")
            )
        else:
            profile = (
                f"cores={cores[k]:.2f} mem_gb={mem[k]:.1f} dur_s={duration[k]} wait_s={wait[k]}"
            )
            events.append((end, "INFO", f"sched: job {jid} finished {profile}"))
    return events


def machine_failure(cell: Cell, job_ids: list[str], rng: np.random.Generator) -> list[Event]:
    t = int(rng.integers(0, 80000))
    h = host(cell, rng)
    down = int(rng.integers(300, 5000))
    reason = FAIL_REASONS[int(rng.integers(len(FAIL_REASONS)))]
    events = [(t, "ERROR", f"borglet: machine {h} down reason={reason}")]
    for _ in range(int(rng.integers(1, 4))):
        events.append((t + 1, "WARN", f"sched: job {rng.choice(job_ids)} evicted from {h}"))
    events.append((min(t + down, 86399), "INFO", f"borglet: machine {h} up"))
    return events


def render_log(day: date, events: list[Event]) -> bytes:
    prefix = day.isoformat() + "T"
    events.sort(key=lambda e: e[0])  # stable: same-second events keep generation order
    return "".join(f"{prefix}{hms(t)} {lvl} {msg}\n" for t, lvl, msg in events).encode()


def render_config(cell: Cell) -> bytes:
    header = f"# scheduler config for {cell.name}\n"
    return (header + yaml.safe_dump(cell.config, sort_keys=False)).encode()


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write only when the bytes differ, so mtimes (and caches keyed on them) stay put."""
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return True


# Written beside a generated fleet (no source glob lists it): a folder without it holds files
# the generator did not write, which `--generate-fleet` must not overwrite (`is_generated`).
GENERATED_MARK = ".generated-demo-fleet"


def is_generated(out_dir: Path) -> bool:
    return (out_dir / GENERATED_MARK).is_file()


def _remove_stale(out_dir: Path, kept: set[Path]) -> None:
    """Remove the configs and logs an earlier, larger or shifted generation left in this (marked)
    folder: the next ingest read them as part of this fleet (3 cells of 5 days regenerated as 2
    of 3 left 20 files where the summary said 9)."""
    for kind in ("cells", "logs"):
        for path in sorted((out_dir / kind).rglob("*"), reverse=True):  # files before folders
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            elif path not in kept:
                path.unlink()


def generate_fleet(out_dir: Path, cfg: FleetSimConfig) -> FleetSummary:
    """Write `cells/<cell>.yaml`, `logs/<cell>/<day>.log` and `targets.csv` under `out_dir`,
    and `GENERATED_MARK`; remove the configs and logs of an earlier generation it no longer
    writes (`_remove_stale`)."""
    write_if_changed(out_dir / GENERATED_MARK, b"written by textperf's demo fleet generator\n")
    start = date.fromisoformat(cfg.start_date)
    dates = [start + timedelta(d) for d in range(cfg.n_days)]
    written = n_bytes = 0
    kept: set[Path] = set()
    target_rows = ["cell,day,efficiency\n"]
    for i in range(cfg.n_cells):
        cell = make_cell(i, cfg.n_cells, cfg.seed)
        days = simulate_days(
            cell, cfg.n_days, start, cfg.noise, np.random.default_rng([cfg.seed, 1, i])
        )
        files = {out_dir / "cells" / f"{cell.name}.yaml": render_config(cell)}
        log_rng = np.random.default_rng([cfg.seed, 2, i])
        for d, day in enumerate(dates):
            events = day_lines(cell, days, d, cfg, log_rng)
            files[out_dir / "logs" / cell.name / f"{day.isoformat()}.log"] = render_log(day, events)
            target_rows.append(f"{cell.name},{day.isoformat()},{days.efficiency[d]:.6f}\n")
        for path, data in files.items():
            written += write_if_changed(path, data)
            n_bytes += len(data)
        kept |= files.keys()
    targets = "".join(target_rows).encode()
    written += write_if_changed(out_dir / "targets.csv", targets)
    _remove_stale(out_dir, kept)
    n_files = cfg.n_cells * (cfg.n_days + 1) + 1
    return FleetSummary(cfg.n_cells, cfg.n_days, n_files, n_bytes + len(targets), written)
