"""prefect.yaml, `serve` deployments and docker/compose.yaml agree with conf/ and the code."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from flows import deployments
from flows.common import make_task_runner
from regressor.config import ConfigError, OrchestrationConfig, load_app_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker" / "compose.yaml").read_text())
APP = load_app_config()


def _by_name() -> dict[str, dict]:
    return {d["name"]: d for d in PREFECT_YAML["deployments"]}


def test_prefect_yaml_nightly_schedule_is_the_one_in_conf():
    nightly = _by_name()["nightly-retrain"]
    (schedule,) = nightly["schedules"]
    assert schedule["cron"] == APP.schedule.nightly_cron == "0 2 * * *"
    assert schedule["timezone"] == APP.schedule.timezone == "UTC"
    assert nightly["concurrency_limit"] == 1


def test_prefect_yaml_entrypoints_load_and_use_the_configured_pool():
    assert set(_by_name()) == {"nightly-retrain", *deployments.AD_HOC}
    for deployment in PREFECT_YAML["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert getattr(module, name).name in {"retrain", "ingest", "adapt", "evaluate", "prune"}
        assert deployment["work_pool"]["name"] == APP.orchestration.work_pool


def test_served_deployments_are_built_from_conf(tmp_path: Path):
    config = tmp_path / "app.yaml"
    config.write_text(yaml.safe_dump({"schedule": {"nightly_cron": "30 3 * * *"}}))
    built = deployments.build(load_app_config(config), config=config)
    by_name = {d.name: d for d in built}
    assert set(by_name) == {"nightly-retrain", "ingest", "adapt", "evaluate", "prune"}
    (schedule,) = by_name["nightly-retrain"].schedules
    assert schedule.schedule.cron == "30 3 * * *"
    assert not by_name["evaluate"].schedules
    assert not by_name["prune"].schedules  # retention runs only when the team schedules it
    # Top-level parameters: Prefect merges a run's own parameters into them key by key.
    assert by_name["ingest"].parameters == {"config": str(config)}


def test_prune_runs_on_the_configured_cron(tmp_path: Path):
    """`schedule.prune_cron` puts the `prune` deployment on a schedule; a run of it keeps the
    config's `schedule.prune_keep` (the flow's default, tests/test_retention.py)."""
    config = tmp_path / "app.yaml"
    schedule = {"prune_cron": "0 4 * * 0", "prune_keep": 10, "timezone": "Europe/Paris"}
    config.write_text(yaml.safe_dump({"schedule": schedule}))
    by_name = {d.name: d for d in deployments.build(load_app_config(config), config=config)}
    (cron,) = by_name["prune"].schedules
    assert (cron.schedule.cron, cron.schedule.timezone) == ("0 4 * * 0", "Europe/Paris")
    assert by_name["prune"].parameters == {"config": str(config)}


def test_task_runner_is_selected_by_configuration():
    threads = make_task_runner(OrchestrationConfig())
    assert type(threads).__name__ == "ThreadPoolTaskRunner"
    # conf/default.yaml names no runner: the flows use threads.
    assert type(importlib.import_module("flows.retrain").retrain.task_runner) is type(threads)
    pytest.importorskip("prefect_dask")
    dask = make_task_runner(OrchestrationConfig(task_runner="dask", max_workers=2))
    assert type(dask).__name__ == "DaskTaskRunner"


def test_compose_names_the_services_and_settings_the_code_uses():
    services = COMPOSE["services"]
    assert {"postgres", "mlflow", "prefect-server", "prefect-worker", "app"} <= set(services)
    for name in ("prefect-worker", "app"):
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        # MLflow's link to a flow run is for the browser: the published port, not the network's.
        assert env["PREFECT_UI_URL"] == "http://127.0.0.1:${PREFECT_PORT:-4200}"
    worker = services["prefect-worker"]["command"]
    assert worker[worker.index("--pool") + 1] == APP.orchestration.work_pool
    assert worker[worker.index("--type") + 1] == "process"
    assert "--serve-artifacts" in services["mlflow"]["command"]
    assert any("postgresql://" in arg for arg in services["mlflow"]["command"])
    prefect_db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://")
    assert "--env-manager" in services["model-server"]["command"]


def test_compose_health_checks_loopback_ports_and_no_inline_secrets():
    services = COMPOSE["services"]
    for name in ("postgres", "mlflow", "prefect-server", "prefect-worker"):
        assert "healthcheck" in services[name], name
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    text = (PROJECT_ROOT / "docker" / "compose.yaml").read_text()
    assert "${POSTGRES_PASSWORD" in text
    example = (PROJECT_ROOT / "docker" / ".env.example").read_text()
    assert "POSTGRES_PASSWORD=" in example


def test_dockerfile_cpu_torch_and_non_root():
    text = (PROJECT_ROOT / "docker" / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text
    assert "\nUSER textperf" in text


@pytest.mark.parametrize(("field", "cron"), [("nightly_cron", "0 25 * * *"), ("prune_cron", "x")])
def test_a_cron_prefect_refuses_is_an_error_naming_the_file_and_setting(field: str, cron: str):
    """Prefect's "Invalid cron string" names neither the file nor the setting it came from."""
    schedule = APP.schedule.model_copy(update={field: cron})
    app = APP.model_copy(update={"schedule": schedule})
    with pytest.raises(ConfigError, match=rf"team\.yaml: schedule\.{field}: Invalid cron string"):
        deployments.build(app, Path("team.yaml"))


def test_no_flow_task_persists_its_result():
    """Heavy objects (the dataset, the predictor) pass between tasks in memory: with
    PREFECT_RESULTS_PERSIST_BY_DEFAULT on, every night pickled them to disk for good."""
    from prefect import Task

    modules = ["flows.tasks", "flows.retrain", "flows.adapt", "flows.evaluate", "flows.prune"]
    tasks = [
        value
        for module in modules
        for value in vars(importlib.import_module(module)).values()
        if isinstance(value, Task)
    ]
    assert len({t.name for t in tasks}) >= 8
    assert [t.name for t in tasks if t.persist_result is not False] == []


def test_a_config_error_is_not_retried():
    """`failing_cleanly` reports it as the user's mistake; a retry waited, then failed alike."""
    from prefect.states import Failed

    from flows.common import retry_unless_user_error

    assert not retry_unless_user_error(None, None, Failed(data=ConfigError("conf/x.yaml: bad")))
    assert retry_unless_user_error(None, None, Failed(data=OSError("server restarting")))
