"""The local cloud stack: idempotent start, exact stop, clear start-up failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bq_assets.local import stack

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
    assert stack.down(tmp_path)
    assert not stack._alive(state.gcs_pid)
    assert not stack._alive(state.bigquery_pid)
    assert not stack.down(tmp_path)


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
