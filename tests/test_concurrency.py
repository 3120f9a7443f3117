"""Concurrency: two retrains at once on one warehouse and one registry, and many parallel
`predict` calls on one loaded pyfunc.

Both retrains (e.g. the nightly run and an ad-hoc one) finish: DuckDB's one-writer lock makes
the second ingest wait. On the same snapshot, the checkpoint directory lock makes the second
training wait for the first and report its version; forced, it gets a private directory and
registers its own. Parallel predictions equal sequential ones.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import torch
from conftest_data import register_tiny_version
from mlflow import MlflowClient
from test_reliability_registry import register_champion
from test_reliability_training import child_env, local_paths, prepare, start_child, tiny_app

from regressor import pipeline, registry
from regressor.config import ResolvedPaths, load_source_config
from regressor.tracking import configure_mlflow
from regressor.warehouse import Warehouse


def child_retrain(var: str, run_id: str, force: bool) -> None:
    """One retrain's steps after the fleet exists: ingest, dataset, train, register, gate."""
    torch.set_num_threads(1)
    app = tiny_app(Path(var))
    paths = local_paths(app)
    source = load_source_config(app.source)
    pipeline.ingest(paths, source, run_id)
    data = pipeline.load_dataset(paths, app, source)
    outcome = pipeline.train_and_register(app, paths, data, force=force)
    print(f"registered {outcome.version} reused={outcome.reused}", flush=True)


def retrain_twice_at_once(var: Path, force: bool) -> tuple[list[tuple[int, bool]], list[str]]:
    """Run two `child_retrain`s side by side; each one's (version, reused), and their output."""
    assert child_env()["OMP_NUM_THREADS"] == "1"
    procs = [
        start_child(
            "from test_concurrency import child_retrain\n"
            f"        child_retrain({str(var)!r}, {name!r}, {force!r})"
        )
        for name in ("nightly", "ad-hoc")
    ]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    results = [out.split("registered ")[-1].split() for out in outputs]
    return sorted((int(version), reused == "reused=True") for version, reused in results), outputs


def _records(paths: ResolvedPaths) -> int:
    with Warehouse(paths.warehouse, read_only=True) as wh:
        return wh.query("records").height


def _runs(paths: ResolvedPaths) -> list[str]:
    client = MlflowClient(tracking_uri=paths.tracking_uri, registry_uri=paths.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("textperf").experiment_id])
    return sorted(r.info.status for r in runs)


def _prepared(tmp_path: Path) -> tuple[Path, ResolvedPaths]:
    """A var dir whose fleet exists and was ingested once, and whose experiment exists."""
    var = tmp_path / "var"
    app = tiny_app(var)
    paths, _ = prepare(app, "first")
    configure_mlflow(paths, app.registry.experiment)
    mlflow.set_tracking_uri(None)
    return var, paths


def test_two_retrains_at_once_on_one_warehouse_and_registry_both_finish(tmp_path: Path) -> None:
    var, paths = _prepared(tmp_path)
    records_before = _records(paths)
    # force: the second must train beside the first, in a directory of its own.
    assert retrain_twice_at_once(var, force=True)[0] == [(1, False), (2, False)]
    client = MlflowClient(tracking_uri=paths.tracking_uri, registry_uri=paths.tracking_uri)
    assert str(client.get_model_version_by_alias("textperf", "champion").version) in {"1", "2"}
    assert _runs(paths) == ["FINISHED", "FINISHED"]
    assert _records(paths) == records_before  # nothing ingested twice
    assert list(paths.checkpoints.glob("train-*/last.ckpt")) == []  # both cleaned up


def test_the_second_of_two_unforced_retrains_waits_and_reuses_the_first(tmp_path: Path) -> None:
    """The nightly run and an ad-hoc one on the same snapshot: one trains, the other waits on
    the checkpoint lock, then reports the version the first registered. One model, one run."""
    var, paths = _prepared(tmp_path)
    outcomes, outputs = retrain_twice_at_once(var, force=False)
    assert outcomes == [(1, False), (1, True)]
    # It waited (the training takes seconds): not merely started after the first had finished.
    assert sum("another run is training the same snapshot" in out for out in outputs) == 1
    assert _runs(paths) == ["FINISHED"]
    assert [p.name for p in paths.checkpoints.iterdir()] == []


