"""One `training.fit` in a process group of its own, for strategies that launch a process per
device (DDP and kin).

Lightning's DDP launcher re-executes the command line once per extra local rank. From the
pipeline's process that would re-run the whole `textperf retrain` (a second Prefect flow run, a
second ingest, a second registered version), and a second `fit` in the same process (an
ensemble's next member, fine-tuning then the from-scratch reference) would re-launch a rank that
starts over. Here the command re-executed is this module, which only fits:

    python -m regressor.fit_worker DIR

`fit_in_worker` writes the call's arguments to DIR, runs the module and loads what global rank 0
wrote back (the fit's result and the fitted weights) into the caller's predictor. Checkpoints
land in the caller's `checkpoint_dir` as in-process, so a killed run resumes either way.

Across nodes (`num_nodes` > 1), the pipeline's machine is node 0, and every other node runs
`join_fits` (`textperf join-fits`) on the same checkpoint directory, shared (NFS and kin): it
runs the module on each hand-off that appears there, as node `NODE_RANK`, so each of the
pipeline's fits spans the nodes while the rest of the pipeline runs once, on node 0.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.environments import LightningEnvironment

import regressor
from regressor.config import TrainConfig
from regressor.predictor import Predictor
from regressor.training import FitResult, fit_here

HANDOFF_PREFIX = "fit-worker-"  # the hand-off directories, inside the checkpoint directory
CALL = "call.pt"  # the arguments of `fit`, pickled by the caller
SPAN = "span.json"  # how many nodes the fit spans, plain JSON, for a joining node to check
RESULT = "result.pt"  # FitResult, weights and metadata, from global rank 0
PROJECT_ROOT = Path(regressor.__file__).resolve().parent.parent
PARENT_PID = "TEXTPERF_FIT_PARENT_PID"  # the process a worker dies with (`_die_with_parent`)


class TrainingWorkerError(RuntimeError):
    """The training process group exited with an error (its output is above, on the console)."""


def fit_in_worker(
    predictor: Predictor,
    train: tuple[Sequence[str], np.ndarray],
    val: tuple[Sequence[str], np.ndarray],
    cfg: TrainConfig,
    checkpoint_dir: Path,
    logger: Logger | bool,
    resume: bool,
) -> FitResult:
    """`training.fit` run by `python -m regressor.fit_worker`; `predictor` ends as it would."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_handoffs(checkpoint_dir)
    with tempfile.TemporaryDirectory(dir=checkpoint_dir, prefix=HANDOFF_PREFIX) as tmp:
        handoff = Path(tmp)
        call = {
            "predictor": predictor,
            "train": train,
            "val": val,
            "cfg": cfg,
            "checkpoint_dir": checkpoint_dir,
            "logger": logger,
            "resume": resume,
        }
        (handoff / SPAN).write_text(json.dumps({"num_nodes": cfg.num_nodes}))
        # Whole or absent: a node joining from another machine may look at any moment.
        torch.save(call, handoff / f"{CALL}.tmp")
        os.replace(handoff / f"{CALL}.tmp", handoff / CALL)
        _run_worker(handoff, cfg)
        back = torch.load(handoff / RESULT, map_location="cpu", weights_only=True)
    predictor.model.load_state_dict(back["weights"])
    predictor.model.eval()
    predictor.metadata.update(back["metadata"])
    return FitResult(**back["result"])


def _remove_stale_handoffs(checkpoint_dir: Path) -> None:
    """A caller killed mid-fit leaves its hand-off (the pickled call, the size of the training
    data) beside the checkpoints it resumes from. A fit owns its checkpoint directory (the
    pipeline holds its lock), so any hand-off there is such a leftover."""
    for stale in checkpoint_dir.glob(f"{HANDOFF_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _worker(handoff: Path, node_rank: int = 0) -> subprocess.CompletedProcess:
    """Run this module on `handoff`, as node `node_rank`, in a child that dies with this
    process."""
    # Run from a source checkout, the workers import the same checkout, whatever the working
    # directory; an installed package (the image) is found on the path as it is.
    checkout = str(PROJECT_ROOT) if (PROJECT_ROOT / "pyproject.toml").is_file() else None
    path = os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "regressor.fit_worker", str(handoff)]
    env = {**os.environ, "PYTHONPATH": path, PARENT_PID: str(os.getpid())}
    if node_rank:  # a joining node's rank, wherever it came from, in Lightning's variable
        env["NODE_RANK"] = str(node_rank)
    return subprocess.run(command, env=env, check=False)


def _run_worker(handoff: Path, cfg: TrainConfig) -> None:
    done = _worker(handoff)
    if done.returncode != 0 or not (handoff / RESULT).is_file():
        raise TrainingWorkerError(
            f"the training processes (strategy {cfg.strategy!r}, devices {cfg.devices}, "
            f"num_nodes {cfg.num_nodes}) exited with code {done.returncode}; their output is "
            "above; checkpoints saved so far are kept for the next run to resume" + _nodes_hint(cfg)
        )


def _nodes_hint(cfg: TrainConfig) -> str:
    """What to check when a fit across nodes fails: most often a node that never joined."""
    if cfg.num_nodes == 1:
        return ""
    return (
        f"; a fit across {cfg.num_nodes} nodes needs `textperf join-fits` running on each other "
        "node (NODE_RANK 1 .. num_nodes-1, the same MASTER_ADDR and MASTER_PORT, this var dir "
        f"mounted); a node missing fails it after {cfg.process_group_timeout_minutes:g} minutes "
        "(process_group_timeout_minutes)"
    )


