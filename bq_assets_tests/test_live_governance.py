"""Opt-in live tests of governed columns and cost (issue 25): what only real BigQuery, Data
Catalog and Unity Catalog can show. They run when the variables of ``test_live.py`` are set,
plus ``BQ_ASSETS_LIVE_POLICY_TAG`` (a policy tag resource name the test's service account may
apply, and read through: Fine-Grained Reader) for the policy-tag case; skipped otherwise.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import dagster as dg
import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bq_assets.engine.bigquery_metering import MeteredClient
from bq_assets.exports import load_specs
from bq_assets.failures import as_bq_assets_error
from bq_assets.resources import ExportBigQueryResource
from bq_assets_tests.conftest import run_exports, step_errors
from bq_assets_tests.test_live import GCP_VARIABLES, gcp_hops, live_resources, require

pytestmark = pytest.mark.live

DATASET = "bq_assets_live_test"


def governed_export(tmp_path: Path, partitioned: bool = False) -> list:
    suffix = uuid.uuid4().hex[:8]
    if partitioned:
        (tmp_path / "live_governed.sql").write_text(
            "SELECT order_id, amperity_id, order_datetime, order_amount FROM unified_transactions "
            "WHERE order_datetime >= $partition_start AND order_datetime < $partition_end"
        )
        extra = "partitioning: {by: day, start: 2024-01-01, column: order_datetime}\n"
        key, classified = "order_id", "amperity_id"
    else:
        (tmp_path / "live_governed.sql").write_text(
            "SELECT amperity_id, email, state FROM customer_360"
        )
        extra, key, classified = "", "amperity_id", "email"
    (tmp_path / "live_governed.yaml").write_text(
        f"primary_key: [{key}]\ncadence: daily\n{extra}"
        f"bigquery: {{dataset: {DATASET}, table: governed_{suffix}, labels: {{team: live}}}}\n"
        f"columns:\n  {key}: {{description: The key.}}\n"
        f"  {classified}: {{description: Classified., classification: pii_email}}\n"
    )
    return load_specs(tmp_path)


def tagged_resources(tmp_path: Path) -> dict:
    resources = live_resources(tmp_path)
    tag = os.environ["BQ_ASSETS_LIVE_POLICY_TAG"]
    plain = resources["bigquery"]
    resources["bigquery"] = ExportBigQueryResource(
        project=plain.project, gcp_credentials=plain.gcp_credentials, policy_tags={"pii_email": tag}
    )
    return resources


def test_live_descriptions_and_policy_tags_survive_the_first_publish_and_a_replace(
    tmp_path: Path,
) -> None:
    """The first publish creates the table; the second replaces it by a copy with
    WRITE_TRUNCATE; the governance check reads both back from BigQuery and passes."""
    require([*GCP_VARIABLES, "BQ_ASSETS_LIVE_POLICY_TAG"])
    specs = governed_export(tmp_path)
    resources = tagged_resources(tmp_path)
    with dg.instance_for_test() as instance:
        for _ in range(2):
            result = run_exports(specs, resources, instance, gcp_hops(specs))
            assert result.success, step_errors(result)
            governed = [
                c
                for c in result.get_asset_check_evaluations()
                if c.check_name == "column_governance_matches_spec"
            ]
            assert governed and all(c.passed for c in governed)


def test_live_descriptions_and_policy_tags_survive_partition_replaces(tmp_path: Path) -> None:
    """One day loaded twice: the first creates the partitioned table, the second replaces the
    day (a copy to its decorator, WRITE_TRUNCATE); the governance check passes both times."""
    require([*GCP_VARIABLES, "BQ_ASSETS_LIVE_POLICY_TAG"])
    specs = governed_export(tmp_path, partitioned=True)
    resources = tagged_resources(tmp_path)
    with dg.instance_for_test() as instance:
        for _ in range(2):
            result = run_exports(
                specs, resources, instance, gcp_hops(specs), partition_key="2024-01-02"
            )
            assert result.success, step_errors(result)


def test_live_a_partition_delete_s_dry_run_reads_one_day_not_the_table(tmp_path: Path) -> None:
    """The dry-run bytes estimate of the partition transaction's DELETE on a real day-
    partitioned table: one day's bytes, well under the whole table's."""
    require(GCP_VARIABLES)
    project = os.environ["BQ_ASSETS_LIVE_GCP_PROJECT"]
    table_id = f"{project}.{DATASET}.pruning_{uuid.uuid4().hex[:8]}"
    client = bigquery.Client(project=project)
    client.create_dataset(DATASET, exists_ok=True)
    client.query(
        f"CREATE TABLE `{table_id}` PARTITION BY DATE(ts) AS "
        "SELECT TIMESTAMP_ADD(TIMESTAMP '2024-01-01', INTERVAL n MINUTE) AS ts, "
        "REPEAT('x', 100) AS payload FROM UNNEST(GENERATE_ARRAY(0, 60 * 24 * 30 - 1)) AS n"
    ).result()
    try:
        dry = bigquery.QueryJobConfig(dry_run=True, use_query_cache=False)
        day = client.query(
            f"DELETE FROM `{table_id}` WHERE `ts` >= TIMESTAMP '2024-01-05 00:00:00+00' "
            "AND `ts` < TIMESTAMP '2024-01-06 00:00:00+00'",
            job_config=dry,
        ).total_bytes_processed
        whole = client.query(
            f"DELETE FROM `{table_id}` WHERE payload = 'y'", job_config=dry
        ).total_bytes_processed
        assert 0 < day * 20 < whole
    finally:
        client.delete_table(table_id, not_found_ok=True)


def test_live_a_query_over_its_bytes_billed_cap_is_refused_with_one_message() -> None:
    require(GCP_VARIABLES)
    project = os.environ["BQ_ASSETS_LIVE_GCP_PROJECT"]
    client = MeteredClient(bigquery.Client(project=project), {"team": "live"}, 1)
    with pytest.raises(gexc.GoogleAPICallError) as refused:
        client.query("SELECT COUNT(*) FROM `bigquery-public-data.samples.shakespeare`").result()
    error = as_bq_assets_error(refused.value, {})
    assert error is not None and not error.retryable
    assert "maximum_bytes_billed" in str(error)


def test_live_the_view_carries_comments_tags_and_masking_on_a_real_sql_warehouse(
    tmp_path: Path,
) -> None:
    """What only a workspace shows: Unity Catalog accepts `SET TAGS` on the view's columns and
    lists them in information_schema.column_tags, the dynamic view masks for a principal outside
    the group, and the governance check reads it all back."""
    from bq_assets.resources import DatabricksSQLResource
    from bq_assets.settings import databricks_client
    from bq_assets_tests.test_live import DATABRICKS_VARIABLES

    require(GCP_VARIABLES + DATABRICKS_VARIABLES)
    (tmp_path / "live_masked.sql").write_text("SELECT amperity_id, email FROM customer_360")
    suffix = uuid.uuid4().hex[:8]
    (tmp_path / "live_masked.yaml").write_text(
        "primary_key: [amperity_id]\ncadence: daily\n"
        f"bigquery: {{dataset: {DATASET}, table: masked_{suffix}}}\n"
        f"databricks: {{schema: {DATASET}, table: masked_{suffix}, "
        "masking: {pii_email: bq_assets_no_one}}\n"
        "columns:\n  email: {description: Email., classification: pii_email}\n"
    )
    specs = load_specs(tmp_path)
    databricks = DatabricksSQLResource(
        workspace=databricks_client(), warehouse_id=os.environ["DATABRICKS_WAREHOUSE_ID"]
    )
    with dg.instance_for_test() as instance:
        result = run_exports(specs, live_resources(tmp_path, databricks), instance)
    assert result.success, step_errors(result)
    governed = [
        c
        for c in result.get_asset_check_evaluations()
        if c.check_name == "column_governance_matches_spec"
    ]
    assert len(governed) == 2 and all(c.passed for c in governed)
    rows = databricks.execute(f"SELECT count(email) FROM `main`.`{DATASET}`.`masked_{suffix}`")
    assert rows == [["0"]]  # the test's principal is in no group named bq_assets_no_one
