"""The code location loads, and its graph is what the users see in the UI."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from bq_assets.exports import load_specs
from bq_assets.factory import build_definitions
from bq_assets.settings import (
    PROD_REQUIRED,
    ConfigurationError,
    check_specs_for_environment,
    local_resources,
    prod_resources,
    schedule_status,
)

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
        stages = STAGES[1:] if spec.delivered else STAGES  # a delivery has no query asset
        keys = [dg.AssetKey([stage, spec.name]) for stage in stages]
        for upstream, downstream in itertools.pairwise(keys):
            assert graph.get(downstream).parent_keys == {upstream}
        assert {graph.get(k).group_name for k in keys} == {spec.name}
    assert len(graph.materializable_asset_keys) == sum(
        3 if spec.delivered else 4 for spec in shipped_specs
    )
    # The rest are what the exports read: external assets (see test_column_lineage.py).
    external = graph.get_all_asset_keys() - graph.materializable_asset_keys
    assert {k.path[0] for k in external} == {"source"}


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
    assert checks[("gcs/amperity_orders", "header_matches_spec")].blocking
    assert checks[("gcs/amperity_orders", "rows_add_up")].blocking
    # The latest-partition freshness check warns and never blocks.
    assert not checks[("bigquery/unified_transactions", "latest_partition_fresh")].blocking
    # What the table's spec declares is checked but does not block the next hop.
    assert not checks[("bigquery/customer_360", "table_matches_spec")].blocking
    # The merge export's two merge checks block; the freshness of its mark only warns.
    assert checks[("bigquery/customer_360", "merge_matches_window")].blocking
    assert checks[("bigquery/customer_360", "primary_key_unique_in_table")].blocking
    assert not checks[("bigquery/customer_360", "latest_cursor_fresh")].blocking
    # Three queried exports (one partitioned: its freshness check; one merged: its three), one
    # delivered: 12 checks per queried export, 9 for the delivered one (view_matches_spec on each
    # Databricks view, table_matches_spec on each BigQuery table), and
    # column_governance_matches_spec on each export's BigQuery table and Databricks view.
    assert len(checks) == 36 + 1 + 3 + 9 + 4 + 4


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


@pytest.mark.parametrize("value", ["Running", "on", "runing", ""])
def test_a_schedules_setting_with_a_typo_fails_the_load(monkeypatch, value: str) -> None:
    monkeypatch.setenv("BQ_ASSETS_SCHEDULES", value)
    with pytest.raises(ConfigurationError, match=f"BQ_ASSETS_SCHEDULES={value!r} is not one of"):
        schedule_status()


def test_the_schedules_setting_overrides_the_environment_default(monkeypatch) -> None:
    monkeypatch.delenv("BQ_ASSETS_SCHEDULES", raising=False)
    assert schedule_status() == dg.DefaultScheduleStatus.STOPPED
    monkeypatch.setenv("BQ_ASSETS_SCHEDULES", "running")
    assert schedule_status() == dg.DefaultScheduleStatus.RUNNING


def test_a_null_marker_is_refused_locally_with_the_reason(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "orders.sql").write_text("SELECT 1 AS id")
    (tmp_path / "orders.yaml").write_text(
        "primary_key: [id]\ncadence: daily\ncsv: {null_marker: '\\N'}\n"
    )
    specs = load_specs(tmp_path)
    monkeypatch.setenv("BQ_ASSETS_ENV", "local")
    with pytest.raises(ConfigurationError) as error:
        check_specs_for_environment(specs)
    assert f"{tmp_path / 'orders.yaml'}: csv.null_marker" in str(error.value)
    assert "bqemulator ignores a load's null_marker" in str(error.value)
    monkeypatch.setenv("BQ_ASSETS_ENV", "prod")
    assert check_specs_for_environment(specs) == specs


def test_a_csv_without_header_is_refused_locally_since_the_emulator_drops_line_one(
    monkeypatch, tmp_path: Path
) -> None:
    (tmp_path / "orders.sql").write_text("SELECT 1 AS id")
    (tmp_path / "orders.yaml").write_text(
        "primary_key: [id]\ncadence: daily\ncsv: {header: false}\n"
    )
    monkeypatch.setenv("BQ_ASSETS_ENV", "local")
    with pytest.raises(ConfigurationError, match=r"orders.yaml: csv.header: false cannot run"):
        check_specs_for_environment(load_specs(tmp_path))