def _die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies: the pipeline holds the checkpoint
    lock, and a rank training on after a kill would write where the next run resumes (rank 1,
    its rank 0 gone, would wait in the rendezvous for half an hour).

    A parent that died before this ran (say while torch was imported) is caught by its pid,
    which the parent put in the environment: an orphan's parent is another process."""
    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(os.environ.get(PARENT_PID, os.getppid())):
        os._exit(1)
    os.environ[PARENT_PID] = str(os.getpid())  # for the ranks Lightning launches from here


class JoinError(RuntimeError):
    """This machine cannot join fits as another node (no `NODE_RANK` >= 1 to join as)."""


def join_fits(
    checkpoints: Path,
    max_fits: int | None = None,
    until: Path | None = None,
    ready: Path | None = None,
    poll_seconds: float = 1.0,
) -> int:
    """Join, as node `NODE_RANK` (or `SLURM_NODEID`), each fit whose hand-off appears under
    `checkpoints` (the shared checkpoint directory) from now on, one at a time, until
    `max_fits` have run or, between fits, the file `until` exists (None, None: until
    interrupted); returns how many ran. Hand-offs there before the call are a killed caller's
    (its node 0 is gone) and are never joined, so a node 0 started with the others waits for
    the file `ready`, written once this node watches. A fit that fails on this node is
    reported and the next one joined."""
    node_rank = _joining_node_rank()
    seen = set(_handoffs(checkpoints))
    for handoff in sorted(seen):
        print(
            f"node {node_rank}: not joining the fit handed off before this node watched, in "
            f"{handoff.parent} (a killed run's, or one that fails after its process group's "
            "timeout; the fits after it are joined)",
            flush=True,
        )
    if ready is not None:
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.touch()
    print(f"node {node_rank}: waiting for fits under {checkpoints} (Ctrl-C stops)", flush=True)
    joined = 0
    while max_fits is None or joined < max_fits:
        fresh = [h for h in _handoffs(checkpoints) if h not in seen]
        if not fresh and until is not None and until.exists():
            print(f"node {node_rank}: {until} exists: node 0's run has ended", flush=True)
            break
        if not fresh:
            time.sleep(poll_seconds)
            continue
        seen.add(fresh[0])
        joined += _join(fresh[0], node_rank)
    return joined


def _joining_node_rank() -> int:
    """NODE_RANK, Lightning's variable; else, in a SLURM job step, the node's index in it."""
    node_rank = os.environ.get("NODE_RANK") or os.environ.get("SLURM_NODEID", "")
    if not node_rank.isdigit() or int(node_rank) < 1:
        raise JoinError(
            f"NODE_RANK={node_rank!r}: set it to this machine's node rank (1 .. num_nodes-1; "
            "node 0 runs the pipeline), with MASTER_ADDR and MASTER_PORT of node 0"
        )
    return int(node_rank)


def _join(handoff: Path, node_rank: int) -> bool:
    """Run the fit handed off in `handoff` as node `node_rank`; False if it has no such node
    (a one-machine DDP fit: a benchmark's, say)."""
    fit_dir = handoff.parent
    if _span(handoff) <= node_rank:
        print(f"node {node_rank}: the fit in {fit_dir} has no node {node_rank}", flush=True)
        return False
    print(f"node {node_rank}: joining the fit in {fit_dir}", flush=True)
    code = _worker(handoff, node_rank).returncode
    print(f"node {node_rank}: the fit in {fit_dir} ended, exit code {code}", flush=True)
    return True


def _span(handoff: Path) -> int:
    """The number of nodes the fit handed off in `handoff` spans (0 if it is gone)."""
    try:
        return int(json.loads((handoff / SPAN).read_text())["num_nodes"])
    except FileNotFoundError:
        return 0


def _handoffs(checkpoints: Path) -> list[Path]:
    """The hand-off directories under `checkpoints` whose call is written, oldest first."""
    found = []
    for call in checkpoints.glob(f"**/{HANDOFF_PREFIX}*/{CALL}"):
        try:
            found.append((call.stat().st_mtime, call.parent))
        except FileNotFoundError:  # that fit ended and its hand-off went meanwhile
            continue
    return [handoff for _, handoff in sorted(found)]


def main(handoff: Path) -> None:
    _die_with_parent()
    # Objects, not only tensors: the caller wrote them a moment ago into its own hand-off
    # directory, which `TemporaryDirectory` made readable and writable by this user alone.
    call = torch.load(handoff / CALL, map_location="cpu", weights_only=False)
    # The caller's checkpoint directory, as this node mounts it (the hand-off lies inside).
    call["checkpoint_dir"] = handoff.parent
    predictor: Predictor = call["predictor"]
    # This module launches its ranks (or joins as a node): in a SLURM job Lightning would
    # otherwise read SLURM's variables as ranks SLURM started, and train on one process.
    result, global_zero = fit_here(**call, environment=LightningEnvironment())
    if global_zero:  # every rank ends with the same weights; one writes them
        back = {  # tensors and plain values, which the caller loads `weights_only`
            "result": dataclasses.asdict(result),
            "weights": predictor.model.state_dict(),
            # as the bundle stores it: JSON (torch's version string is a class of its own)
            "metadata": json.loads(json.dumps(predictor.metadata)),
        }
        torch.save(back, handoff / f"{RESULT}.tmp")
        os.replace(handoff / f"{RESULT}.tmp", handoff / RESULT)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
