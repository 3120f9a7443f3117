"""Scale-out by configuration: DDP on 2 CPU processes (gloo), and Parquet shards per rank."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from lightning.pytorch.strategies import DDPStrategy
from mlflow import MlflowClient
from test_retrain_flow import TINY_APP
from test_server_stack import free_port
from typer.testing import CliRunner

from regressor import pipeline, training
from regressor.cli import app as cli
from regressor.config import (
    CodecConfig,
    TrainConfig,
    load_app_config,
    load_model_config,
    load_source_config,
    load_train_config,
)
from regressor.environment import TRAINED_WITH
from regressor.fit_worker import TrainingWorkerError
from regressor.predictor import Predictor
from regressor.shards import export_shards, read_records, shard_files, shards_for_rank
from regressor.training import FitResult, fit, launches_processes
from regressor.vocab import InputTokenizer
from regressor.warehouse import Warehouse

TEXTPERF = Path(sys.executable).with_name("textperf")
TEXTS = [f"<task>\ncell-{i % 5}\n<config>\nload={i}" for i in range(48)]


def _fit(
    tmp_path: Path, train: str, name: str | None = None, **update: object
) -> tuple[FitResult, Predictor, dict[str, torch.Tensor]]:
    """Fit `tiny` with conf/train/<train>.yaml (`update` applied) in `tmp_path / (name or
    train)`; the result, the fitted predictor and its initial weights."""
    targets = np.random.default_rng(0).uniform(0.2, 0.9, len(TEXTS))
    predictor = Predictor.create(
        load_model_config("tiny"),
        CodecConfig(exponent_min=-4, exponent_max=4),
        InputTokenizer.train(TEXTS, 300),
    )
    initial = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    data = (TEXTS[:40], targets[:40]), (TEXTS[40:], targets[40:])
    cfg = load_train_config(train).model_copy(update=update)
    result = fit(predictor, *data, cfg, tmp_path / (name or train), resume=False)
    return result, predictor, initial


@pytest.mark.slow
def test_ddp_fit_from_a_process_that_cannot_be_re_executed(tmp_path: Path):
    """pytest cannot be re-run per rank: `fit` under DDP launches its own process group
    (`regressor.fit_worker`) and hands the trained weights back to the caller's predictor."""
    single, _, _ = _fit(tmp_path, "tiny")
    stale = tmp_path / "tiny_ddp" / "fit-worker-left-by-a-killed-run"
    stale.mkdir(parents=True)
    (stale / "call.pt").write_bytes(b"a killed caller's pickled call")
    ddp, predictor, initial = _fit(tmp_path, "tiny_ddp")
    assert (single.processes, ddp.processes) == (1, 2)
    assert ddp.steps == single.steps == 6
    assert set(vars(ddp)) == set(vars(single))
    trained = predictor.model.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)
    assert not predictor.model.training
    assert TRAINED_WITH in predictor.metadata
    summary = predictor.predict_texts(TEXTS[:3], 4, 1.0, (0.1, 0.5, 0.9))
    assert np.isfinite(summary["median"]).all()
    # The worker's checkpoints stay where a resume finds them; hand-offs (its own, and one a
    # killed caller left) go.
    assert sorted(p.name for p in (tmp_path / "tiny_ddp").iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_ddp_fit_inside_a_slurm_job_launches_its_own_ranks(tmp_path: Path, monkeypatch):
    """The pipeline runs as one SLURM task (an sbatch job); its fit worker launches the ranks
    itself, so SLURM's variables, which Lightning would read as "SLURM started the ranks",
    must not decide the worker's cluster environment."""
    for name, value in {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "textperf-nightly",
        "SLURM_JOB_ID": "4242",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODELIST": "localhost",
    }.items():
        monkeypatch.setenv(name, value)
    result, predictor, initial = _fit(tmp_path, "tiny_ddp")
    assert (result.processes, result.steps) == (2, 6)
    trained = predictor.model.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)


