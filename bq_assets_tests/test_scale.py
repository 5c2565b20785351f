"""The local Databricks hop at scale: large messages, parallel streams, bounded waits.

The tables here are made inside the BigQuery emulator by a query, wide enough (≈260 bytes a
row) that one Storage Read message of 65,536 rows is ≈17 MB: over gRPC's 4 MiB default receive
limit on the client and the emulator's default 11 MiB send limit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from google.cloud import bigquery as bigquery_api

from bq_assets.errors import BqAssetsError
from bq_assets.local import spark_warehouse as local_databricks
from bq_assets.local import stack
from bq_assets.local.resources import LocalBigQueryResource
from bq_assets.local.spark_warehouse import SparkDatabricksResource
from bq_assets.local.storage_read import StorageReadError, TableReader, create_session
from bq_assets.resources.databricks import TableName

pytestmark = pytest.mark.stack

DATASET = "scale"
WIDE_ROWS = 300_000
STALL_S = 3.0
ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).parent / "dagster")


@pytest.fixture(scope="module")
def bigquery(local_stack: stack.StackState, stack_dir: Path) -> LocalBigQueryResource:
    return LocalBigQueryResource(local_stack_dir=str(stack_dir), read_stall_timeout_s=STALL_S)


@pytest.fixture(scope="module")
def wide_table(bigquery: LocalBigQueryResource) -> str:
    with bigquery.get_client() as client:
        client.query(f"CREATE SCHEMA IF NOT EXISTS {DATASET}").result()
        client.query(
            f"CREATE OR REPLACE TABLE {DATASET}.wide AS "
            "SELECT n AS id, REPEAT('x', 250) AS pad, CAST(n AS STRING) AS label "
            f"FROM UNNEST(GENERATE_ARRAY(1, {WIDE_ROWS})) AS n"
        ).result()
    return "wide"


def _stand_in(bigquery: LocalBigQueryResource, tmp_path: Path) -> SparkDatabricksResource:
    return SparkDatabricksResource(
        local_stack_dir=bigquery.local_stack_dir,
        warehouse_dir=str(tmp_path / "warehouse"),
        bigquery=bigquery,
    )


def _copy_before_the_fault(
    bigquery: LocalBigQueryResource, tmp_path: Path, table: str, catalog: str
) -> None:
    """The previous copy the failing one must leave in place, made with the default stall
    timeout: it is not under test, and a busy machine can pause a stream past ``STALL_S``."""
    unhurried = LocalBigQueryResource(local_stack_dir=bigquery.local_stack_dir)
    _stand_in(unhurried, tmp_path).copy_from_bigquery(
        stack.read_state(Path(bigquery.local_stack_dir)).project, DATASET, table, catalog, {}
    )


@contextmanager
def _paused(pid: int) -> Iterator[None]:
    """The emulator process frozen (SIGSTOP): its sockets accept, nothing answers."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def wide_session(
    bigquery: LocalBigQueryResource, local_stack: stack.StackState, table: str, streams: int
):
    """A read client and a Storage Read session of ``table`` with up to ``streams`` streams."""
    client = bigquery.read_client()
    session = create_session(
        client,
        bigquery.read_endpoint,
        local_stack.project,
        f"projects/{local_stack.project}/datasets/{DATASET}/tables/{table}",
        max_streams=streams,
        timeout_s=60,
    )
    return client, session


def test_a_large_table_is_read_over_several_streams_with_messages_over_4_mib(
    bigquery: LocalBigQueryResource, wide_table: str, local_stack: stack.StackState
) -> None:
    client, session = wide_session(bigquery, local_stack, wide_table, streams=4)
    assert len(session.streams) == 4
    with TableReader(client, session, bigquery.read_endpoint, 30, 120) as rows:
        table = rows.reader().read_all()
    assert table.num_rows == WIDE_ROWS
    assert sorted(table.column("id").to_pylist()) == list(range(1, WIDE_ROWS + 1))
    assert table.nbytes / (WIDE_ROWS / 65_536) > 4 * 1024 * 1024  # one message > 4 MiB


def test_the_stand_in_copies_every_row_of_a_large_table(
    bigquery: LocalBigQueryResource, wide_table: str, local_stack, tmp_path: Path
) -> None:
    databricks = _stand_in(bigquery, tmp_path)
    name = TableName("scale", DATASET, wide_table)
    copied = databricks.copy_from_bigquery(local_stack.project, DATASET, wide_table, "scale", {})
    assert copied == WIDE_ROWS
    [(ids, distinct, pads)] = databricks.query(
        "SELECT sum(id), count(DISTINCT id), count(*) FILTER (WHERE length(pad) = 250) FROM {table}",
        name,
    )
    assert (int(ids), int(distinct), int(pads)) == (
        WIDE_ROWS * (WIDE_ROWS + 1) // 2,
        WIDE_ROWS,
        WIDE_ROWS,
    )


def test_a_stalled_stream_fails_within_the_stall_timeout_naming_the_api(
    bigquery: LocalBigQueryResource, wide_table: str, local_stack: stack.StackState
) -> None:
    client, session = wide_session(bigquery, local_stack, wide_table, streams=2)
    started = time.monotonic()
    with (
        _paused(local_stack.bigquery_pid),
        TableReader(client, session, bigquery.read_endpoint, STALL_S, 600) as rows,
        pytest.raises(StorageReadError) as error,
    ):
        rows.reader().read_all()
    assert time.monotonic() - started < STALL_S + 5
    message = str(error.value)
    assert f"BigQuery Storage Read API at {bigquery.read_endpoint}" in message
    assert f"sent nothing for {STALL_S:g} s" in message
    assert "2 of 2 read streams" in message


