"""End to end on the real local stack: source → GCS → BigQuery → Databricks stand-in."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import dagster as dg
import duckdb
import pytest

from bq_assets.exports import ExportSpec, load_specs
from bq_assets.exports.sql import partition_parameters
from bq_assets.local.delivery import simulate_deliveries
from bq_assets.local.spark_warehouse import SparkDatabricksResource
from bq_assets.partitioning import Window
from bq_assets.stages.databricks import table_name
from bq_assets.stages.partitions import latest_complete_partition
from bq_assets.translator import (
    ExportTranslator,
    bigquery_key,
    databricks_key,
    gcs_key,
    query_key,
)
from bq_assets_tests.conftest import run_exports, step_errors

pytestmark = pytest.mark.stack


def normalized(value: object) -> object:
    """One comparable form per value. Empty strings compare as NULL: the emulator loads an
    empty CSV field and a quoted "" both as NULL (a documented emulator difference)."""
    if value == "":
        return None
    if isinstance(value, Decimal):
        return value.normalize()
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC)
    return value


def sorted_rows(rows: list[tuple], key_index: int = 0) -> list[tuple]:
    return sorted(
        (tuple(normalized(v) for v in row) for row in rows), key=lambda r: str(r[key_index])
    )


#: A merge export's query over every row: its window from the beginning to now.
EVERY_ROW = {
    "cursor_start": dt.datetime(1, 1, 1, tzinfo=dt.UTC),
    "cursor_end": dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
}


def source_rows(
    spec: ExportSpec, database: str, window: Window | None = None
) -> tuple[list[str], list[tuple]]:
    """The export query's result on the source (a partitioned export's: of ``window``; a
    merge export's: every row, as its first run sends them)."""
    parameters = window.parameters(partition_parameters(spec.sql)) if window else None
    if spec.merged:
        parameters = EVERY_ROW
    with duckdb.connect(database, read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        cursor = con.execute(spec.sql, parameters)
        return [d[0] for d in cursor.description], cursor.fetchall()


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.fixture(scope="module")
def customer_360_run(local_stack, resources, shipped_specs, tmp_path_factory):
    spec = next(s for s in shipped_specs if s.name == "customer_360")
    with dg.instance_for_test() as instance:
        result = run_exports([spec], resources, instance)
        yield spec, result


def test_the_whole_graph_materializes_and_every_check_passes(customer_360_run) -> None:
    _, result = customer_360_run
    assert result.success, step_errors(result)
    checks = result.get_asset_check_evaluations()
    # 10, matches_spec and table_matches_spec, column_governance_matches_spec on the table and
    # the view, and a merge export's merge_matches_window, primary_key_unique_in_table and
    # latest_cursor_fresh
    assert len(checks) == 17
    assert all(check.passed for check in checks), [c.check_name for c in checks if not c.passed]


def test_every_hop_reports_the_same_row_count(customer_360_run, resources) -> None:
    spec, result = customer_360_run
    _, rows = source_rows(spec, resources["source"].database)
    counts = {
        stage: metadata(result, key(spec.name))["dagster/row_count"]
        for stage, key in [
            ("query", query_key),
            ("gcs", gcs_key),
            ("bigquery", bigquery_key),
            ("databricks", databricks_key),
        ]
    }
    assert counts == dict.fromkeys(counts, len(rows))


def test_each_materialization_records_the_column_lineage_of_its_definition(
    customer_360_run,
) -> None:
    """Dagster's UI draws a column's lineage from the latest materialization, falling back to
    the definition's: each hop records the same ``dagster/column_lineage`` with its data."""
    spec, result = customer_360_run
    translator = ExportTranslator()
    for hop in translator.hops(spec):
        recorded = metadata(result, translator.get_asset_key(spec, hop))["dagster/column_lineage"]
        assert (
            recorded == translator.get_materialization_metadata(spec, hop)["dagster/column_lineage"]
        )
    email = metadata(result, databricks_key(spec.name))["dagster/column_lineage"]
    assert email.deps_by_column["email"] == [
        dg.TableColumnDep(asset_key=bigquery_key(spec.name), column_name="email")
    ]


def test_bigquery_holds_exactly_the_source_rows(customer_360_run, resources) -> None:
    spec, result = customer_360_run
    columns, expected = source_rows(spec, resources["source"].database)
    table_id = metadata(result, bigquery_key(spec.name))["dagster/table_name"]
    with resources["bigquery"].get_client() as client:
        table = client.get_table(table_id)
        rows = [tuple(row.values()) for row in client.list_rows(table)]
    assert [f.name for f in table.schema] == columns
    assert sorted_rows(rows) == sorted_rows(expected)


def test_the_databricks_table_holds_exactly_the_source_rows(customer_360_run, resources) -> None:
    spec, _ = customer_360_run
    columns, expected = source_rows(spec, resources["source"].database)
    databricks: SparkDatabricksResource = resources["databricks"]
    table = databricks.read_table(table_name(spec))
    assert table.column_names == columns
    rows = [tuple(row.values()) for row in table.to_pylist()]
    assert sorted_rows(rows) == sorted_rows(expected)


def test_the_gcs_objects_are_exactly_the_manifest(customer_360_run, resources) -> None:
    spec, result = customer_360_run
    meta = metadata(result, gcs_key(spec.name))
    prefix = meta["dagster/uri"]
    bucket, _, folder = prefix.removeprefix("gs://").partition("/")
    names = {b.name for b in resources["gcs"].get_client().list_blobs(bucket, prefix=folder)}
    shards = {o["uri"].removeprefix(f"gs://{bucket}/") for o in meta["objects"]}
    assert names == shards | {folder + "manifest.json", folder + "_SUCCESS"}


def test_the_staging_snapshot_is_run_scoped_in_object_storage(customer_360_run, resources) -> None:
    spec, result = customer_360_run
    meta = metadata(result, query_key(spec.name))
    uri = meta["snapshot_uri"]
    assert meta["dagster/uri"] == uri
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    assert name == f"staging/{spec.name}/{result.run_id}/snapshot.parquet"
    blob = resources["gcs"].get_client().bucket(bucket).get_blob(name)
    assert blob is not None and blob.size == meta["bytes"]
    assert metadata(result, gcs_key(spec.name))["input_run_id"] == result.run_id


def test_a_second_run_gives_the_same_result(customer_360_run, resources) -> None:
    spec, first = customer_360_run
    with dg.instance_for_test() as instance:
        second = run_exports([spec], resources, instance)
    assert second.success, step_errors(second)
    table_id = metadata(second, bigquery_key(spec.name))["dagster/table_name"]
    with resources["bigquery"].get_client() as client:
        rows = [tuple(r.values()) for r in client.list_rows(table_id)]
    _, expected = source_rows(spec, resources["source"].database)
    assert sorted_rows(rows) == sorted_rows(expected)
    assert (
        metadata(second, gcs_key(spec.name))["dagster/uri"]
        != metadata(first, gcs_key(spec.name))["dagster/uri"]
    )


def test_all_shipped_exports_materialize(local_stack, resources, shipped_specs, instance) -> None:
    gcs = resources["gcs"]
    simulate_deliveries(shipped_specs, gcs.get_client().bucket(gcs.get_bucket_name()))
    # One run: the partitioned unified_transactions loads its latest complete day.
    (orders,) = [spec for spec in shipped_specs if spec.partitioned]
    yesterday = latest_complete_partition(orders, dt.datetime.now(dt.UTC))
    result = run_exports(shipped_specs, resources, instance, partition_key=yesterday)
    assert result.success, step_errors(result)
    assert all(c.passed for c in result.get_asset_check_evaluations())
    assert len(result.get_asset_materialization_events()) == sum(
        3 if spec.delivered else 4 for spec in shipped_specs
    )
    assert {
        e.materialization.partition
        for e in result.get_asset_materialization_events()
        if e.asset_key.path[-1] == orders.name
    } == {yesterday}


def test_a_sql_file_ending_in_a_comment_runs(local_stack, resources, instance, tmp_path) -> None:
    (tmp_path / "commented.sql").write_text(
        "-- the five first customers\nSELECT amperity_id FROM customer_360\n"
        "ORDER BY amperity_id LIMIT 5; -- keep it small\n"
    )
    (tmp_path / "commented.yaml").write_text("primary_key: [amperity_id]\ncadence: daily\n")
    specs = load_specs(tmp_path)
    result = run_exports(specs, resources, instance, selection="query/commented")
    assert result.success, step_errors(result)
    (event,) = result.get_asset_materialization_events()
    assert event.materialization.metadata["dagster/row_count"].value == 5