@pytest.mark.parametrize("update", [{"devices": 2}, {"num_nodes": 2}])
def test_auto_on_more_than_one_device_or_node_trains_in_a_process_group_of_its_own(update):
    """Lightning's `auto` there is DDP, whose launcher re-ran the caller's whole command per
    rank (generate, ingest... `textperf retrain` twice), without the configured timeout."""
    cfg = TrainConfig(process_group_timeout_minutes=7, **update)
    assert launches_processes(cfg)
    strategy = training._strategy(cfg)
    assert isinstance(strategy, DDPStrategy)
    assert strategy._timeout == timedelta(minutes=7)
    assert not launches_processes(TrainConfig())


def test_train_config_scale_out_defaults_keep_one_local_device():
    cfg = TrainConfig()
    assert (cfg.strategy, cfg.devices, cfg.num_nodes, cfg.accelerator) == ("auto", 1, 1, "cpu")
    assert TrainConfig(devices="auto", num_nodes=4, strategy="ddp").num_nodes == 4


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    root = tmp_path_factory.mktemp("shards")
    config = root / "app.yaml"
    config.write_text(yaml.safe_dump({"fleet": {"n_cells": 3, "n_days": 10, "samples_per_day": 2}}))
    app = load_app_config(config, root / "var")
    paths, source = app.paths.resolve(), load_source_config(app.source)
    pipeline.generate(paths, app, source)
    pipeline.ingest(paths, source, "r1")
    with Warehouse(paths.warehouse, read_only=True) as wh:
        n = wh.query("records").height
    return config, root / "var", n


def test_export_writes_shards_that_ranks_split_without_overlap(warehouse, tmp_path: Path):
    config, var, n = warehouse
    out = tmp_path / "shards"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "--out",
            str(out),
            "--shard-rows",
            "7",
            "-c",
            str(config),
            "--var-dir",
            str(var),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"{n} records in {-(-n // 7)} shards" in result.output
    parts = [read_records(shards_for_rank(out, rank, 2)) for rank in range(2)]
    ids = [set(p["record_id"]) for p in parts]
    assert not ids[0] & ids[1]
    assert len(ids[0] | ids[1]) == n
    with Warehouse(var / "warehouse.duckdb", read_only=True) as wh:
        records = wh.query("records")
    both = pl.concat(parts).sort(["task", "period", "source", "record_id"], nulls_last=True)
    assert both.columns == records.columns
    assert both.equals(records)
    for part in parts:  # each rank's rows in the warehouse's order
        assert part.equals(records.filter(pl.col("record_id").is_in(part["record_id"])))


def test_a_ranks_records_come_in_the_warehouses_order_whatever_the_files_order(tmp_path: Path):
    """Rows of one task and no period (a table's) came in the order the files held them, and a
    re-export could store them in another: a rank then trained in another order."""
    rows = {
        "record_id": ["t/job/3", "t/job/1", "t/job/2"],
        "source": ["t"] * 3,
        "task": ["job"] * 3,
        "period": [None, None, None],
        "config_json": ["{}"] * 3,
        "logs_json": ["{}"] * 3,
        "target": [3.0, 1.0, 2.0],
    }
    shard = tmp_path / "shard=0"
    shard.mkdir()
    pl.DataFrame(rows, schema_overrides={"period": pl.Date}).write_parquet(shard / "a.parquet")
    assert read_records([shard / "a.parquet"])["record_id"].to_list() == [
        "t/job/1",
        "t/job/2",
        "t/job/3",
    ]


# The retrain flow test's tiny app, trained on two CPU processes.
DDP_APP = {**TINY_APP, "train": "tiny_ddp"}


