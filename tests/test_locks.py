"""The file locks runs sharing a var dir queue on: one holder at a time, a run that must not
wait is told so, and a run that waits says so on its caller's logger."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from regressor.locks import held, take_lock


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []
        self.logged = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.logged.set()


def test_a_held_lock_refuses_a_run_that_will_not_wait(tmp_path: Path) -> None:
    log = logging.getLogger("tests.locks.refuse")
    with held(tmp_path, "x.lock", "holding it", log), (tmp_path / "x.lock").open("a") as other:
        assert not take_lock(other, False, "trying it", log)
    with (tmp_path / "x.lock").open("a") as other:
        assert take_lock(other, False, "trying it", log)  # freed with its holder


def test_a_waiting_run_says_so_on_the_callers_logger(tmp_path: Path) -> None:
    log, recorder = logging.getLogger("tests.locks.caller"), _Recorder()
    log.addHandler(recorder)
    done = threading.Event()

    def second_run() -> None:
        with held(tmp_path, "x.lock", "writing the warehouse", log):
            done.set()

    try:
        with held(tmp_path, "x.lock", "first", log):
            waiter = threading.Thread(target=second_run)
            waiter.start()
            assert recorder.logged.wait(30)
            assert not done.is_set()  # still queued behind the holder
        waiter.join(30)
        assert done.is_set()
        assert recorder.messages == ["another run is writing the warehouse: waiting for it"]
    finally:
        log.removeHandler(recorder)
