"""`mlflow models serve -m models:/textperf@champion` answers a REST request on loopback."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from regressor import registry
from regressor.config import CodecConfig, ResolvedPaths, load_model_config
from regressor.predictor import Predictor
from regressor.tracking import configure_mlflow
from regressor.vocab import InputTokenizer

RECORD = {"task": "cell-a", "period": "2026-01-01", "config": {"n": 3}, "logs": {"lines": 10}}
STARTUP_SECONDS = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def champion_store(tmp_path: Path) -> Iterator[str]:
    """A temp SQLite store holding one tiny `textperf` version that is @champion."""
    paths = ResolvedPaths(var_dir=tmp_path)
    configure_mlflow(paths, "serve-test")
    texts = [f"<task>\ncell-{i}\n<config>\nn={i}" for i in range(20)]
    predictor = Predictor.create(
        load_model_config("tiny"),
        CodecConfig(exponent_min=-3, exponent_max=3),
        InputTokenizer.train(texts, 300),
    )
    with mlflow.start_run():
        version = registry.log_and_register(
            predictor.save(tmp_path / "bundle"),
            "textperf",
            registry.input_example(RECORD),
            {"data_hash": "serve"},
        )
    registry.promote("textperf", version.version, reason="serve test")
    yield paths.tracking_uri
    mlflow.set_tracking_uri(None)


def wait_for_ping(url: str, server: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {STARTUP_SECONDS} s")


def stop(server: subprocess.Popen) -> None:
    """The server forks workers: signal its whole process group (ours alone), then wait."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=15)


def test_serve_answers_dataframe_records_with_params(champion_store: str, tmp_path: Path):
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [
            str(mlflow_bin),
            "models",
            "serve",
            "-m",
            "models:/textperf@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        # The server execs `uvicorn` by name: the venv's bin must be on PATH, as when activated.
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": champion_store,
            "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stop() reaches the workers too
    )
    try:
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_ping(f"{base}/ping", server, time.monotonic() + STARTUP_SECONDS)
        except (RuntimeError, TimeoutError) as exc:
            log.flush()
            tail = (tmp_path / "serve.log").read_text()[-2000:]
            raise AssertionError(f"{exc}; server log:\n{tail}") from exc
        body = {
            "dataframe_records": [
                {k: json.dumps(v) if isinstance(v, dict) else v for k, v in RECORD.items()},
                {"text": "<task>\ncell-x\n<config>\nn=4"},
            ],
            "params": {"num_samples": 5, "quantiles": [0.25, 0.75], "return_samples": True},
        }
        request = urllib.request.Request(
            f"{base}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        stop(server)
        log.close()
    rows = answer["predictions"]
    assert len(rows) == 2
    for row in rows:
        assert set(row) == {"median", "mean", "std", "p25", "p75", "finite_fraction", "samples"}
        assert len(row["samples"]) == 5
        # An untrained model may decode NaN (a valid number token) for every sample of a row.
        summary = [row["p25"], row["median"], row["p75"]]
        assert all(map(math.isnan, summary)) or summary == sorted(summary)
