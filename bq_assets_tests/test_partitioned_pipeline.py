"""Partitioned exports end to end on the real local stack (issue 14): a backfill of three days,
a late correction of the second day re-materialized alone, and a load that would spill
outside its partition."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from bq_assets.exports import ExportSpec, load_specs
from bq_assets.factory import build_definitions, export_assets
from bq_assets.resources.source import DuckDBSourceResource
from bq_assets.stages.databricks import table_name
from bq_assets.stages.freshness import LATEST_PARTITION_FRESH
from bq_assets.translator import bigquery_key, databricks_key, gcs_key, query_key
from bq_assets_tests.conftest import step_errors
from bq_assets_tests.test_pipeline import sorted_rows

pytestmark = pytest.mark.stack

DAYS = ("2026-01-05", "2026-01-06", "2026-01-07")
SQL = """
SELECT order_id, amperity_id, order_datetime, amount
FROM orders
WHERE order_datetime >= $partition_start AND order_datetime < $partition_end
"""
SPEC = """
description: Orders, one New York day per partition.
primary_key: [order_id]
required: [order_datetime]
cadence: daily
timezone: America/New_York
partitioning: {by: day, start: 2026-01-01, column: order_datetime, max_partitions_per_run: 3}
bigquery: {dataset: partition_tests}
databricks: {schema: partition_tests}
"""
# Every order of 4 to 8 January (New York), four a day at 00:00, 06:00, 12:00 and 23:59:59
# local time: the first and last fall on the day's edges.
ORDERS = """
CREATE OR REPLACE TABLE orders AS
SELECT
    'ORD-' || strftime(d, '%Y%m%d') || '-' || h AS order_id,
    'AMP-' || (h * 7 % 5) AS amperity_id,
    timezone('America/New_York', d + to_seconds(s)) AS order_datetime,
    (h * 10.25)::DECIMAL(10, 2) AS amount
FROM range(TIMESTAMP '2026-01-04', TIMESTAMP '2026-01-09', INTERVAL 1 DAY) AS days(d),
     (VALUES (1, 0), (2, 21600), (3, 43200), (4, 86399)) AS hours(h, s)
"""


def spec_in(folder: Path, sql: str = SQL, name: str = "pt_orders") -> ExportSpec:
    (folder / f"{name}.sql").write_text(sql)
    (folder / f"{name}.yaml").write_text(SPEC)
    (spec,) = load_specs(folder)
    return spec


@pytest.fixture
def orders(local_stack, resources, tmp_path: Path) -> tuple[dict, Path]:
    """The stack's resources with a source of its own (a DuckDB file this test changes)."""
    database = tmp_path / "orders.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute(ORDERS)
    source = DuckDBSourceResource(database=str(database), staging_dir=str(tmp_path / "staging"))
    return {**resources, "source": source}, database


def materialize(
    spec: ExportSpec,
    resources: dict,
    instance: dg.DagsterInstance,
    first: str,
    last: str,
    selection: list[dg.AssetKey] | None = None,
) -> dg.ExecuteInProcessResult:
    """One run of the export's four assets (or ``selection``) and their checks over
    partitions first…last."""
    job = build_definitions(
        [spec], resources, dg.DefaultScheduleStatus.STOPPED
    ).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        asset_selection=selection,
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
    )


def hop_checks(evaluations: list) -> list:
    """The checks of the data a run loaded, without the latest-partition freshness warning
    (these tests load days of January 2026, long before the latest partition)."""
    return [c for c in evaluations if c.check_name != LATEST_PARTITION_FRESH]


def source_rows(database: Path, first: str, last: str) -> list[tuple]:
    """The source's orders of New York days first…last, as the export selects them."""
    start = dt.datetime.fromisoformat(first).replace(tzinfo=dt.UTC)
    with duckdb.connect(str(database), read_only=True) as con:
        con.execute("SET TimeZone = 'America/New_York'")
        return con.execute(
            "SELECT order_id, amperity_id, order_datetime, amount FROM orders "
            "WHERE order_datetime >= $start::TIMESTAMP::TIMESTAMPTZ "
            "AND order_datetime < ($end::TIMESTAMP + INTERVAL 1 DAY)::TIMESTAMPTZ",
            {"start": start.date(), "end": dt.date.fromisoformat(last)},
        ).fetchall()


def bigquery_rows(resources: dict, table_id: str) -> list[tuple]:
    with resources["bigquery"].get_client() as client:
        return [tuple(row.values()) for row in client.list_rows(table_id)]


def latest_bigquery_metadata(instance: dg.DagsterInstance, export: str, day: str) -> dict:
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=bigquery_key(export), asset_partitions=[day]), limit=1
    ).records
    metadata = record.event_log_entry.asset_materialization.metadata
    return {name: value.value for name, value in metadata.items()}


