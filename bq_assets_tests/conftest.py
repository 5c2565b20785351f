"""Shared fixtures: one local cloud stack for the whole session, in a directory of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from bq_assets.exports import SHIPPED_EXPORTS_DIR, ExportSpec, load_specs
from bq_assets.factory import build_definitions
from bq_assets.local import stack
from bq_assets.settings import local_resources
from bq_assets_tests.postgres import PostgresServer

SAMPLE_ROWS = 500

pytest_plugins = ["bq_assets_tests.fault_report"]


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local-stack")


@pytest.fixture(scope="session")
def local_stack(stack_dir: Path) -> Iterator[stack.StackState]:
    """The real emulators and the Spark stand-in, started once per session and stopped at the
    end."""
    os.environ["BQ_ASSETS_SAMPLE_ROWS"] = str(SAMPLE_ROWS)
    state = stack.up(stack_dir)
    yield state
    from bq_assets.local.spark_warehouse import close_sessions

    close_sessions()
    stack.down(stack_dir)


@pytest.fixture(scope="session")
def resources(local_stack: stack.StackState, stack_dir: Path) -> dict[str, dg.ConfigurableResource]:
    return local_resources(stack_dir)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (Debian's package), started once per session in a temp dir on a
    free port, stopped and deleted at the end."""
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shipped_specs() -> list[ExportSpec]:
    return load_specs(SHIPPED_EXPORTS_DIR)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def run_exports(
    specs: list[ExportSpec],
    resources: dict[str, dg.ConfigurableResource],
    instance: dg.DagsterInstance,
    selection: str | list[str] | None = None,
    partition_key: str | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize the exports' assets (or those of ``selection``, e.g. ``query/x``) and run
    their checks in one in-process run (partitioned exports: partition ``partition_key``)."""
    defs = build_definitions(specs, resources, dg.DefaultScheduleStatus.STOPPED)
    job = defs.resolve_implicit_global_asset_job_def()
    keys = [selection] if isinstance(selection, str) else selection
    return job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        asset_selection=[dg.AssetKey.from_user_string(key) for key in keys] if keys else None,
        partition_key=partition_key,
    )


def error_chain(error) -> str:
    """An error recorded by Dagster and its causes, outermost first, joined by `` <- ``."""
    messages = []
    while error is not None:
        messages.append(error.message.strip())
        error = error.cause
    return " <- ".join(messages)


def step_errors(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """Step key → failure message (with causes), for failed steps."""
    return {
        event.step_key: error_chain(event.step_failure_data.error)
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data.error
    }
