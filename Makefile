# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export BQ_ASSETS_LOCAL_DIR ?= $(CURDIR)/.local
export DAGSTER_HOME        ?= $(CURDIR)/.local/dagster_home

.PHONY: install gnupg jdk demo dev up down status test live-test postgres mariadb deploy-test faults mutation e2e screenshots bench bench-e2e bench-partitions bench-incremental lint clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[local,dev]"
	touch $(STAMP)

install: $(STAMP) gnupg jdk ## create .venv and install the project with the local stack and test tools

jdk: ## a JDK 17 for the local Spark stand-in (Debian's openjdk-17-jdk-headless), when javac is missing
	@if ! ls /usr/lib/jvm/java-17-openjdk*/bin/javac >/dev/null 2>&1 && ! command -v javac >/dev/null 2>&1; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			openjdk-17-jdk-headless </dev/null; \
	fi

gnupg: ## gpg for PGP-encrypted deliveries (Debian's gnupg package), when missing
	@if ! command -v gpg >/dev/null 2>&1; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			gnupg </dev/null; \
	fi

up: install ## start the local cloud stack (idempotent)
	$(BIN)/python -m bq_assets.local up

down: ## stop the local cloud stack
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m bq_assets.local down; fi

status: install
	$(BIN)/python -m bq_assets.local status

# The local instance: the deployment's run queue and pools, SQLite storage (bq_assets/local/dagster.yaml).
$(DAGSTER_HOME)/dagster.yaml: bq_assets/local/dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp $< $@

demo: up $(DAGSTER_HOME)/dagster.yaml ## materialize every export and run every check on the local stack (VERBOSE=1: every event)
	$(BIN)/python -m bq_assets.local.demo $(if $(VERBOSE),--verbose)

dev: up $(DAGSTER_HOME)/dagster.yaml ## the Dagster UI on the local stack
	$(BIN)/dagster dev -w workspace.yaml

test: install postgres mariadb ## the test suite (starts its own local stack, PostgreSQL and MariaDB servers)
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/ruff check bq_assets bq_assets_tests benchmarks
	$(BIN)/ruff format --check bq_assets bq_assets_tests benchmarks
	$(BIN)/pytest

live-test: install ## the opt-in live suite against real Google Cloud / Databricks: set the BQ_ASSETS_LIVE_* / DATABRICKS_* variables (docs/testing.md); skips what they do not enable
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/pytest -m live -rs bq_assets_tests/test_live.py bq_assets_tests/test_live_bigquery.py bq_assets_tests/test_live_governance.py

postgres: ## Debian's postgresql package, for the deployment suite (`-m deploy`), when missing
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			postgresql </dev/null; \
	fi

mariadb: ## Debian's mariadb-server, for the MySQL source tests, when missing (not started as a service)
	@if [ ! -x /usr/sbin/mariadbd ]; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			mariadb-server </dev/null; \
	fi

deploy-test: install postgres ## the deployment suite alone: Postgres-backed instance, daemon, code server
	$(BIN)/pytest -m deploy bq_assets_tests/test_deploy.py

faults: install postgres ## the fault and bad-input suite alone, with its report table
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/pytest -m faults

MUTMUT_VERSION ?= 3.8.1
# One stack for all of mutmut's test sessions, so one mutant at a time (two would share tables).
mutation: install ## mutation testing of the engine modules that decide what is published (slow, CPU-heavy; not in CI)
	@$(BIN)/python -c 'import importlib.metadata as m, sys; sys.exit(m.version("mutmut") != "$(MUTMUT_VERSION)")' 2>/dev/null \
		|| $(BIN)/pip install --quiet 'mutmut==$(MUTMUT_VERSION)'
	@mkdir -p $(BQ_ASSETS_LOCAL_DIR)
	rm -rf mutants
	@stack=$$(mktemp -d); start=$$(date +%s); \
	trap 'BQ_ASSETS_LOCAL_DIR=$$stack $(BIN)/python -m bq_assets.local down >/dev/null; rm -rf $$stack' EXIT; \
	trap 'exit 130' INT TERM; \
	BQ_ASSETS_LOCAL_DIR=$$stack $(BIN)/python -m bq_assets.local up >/dev/null || exit 1; \
	BQ_ASSETS_TEST_STACK_DIR=$$stack $(BIN)/mutmut run --max-children 1 > $(BQ_ASSETS_LOCAL_DIR)/mutation.log 2>&1 \
		|| { tail -c 4000 $(BQ_ASSETS_LOCAL_DIR)/mutation.log; exit 1; }; \
	echo "mutmut run: $$(( $$(date +%s) - start )) s (log: $(BQ_ASSETS_LOCAL_DIR)/mutation.log)"
	$(BIN)/python -m bq_assets_tests.mutation_report $(BIN)/mutmut | tee $(BQ_ASSETS_LOCAL_DIR)/mutation-report.txt

e2e: install ## the Dagster UI in headless Chromium: asset graph, a run, schedules (screenshots in .local/)
	@if [ ! -x /usr/bin/chromium ]; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			chromium </dev/null; \
	fi
	$(BIN)/pytest -m e2e bq_assets_tests/test_ui_e2e.py

screenshots: ## refresh the README's screenshots in docs/ (runs the browser test)
	$(MAKE) e2e BQ_ASSETS_E2E_SCREENSHOTS=$(CURDIR)/docs

lint: install
	$(BIN)/ruff check bq_assets bq_assets_tests benchmarks
	$(BIN)/ruff format --check bq_assets bq_assets_tests benchmarks

bench: install postgres ## export hop vs DuckDB, the query step (memory, PostgreSQL vs COPY), then the whole pipeline end to end (~35 min)
	@mkdir -p $(BQ_ASSETS_LOCAL_DIR)
	bash -o pipefail -c '$(BIN)/python benchmarks/export_step.py $(BENCH_ARGS) | tee $(BQ_ASSETS_LOCAL_DIR)/bench.log'
	bash -o pipefail -c '$(BIN)/python -m benchmarks.query_step --join $(BQ_ASSETS_LOCAL_DIR)/bench.log $(BENCH_QUERY_ARGS) | tee $(BQ_ASSETS_LOCAL_DIR)/bench-query.log'
	$(BIN)/python benchmarks/e2e.py --join $(BQ_ASSETS_LOCAL_DIR)/bench-query.log $(BENCH_E2E_ARGS)

bench-e2e: install ## customer_360 through all four hops at 1M and 10M rows + a 1,000-row run, through the UI's executor
	$(BIN)/python benchmarks/e2e.py $(BENCH_E2E_ARGS)

bench-partitions: install ## a one-day refresh of unified_transactions vs a full refresh of the same orders
	$(BIN)/python benchmarks/partitions.py $(BENCH_PARTITIONS_ARGS)

bench-incremental: install ## customer_360 merged after 1% of 1M profiles changed vs a full refresh of the same table
	$(BIN)/python benchmarks/incremental.py $(BENCH_INCREMENTAL_ARGS)

clean: down
	rm -rf .local
