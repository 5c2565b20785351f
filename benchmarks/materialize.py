"""One `dagster asset materialize` of an export's group, as a user launches it: the job's own
executor in a process of its own. Shared by the benchmarks that time whole runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).parent / "dagster")


def materialize(
    root: Path,
    home: Path,
    exports: Path,
    group: str,
    partition: str | None = None,
    env: dict[str, str] | None = None,
) -> float:
    """Materialize the group ``group`` (one ``partition`` of it, or all) of the exports in
    ``exports`` on the local stack under ``root``, with the instance at ``home``; the command's
    wall seconds. Its output goes to a log under ``root``; a failed run exits with the log's
    last lines."""
    command = [DAGSTER, "asset", "materialize", "-m", "bq_assets.definitions"]
    command += ["--select", f"group:{group}"] + (["--partition", partition] if partition else [])
    environment = os.environ | {
        "BQ_ASSETS_LOCAL_DIR": str(root),
        "BQ_ASSETS_EXPORTS_DIR": str(exports),
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    log = root / f"{group}-{partition or 'all'}-{time.time_ns()}.log"
    started = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run(
            command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    wall = time.monotonic() - started
    if code.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"{group} {partition or ''} failed:\n{tail}")
    return wall
