"""The local cloud stack: idempotent start, exact stop, clear start-up failures."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import duckdb
import pytest

from bq_assets.local import sample_data, stack
from bq_assets.local.spark_warehouse import close_sessions
from bq_assets.settings import local_resources

pytestmark = pytest.mark.stack


def test_up_is_idempotent_and_reuses_the_running_stack(local_stack, stack_dir: Path) -> None:
    again = stack.up(stack_dir)
    assert again == local_stack
    assert stack.is_healthy(again)


def test_load_jobs_see_the_objects_written_to_the_gcs_emulator(local_stack) -> None:
    # One GCS root shared by both emulators is what lets BigQuery load gs:// URIs.
    assert Path(local_stack.gcs_root, local_stack.bucket).is_dir()


def test_read_state_without_a_stack_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(stack.StackError, match=r"python -m bq_assets.local up"):
        stack.read_state(tmp_path)


def test_down_stops_exactly_the_processes_it_started(tmp_path: Path) -> None:
    state = stack.up(tmp_path)
    assert stack._alive(state.gcs_pid) and stack._alive(state.bigquery_pid)
    assert stack._alive(state.spark_pid)
    stand_in = local_resources(tmp_path)["databricks"]
    assert stand_in.run("SELECT 1 AS one").rows == [["1"]]  # a Spark Connect session is open
    assert stack.down(tmp_path)
    assert not stack._alive(state.gcs_pid)
    assert not stack._alive(state.bigquery_pid)
    assert not stack._alive(state.spark_pid)
    assert not stack.down(tmp_path)
    # The session's server is gone: ending it gives up at once instead of retrying for minutes
    # (the suite's teardown once hung here).
    started = time.monotonic()
    close_sessions()
    assert time.monotonic() - started < 10


def test_a_restart_drops_objects_a_killed_server_never_finished(tmp_path: Path) -> None:
    # fake-gcs-server writes an object's bytes before its metadata; killed in between, it
    # leaves a file that makes every later listing of the bucket answer 404.
    state = stack.up(tmp_path)
    stack.down(tmp_path)
    half_written = Path(state.gcs_root, state.bucket, "exports", "x", "part-00000.csv.gz")
    half_written.parent.mkdir(parents=True)
    half_written.write_bytes(b"cut off")
    restarted = stack.up(tmp_path)
    try:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(
            project=restarted.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": restarted.gcs_endpoint},
        )
        assert list(client.list_blobs(restarted.bucket, prefix="exports/")) == []
        assert not half_written.exists()
    finally:
        stack.down(tmp_path)


def test_a_component_that_fails_to_start_is_reported_with_its_log(
    tmp_path: Path, monkeypatch
) -> None:
    script = tmp_path / "broken-bqemulator"
    script.write_text("#!/bin/sh\necho 'fatal: cannot open data dir' >&2\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.setattr(stack, "_bqemulator_command", lambda: [str(script)])
    with pytest.raises(stack.StackError) as error:
        stack.up(tmp_path / "stack")
    assert "bqemulator exited during start-up" in str(error.value)
    assert "fatal: cannot open data dir" in str(error.value)
    assert not (tmp_path / "stack" / "stack.json").exists()


def test_the_sample_is_made_again_on_another_day_or_size_and_kept_otherwise(
    tmp_path: Path, monkeypatch
) -> None:
    path = sample_data.ensure(tmp_path / "source.duckdb", 20)
    made = path.stat().st_mtime_ns
    assert sample_data.ensure(path, 20).stat().st_mtime_ns == made  # same day, same size: kept
    sample_data.ensure(path, 30)  # another size: made again
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM customer_360").fetchone() == (30,)
    # The next day the latest partitions must hold orders: yesterday's sample is made again.
    tomorrow = dt.date.today() + dt.timedelta(days=2)
    monkeypatch.setattr(sample_data, "_today", lambda: tomorrow)
    sample_data.ensure(path, 30)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT generated_on FROM sample_info").fetchone() == (tomorrow,)