def test_a_corrected_day_replaces_exactly_that_partition(orders, tmp_path: Path) -> None:
    resources, database = orders
    spec = spec_in(tmp_path)
    with dg.instance_for_test() as instance:
        backfill = materialize(spec, resources, instance, DAYS[0], DAYS[-1])
        assert backfill.success, step_errors(backfill)
        evaluations = backfill.get_asset_check_evaluations()
        assert all(c.passed for c in hop_checks(evaluations))
        # January is not the partition the schedule should have loaded by now: the table is
        # late, and the latest-partition check says so (a warning; the backfill still succeeds).
        (fresh,) = [c for c in evaluations if c.check_name == LATEST_PARTITION_FRESH]
        assert not fresh.passed and fresh.severity == dg.AssetCheckSeverity.WARN
        assert "should have been loaded by now" in (fresh.description or "")
        assert fresh.metadata["latest_partition"].value == DAYS[-1]
        before = {day: latest_bigquery_metadata(instance, spec.name, day) for day in DAYS}
        table_id = before[DAYS[0]]["dagster/table_name"]
        assert sorted_rows(bigquery_rows(resources, table_id)) == sorted_rows(
            source_rows(database, DAYS[0], DAYS[-1])
        )
        assert before[DAYS[0]]["rows_by_partition"] == dict.fromkeys(DAYS, 4)

        # A late correction of 6 January: one order updated, one deleted, one added.
        with duckdb.connect(str(database)) as con:
            con.execute("UPDATE orders SET amount = 999.99 WHERE order_id = 'ORD-20260106-2'")
            con.execute("DELETE FROM orders WHERE order_id = 'ORD-20260106-3'")
            con.execute(
                "INSERT INTO orders VALUES ('ORD-20260106-5', 'AMP-9', "
                "TIMESTAMPTZ '2026-01-06 18:30:00-05', 5.00)"
            )
        refresh = materialize(spec, resources, instance, DAYS[1], DAYS[1])
        assert refresh.success, step_errors(refresh)
        checks = hop_checks(refresh.get_asset_check_evaluations())
        # 11, table_matches_spec, column_governance_matches_spec on the table and the view
        assert len(checks) == 14 and all(c.passed for c in checks), [
            (c.check_name, c.description) for c in checks if not c.passed
        ]
        # The BigQuery row check compared the one partition this run loaded, not the table.
        (rows,) = [c for c in checks if c.check_name == "rows_match_manifest"]
        assert rows.metadata["table_rows"].value == 4
        assert rows.metadata["table_rows_by_partition"].value == {DAYS[1]: 4}

        after = {day: latest_bigquery_metadata(instance, spec.name, day) for day in DAYS}
        loaded = bigquery_rows(resources, table_id)
        expected = source_rows(database, DAYS[0], DAYS[-1])
        assert sorted_rows(loaded) == sorted_rows(expected)
        assert len({row[0] for row in loaded}) == len(loaded) == 12  # no duplicates
        assert after[DAYS[1]]["rows_by_partition"] == {DAYS[1]: 4}
        assert after[DAYS[1]]["job_id"] != before[DAYS[1]]["job_id"]
        # The other two days were not touched: their latest load is still the backfill's.
        for day in (DAYS[0], DAYS[2]):
            assert after[day]["job_id"] == before[day]["job_id"]

        databricks = resources["databricks"].read_table(table_name(spec))
        rows = [tuple(row.values()) for row in databricks.to_pylist()]
        assert sorted_rows(rows) == sorted_rows(expected)
        events = refresh.get_asset_materialization_events()
        assert {e.materialization.partition for e in events} == {DAYS[1]}
        # Each partition has its own object prefix; a backfill run's prefix names its range.
        (gcs,) = {
            e.materialization.metadata["dagster/uri"].value
            for e in events
            if e.asset_key == gcs_key(spec.name)
        }
        assert f"/exports/pt_orders/{DAYS[1]}/{refresh.run_id}/" in gcs
        (backfill_gcs,) = {
            e.materialization.metadata["dagster/uri"].value
            for e in backfill.get_asset_materialization_events()
            if e.asset_key == gcs_key(spec.name)
        }
        assert f"/exports/pt_orders/{DAYS[0]}_{DAYS[2]}/{backfill.run_id}/" in backfill_gcs

        # A run of bigquery/ alone reads the objects written for its own partition(s): the
        # refresh's for the second day; for the third, the backfill's, written for three days,
        # which it refuses (their rows would not fit one day), saying what to re-materialize.
        bigquery_only = [bigquery_key(spec.name)]
        alone = materialize(spec, resources, instance, DAYS[1], DAYS[1], bigquery_only)
        assert alone.success, step_errors(alone)
        assert latest_bigquery_metadata(instance, spec.name, DAYS[1])["input_run_id"] == (
            refresh.run_id
        )
        other = materialize(spec, resources, instance, DAYS[2], DAYS[2], bigquery_only)
        assert not other.success
        (error,) = step_errors(other).values()
        assert (
            f"gcs/pt_orders, which this step reads, was materialized by run {backfill.run_id}"
            in (error)
        )
        assert "re-materialize gcs/pt_orders (with its upstream) for exactly these" in error
        # A range whose partitions were exported by different runs has no one input to load.
        mixed = materialize(spec, resources, instance, DAYS[0], DAYS[2], bigquery_only)
        assert not mixed.success
        (error,) = step_errors(mixed).values()
        assert "for partitions 2026-01-05…2026-01-07 come from different runs" in error
        assert databricks_key(spec.name) in {e.asset_key for e in events}


