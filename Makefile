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

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv if missing and install textperf with its dev tools

demo: install  ## run the nightly retraining flow once on the generated demo fleet
	@mkdir -p $(VAR)
	$(BIN)/textperf retrain --var-dir $(VAR)

test: install  ## ruff (lint + format check) and the test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: install  ## fix what ruff can fix, format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui-mlflow: install  ## the MLflow UI on the demo's store: http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(VAR)/mlflow.db --host 127.0.0.1 --port 5000

ui-prefect: install  ## the Prefect UI on the demo's runs: http://127.0.0.1:4200
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

clean:  ## remove all generated state (keeps the venv)
	rm -rf $(VAR) .pytest_cache .ruff_cache
