"""Freshness of a partitioned export judged on its *latest* partition.

Dagster's freshness policy looks at an asset's latest materialization of any partition, so a
backfill of old days would count as fresh. This check asks the question a user of the table
asks: has the partition that the schedule should have loaded by now arrived? That partition is
the newest one that had ended at the export's last schedule tick, once the tick's run has had
``RUN_ALLOWANCE`` to finish (a daily export ticking at 06:00 New York time is expected to hold
yesterday by 08:00). A later partition counts too.

The check is a warning, not blocking: it says nothing about the data a run loaded. It runs
with every run of the export and, through ``freshness_sensor``, once each time the expected
partition moves on, so a missed tick shows up without any run of the export.
"""

import datetime as dt
from collections.abc import Callable

import dagster as dg

from bq_assets.dagster_internals import last_tick_at_or_before
from bq_assets.exports.spec import ExportSpec
from bq_assets.stages.partitions import latest_complete_partition
from bq_assets.stages.results import Check
from bq_assets.translator import bigquery_key

LATEST_PARTITION_FRESH = "latest_partition_fresh"
#: How long the run of a schedule tick may take before its partition counts as late.
RUN_ALLOWANCE = dt.timedelta(hours=2)
SENSOR_INTERVAL_S = 15 * 60


def expected_partition(spec: ExportSpec, now: dt.datetime) -> str | None:
    """The newest partition the schedule should have loaded by ``now`` (None before the first
    tick after the first partition ended). Same answer for every ``now`` between two ticks."""
    last_tick = last_tick_at_or_before(now - RUN_ALLOWANCE, spec.cron_schedule, spec.timezone)
    return latest_complete_partition(spec, last_tick)


def latest_partition_result(
    spec: ExportSpec, materialized: set[str], now: dt.datetime
) -> dg.AssetCheckResult:
    """Pass when the expected partition, or a later one, has been loaded."""
    expected = expected_partition(spec, now)
    latest = max(materialized, default=None)  # keys are ISO dates: text order is date order
    fresh = expected is None or (latest is not None and latest >= expected)
    return dg.AssetCheckResult(
        passed=fresh,
        severity=dg.AssetCheckSeverity.WARN,
        description=None
        if fresh
        else f"partition {expected} should have been loaded by now (its schedule ticked "
        f"at least {RUN_ALLOWANCE} ago); the latest loaded is {latest or 'none'}",
        metadata={"expected_partition": expected or "", "latest_partition": latest or ""},
    )


def freshness_checks(spec: ExportSpec) -> list[Check]:
    """The latest-partition check of a partitioned export's BigQuery table (none otherwise)."""
    if spec.partitioning is None:
        return []
    key = bigquery_key(spec.name)

    def latest_partition_fresh(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        materialized = set(context.instance.get_materialized_partitions(key))
        return latest_partition_result(spec, materialized, dt.datetime.now(dt.UTC))

    return [
        Check(
            dg.AssetCheckSpec(
                LATEST_PARTITION_FRESH,
                asset=key,
                description="The partition the schedule should have loaded by now (or a later "
                f"one) is in the table; warns {RUN_ALLOWANCE} after a tick whose partition did "
                "not arrive.",
            ),
            latest_partition_fresh,
        )
    ]


def check_sensor(
    name: str,
    description: str,
    specs: list[ExportSpec],
    check_name: str,
    run_key: Callable[[ExportSpec, dt.datetime], str | None],
    status: dg.DefaultSensorStatus,
) -> list[dg.SensorDefinition]:
    """One sensor that runs the check ``check_name`` of each spec's BigQuery asset alone, under
    the run key ``<export>:<run_key(spec, now)>`` (None: nothing due yet). Dagster starts a run
    key once, so each check runs once per key, without a run of the export. None when no spec
    has the check."""
    if not specs:
        return []
    checks = [dg.AssetCheckKey(bigquery_key(spec.name), check_name) for spec in specs]

    @dg.sensor(
        name=name,
        asset_selection=dg.AssetSelection.checks(*checks),
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=status,
        description=description,
    )
    def _sensor(context: dg.SensorEvaluationContext) -> list[dg.RunRequest]:
        now = dt.datetime.now(dt.UTC)
        requests = []
        for spec, check in zip(specs, checks, strict=True):
            key = run_key(spec, now)
            if key is not None:
                requests.append(
                    dg.RunRequest(run_key=f"{spec.name}:{key}", asset_check_keys=[check])
                )
        return requests

    return [_sensor]


def freshness_sensor(
    specs: list[ExportSpec], status: dg.DefaultSensorStatus
) -> list[dg.SensorDefinition]:
    """One sensor that runs each partitioned export's latest-partition check once per expected
    partition (run key ``<export>:<partition>``), so lateness is reported without a run."""
    return check_sensor(
        "latest_partition_freshness",
        "Checks that each partitioned export's latest partition arrived, once per partition, "
        "after its schedule's tick.",
        [spec for spec in specs if spec.partitioning is not None],
        LATEST_PARTITION_FRESH,
        expected_partition,
        status,
    )
