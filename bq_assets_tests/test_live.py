"""Opt-in live tests against real Google Cloud and a real Databricks workspace.

They run only when their variables are set, and are skipped with the reason otherwise:

* GCP: ``BQ_ASSETS_LIVE_GCP_PROJECT`` and ``BQ_ASSETS_LIVE_GCS_BUCKET`` (credentials from
  Application Default Credentials or ``GCP_CREDENTIALS_B64``); writes to dataset
  ``bq_assets_live_test``.
* Databricks, in addition: ``DATABRICKS_HOST``, ``DATABRICKS_WAREHOUSE_ID`` and
  ``DATABRICKS_TOKEN`` (the workspace must be able to reach BigQuery: see the README).
* SDK unified authentication (issue 23, finding 3): ``BQ_ASSETS_LIVE_UNIFIED_AUTH=1`` with
  ``DATABRICKS_HOST`` and ``DATABRICKS_WAREHOUSE_ID`` and credentials the Databricks SDK finds by
  itself (a ``.databrickscfg`` profile, a cloud identity, …); ``DATABRICKS_TOKEN`` is ignored.

Each Databricks finding of issue 23 has a case here (``make live-test`` runs them all): the
generated DDL and the catalogs-API drift read (``test_the_generated_statements_run…``), the key
checksum's canonical strings (``test_the_canonical_key_strings…``), results of many chunks
(``test_a_result_of_many_chunks…``), host-only authentication (``test_only_databricks_host…``),
and the spec check of the view's columns and comment (``view_matches_spec`` in the first).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from bq_assets.exports import load_specs
from bq_assets.factory import build_definitions
from bq_assets.local.resources import SampleSourceResource
from bq_assets.resources import (
    DatabricksSQLResource,
    ExportBigQueryResource,
    ExportGCSResource,
)
from bq_assets.settings import databricks_client
from bq_assets_tests.conftest import run_exports, step_errors

pytestmark = pytest.mark.live

GCP_VARIABLES = ["BQ_ASSETS_LIVE_GCP_PROJECT", "BQ_ASSETS_LIVE_GCS_BUCKET"]
DATABRICKS_VARIABLES = ["DATABRICKS_HOST", "DATABRICKS_WAREHOUSE_ID", "DATABRICKS_TOKEN"]


def require(names: list[str]) -> None:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.skip(f"live test: set {', '.join(missing)} to run it against the real service")


def live_export(tmp_path: Path, mode: str = "federation"):
    suffix = uuid.uuid4().hex[:8]
    (tmp_path / "live_customers.sql").write_text(
        "SELECT amperity_id, given_name, email, lifetime_value, updated_at FROM customer_360"
    )
    (tmp_path / "live_customers.yaml").write_text(
        "primary_key: [amperity_id]\ncadence: daily\n"
        f"bigquery: {{dataset: bq_assets_live_test, table: customers_{suffix}}}\n"
        f"databricks: {{schema: bq_assets_live_test, table: customers_{suffix}, mode: {mode}}}\n"
    )
    return load_specs(tmp_path)


def live_resources(tmp_path: Path, databricks: DatabricksSQLResource | None = None) -> dict:
    """Real GCS and BigQuery; Databricks only when given (without it, runs stop at BigQuery)."""
    credentials = os.environ.get("GCP_CREDENTIALS_B64") or None
    bigquery = ExportBigQueryResource(
        project=os.environ["BQ_ASSETS_LIVE_GCP_PROJECT"], gcp_credentials=credentials
    )
    return {
        "source": SampleSourceResource(
            database=str(tmp_path / "source.duckdb"),
            staging_dir=str(tmp_path / "staging"),
            sample_rows=200,
        ),
        "gcs": ExportGCSResource(
            project=os.environ["BQ_ASSETS_LIVE_GCP_PROJECT"],
            bucket=os.environ["BQ_ASSETS_LIVE_GCS_BUCKET"],
            gcp_credentials=credentials,
        ),
        "bigquery": bigquery,
        # Without a workspace the Databricks hop is not run (``GCP_HOPS``): the local stand-in
        # reads the emulator only.
        "databricks": databricks or DatabricksSQLResource(),
    }


def gcp_hops(specs: list) -> list[str]:
    """The hops a GCP-only live test runs: all but Databricks."""
    return [f"{hop}/{spec.name}" for spec in specs for hop in ("query", "gcs", "bigquery")]


def test_the_pipeline_runs_against_real_gcs_and_bigquery(tmp_path: Path) -> None:
    require(GCP_VARIABLES)
    specs = live_export(tmp_path)
    with dg.instance_for_test() as instance:
        result = run_exports(specs, live_resources(tmp_path), instance, gcp_hops(specs))
    assert result.success, step_errors(result)
    assert all(check.passed for check in result.get_asset_check_evaluations())


def warehouse() -> DatabricksSQLResource:
    return DatabricksSQLResource(
        workspace=databricks_client(), warehouse_id=os.environ["DATABRICKS_WAREHOUSE_ID"]
    )


@contextmanager
def live_warehouse() -> Iterator[DatabricksSQLResource]:
    """The warehouse resource with its settings read from the environment, outside a run."""
    with dg.build_resources({"databricks": warehouse()}) as built:
        yield built.databricks


def test_the_generated_statements_run_on_a_real_sql_warehouse(tmp_path: Path) -> None:
    """What only this test proves: Databricks accepts the generated federation DDL (the
    documented option names, `secret(...)` values, `ALTER CONNECTION … OPTIONS`), the catalogs
    API returns the foreign catalog's connection and options as the drift check reads them, and
    the view shows BigQuery's rows, columns, key checksum, and the spec's types and comment
    (`view_matches_spec`, read with DESCRIBE … AS JSON). (`mode: external` is refused at load.)"""
    require(GCP_VARIABLES + DATABRICKS_VARIABLES)
    databricks = warehouse()
    with dg.instance_for_test() as instance:
        result = run_exports(live_export(tmp_path), live_resources(tmp_path, databricks), instance)
    assert result.success, step_errors(result)
    assert all(check.passed for check in result.get_asset_check_evaluations())
    (published,) = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key.path[0] == "databricks"
    ]
    assert published.metadata["drift"].value == ["foreign catalog bigquery: matches the spec"]


def test_partitions_are_replaced_through_partition_decorators(tmp_path: Path) -> None:
    """What only this test proves: BigQuery accepts the production partition load of issue 14
    as issue 23 corrected it: a range of days loaded into a staging table partitioned and
    clustered like the table, each day copied `staging$YYYYMMDD` -> `table$YYYYMMDD` with
    WRITE_TRUNCATE, then one day again alone, other days untouched. (The emulator has no
    decorators: locally `FakePartitionDecorators` asserts the same copies, and the pipeline
    uses a DELETE + INSERT transaction.)"""
    require(GCP_VARIABLES)
    suffix = uuid.uuid4().hex[:8]
    (tmp_path / "live_orders.sql").write_text(
        "SELECT order_id, amperity_id, CAST(order_datetime AS DATE) AS order_date, order_amount "
        "FROM unified_transactions WHERE CAST(order_datetime AS DATE) >= $partition_start_date "
        "AND CAST(order_datetime AS DATE) < $partition_end_date"
    )
    (tmp_path / "live_orders.yaml").write_text(
        "primary_key: [order_id]\ncadence: daily\n"
        "partitioning: {by: day, start: 2024-01-01, column: order_date}\n"
        f"bigquery: {{dataset: bq_assets_live_test, table: orders_{suffix}}}\n"
        f"databricks: {{schema: bq_assets_live_test, table: orders_{suffix}}}\n"
    )
    specs = load_specs(tmp_path)
    resources = live_resources(tmp_path)
    days = [(dt.datetime.now(dt.UTC).date() - dt.timedelta(days=n)).isoformat() for n in (3, 2, 1)]
    job = build_definitions(
        specs, resources, dg.DefaultScheduleStatus.STOPPED
    ).resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance:
        for first, last in [(days[0], days[-1]), (days[1], days[1])]:
            result = job.execute_in_process(
                instance=instance,
                raise_on_error=False,
                asset_selection=[dg.AssetKey.from_user_string(k) for k in gcp_hops(specs)],
                tags={
                    "dagster/asset_partition_range_start": first,
                    "dagster/asset_partition_range_end": last,
                },
            )
            assert result.success, step_errors(result)
            assert all(check.passed for check in result.get_asset_check_evaluations())
            (loaded,) = {
                e.materialization.metadata["partition_overwrite"].value
                for e in result.get_asset_materialization_events()
                if e.asset_key.path[0] == "bigquery"
            }
            assert loaded == "decorator"


def test_the_canonical_key_strings_are_equal_in_bigquery_and_through_federation(
    tmp_path: Path,
) -> None:
    """Issue 23, finding 5: the key checksum's canonical string of each key type, computed by
    real BigQuery and by a SQL warehouse reading the same table through the foreign catalog,
    over the adversarial values of test_key_checksum.py. Also shows the plain CASTs differing."""
    require(GCP_VARIABLES + DATABRICKS_VARIABLES)
    from google.cloud import bigquery as bq

    from bq_assets.engine.key_checksum import canonical_key_sql
    from bq_assets_tests.test_key_checksum import COLUMNS, KEYED, ROWS

    # A run creates the connection and the foreign catalog this test reads.
    databricks = warehouse()
    with dg.instance_for_test() as instance:
        specs = live_export(tmp_path)
        result = run_exports(specs, live_resources(tmp_path, databricks), instance)
    assert result.success, step_errors(result)
    project = os.environ["BQ_ASSETS_LIVE_GCP_PROJECT"]
    table = f"key_values_{uuid.uuid4().hex[:8]}"
    resources = live_resources(tmp_path, databricks)
    with resources["bigquery"].get_client() as client:
        schema = [bq.SchemaField("id", "INT64")]
        schema += [bq.SchemaField(n, t) for n, t in COLUMNS.items()]
        created = client.create_table(
            bq.Table(f"{project}.bq_assets_live_test.{table}", schema=schema)
        )
        assert client.insert_rows_json(created, ROWS) == []
        for column in KEYED:
            key = [(column, COLUMNS[column])]
            expected = {
                row[0]: row[1]
                for row in client.query(
                    f"SELECT id, {canonical_key_sql('bigquery', key)} "
                    f"FROM `{project}.bq_assets_live_test.{table}`"
                ).result()
            }
            with live_warehouse() as live:
                shown = live.execute(
                    f"SELECT id, {canonical_key_sql('databricks', key)} "
                    f"FROM `{specs[0].databricks.foreign_catalog}`.`bq_assets_live_test`.`{table}`"
                )
            assert {int(row[0]): row[1] for row in shown} == expected, column
        client.delete_table(created)


def test_a_result_of_many_chunks_is_read_whole() -> None:
    """The Statement Execution API splits a large INLINE result into chunks; every one is read
    (``next_chunk_index``), none is lost."""
    require(DATABRICKS_VARIABLES)
    with live_warehouse() as live:
        rows = live.execute("SELECT id, repeat('x', 200) AS pad FROM range(0, 60000) ORDER BY id")
    assert len(rows) == 60000
    assert [int(r[0]) for r in rows[:3]] == [0, 1, 2] and int(rows[-1][0]) == 59999


def test_only_databricks_host_reaches_the_workspace_with_sdk_credentials(monkeypatch) -> None:
    """Issue 23, finding 3: with DATABRICKS_HOST and no token or OAuth variables of ours, the
    SDK's own credential chain authenticates (https://docs.databricks.com/aws/en/dev-tools/auth/unified-auth)."""
    require(["BQ_ASSETS_LIVE_UNIFIED_AUTH", "DATABRICKS_HOST", "DATABRICKS_WAREHOUSE_ID"])
    for variable in ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET"):
        monkeypatch.delenv(variable, raising=False)
    with live_warehouse() as live:
        assert live.execute("SELECT 1") == [["1"]]
