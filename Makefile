# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export BQ_ASSETS_LOCAL_DIR ?= $(CURDIR)/.local
export DAGSTER_HOME        ?= $(CURDIR)/.local/dagster_home

.PHONY: install demo dev up down status test lint clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[local,dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with the local stack and test tools

up: install ## start the local cloud stack (idempotent)
	$(BIN)/python -m bq_assets.local up

down: ## stop the local cloud stack
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m bq_assets.local down; fi

status: install
	$(BIN)/python -m bq_assets.local status

demo: up ## materialize every export and run every check on the local stack
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m bq_assets.demo

dev: up ## the Dagster UI on the local stack
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -w workspace.yaml

test: install ## the test suite (starts its own local stack)
	$(BIN)/ruff check bq_assets bq_assets_tests
	$(BIN)/ruff format --check bq_assets bq_assets_tests
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check bq_assets bq_assets_tests
	$(BIN)/ruff format --check bq_assets bq_assets_tests

clean: down
	rm -rf .local
