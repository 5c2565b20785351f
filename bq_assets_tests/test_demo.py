"""`make demo` as a newcomer meets it: a line of progress per step, then the summary, quiet
otherwise; the full event log stays in the instance (and `--verbose` prints it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from bq_assets.local import stack

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^  \[ *\d+\.\d+s\] (ok|FAILED|retrying|skipped) +(\w+)")


@pytest.fixture(scope="module")
def demo_stack(tmp_path_factory: pytest.TempPathFactory):
    """A stack of the demo's own: it loads the shipped exports' tables, which other tests of
    the session's stack compare with their own runs."""
    root = tmp_path_factory.mktemp("demo-stack")
    stack.up(root)
    yield root
    stack.down(root)


@pytest.mark.timeout(900)
def test_the_demo_prints_a_line_per_step_and_its_summary_and_keeps_every_event(
    demo_stack: Path, tmp_path: Path
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "bq_assets" / "local" / "dagster.yaml", home / "dagster.yaml")
    env = os.environ | {"BQ_ASSETS_LOCAL_DIR": str(demo_stack), "DAGSTER_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "bq_assets.local.demo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    steps = [m.groups() for m in map(STEP_LINE.match, output.splitlines()) if m]
    assert steps and all(outcome == "ok" for outcome, _ in steps), output
    assert {"query__customer_360", "gcs__amperity_orders", "databricks__customer_360"} <= {
        step for _, step in steps
    }
    assert re.search(r"^checks: \d+ passed, 0 failed$", output, re.M), output
    # Each run's summary names what its BigQuery jobs cost (issue 25).
    assert re.search(r"^cost: \d+ BigQuery job\(s\): [\d,]+ bytes processed", output, re.M), output
    # customer_360 merges: a second, incremental run moves the profiles the demo changed (10
    # updated, 2 added) and the rows its lookback sends again, nothing deleted.
    assert "customer_360: 12 profiles of the sample changed; a second, incremental" in output
    assert re.search(r"^  merged .* 2 inserted, (1[0-9]) updated, 0 deleted$", output, re.M)
    assert "DEBUG" not in output and "No dagster instance configuration file" not in output
    lines_per_run_step = len(steps)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        step_ends = sum(
            len(
                instance.get_records_for_run(
                    run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS
                ).records
            )
            for run in runs
        )
        # Every event is still in the instance: far more than the lines printed.
        events = sum(len(instance.all_logs(run.run_id)) for run in runs)
    assert step_ends == lines_per_run_step
    assert events > 10 * lines_per_run_step