@pytest.mark.slow
def test_the_nightly_flow_under_ddp_trains_and_registers_once(tmp_path: Path, prefect_harness):
    """Lightning's launcher re-executes the command line per extra rank: from the flow's own
    process, rank 1 would have run the whole flow again (ingest, evaluate, register). Each fit
    (training; fine-tuning and the from-scratch reference) runs in its own process group."""
    from flows.retrain import retrain

    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump(DDP_APP))
    var = tmp_path / "var"
    report = retrain(config=config, var_dir=var)
    uri = f"sqlite:///{var / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    names = sorted(m.name for m in client.search_registered_models())
    assert len(names) == 2  # the model and its adapted variant
    assert names[0] == "textperf"
    for name in names:
        assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    runs = client.search_runs([client.get_experiment_by_name("textperf").experiment_id])
    kinds = sorted(r.info.run_name.split("-")[0] for r in runs)
    assert kinds == ["adapt", "train"]
    train_run = next(r for r in runs if r.info.run_name.startswith("train"))
    adapt_run = next(r for r in runs if r.info.run_name.startswith("adapt"))
    assert train_run.data.metrics["train_processes"] == 2
    assert adapt_run.data.metrics["adapt_processes"] == 2
    # Rank 0 of the worker logged the curves into the flow's run.
    assert client.get_metric_history(train_run.info.run_id, "train_loss")
    assert "on 2 processes" in report
    assert not list((var / "checkpoints").iterdir())


@pytest.mark.parametrize("variable", ["RANK", "LOCAL_RANK"])
def test_the_pipeline_refuses_to_run_as_one_rank_of_a_launch(
    warehouse, variable: str, monkeypatch: pytest.MonkeyPatch
):
    """Under torchrun every rank would register its own version and move the aliases."""
    config, var, _ = warehouse
    app = load_app_config(config, var)
    paths = app.paths.resolve()
    data = pipeline.load_dataset(paths, app, load_source_config(app.source))
    locks = sorted(paths.locks.glob("*"))  # the read's: the warehouse writer's, held shared
    monkeypatch.setenv(variable, "1")
    with pytest.raises(RuntimeError, match=f"rank of a distributed launch \\({variable}=1\\)"):
        pipeline.train_and_register(app, paths, data)
    with pytest.raises(RuntimeError, match="not under torchrun"):
        pipeline.adapt_version(app, paths, data, "1")
    assert not paths.checkpoints.exists()
    assert sorted(paths.locks.glob("*")) == locks  # no run's lock was taken


# A fit under DDP that would train for minutes: the test kills the process that started it.
LONG_DDP_FIT = """
import sys
from pathlib import Path
import numpy as np
from regressor.config import CodecConfig, TrainConfig, load_model_config
from regressor.predictor import Predictor
from regressor.training import fit
from regressor.vocab import InputTokenizer

texts = [f"<task>\\\\ncell-{i % 5}\\\\n<config>\\\\nload={i}" for i in range(48)]
predictor = Predictor.create(
    load_model_config("tiny"), CodecConfig(exponent_min=-4, exponent_max=4),
    InputTokenizer.train(texts, 300),
)
cfg = TrainConfig(batch_size=8, max_steps=10**6, max_minutes=5.0, warmup_steps=1,
                  progress_bar=False, precision="32-true", strategy="ddp", devices=2)
fit(predictor, (texts, np.linspace(0.2, 0.9, 48)), ([], np.array([])), cfg, Path(sys.argv[1]))
"""


