"""Checks stop bad data before the next hop, and explain what they found."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.api_core.exceptions import NotFound

from bq_assets.exports import load_specs
from bq_assets.schedules import failed_checks
from bq_assets.translator import bigquery_key, gcs_key, query_key
from bq_assets_tests.conftest import run_exports

pytestmark = pytest.mark.stack


def export_folder(tmp_path: Path, name: str, sql: str, yaml_text: str) -> Path:
    (tmp_path / f"{name}.sql").write_text(sql)
    (tmp_path / f"{name}.yaml").write_text(yaml_text)
    return tmp_path


def test_a_duplicate_key_in_the_source_stops_the_run_before_bigquery(
    local_stack, resources, instance, tmp_path: Path
) -> None:
    folder = export_folder(
        tmp_path,
        "dup_customers",
        "SELECT amperity_id, email FROM (SELECT * FROM customer_360 LIMIT 3) "
        "UNION ALL SELECT amperity_id, email FROM (SELECT * FROM customer_360 LIMIT 1)",
        "primary_key: [amperity_id]\ncadence: daily\n",
    )
    result = run_exports(load_specs(folder), resources, instance)

    (check,) = [
        c
        for c in result.get_asset_check_evaluations()
        if c.check_name == "primary_key_unique_and_not_null"
    ]
    assert not check.passed
    assert check.metadata["duplicated_keys"].value == 1
    ((key, count),) = check.metadata["duplicate_sample"].value
    assert count == "2"
    # The run's failure report says why, not only which check failed.
    (report,) = failed_checks(instance, result.run_id)
    assert report == (
        "query/dup_customers primary_key_unique_and_not_null: "
        f"1 duplicated key(s), e.g. {key}; 0 row(s) with a NULL key"
    )
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == {query_key("dup_customers")}
    assert gcs_key("dup_customers") not in materialized
    with resources["bigquery"].get_client() as client, pytest.raises(NotFound):
        client.get_table(f"{local_stack.project}.amperity_exports.dup_customers")
    assert bigquery_key("dup_customers") not in materialized


def test_null_required_columns_are_counted_per_column(
    local_stack, resources, instance, tmp_path: Path
) -> None:
    folder = export_folder(
        tmp_path,
        "null_emails",
        "SELECT amperity_id, email, phone FROM customer_360",
        "primary_key: [amperity_id]\nrequired: [email, phone]\ncadence: daily\n",
    )
    result = run_exports(load_specs(folder), resources, instance, selection="query/null_emails")
    (check,) = [
        c
        for c in result.get_asset_check_evaluations()
        if c.check_name == "required_columns_not_null"
    ]
    assert not check.passed
    counts = check.metadata["null_counts"].value
    assert counts["email"] > 0 and counts["phone"] > 0


def test_an_empty_result_fails_unless_the_spec_allows_it(
    local_stack, resources, instance, tmp_path: Path
) -> None:
    sql = "SELECT amperity_id FROM customer_360 WHERE false"
    (tmp_path / "strict").mkdir()
    strict = export_folder(
        tmp_path / "strict", "nobody", sql, "primary_key: [amperity_id]\ncadence: daily\n"
    )
    result = run_exports(load_specs(strict), resources, instance, selection="query/nobody")
    (has_rows,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "has_rows"]
    assert not has_rows.passed and has_rows.metadata["rows"].value == 0

    (tmp_path / "lenient").mkdir()
    lenient = export_folder(
        tmp_path / "lenient",
        "nobody_ok",
        sql,
        "primary_key: [amperity_id]\ncadence: daily\nallow_empty: true\n",
    )
    result = run_exports(load_specs(lenient), resources, instance)
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())
    (bq,) = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == bigquery_key("nobody_ok")
    ]
    assert bq.materialization.metadata["dagster/row_count"].value == 0
