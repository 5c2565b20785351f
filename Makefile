# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export BQ_ASSETS_LOCAL_DIR ?= $(CURDIR)/.local
export DAGSTER_HOME        ?= $(CURDIR)/.local/dagster_home

.PHONY: install demo dev up down status test test-deps faults e2e bench lint clean

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

test-deps: ## PostgreSQL for the source tests (Debian's package; installed when missing)
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			postgresql </dev/null; \
	fi

test: install test-deps ## the test suite (starts its own local stack and PostgreSQL)
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/ruff check bq_assets bq_assets_tests
	$(BIN)/ruff format --check bq_assets bq_assets_tests
	$(BIN)/pytest

faults: install test-deps ## the fault and bad-input suite alone, with its report table
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/pytest -m faults

e2e: install ## the Dagster UI in headless Chromium: asset graph, a run, schedules (+ screenshots in docs/)
	@if [ ! -x /usr/bin/chromium ]; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			chromium </dev/null; \
	fi
	$(BIN)/pytest -m e2e bq_assets_tests/test_ui_e2e.py

lint: install
	$(BIN)/ruff check bq_assets bq_assets_tests
	$(BIN)/ruff format --check bq_assets bq_assets_tests

bench: install ## export hop vs DuckDB COPY and pandas at 1M and 10M rows (own stack in a temp dir; ~10 min)
	$(BIN)/python -m bq_assets.bench $(BENCH_ARGS)

clean: down
	rm -rf .local
