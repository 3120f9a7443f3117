"""Exclusive file locks between runs sharing a var dir: the OS frees one when its holder dies,
however it dies. A leaf module, so that the tracking setup and the pipeline share it."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from logging import Logger
from pathlib import Path
from typing import IO


def take_lock(lock: IO[str], wait: bool, doing: str, log: Logger) -> bool:
    """Lock `lock` exclusively; False when another run holds it and `wait` is off. Waiting, it
    says so first on the caller's `log` (where its users look): another run is `doing` what
    this one is about to."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        if not wait:
            return False
    log.warning("another run is %s: waiting for it", doing)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return True


@contextmanager
def held(locks: Path, name: str, doing: str, log: Logger) -> Iterator[None]:
    """`locks/<name>` held exclusively, waiting (`take_lock`) while another run is `doing` it.
    The empty file stays: removing it would race with a run about to lock it."""
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / name).open("a") as lock:
        take_lock(lock, True, doing, log)
        yield