def _workers(under: Path) -> list[int]:
    """Pids of the `regressor.fit_worker` processes whose hand-off lies under `under`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"regressor.fit_worker" in command and str(under).encode() in b" ".join(command):
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_the_caller_kills_its_training_processes(tmp_path: Path):
    """The pipeline holds the checkpoint lock: training processes outliving it would write into
    the directory the next run resumes from."""
    script = tmp_path / "fit.py"
    script.write_text(LONG_DDP_FIT)
    caller = subprocess.Popen([sys.executable, str(script), str(tmp_path / "ckpt")])
    try:
        deadline = time.monotonic() + 180
        while len(_workers(tmp_path)) < 2:  # rank 0 and the rank 1 it launched
            assert caller.poll() is None, "the caller ended before its workers started"
            assert time.monotonic() < deadline, "the two training processes never started"
            time.sleep(0.5)
    finally:
        caller.kill()
        caller.wait()
    deadline = time.monotonic() + 60
    while _workers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _workers(tmp_path)


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text():
        assert proc.poll() is None, f"ended before {text!r}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in {seconds} s"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(400)  # a node that never joins would hold the rendezvous for 30 minutes
def test_a_fit_spans_two_nodes_when_a_second_node_joins(tmp_path: Path, monkeypatch):
    """Node 0 (this process, as the pipeline) fits with `num_nodes: 2`; `textperf join-fits`
    as node 1 (another process here, another machine on a cluster) joins that fit through the
    shared checkpoint directory: one process group of 2 ranks, and one fit joined. A hand-off
    left before the node started (a killed caller's), and a fit on node 0 alone, are not."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    var = tmp_path / "var"
    stale = var / "checkpoints" / "killed-run" / "fit-worker-stale"
    stale.mkdir(parents=True)
    (stale / "call.pt").write_bytes(b"a killed caller's pickled call")
    (stale / "span.json").write_text('{"num_nodes": 2}')
    log = tmp_path / "node1.log"
    with log.open("w") as out:
        node1 = subprocess.Popen(
            [TEXTPERF, "join-fits", "--var-dir", str(var), "--max-fits", "1"],
            env={**os.environ, "NODE_RANK": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_line(log, "waiting for fits", node1)
        # A fit on this machine alone (two local ranks) is not node 1's to join.
        _fit(var / "checkpoints", "tiny_ddp", name="one-machine")
        result, predictor, initial = _fit(var / "checkpoints", "tiny_two_nodes", name="run")
        node1.wait(timeout=120)
    finally:
        node1.kill()
        node1.wait()
    text = log.read_text()
    assert node1.returncode == 0, text[-3000:]
    assert result.processes == 2
    assert result.steps == 6
    trained = predictor.model.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)
    assert f"joining the fit in {var / 'checkpoints' / 'run'}" in text
    assert "exit code 0" in text
    assert f"joining the fit in {var / 'checkpoints' / 'killed-run'}" not in text
    assert f"not joining the fit handed off before this node watched, in {stale.parent}" in text
    assert "one-machine has no node 1" in text
    assert "joined 1 fits" in text


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_node_that_never_joins_fails_the_fit_after_the_configured_timeout(
    tmp_path: Path, monkeypatch
):
    """Without `textperf join-fits` on node 1, node 0's fit fails after
    `process_group_timeout_minutes` (Lightning's default would hold it for 30 minutes), with an
    error that says what a fit across nodes needs."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    # The timeout mark is the hang guard: Lightning's default would have held the fit 30 min.
    with pytest.raises(TrainingWorkerError, match=r"`textperf join-fits` running on each other"):
        _fit(tmp_path, "tiny_two_nodes", process_group_timeout_minutes=0.1)


def _slurm_task(node: int, *args: str, var: Path, **env: str) -> subprocess.Popen:
    """`docker/slurm/node.sh args` as SLURM starts it on node `node` of a two-node job step
    (no SLURM here: its variables, as a job step sets them), `env` added."""
    env = {k: v for k, v in os.environ.items() if k != "NODE_RANK"} | env
    env |= {"SLURM_NODEID": str(node), "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242"}
    env |= {"SLURM_STEP_ID": "0", "TEXTPERF_VAR_DIR": str(var), "TEXTPERF": str(TEXTPERF)}
    script = Path(__file__).resolve().parent.parent / "docker" / "slurm" / "node.sh"
    return subprocess.Popen(
        [script, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.timeout(300)
def test_slurm_tasks_join_as_their_node_until_node_0s_command_ends(tmp_path: Path):
    """node.sh on node 1 runs `join-fits` as node SLURM_NODEID (no NODE_RANK set) until node
    0's command has ended. Node 0, started first (srun promises no order), runs its command
    only once node 1 watches, since a fit handed off before would never be joined; its exit
    status is the command's, here a failing one."""
    var = tmp_path / "var"
    node0 = _slurm_task(0, "ingest", "--source", "no-such-source", var=var)
    node1 = None
    try:
        time.sleep(4)
        node1 = _slurm_task(1, var=var)
        node0_out, _ = node0.communicate(timeout=120)
        node1_out, _ = node1.communicate(timeout=120)
    finally:  # never leave a joiner watching after a failure (it would wait for ever)
        for task in (node0, node1):
            if task is not None:
                task.kill()
    assert node0.returncode != 0, node0_out
    assert "waiting for 1 other node(s)" in node0_out
    waited = re.search(
        r"1 other node\(s\) watching after (\d+) s; running: textperf ingest", node0_out
    )
    assert waited is not None, node0_out
    # It waited first, and ran the command only once it saw node 1 watch (started 4 s later).
    assert node0_out.index("waiting for 1 other node(s)") < waited.start(), node0_out
    assert "no-such-source" in node0_out
    assert node1.returncode == 0, node1_out
    assert f"node 1: waiting for fits under {var / 'checkpoints'}" in node1_out  # TEXTPERF_VAR_DIR
    assert f"{var / 'slurm' / 'job-4242.0'}.ended exists" in node1_out
    assert "joined 0 fits" in node1_out
    assert list((var / "slurm").iterdir()) == []  # every node stopped: the step's marks went


def test_slurm_node_0_gives_up_on_nodes_that_never_watch(tmp_path: Path):
    """Without node 1, node 0 does not run its command (its fits would hold it in the
    rendezvous), fails after TEXTPERF_JOIN_WAIT_SECONDS, and still marks the step ended."""
    var = tmp_path / "var"
    node0 = _slurm_task(0, "retrain", var=var, TEXTPERF_JOIN_WAIT_SECONDS="2")
    out, _ = node0.communicate(timeout=60)
    assert node0.returncode == 1
    assert "only 0 of 1 other node(s) watching after 2 s; not running: textperf retrain" in out
    assert (var / "slurm" / "job-4242.0.ended").exists()
    assert not (var / "mlflow.db").exists()


def test_join_fits_refuses_without_a_node_rank(tmp_path: Path):
    done = subprocess.run(
        [TEXTPERF, "join-fits", "--var-dir", str(tmp_path), "--max-fits", "1"],
        env={k: v for k, v in os.environ.items() if k not in ("NODE_RANK", "SLURM_NODEID")},
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # One `Error:` line and exit 1, as every other command (it was `error:` and 2, a usage error).
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ")
    assert "NODE_RANK=''" in done.stderr


def test_a_failed_training_process_group_is_an_error_naming_its_config(tmp_path: Path):
    predictor = Predictor.create(
        load_model_config("tiny"),
        CodecConfig(exponent_min=-4, exponent_max=4),
        InputTokenizer.train(TEXTS, 300),
    )
    cfg = TrainConfig(accelerator="gpu", strategy="ddp", devices=2, progress_bar=False)
    targets = np.linspace(0.2, 0.9, len(TEXTS))
    with pytest.raises(TrainingWorkerError, match=r"strategy 'ddp', devices 2.*exited with code 1"):
        fit(predictor, (TEXTS, targets), ([], targets[:0]), cfg, tmp_path / "ckpt")
    assert not list((tmp_path / "ckpt").glob("fit-worker-*"))  # the hand-off is removed


def test_an_export_that_fails_while_swapping_in_leaves_the_previous_one(
    warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The old shards go aside before the new ones move in: a rename failing in between (a
    full or flaky mount) left the directory with none of either, and a rank read nothing. The
    previous export is put back; injected here as the second new shard's rename failing."""
    _, var, _ = warehouse
    out = tmp_path / "shards"
    export_shards(var / "warehouse.duckdb", out, 7)
    before = sorted(p.relative_to(out) for p in shard_files(out))
    real_rename, moved_in = Path.rename, []

    def failing_rename(self: Path, target: Path) -> Path:
        if Path(target).parent == out and ".export-" in str(self):
            moved_in.append(self)
            if len(moved_in) == 2:
                raise OSError(5, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="Input/output error"):
        export_shards(var / "warehouse.duckdb", out, 5)
    monkeypatch.undo()
    assert sorted(p.relative_to(out) for p in shard_files(out)) == before
    assert sorted(p.name for p in out.iterdir()) == sorted({str(p.parts[0]) for p in before})
