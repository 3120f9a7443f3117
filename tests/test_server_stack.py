"""The server stack without Docker: a Prefect server, an MLflow server, a process worker.

Deploys `nightly-retrain` from `prefect.yaml`, triggers it through the API, lets a worker run it
and checks the MLflow server's registry. Every subprocess has its own PREFECT_HOME and API URL,
so nothing here touches the session's `prefect_test_harness`; all of them are killed at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow import MlflowClient
from test_retrain_flow import TINY_APP

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POOL = "textperf-process"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout_s:g} s:\n{log.read_text()[-3000:]}")


def mlflow_server_cmd(root: Path, port: int) -> list[str]:
    """`mlflow server` on loopback with its SQLite store and artifacts under `root`."""
    return [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "mlartifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    # A new session, so teardown can kill the server and every child it forked.
    with log.open("w") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@dataclass(frozen=True)
class Stack:
    root: Path
    env: dict[str, str]
    prefect_api: str
    mlflow_uri: str

    def run(self, *cmd: str, timeout_s: float = 60) -> str:
        done = subprocess.run(
            cmd,
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        assert done.returncode == 0, f"{cmd}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_URL": prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "MPLBACKEND": "Agg",
    }
    prefect = start(
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(prefect_port),
        ],
        env,
        root / "prefect-server.log",
    )
    mlflow = start(mlflow_server_cmd(root, mlflow_port), env, root / "mlflow-server.log")
    try:
        wait_healthy(f"{prefect_api}/health", prefect, root / "prefect-server.log", 90)
        wait_healthy(f"{mlflow_uri}/health", mlflow, root / "mlflow-server.log", 60)
        yield Stack(root, env, prefect_api, mlflow_uri)
    finally:
        stop(prefect)
        stop(mlflow)


TRIGGER = """
import json, sys
from prefect.deployments import run_deployment
run = run_deployment("retrain/nightly-retrain", parameters=json.loads(sys.argv[1]), timeout=0)
print(run.id)
"""


def test_nightly_retrain_through_the_api_registers_a_version_on_the_server(stack: Stack):
    config = stack.root / "app.yaml"
    config.write_text(yaml.safe_dump(TINY_APP))
    stack.run(str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process")
    stack.run(str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "nightly-retrain")

    deployment = httpx.post(f"{stack.prefect_api}/deployments/filter", json={}).json()
    nightly = next(d for d in deployment if d["name"] == "nightly-retrain")
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"

    params = {"config": str(config), "var_dir": str(stack.root / "var")}
    out = stack.run(sys.executable, "-c", TRIGGER, json.dumps(params))
    flow_run_id = out.strip().splitlines()[-1]
    # One poll picks the run up; --run-once returns when that run has finished.
    worker = stack.run(
        str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--run-once", timeout_s=240
    )

    run = httpx.get(f"{stack.prefect_api}/flow_runs/{flow_run_id}").json()
    assert run["state"]["type"] == "COMPLETED", (run["state"]["message"], worker[-4000:])
    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    versions = client.search_model_versions("name='textperf'")
    assert [v.version for v in versions] == ["1"]
    assert client.get_model_version_by_alias("textperf", "champion").version == "1"
    # Artifacts went through the server's proxy, not to a path on the worker's disk.
    assert client.get_run(versions[0].run_id).info.artifact_uri.startswith("mlflow-artifacts:")


def test_textperf_serve_registers_the_deployments_with_the_conf_schedule(stack: Stack):
    # A cron of its own proves the schedule comes from this config, not from prefect.yaml.
    expected = {"nightly-retrain", "ingest", "adapt", "evaluate", "prune"}
    config = stack.root / "serve.yaml"
    config.write_text(yaml.safe_dump({**TINY_APP, "schedule": {"nightly_cron": "15 4 * * *"}}))
    env = {**stack.env, "PREFECT_HOME": str(stack.root / "serve-home")}
    log = stack.root / "serve.log"
    cmd = [str(BIN / "textperf"), "serve", "--config", str(config), "--var-dir", str(stack.root)]
    proc = start(cmd, env, log)
    try:
        deadline, crons = time.monotonic() + 90, {}
        while time.monotonic() < deadline and proc.poll() is None:
            found = httpx.post(f"{stack.prefect_api}/deployments/filter", json={}).json()
            crons = {d["name"]: [s["schedule"].get("cron") for s in d["schedules"]] for d in found}
            # serve registers the deployments one by one: wait for all of them
            if crons.get("nightly-retrain") == ["15 4 * * *"] and set(crons) >= expected:
                break
            time.sleep(1)
        assert crons.get("nightly-retrain") == ["15 4 * * *"], log.read_text()[-3000:]
        assert expected <= set(crons)
        assert crons["evaluate"] == []
        # A run that sets one parameter keeps the config and var dir serve gave the deployment:
        # the server merges key by key (one nested `params` was replaced whole).
        prune = next(d for d in found if d["name"] == "prune")
        given = {"config": str(config), "var_dir": str(stack.root)}
        assert prune["parameters"] == given
        later = {"type": "SCHEDULED", "state_details": {"scheduled_time": "2099-01-01T00:00:00Z"}}
        run = httpx.post(
            f"{stack.prefect_api}/deployments/{prune['id']}/create_flow_run",
            json={"parameters": {"dry_run": True}, "state": later},
        ).json()
        assert run["parameters"] == {**given, "dry_run": True}
    finally:
        stop(proc)
