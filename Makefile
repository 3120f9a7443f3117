# textperf: `make demo` and `make test` do all the set-up on a fresh clone.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.textperf-installed
VAR ?= $(CURDIR)/var
# Prefect's state (and its temporary local server's database) lives under var/.
export PREFECT_HOME ?= $(VAR)/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export MPLBACKEND ?= Agg

.PHONY: help install demo test lint format clean ui-mlflow ui-prefect

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# Where the CPU build of torch comes from. Unset: pip's own configuration (this machine's has
# it on disk). Elsewhere a plain install takes PyPI's CUDA build (several GB): set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu, as the Dockerfile does.
TORCH_INDEX ?=

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install --quiet --index-url $(TORCH_INDEX) torch==2.13.0)
	$(BIN)/pip install --quiet -e '.[dev,dask]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv if missing and install textperf with its dev tools

demo: install  ## run the nightly retraining flow once on the generated demo fleet
	@mkdir -p $(VAR)
	$(BIN)/textperf retrain --var-dir $(VAR)

test: install  ## ruff (lint + format check) and the test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

format: install  ## format the code (ruff format), nothing else
	$(BIN)/ruff format .

lint: install  ## fix what ruff can fix, format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui-mlflow: install  ## the MLflow UI on the demo's store: http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(VAR)/mlflow.db --host 127.0.0.1 --port 5000

ui-prefect: install  ## the Prefect UI on the demo's runs: http://127.0.0.1:4200
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

clean:  ## remove all generated state (keeps the venv)
	rm -rf $(VAR) .pytest_cache .ruff_cache

# -- orchestration and deployment (issue 6) ------------------------------------------------------
COMPOSE := docker compose -f docker/compose.yaml
SHARDS ?= $(VAR)/shards

.PHONY: serve deploy worker export stack-up stack-down

serve: install  ## serve nightly-retrain (cron from conf/) and the ad-hoc flows on this machine
	$(BIN)/textperf serve --var-dir $(VAR)

deploy: install  ## register prefect.yaml's deployments on the server at PREFECT_API_URL
	$(BIN)/prefect work-pool create textperf-process --type process --overwrite
	$(BIN)/prefect --no-prompt deploy --all

worker: install  ## a process worker for the deployments registered by `make deploy`
	TEXTPERF_VAR_DIR=$(VAR) $(BIN)/prefect worker start --pool textperf-process --type process

export: install  ## the warehouse's records as Parquet shards under var/shards
	$(BIN)/textperf export --var-dir $(VAR) --out $(SHARDS)

stack-up:  ## Postgres + MLflow + Prefect server + worker in Docker (needs docker/.env)
	@test -f docker/.env || { echo "cp docker/.env.example docker/.env and set the secrets"; exit 1; }
	$(COMPOSE) up -d --build

stack-down:  ## stop the Docker stack (volumes are kept)
	$(COMPOSE) down
