"""`bench/tracked.py`: a bench run recorded in a real MLflow store, through the script's CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from regressor.config import PROJECT_ROOT
from regressor.tracking import store_paths

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
import tracked

# a stand-in bench: prints figures as the real ones do, writes a split, samples and a checkpoint
FAKE_BENCH = """
import sys
from pathlib import Path
out = Path(sys.argv[1])
(out / "checkpoints").mkdir(parents=True, exist_ok=True)
(out / "checkpoints" / "best.ckpt").write_bytes(b"weights")
(out / "checkpoints" / "bundle.json").write_text("{}")
(out / "mlartifacts").mkdir(exist_ok=True)
(out / "mlartifacts" / "bundle.json").write_text("{}")
(out / "plots").mkdir(exist_ok=True)
(out / "plots" / "pred.png").write_bytes(b"png")
(out / "c3o_split_seed0.json").write_text("{}")
print("c3o_n_train: 3350")
print("probe: loading", flush=True)
print("member_val_mape: 8.5")
print("member_val_mape: 7.5")
print("prior_torch_version: 2.13.0+cpu")
print("ingest_s: 12.50 (30 files, 2 quarantined)")
print("split: (seed 0)")
print("c3o_textperf_mape: nan")
print("INFO: GPU available: False", file=sys.stderr)
sys.exit(int(sys.argv[2]))
"""


def run_tracked(tmp_path: Path, exit_code: int) -> tuple[subprocess.CompletedProcess, str]:
    script = tmp_path / "fake_bench.py"
    script.write_text(textwrap.dedent(FAKE_BENCH))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "old.json").write_text("{}")  # there before the run: not its file
    store = str(tmp_path / "store")
    command = [
        sys.executable, str(PROJECT_ROOT / "bench" / "tracked.py"), "--store", store,
        "--artifacts", str(out), "--", str(script), str(out), str(exit_code),
    ]  # fmt: skip
    os.utime(out / "old.json", (time.time() - 60, time.time() - 60))
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    run_id = done.stdout.strip().splitlines()[-1].removeprefix("tracked_run_id: ")
    return done, run_id


def test_a_bench_run_is_recorded_with_its_figures_and_files(tmp_path: Path) -> None:
    done, run_id = run_tracked(tmp_path, 0)
    assert done.returncode == 0, done.stderr
    assert "member_val_mape: 7.5" in done.stdout  # the output is streamed through
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["c3o_n_train"] == 3350
    history = client.get_metric_history(run_id, "member_val_mape")
    assert [(m.step, m.value) for m in history] == [(0, 8.5), (1, 7.5)]
    assert "c3o_textperf_mape" not in run.data.metrics  # NaN: echoed, not logged
    assert run.data.tags["figure.prior_torch_version"] == "2.13.0+cpu"
    assert run.data.tags["figure.probe"] == "loading"
    assert run.data.metrics["ingest_s"] == 12.5  # a number with a note is still a metric
    assert run.data.tags["figure.ingest_s_note"] == "30 files, 2 quarantined"
    assert run.data.tags["figure.split"] == "(seed 0)"
    assert "fake_bench.py" in run.data.tags["command"]
    assert "INFO: GPU available" in done.stderr  # logs pass through, never become figures
    assert not any(key.startswith("figure.INFO") for key in run.data.tags)
    files = {f.path for f in client.list_artifacts(run_id, "files/out")}
    assert files == {"files/out/c3o_split_seed0.json", "files/out/plots"}
    assert [f.path for f in client.list_artifacts(run_id, "files/out/plots")] == [
        "files/out/plots/pred.png"
    ]


def test_a_failing_bench_leaves_a_failed_run_and_its_exit_code(tmp_path: Path) -> None:
    done, run_id = run_tracked(tmp_path, 3)
    assert done.returncode == 3
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.metrics["member_val_mape"] == 7.5  # what it printed before failing is kept


@pytest.mark.parametrize(
    ("line", "figure"),
    [
        ("lumos_textperf_mape: 9.60\n", ("lumos_textperf_mape", 9.6)),
        ("x: 1e-3", ("x", 0.001)),
        ("prior_fetched_from: sqlite:////tmp/a.db", ("prior_fetched_from", "sqlite:////tmp/a.db")),
        ("Epoch 3: 100%|####| loss=0.5", None),
    ],
)
def test_parse_figure(line: str, figure) -> None:
    assert tracked.parse_figure(line) == figure


def test_the_command_is_required() -> None:
    with pytest.raises(SystemExit):
        tracked.parse_args(["--store", "x"])


def test_store_is_a_server_url_or_a_local_directory(tmp_path: Path) -> None:
    server = store_paths("http://mlflow:5000", tmp_path)
    assert server.tracking_uri == "http://mlflow:5000"
    local = store_paths(str(tmp_path / "s"), tmp_path)
    assert local.tracking_uri == f"sqlite:///{(tmp_path / 's').resolve() / 'mlflow.db'}"
    assert store_paths(None, tmp_path).var_dir == tmp_path.resolve()
