"""The code location loads, and its graph is what the users see in the UI."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from bq_assets.factory import build_definitions
from bq_assets.settings import PROD_REQUIRED, ConfigurationError, local_resources, prod_resources

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["query", "gcs", "bigquery", "databricks"]


@pytest.fixture(scope="module")
def defs(shipped_specs, tmp_path_factory) -> dg.Definitions:
    resources = local_resources(tmp_path_factory.mktemp("unused-stack"))
    return build_definitions(shipped_specs, resources, dg.DefaultScheduleStatus.STOPPED)


def test_dagster_definitions_validate_passes_on_the_workspace(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            Path(sys.executable).parent / "dagster",
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=ROOT,
        env=os.environ | {"DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_export_has_four_assets_in_one_group_linked_in_order(defs, shipped_specs) -> None:
    graph = defs.resolve_asset_graph()
    for spec in shipped_specs:
        keys = [dg.AssetKey([stage, spec.name]) for stage in STAGES]
        for upstream, downstream in itertools.pairwise(keys):
            assert graph.get(downstream).parent_keys == {upstream}
        assert {graph.get(k).group_name for k in keys} == {spec.name}
    assert len(graph.get_all_asset_keys()) == 4 * len(shipped_specs)


def test_assets_carry_kinds_owners_and_freshness(defs) -> None:
    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey(["bigquery", "customer_360"]))
    assert node.kinds == {"bigquery"}
    assert node.owners == ["team:data-platform"]
    assert node.freshness_policy is not None
    assert graph.get(dg.AssetKey(["gcs", "customer_360"])).kinds == {"gcs", "csv"}


def test_checks_guarding_the_next_hop_are_blocking(defs) -> None:
    graph = defs.resolve_asset_graph()
    checks = {
        (k.asset_key.to_user_string(), k.name): graph.get_check_spec(k)
        for k in graph.asset_check_keys
    }
    assert checks[("query/customer_360", "primary_key_unique_and_not_null")].blocking
    assert checks[("gcs/customer_360", "objects_match_manifest")].blocking
    assert checks[("bigquery/customer_360", "rows_match_manifest")].blocking
    assert len(checks) == 30


def test_prod_reports_every_missing_variable_at_once(monkeypatch) -> None:
    for name in PROD_REQUIRED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GCP_PROJECT", "my-project")
    with pytest.raises(ConfigurationError) as error:
        prod_resources()
    message = str(error.value)
    for name in PROD_REQUIRED:
        if name != "GCP_PROJECT":
            assert name in message
    assert "GCP_PROJECT" not in message


def test_prod_resources_take_secrets_only_as_env_vars(monkeypatch) -> None:
    for name in PROD_REQUIRED:
        monkeypatch.setenv(name, f"value-of-{name.lower()}")
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-secret-token")
    monkeypatch.setenv("GCP_CREDENTIALS_B64", "c2VjcmV0")
    resources = prod_resources()
    assert "dapi-secret-token" not in repr(resources)
    assert "c2VjcmV0" not in repr(resources)


def test_an_unknown_environment_is_rejected(monkeypatch) -> None:
    monkeypatch.setenv("BQ_ASSETS_ENV", "staging")
    from bq_assets.settings import environment

    with pytest.raises(
        ConfigurationError, match="BQ_ASSETS_ENV='staging' is not one of local, prod"
    ):
        environment()