def test_rows_outside_the_partition_publish_nothing(orders, tmp_path: Path) -> None:
    resources, _ = orders
    # The query forgets the end bound's day: it returns the next day's orders too.
    leaky = SQL.replace("$partition_end", "$partition_end + INTERVAL 1 DAY")
    spec = spec_in(tmp_path, leaky, name="pt_leaky")
    assets = export_assets(spec)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            assets, resources=resources, instance=instance, partition_key=DAYS[0],
            raise_on_error=False,
        )  # fmt: skip
    assert not result.success
    (error,) = step_errors(result).values()
    assert "4 row(s) of partition 2026-01-05" in error
    assert "outside the partition (or NULL); nothing was published" in error
    table_id = f"{resources['bigquery'].project_id()}.partition_tests.pt_leaky"
    assert bigquery_rows(resources, table_id) == []


def test_an_appending_export_checks_the_rows_it_appended(orders, tmp_path: Path) -> None:
    """rows_match_manifest compares what the run loaded: with WRITE_APPEND the table grows by
    the manifest's rows every run, and the second run's check still passes."""
    resources, _ = orders
    (tmp_path / "pt_appended.sql").write_text("SELECT order_id, amount FROM orders")
    (tmp_path / "pt_appended.yaml").write_text(
        "primary_key: [order_id]\ncadence: daily\n"
        "bigquery: {dataset: partition_tests, write_disposition: WRITE_APPEND}\n"
        "databricks: {schema: partition_tests}\n"
    )
    (spec,) = load_specs(tmp_path)
    job = build_definitions(
        [spec], resources, dg.DefaultScheduleStatus.STOPPED
    ).resolve_implicit_global_asset_job_def()
    selection = [query_key(spec.name), gcs_key(spec.name), bigquery_key(spec.name)]
    with dg.instance_for_test() as instance:
        for _ in (1, 2):
            result = job.execute_in_process(
                instance=instance, raise_on_error=False, asset_selection=selection
            )
            assert result.success, step_errors(result)
            (rows,) = [
                c for c in result.get_asset_check_evaluations()
                if c.check_name == "rows_match_manifest"
            ]  # fmt: skip
            assert rows.passed, rows.description
            assert rows.metadata["loaded_rows"].value == rows.metadata["manifest_rows"].value == 20
    table_id = f"{resources['bigquery'].project_id()}.partition_tests.pt_appended"
    assert len(bigquery_rows(resources, table_id)) == 2 * 20


def test_a_monthly_export_on_a_date_column_loads_its_month(orders, tmp_path: Path) -> None:
    """Months of a DATE column, the window read as dates ($partition_start_date / _end_date):
    the January partition holds exactly January's orders, by their New York date."""
    resources, _ = orders
    (tmp_path / "pt_monthly.sql").write_text(
        "SELECT order_id, CAST(timezone('America/New_York', order_datetime) AS DATE) AS day, "
        "amount FROM orders WHERE CAST(timezone('America/New_York', order_datetime) AS DATE) "
        ">= $partition_start_date AND CAST(timezone('America/New_York', order_datetime) AS DATE) "
        "< $partition_end_date"
    )
    (tmp_path / "pt_monthly.yaml").write_text(
        "primary_key: [order_id]\ncadence: daily\ntimezone: America/New_York\n"
        "partitioning: {by: month, start: 2025-12-01, column: day}\n"
        "bigquery: {dataset: partition_tests}\ndatabricks: {schema: partition_tests}\n"
    )
    (spec,) = load_specs(tmp_path)
    with dg.instance_for_test() as instance:
        result = materialize(spec, resources, instance, "2026-01-01", "2026-01-01")
    assert result.success, step_errors(result)
    assert all(c.passed for c in hop_checks(result.get_asset_check_evaluations()))
    table_id = f"{resources['bigquery'].project_id()}.partition_tests.pt_monthly"
    days = sorted(row[1] for row in bigquery_rows(resources, table_id))
    # 4 to 8 January (New York), four orders a day: all of them, and nothing else.
    assert days == sorted(dt.date(2026, 1, d) for d in range(4, 9) for _ in range(4))
