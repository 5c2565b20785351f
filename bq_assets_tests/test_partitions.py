"""Partitioned exports (issue 14), without the stack: what a spec may declare and what load
rejects, the window a partition covers, the bound parameters the query gets, the shared
partitions definition and backfill policy, and the schedule's latest complete partition."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest
from google.cloud import bigquery

from bq_assets.engine.bigquery_partitions import check_partitioning
from bq_assets.engine.layout import ObjectLayout
from bq_assets.errors import BqAssetsError
from bq_assets.exports import SHIPPED_EXPORTS_DIR, load_specs
from bq_assets.factory import build_definitions
from bq_assets.partitioning import Window, aligned_with_bigquery, decorator
from bq_assets.resources.source import DuckDBSourceResource
from bq_assets.schedules import build_schedules
from bq_assets.settings import local_resources
from bq_assets.sources.snapshot import PartitionColumnError
from bq_assets.stages.freshness import (
    LATEST_PARTITION_FRESH,
    expected_partition,
    latest_partition_result,
)
from bq_assets.stages.partitions import partitions_definition
from bq_assets.translator import bigquery_key, databricks_key, gcs_key, query_key
from bq_assets_tests.test_export_spec import load_error
from bq_assets_tests.test_export_spec import write_export as write_spec

WINDOWED = (
    "SELECT id, amount, sold_at FROM sales "
    "WHERE sold_at >= $partition_start AND sold_at < $partition_end"
)
PARTITIONED = (
    "primary_key: [id]\ncadence: daily\ntimezone: America/New_York\n"
    "partitioning: {by: day, start: 2026-01-01, column: sold_at}\n"
)


def write_export(folder: Path, yaml_text: str, sql: str = WINDOWED, name: str = "sales") -> Path:
    """A windowed export ``sales`` (the spec tests' helper, with this file's defaults)."""
    return write_spec(folder, name, yaml_text, sql)


def test_the_shipped_orders_export_is_partitioned_by_new_york_days(shipped_specs) -> None:
    spec = next(s for s in shipped_specs if s.name == "unified_transactions")
    assert spec.partitioning is not None
    assert (spec.partitioning.by, spec.partitioning.column, spec.timezone) == (
        "day",
        "order_datetime",
        "America/New_York",
    )
    assert spec.bigquery_partition_field == "order_datetime"


def test_a_partitioned_export_loads(tmp_path: Path) -> None:
    write_export(tmp_path, PARTITIONED)
    (spec,) = load_specs(tmp_path)
    assert spec.partitioning is not None and spec.partitioning.max_partitions_per_run == 10


@pytest.mark.parametrize(
    ("yaml_extra", "sql", "fragment"),
    [
        (
            "",
            "SELECT id, amount, sold_at FROM sales",
            "the query must select the partition's rows with bound parameters",
        ),
        (
            "",
            "SELECT id, amount, sold_at FROM sales WHERE sold_at >= $partition_start",
            "a start and an end",
        ),
        (
            "",
            "SELECT id, sold_at FROM sales WHERE sold_at >= $partition_start "
            "AND sold_at < $partition_stop",
            "unknown parameter(s) $partition_stop; allowed: $partition_start, $partition_end",
        ),
        (
            "",
            "SELECT id, amount FROM sales WHERE sold_at >= $partition_start "
            "AND sold_at < $partition_end",
            "partitioning.column: sold_at not among the query's columns (id, amount)",
        ),
        (
            "",
            "SELECT id, CAST(sold_at AS VARCHAR) AS sold_at FROM sales "
            "WHERE sold_at >= $partition_start AND sold_at < $partition_end",
            "partitioning.column: sold_at is TEXT in the query; it must be a DATE or TIMESTAMP",
        ),
        (
            "bigquery: {partition_field: amount}\n",
            WINDOWED,
            "bigquery.partition_field: amount differs from partitioning.column sold_at",
        ),
        (
            "bigquery: {write_disposition: WRITE_APPEND}\n",
            WINDOWED,
            "only WRITE_TRUNCATE (the default) is allowed",
        ),
    ],
)
def test_a_partitioned_export_is_checked_at_load(
    tmp_path: Path, yaml_extra: str, sql: str, fragment: str
) -> None:
    path = write_export(tmp_path, PARTITIONED + yaml_extra, sql)
    message = load_error(tmp_path)
    assert str(path) in message
    assert fragment in message


@pytest.mark.parametrize(
    ("partitioning", "fragment"),
    [
        ("{by: week, start: 2026-01-01, column: sold_at}", "2026-01-01 is not a Monday"),
        ("{by: month, start: 2026-01-02, column: sold_at}", "not the first day of a month"),
        ("{by: hour, start: 2026-01-01, column: sold_at}", "'hour' is not allowed"),
        ("{by: day, start: 2026-01-01}", "partitioning.column: Field required"),
    ],
)
def test_the_partitioning_block_names_what_is_wrong(
    tmp_path: Path, partitioning: str, fragment: str
) -> None:
    write_export(tmp_path, f"primary_key: [id]\ncadence: daily\npartitioning: {partitioning}\n")
    assert fragment in load_error(tmp_path)


def test_a_partitioned_export_names_its_objects_by_partition(tmp_path: Path) -> None:
    write_export(tmp_path, PARTITIONED)
    (spec,) = load_specs(tmp_path)
    assert spec.objects.template == "exports/{export}/{partition}/{run}/part-{shard:05d}"
    layout = ObjectLayout(
        template=spec.objects.template,
        export="sales",
        run_id="r1",
        run_date=dt.date(2026, 1, 2),
        suffix=".csv.gz",
        partition="2026-01-01",
    )
    assert layout.shard(0) == "exports/sales/2026-01-01/r1/part-00000.csv.gz"
    assert layout.run_prefix == "exports/sales/2026-01-01/r1/"
    assert layout.export_prefix == "exports/sales/"  # retention sees every partition's runs
    match = layout.run_prefix_pattern().match("exports/sales/2026-01-05_2026-01-07/r0/x.csv.gz")
    assert match is not None and match["run"] == "r0"


def test_the_partition_placeholder_needs_a_partitioned_export(tmp_path: Path) -> None:
    write_export(
        tmp_path,
        "primary_key: [id]\ncadence: daily\n"
        "objects: {template: 'exports/{export}/{partition}/{run}/part-{shard:05d}'}\n",
        "SELECT id, amount, sold_at FROM sales",
    )
    assert "objects.template: {partition} needs a partitioned export" in load_error(tmp_path)


def test_window_parameters_in_an_unpartitioned_export_are_refused(tmp_path: Path) -> None:
    write_export(tmp_path, "primary_key: [id]\ncadence: daily\n")
    assert "the query uses $partition_end, $partition_start but the export is not partitioned" in (
        load_error(tmp_path)
    )


def test_a_window_covers_its_partitions_in_the_exports_timezone() -> None:
    window = Window(("2026-03-07", "2026-03-08"), "day", "America/New_York")
    assert window.start == dt.datetime(2026, 3, 7, tzinfo=ZoneInfo("America/New_York"))
    assert window.end.astimezone(dt.UTC) == dt.datetime(2026, 3, 9, 4, tzinfo=dt.UTC)  # DST
    assert window.parameters(["partition_start_date", "partition_end"]) == {
        "partition_start_date": dt.date(2026, 3, 7),
        "partition_end": window.end,
    }
    assert [w.keys for w in window.split()] == [("2026-03-07",), ("2026-03-08",)]
    month = Window(("2026-12-01",), "month", "UTC")
    assert (month.start_date, month.end_date) == (dt.date(2026, 12, 1), dt.date(2027, 1, 1))
    assert Window(("2026-01-05",), "week", "UTC").end_date == dt.date(2026, 1, 12)


def test_bigquery_partitions_are_named_by_decorators_when_they_line_up() -> None:
    assert decorator("2026-01-31", "day") == "$20260131"
    assert decorator("2026-01-01", "month") == "$202601"
    assert aligned_with_bigquery("day", "DATE", "America/New_York")
    assert aligned_with_bigquery("day", "TIMESTAMP", "UTC")
    # BigQuery cuts TIMESTAMP partitions at UTC midnight and has no weeks.
    assert not aligned_with_bigquery("day", "TIMESTAMP", "America/New_York")
    assert not aligned_with_bigquery("week", "DATE", "UTC")


def sales_source(tmp_path: Path) -> DuckDBSourceResource:
    database = tmp_path / "sales.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute(
            "CREATE TABLE sales AS SELECT * FROM (VALUES "
            "(1, 10.0, TIMESTAMPTZ '2026-01-01 04:59:59+00'), "  # 31 Dec, 23:59:59 in New York
            "(2, 20.0, TIMESTAMPTZ '2026-01-01 05:00:00+00'), "  # 1 Jan, midnight in New York
            "(3, 30.0, TIMESTAMPTZ '2026-01-02 04:59:59+00'), "
            "(4, 40.0, TIMESTAMPTZ '2026-01-02 05:00:00+00')) AS t(id, amount, sold_at)"
        )
    return DuckDBSourceResource(database=str(database), staging_dir=str(tmp_path / "staging"))


def test_the_query_gets_the_window_as_bound_parameters(tmp_path: Path) -> None:
    window = Window(("2026-01-01",), "day", "America/New_York")
    snapshot = tmp_path / "s.parquet"
    sales_source(tmp_path).snapshot(
        WINDOWED,
        Path("sales.sql"),
        snapshot,
        parameters=window.parameters(["partition_start", "partition_end"]),
        partition_column="sold_at",
    )
    assert sorted(r["id"] for r in pq.read_table(snapshot).to_pylist()) == [2, 3]


def test_a_partition_column_of_another_type_fails_before_reading(tmp_path: Path) -> None:
    window = Window(("2026-01-01",), "day", "UTC")
    with pytest.raises(PartitionColumnError) as error:
        sales_source(tmp_path).snapshot(
            "SELECT id, sold_at, amount FROM sales WHERE sold_at >= $partition_start "
            "AND sold_at < $partition_end",
            Path("sales.sql"),
            tmp_path / "s.parquet",
            parameters=window.parameters(["partition_start", "partition_end"]),
            partition_column="amount",
        )
    assert str(error.value) == (
        "sales.sql: partitioning.column: amount is DECIMAL(3,1); allowed: a column of type "
        "DATE, TIMESTAMP, TIMESTAMP WITH TIME ZONE (cast it, e.g. CAST(amount AS DATE))"
    )
    assert not (tmp_path / "s.parquet").exists()


@pytest.fixture(scope="module")
def defs(shipped_specs, tmp_path_factory) -> dg.Definitions:
    resources = local_resources(tmp_path_factory.mktemp("unused"))
    return build_definitions(shipped_specs, resources, dg.DefaultScheduleStatus.STOPPED)


def test_the_four_assets_share_one_partitions_definition_and_backfill_policy(defs) -> None:
    graph = defs.resolve_asset_graph()
    keys = [
        key("unified_transactions") for key in (query_key, gcs_key, bigquery_key, databricks_key)
    ]
    nodes = [graph.get(k) for k in keys]
    assert {str(n.partitions_def) for n in nodes} == {
        "Daily, starting 2024-01-01 America/New_York."
    }
    assert {n.backfill_policy for n in nodes} == {
        dg.BackfillPolicy.multi_run(max_partitions_per_run=31)
    }
    # Unpartitioned exports stay exactly as they were.
    assert graph.get(bigquery_key("customer_360")).partitions_def is None


@pytest.mark.parametrize(
    ("tick", "partition"),
    [
        (dt.datetime(2026, 11, 25, 6), "2026-11-24"),  # the daily 06:00 tick: yesterday
        (dt.datetime(2026, 11, 25, 0, 30), "2026-11-24"),  # just after midnight in New York
        (dt.datetime(2026, 11, 24, 23, 59), "2026-11-23"),  # 24 Nov is not over yet
    ],
)
def test_the_schedule_runs_the_latest_complete_partition_in_its_timezone(
    defs, tick: dt.datetime, partition: str
) -> None:
    schedule = next(s for s in defs.schedules if s.name.startswith("daily_america_new_york"))
    assert schedule.name == "daily_america_new_york_refresh_schedule"  # the name it had
    with dg.build_schedule_context(
        scheduled_execution_time=tick.replace(tzinfo=ZoneInfo("America/New_York")),
        repository_def=defs.get_repository_def(),
    ) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == partition
    assert request.tags["bq_assets/export"] == "unified_transactions"
    assert len(request.asset_selection) == 4


def test_a_partitioned_export_gets_a_job_of_its_own_beside_its_cadence(shipped_specs) -> None:
    daily = [
        s.model_copy(update={"timezone": "UTC"})
        for s in shipped_specs
        if s.cadence == "daily" and not s.delivered
    ]
    schedules = build_schedules(daily, dg.DefaultScheduleStatus.STOPPED)
    assert sorted(s.name for s in schedules) == [
        "daily_utc_refresh_schedule",  # customer_360, as before
        "daily_utc_unified_transactions_refresh_schedule",
    ]


def test_a_decorator_load_refuses_a_table_partitioned_otherwise(tmp_path: Path) -> None:
    write_export(tmp_path, PARTITIONED)
    (spec,) = load_specs(tmp_path)
    config = bigquery.LoadJobConfig(
        time_partitioning=bigquery.TimePartitioning(type_="DAY", field="sold_at")
    )
    table = bigquery.Table("p.d.sales")
    check_partitioning(
        bigquery.Table.from_api_repr(
            {**table.to_api_repr(), "timePartitioning": {"type": "DAY", "field": "sold_at"}}
        ),
        config,
        spec,
    )
    with pytest.raises(BqAssetsError) as error:
        check_partitioning(table, config, spec)
    assert str(error.value).startswith(
        "p.d.sales is not partitioned, but " + str(spec.spec_file) + " partitions it by DAY on "
        "sold_at: BigQuery cannot change a table's partitioning."
    )


def test_weekly_partitions_run_monday_to_monday_and_monthly_from_the_first(tmp_path: Path) -> None:
    for by, start, first_keys in [
        ("week", "2026-01-05", ["2026-01-05", "2026-01-12"]),
        ("month", "2026-01-01", ["2026-01-01", "2026-02-01"]),
    ]:
        folder = tmp_path / by
        folder.mkdir()
        write_export(
            folder,
            f"primary_key: [id]\ncadence: daily\ntimezone: Europe/London\n"
            f"partitioning: {{by: {by}, start: {start}, column: sold_at}}\n",
        )
        (spec,) = load_specs(folder)
        definition = partitions_definition(spec)
        assert definition is not None
        keys = definition.get_partition_keys(current_time=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
        assert keys[:2] == first_keys
        day = 0 if by == "week" else None  # weeks start on Mondays, months on the 1st
        assert all(
            dt.date.fromisoformat(k).weekday() == day if day == 0 else k.endswith("-01")
            for k in keys
        )


NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # The 06:00 tick loads 24 Nov; its run has until 08:00 to finish.
        (dt.datetime(2026, 11, 25, 7, 59), "2026-11-23"),
        (dt.datetime(2026, 11, 25, 8, 0), "2026-11-24"),
        (dt.datetime(2026, 11, 26, 3, 0), "2026-11-24"),  # before the next tick's allowance
    ],
)
def test_the_latest_partition_expected_by_now_follows_the_schedule_and_its_allowance(
    shipped_specs, now: dt.datetime, expected: str
) -> None:
    spec = next(s for s in shipped_specs if s.name == "unified_transactions")
    assert expected_partition(spec, now.replace(tzinfo=NEW_YORK)) == expected


def test_freshness_is_judged_on_the_latest_partition_not_on_any_partition(shipped_specs) -> None:
    spec = next(s for s in shipped_specs if s.name == "unified_transactions")
    now = dt.datetime(2026, 11, 25, 9, 0, tzinfo=NEW_YORK)
    assert latest_partition_result(spec, {"2026-11-23", "2026-11-24"}, now).passed
    assert latest_partition_result(spec, {"2026-11-25"}, now).passed  # a later one counts
    # A backfill of old days does not make the table fresh: 24 Nov is still missing.
    late = latest_partition_result(spec, {"2026-01-05", "2026-11-23"}, now)
    assert not late.passed and late.severity == dg.AssetCheckSeverity.WARN
    assert late.description == (
        "partition 2026-11-24 should have been loaded by now (its schedule ticked at least "
        "2:00:00 ago); the latest loaded is 2026-11-23"
    )
    assert not latest_partition_result(spec, set(), now).passed


def test_the_freshness_sensor_checks_each_expected_partition_once(defs) -> None:
    sensor = next(s for s in defs.sensors if s.name == "latest_partition_freshness")
    check = dg.AssetCheckKey(bigquery_key("unified_transactions"), LATEST_PARTITION_FRESH)
    assert check in {key for c in defs.asset_checks for key in c.check_keys}
    with dg.build_sensor_context(repository_def=defs.get_repository_def()) as context:
        (request,) = sensor.evaluate_tick(context).run_requests
    assert request.asset_check_keys == [check]
    spec_now = expected_partition(
        next(s for s in load_specs(SHIPPED_EXPORTS_DIR) if s.partitioning),
        dt.datetime.now(dt.UTC),
    )
    assert request.run_key == f"unified_transactions:{spec_now}"  # one run per partition