@pytest.fixture
def loaded_pyfunc(tmp_path: Path):
    paths = ResolvedPaths(var_dir=tmp_path / "var")
    configure_mlflow(paths, "textperf")
    try:
        register_champion(tmp_path, "v1")
        yield mlflow.pyfunc.load_model(registry.model_uri("textperf", "champion"))
    finally:
        mlflow.set_tracking_uri(None)


def test_parallel_predict_calls_equal_sequential_ones(loaded_pyfunc) -> None:
    frames = [
        pd.DataFrame(
            [
                {
                    "task": f"cell-{i}",
                    "period": "2026-01-01",
                    "config": f'{{"n": {i}, "name": "c{j}"}}',
                    "logs": f'{{"lines": {i * 7 + j}}}',
                }
                for j in range(1 + i % 3)
            ]
        )
        for i in range(12)
    ]
    params = [{"seed": i, "num_samples": 8, "return_samples": True} for i in range(len(frames))]

    def call(i: int) -> pd.DataFrame:
        return loaded_pyfunc.predict(frames[i], params=params[i])

    sequential = [call(i) for i in range(len(frames))]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(call, [*range(len(frames))] * 2))
    for i, got in enumerate(parallel):
        pd.testing.assert_frame_equal(got, sequential[i % len(frames)])


HOLD_WRITER = """
import sys, time
from pathlib import Path
from typing import Any
from regressor import pipeline
from regressor.config import ResolvedPaths
with pipeline.writer_lock(ResolvedPaths(var_dir=Path(sys.argv[1]))):
    print("held", flush=True)
    time.sleep(120)
"""


def test_without_a_prefect_server_a_killed_writer_frees_the_warehouse(tmp_path: Path):
    """On Prefect's temporary server (no PREFECT_API_URL) the writer is a file lock: that
    server frees no expired lease, so a writer killed holding the Prefect slot left every later
    run's ingest waiting for ever. A file lock dies with its holder."""
    import fcntl
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.common import warehouse_writer

    paths = ResolvedPaths(var_dir=tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # as the OOM killer would
    holder.wait()
    lock = paths.locks / "warehouse-writer.lock"
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        warehouse_writer("x", paths),
        lock.open("a") as other,
        pytest.raises(BlockingIOError),  # this run holds it now
    ):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


HOLD_AN_INGEST = """
import sys, time
from pathlib import Path
from typing import Any
from regressor import pipeline
from regressor.config import ResolvedPaths
from regressor.warehouse import Warehouse
paths = ResolvedPaths(var_dir=Path(sys.argv[1]))
with pipeline.writer_lock(paths), Warehouse(paths.warehouse):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    print(f"released {time.time()}", flush=True)
"""


def _behind_an_ingest(var: Path, seconds: float, then: Callable[[], Any]) -> tuple[float, Any]:
    """`then()` run while a child process ingests (holding the writer's lock and the warehouse
    open for `seconds`): when `then` got in, after the child let go, and what it returned."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AN_INGEST, str(var), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = then()
        return _released_at(holder), result
    finally:
        holder.kill()
        holder.wait()


def test_a_reader_waits_behind_an_ingest_however_long_it_takes(tmp_path: Path, monkeypatch):
    """DuckDB refuses a reader while a writer has the file open, and its own wait is bounded
    (120 s): the nightly's dataset and adaptations failed behind a long ad-hoc ingest. A reader
    now holds the writer's lock shared, so it waits for the ingest, then reads. DuckDB's wait is
    cut to 0.5 s here, far below the 3 s ingest: only the lock can bridge it."""
    import time

    from regressor import warehouse

    _, paths = _prepared(tmp_path)
    monkeypatch.setattr(warehouse, "LOCK_TIMEOUT_S", 0.5)

    def read() -> tuple[float, int]:
        with pipeline.reading_warehouse(paths.warehouse, "demo_fleet") as wh:
            return time.time(), wh.query("records").height

    released, (entered, records) = _behind_an_ingest(paths.var_dir, 3, read)
    assert entered >= released
    assert records > 0


def test_a_state_directory_where_no_lock_can_be_made_is_still_read(tmp_path: Path):
    """A read-only copy of the state (for serving, say) has no lock file and cannot make one:
    the read goes on with DuckDB's own wait, as before the lock."""
    import shutil

    _, paths = _prepared(tmp_path)
    shutil.rmtree(paths.locks, ignore_errors=True)
    paths.locks.write_text("")  # a file where the folder would go: no lock can be made
    with pipeline.reading_warehouse(paths.warehouse, "demo_fleet") as wh:
        assert wh.query("records").height > 0


