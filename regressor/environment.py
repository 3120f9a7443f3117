"""What decides a trained model's weights to the bit besides its data, configs and seed, which
arithmetic this CPU runs fast, and which rank of a distributed launch this process is."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

LIBRARY_ROOT = Path(__file__).parent  # regressor/
SQL_ROOT = LIBRARY_ROOT.parent / "sql"  # beside it (`warehouse.SQL_DIR`)

# `Predictor.metadata` key: the `numeric_environment` its weights were last trained in
TRAINED_WITH = "trained_with"


def has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Without either, oneDNN
    emulates bf16 and it is the slow path: on an AVX2-only EPYC a 512x512 bf16 matmul ran at
    1.2 GFLOP/s against 84 for fp32, and a `mini` training step took 3.4 s against 1.4 s."""
    # torch's own probes (private; a torch without them is taken to lack the hardware)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def fast_autocast() -> torch.autocast:
    """bf16 autocast where the CPU has bf16 in hardware, a no-op elsewhere: the arithmetic that
    sampling runs in, and that `auto` training picks (`resolve_precision`)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=has_fast_bf16())


def resolve_precision(precision: str, fast_bf16: bool | None = None) -> str:
    """The Lightning precision to train with: `auto` is bf16-mixed where the CPU has bf16 in
    hardware (~4x fp32's speed there), else 32-true; any other value is taken as given."""
    if precision != "auto":
        return precision
    native = has_fast_bf16() if fast_bf16 is None else fast_bf16
    return "bf16-mixed" if native else "32-true"


def numeric_environment() -> dict[str, str]:
    """The torch build, its intra-op thread count, the CPU instruction set it picks kernels for
    and whether bf16 runs in hardware (what `auto` precision trains and samples in). The same
    seed, data and configs reproduce the weights bit for bit only where these match too: a
    matmul split over two threads sums in another order than over one, and the weights of a
    one-thread and a two-thread pretraining differ after 200 steps (README, "Accuracy")."""
    return {
        "torch_version": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_in_hardware": str(has_fast_bf16()),
    }


def source_digest(root: Path, sql_dir: Path | None = None) -> str:
    """sha256 of the Python source under `root` (`**/*.py`) and, with `sql_dir`, of the SQL
    under it (`**/*.sql`), as they are on disk now."""
    files = [(str(p.relative_to(root)), p) for p in root.rglob("*.py")]
    if sql_dir is not None:
        files += [(f"sql/{p.relative_to(sql_dir)}", p) for p in sql_dir.rglob("*.sql")]
    digest = hashlib.sha256()
    for label, path in sorted(files):
        name, body = label.encode(), path.read_bytes()
        digest.update(b"%d:%s%d:" % (len(name), name, len(body)) + body)
    return digest.hexdigest()[:16]


# Read when the library is imported: the code this process runs. Read at each call, a checkout
# updated under a long-lived worker (a `git pull` mid-run) changed a run's keys between a task
# and its retry, which then missed the version the first attempt registered and made another.
_LOADED_CODE_DIGEST = source_digest(LIBRARY_ROOT, SQL_ROOT)


def code_digest() -> str:
    """sha256 of the library's source (`regressor/**/*.py`) and its SQL (`sql/**/*.sql`: the
    records query's order is the order training visits them in) as this process imported it,
    the code that trains, calibrates and evaluates. Unlike the git commit it exists in an image
    built without `.git`, and commits that change no code (docs, benchmarks) leave it alone."""
    return _LOADED_CODE_DIGEST


# Set in every process a distributed launcher (torchrun, Lightning's DDP launcher) starts.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def launched_rank() -> str | None:
    """How this process was started as one rank of a distributed launch (e.g. "LOCAL_RANK=1"),
    None when it was not: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE on every rank, Lightning's
    launcher LOCAL_RANK on the ranks it re-executes."""
    found = [f"{name}={os.environ[name]}" for name in LAUNCHER_VARIABLES if os.environ.get(name)]
    return ", ".join(found) or None
