"""Scale-out by configuration: DDP on 2 CPU processes (gloo), and Parquet shards per rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from regressor import pipeline
from regressor.cli import app as cli
from regressor.config import TrainConfig, load_app_config, load_source_config
from regressor.shards import read_records, shards_for_rank
from regressor.warehouse import Warehouse

# Run as a script: Lightning's `ddp` launcher re-executes it once per extra local rank.
FIT_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np
from regressor.config import CodecConfig, TrainConfig, load_model_config
from regressor.predictor import Predictor
from regressor.training import fit
from regressor.vocab import InputTokenizer

strategy, devices, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
rng = np.random.default_rng(0)
texts = [f"<task>\\ncell-{i % 5}\\n<config>\\nload={i}" for i in range(48)]
targets = rng.uniform(0.2, 0.9, len(texts))
predictor = Predictor.create(
    load_model_config("tiny"), CodecConfig(exponent_min=-4, exponent_max=4),
    InputTokenizer.train(texts, 300),
)
cfg = TrainConfig(
    batch_size=8, max_steps=4, warmup_steps=1, val_every_steps=2, precision="32-true",
    progress_bar=False, strategy=strategy, devices=devices,
)
result = fit(predictor, (texts[:40], targets[:40]), (texts[40:], targets[40:]), cfg,
             out / "ckpt", resume=False)
import torch.distributed as dist
if not dist.is_initialized() or dist.get_rank() == 0:
    summary = predictor.predict_texts(texts[:3], 4, 1.0, (0.1, 0.5, 0.9))
    shapes = {k: list(np.shape(v)) for k, v in summary.items()}
    (out / "result.json").write_text(json.dumps(
        {"steps": result.steps, "fields": sorted(vars(result)), "shapes": shapes,
         "world": dist.get_world_size() if dist.is_initialized() else 1}
    ))
"""


def _fit(tmp_path: Path, strategy: str, devices: int) -> dict:
    out = tmp_path / f"{strategy}-{devices}"
    out.mkdir()
    script = tmp_path / "fit_script.py"
    script.write_text(FIT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(
        [sys.executable, str(script), strategy, str(devices), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_gives_the_same_result_shape(tmp_path: Path):
    single = _fit(tmp_path, "auto", 1)
    ddp = _fit(tmp_path, "ddp", 2)
    assert ddp["world"] == 2
    assert single["world"] == 1
    assert ddp["fields"] == single["fields"]
    assert ddp["shapes"] == single["shapes"]
    assert ddp["steps"] == single["steps"] == 4


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
    both = pl.concat(parts).sort(["task", "period", "source"])
    assert both.columns == records.columns
    assert both.equals(records)