def test_a_cli_ingest_waits_behind_a_flows_ingest(tmp_path: Path, monkeypatch):
    """`textperf ingest` took no writer lock: beside a worker's ingest it failed once DuckDB's
    wait ran out (cut to 0.5 s here, below the 3 s ingest)."""
    import time

    from typer.testing import CliRunner

    from regressor import warehouse
    from regressor.cli import app

    var, _ = _prepared(tmp_path)
    monkeypatch.setattr(warehouse, "LOCK_TIMEOUT_S", 0.5)

    def ingest() -> tuple[float, object]:
        done = CliRunner().invoke(app, ["ingest", "--var-dir", str(var)])
        return time.time(), done

    released, (finished, done) = _behind_an_ingest(var, 3, ingest)
    assert done.exit_code == 0, done.output
    assert finished >= released


HOLD_GATE = """
import sys, time
from pathlib import Path
from typing import Any
from regressor import pipeline
from regressor.config import ResolvedPaths
lock = getattr(pipeline, sys.argv[3] if len(sys.argv) > 3 else "gate_lock")
name = sys.argv[4] if len(sys.argv) > 4 else "textperf"
with lock(ResolvedPaths(var_dir=Path(sys.argv[1])), name):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    print(f"released {time.time()}", flush=True)
"""


def hold_lock(var: Path, seconds: float, lock: str = "gate_lock", name: str = "textperf"):
    """A child process holding `pipeline.<lock>(name)` for `seconds` once it prints "held";
    it then prints "released <time>"."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_GATE, str(var), str(seconds), lock, name],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def _released_at(holder) -> float:
    return float(holder.stdout.readline().split()[1])


@pytest.mark.parametrize(
    ("lock", "name"), [("gate_lock", "textperf"), ("adaptation_lock", "textperf-cell-x")]
)
def test_moving_aliases_by_hand_waits_for_the_run_that_moves_them(
    tmp_path: Path, lock: str, name: str
):
    """A base model's gate and a variant's whole adaptation move its aliases under a lock;
    `alias_locks` waits for either, so a gate that read the champion cannot undo a promotion
    made by hand in between."""
    import time

    paths = ResolvedPaths(var_dir=tmp_path)
    holder = hold_lock(paths.var_dir, 6, lock, name)
    try:
        with pipeline.alias_locks(paths, name):
            entered = time.time()
        assert entered >= _released_at(holder)
    finally:
        holder.kill()
        holder.wait()


def test_models_promote_waits_for_a_gate_in_progress(tmp_path: Path):
    """`textperf models promote` during a run's gate takes the alias after that gate, not
    before it (when the gate, which read the old champion, would move it back)."""
    import time

    from typer.testing import CliRunner

    from regressor import cli

    paths = ResolvedPaths(var_dir=tmp_path / "var")
    configure_mlflow(paths, "textperf")
    try:
        register_champion(tmp_path, "a")
        second = register_tiny_version(tmp_path, "b").version
        holder = hold_lock(paths.var_dir, 6)
        args = ["models", "promote", "textperf", str(second), "--var-dir", str(paths.var_dir)]
        result = CliRunner().invoke(cli.app, args)
        promoted = time.time()
        released = _released_at(holder)
    finally:
        holder.kill()
        holder.wait()
        mlflow.set_tracking_uri(None)
    assert result.exit_code == 0, result.output
    assert promoted >= released
    champion = MlflowClient(paths.tracking_uri).get_model_version_by_alias("textperf", "champion")
    assert str(champion.version) == str(second)


def test_a_run_reads_the_champion_and_gates_only_once_another_runs_gate_is_done(tmp_path: Path):
    """Two runs on other data (a nightly one, an ad-hoc one) each read the champion, scored it
    and gated later: one promoted past a champion it never faced. The second now waits for the
    first's gate (held here by a child), then reads the champion and registers."""

    app = tiny_app(tmp_path / "var")
    paths, data = prepare(app)
    holder = hold_lock(paths.var_dir, 25)
    try:
        outcome = pipeline.train_and_register(app, paths, data)
        released = _released_at(holder)
    finally:
        holder.kill()
        holder.wait()
        mlflow.set_tracking_uri(None)
    version = MlflowClient(paths.tracking_uri).get_model_version("textperf", outcome.version)
    assert version.creation_timestamp / 1000 >= released  # registered and gated after it
