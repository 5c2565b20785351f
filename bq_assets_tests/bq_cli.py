"""Google's own ``bq`` command against the local BigQuery emulator (the google-cloud-cli on this
machine image): a second reader of what the emulator holds, besides our client library."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest


def bq_show(endpoint: str, project: str, table_id: str, config_dir: Path) -> dict:
    """``bq show --format=json`` of ``project.dataset.table`` on the emulator at ``endpoint``;
    skips the test, saying why, where ``bq`` is not installed. No login: a token file with any
    token and a config directory of its own (see /work/shared/DESIGN.md)."""
    bq = shutil.which("bq")
    if bq is None:
        pytest.skip("Google's bq command is not installed (google-cloud-cli); nothing to compare")
    sdk = Path(bq).resolve().parent.parent
    discovery = sdk / "platform" / "bq" / "discovery_next" / "bigquery.json"
    if not discovery.exists():
        pytest.skip(f"bq is installed but its discovery document is not at {discovery}")
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "token").write_text("local-emulator-token")
    _, dataset, table = table_id.split(".")
    result = subprocess.run(
        [bq, f"--api={endpoint}", f"--discovery_file={discovery}", f"--project_id={project}",
         "show", "--format=json", f"{project}:{dataset}.{table}"],
        env={"PATH": "/usr/bin:/bin", "CLOUDSDK_CONFIG": str(config_dir),
             "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(config_dir / "token")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)