def test_a_frozen_emulator_fails_the_copy_within_bounds_and_keeps_the_previous_table(
    bigquery: LocalBigQueryResource, wide_table: str, local_stack, tmp_path: Path
) -> None:
    databricks = _stand_in(bigquery, tmp_path)
    name = TableName("kept", DATASET, wide_table)
    _copy_before_the_fault(bigquery, tmp_path, wide_table, "kept")
    started = time.monotonic()
    with _paused(local_stack.bigquery_pid), pytest.raises(StorageReadError) as error:
        databricks.copy_from_bigquery(local_stack.project, DATASET, wide_table, "kept", {})
    assert time.monotonic() - started < STALL_S + 5
    assert f"BigQuery Storage Read API at {bigquery.read_endpoint}" in str(error.value)
    assert "read session" in str(error.value)
    assert error.value.retryable
    assert databricks.row_count(name) == WIDE_ROWS


def test_a_read_stalling_after_the_session_opened_keeps_the_previous_table_and_no_staged_file(
    bigquery: LocalBigQueryResource, wide_table: str, local_stack, tmp_path: Path, monkeypatch
) -> None:
    databricks = _stand_in(bigquery, tmp_path)
    name = TableName("midway", DATASET, wide_table)
    _copy_before_the_fault(bigquery, tmp_path, wide_table, "midway")

    class FreezesOnceTheStreamsOpen(TableReader):
        def batches(self):
            os.kill(local_stack.bigquery_pid, signal.SIGSTOP)
            yield from super().batches()

    monkeypatch.setattr(local_databricks, "TableReader", FreezesOnceTheStreamsOpen)
    try:
        with pytest.raises(StorageReadError) as error:
            databricks.copy_from_bigquery(local_stack.project, DATASET, wide_table, "midway", {})
    finally:
        os.kill(local_stack.bigquery_pid, signal.SIGCONT)
    assert f"sent nothing for {STALL_S:g} s" in str(error.value)
    assert databricks.row_count(name) == WIDE_ROWS
    warehouse = Path(databricks.warehouse_dir)
    assert not [*warehouse.glob("**/.*.partial"), *warehouse.glob("**/.*.retired")]


def test_waiting_for_a_load_or_copy_job_has_a_deadline(
    bigquery: LocalBigQueryResource, wide_table: str, monkeypatch
) -> None:
    from bq_assets.engine import bigquery_jobs

    monkeypatch.setattr(bigquery_jobs, "JOB_TIMEOUT_S", STALL_S)
    with bigquery.get_client() as client:
        done = client.copy_table(f"{DATASET}.{wide_table}", f"{DATASET}.wide_copy").to_api_repr()
        # The same job as a step sees it when the job never finishes: every poll says RUNNING.
        copy = bigquery_api.CopyJob.from_api_repr({**done, "status": {"state": "RUNNING"}}, client)
        monkeypatch.setattr(copy, "reload", lambda *args, **kwargs: None)
        started = time.monotonic()
        with pytest.raises(BqAssetsError) as error:
            bigquery_jobs.wait_for(copy, f"{DATASET}.wide_copy", "US", table_existed=False)
    assert time.monotonic() - started < STALL_S + 5
    assert f"did not finish within {STALL_S:g} s" in str(error.value)
    assert copy.job_id in str(error.value)


def test_every_run_uses_the_forkserver_multiprocess_executor_with_importable_preloads() -> None:
    import importlib

    from bq_assets.definitions import defs
    from bq_assets.factory import EXECUTOR_CONFIG as config
    from bq_assets.factory import STEP_PRELOAD_MODULES

    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "bq_assets_multiprocess"
    assert config["start_method"] == {"forkserver": {"preload_modules": STEP_PRELOAD_MODULES}}
    assert config["max_concurrent"] >= 2
    for module in STEP_PRELOAD_MODULES:
        importlib.import_module(module)


def _materialize(stack_dir: Path, home: Path, selection: str) -> subprocess.Popen:
    """``dagster asset materialize`` as a user (or the UI's run worker) runs it."""
    env = os.environ | {
        "BQ_ASSETS_LOCAL_DIR": str(stack_dir),
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [DAGSTER, "asset", "materialize", "-m", "bq_assets.definitions", "--select", selection],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_for_line(process: subprocess.Popen, needle: str, timeout_s: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    for line in process.stdout:
        lines.append(line)
        if needle in line or time.monotonic() > deadline:
            return lines
    return lines


def _step_pids(lines: list[str]) -> set[int]:
    return {int(match) for line in lines for match in re.findall(r" - (\d+) - \w+__", line)}


@pytest.mark.timeout(300)
def test_sigterm_stops_a_run_whose_step_waits_on_a_frozen_emulator_within_seconds(
    resources, stack_dir: Path, local_stack: stack.StackState, tmp_path: Path
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    first = _materialize(stack_dir, home, "group:customer_segments")
    assert first.wait(timeout=240) == 0, first.stdout.read()[-3000:]

    with _paused(local_stack.bigquery_pid):
        run = _materialize(stack_dir, home, "databricks/customer_segments")
        lines = _wait_for_line(run, 'Started execution of step "databricks__', timeout_s=120)
        assert run.poll() is None, "".join(lines)[-3000:]
        time.sleep(2)  # the step is now waiting for the frozen Storage Read API
        step_pids = _step_pids(lines) - {run.pid}
        started = time.monotonic()
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=30)
        stopped_after = time.monotonic() - started
    assert stopped_after < 10
    time.sleep(1)
    assert step_pids and not any(stack._alive(pid) for pid in step_pids)
