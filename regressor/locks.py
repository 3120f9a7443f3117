"""Exclusive file locks between runs sharing a var dir: the OS frees one when its holder dies,
however it dies. A leaf module, so that the tracking setup and the pipeline share it."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from logging import Logger
from pathlib import Path
from typing import IO


def take_lock(lock: IO[str], wait: bool, doing: str, log: Logger, shared: bool = False) -> bool:
    """Lock `lock` exclusively (or `shared` with other shared holders); False when another run
    holds it and `wait` is off. Waiting, it says so first on the caller's `log` (where its
    users look): another run is `doing` what this one is about to, or what excludes it."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(lock, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        if not wait:
            return False
    log.warning("another run is %s: waiting for it", doing)
    fcntl.flock(lock, mode)
    return True


@contextmanager
def held(locks: Path, name: str, doing: str, log: Logger, shared: bool = False) -> Iterator[None]:
    """`locks/<name>` held exclusively (or `shared`), waiting (`take_lock`) while another run
    is `doing` what excludes it. The empty file stays: removing it would race with a run about
    to lock it."""
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / name).open("a") as lock:
        take_lock(lock, True, doing, log, shared)
        yield
