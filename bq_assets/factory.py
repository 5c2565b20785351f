"""The asset factory: every export spec becomes four assets, their checks and a schedule."""

from __future__ import annotations

import dagster as dg

from bq_assets.exports.spec import ExportSpec, check_sources
from bq_assets.resources.pgp import PGP_KEY_VARIABLE, PgpKeyResource
from bq_assets.schedules import build_schedules, failure_sensors, freshness_policy
from bq_assets.stages.bigquery import bigquery_checks, build_bigquery_asset
from bq_assets.stages.databricks import (
    build_databricks_asset,
    databricks_checks,
    refuse_unrunnable_specs,
)
from bq_assets.stages.delivery import (
    build_delivery_asset,
    build_delivery_checks,
    build_delivery_sensor,
)
from bq_assets.stages.freshness import freshness_checks, freshness_sensor
from bq_assets.stages.gcs import build_gcs_asset, gcs_checks
from bq_assets.stages.partitions import partitioned
from bq_assets.stages.query import build_query_asset, query_checks

STAGES = (build_query_asset, build_gcs_asset, build_bigquery_asset, build_databricks_asset)
#: A delivered export has no query: its ``gcs/`` asset is the delivery itself.
DELIVERED_STAGES = (build_delivery_asset, build_bigquery_asset, build_databricks_asset)
CHECKS = (query_checks, gcs_checks, bigquery_checks, databricks_checks, freshness_checks)

# Modules a step's process needs, imported once by the executor's fork server instead of in
# every step: the code location, and the Dagster storage a step opens its instance with
# (SQLAlchemy, alembic; 0.7 s per step otherwise).
STEP_PRELOAD_MODULES = [
    "bq_assets.definitions",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log",
    "dagster._core.storage.runs",
    "dagster._core.storage.schedules",
    "dagster._core.storage.root",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.run_coordinator",
    "dagster._core.launcher",
]

# Every run (from the UI, a schedule, `make demo`) uses this executor. Each step keeps its own
# process, so a crashed step does not take the run's other steps with it; the processes fork
# from a server that imported STEP_PRELOAD_MODULES once (`forkserver`) instead of starting
# Python and importing everything per step (see README "Executor" for the measured figures).
# Four steps at a time: the checks of a hop run side by side.
EXECUTOR_CONFIG = {
    "max_concurrent": 4,
    "start_method": {"forkserver": {"preload_modules": STEP_PRELOAD_MODULES}},
}
EXECUTOR = dg.multiprocess_executor.configured(EXECUTOR_CONFIG, name="bq_assets_multiprocess")


def export_assets(spec: ExportSpec) -> list[dg.AssetsDefinition]:
    """The export's assets (four, or three when delivered), in lineage order, each with the
    cadence's freshness policy; a partitioned export's four share its partitions definition
    and backfill policy."""
    policy = freshness_policy(spec)
    return [
        partitioned(
            spec,
            build(spec).map_asset_specs(
                lambda asset: asset.replace_attributes(freshness_policy=policy)
            ),
        )
        for build in (DELIVERED_STAGES if spec.delivered else STAGES)
    ]


def export_checks(spec: ExportSpec) -> list[dg.AssetChecksDefinition]:
    """Every check of the export's assets, each hop's from the hop's module."""
    if spec.delivered:
        return build_delivery_checks(spec)
    return [check for build in CHECKS for check in build(spec)]


def build_definitions(
    specs: list[ExportSpec],
    resources: dict[str, dg.ConfigurableResource],
    schedule_status: dg.DefaultScheduleStatus,
) -> dg.Definitions:
    refuse_unrunnable_specs(specs, resources.get("databricks"))
    if any(s.delivery and s.delivery.decrypt for s in specs) and "pgp" not in resources:
        # Read when a step decrypts, never at load: a missing variable fails only that step.
        resources = {**resources, "pgp": PgpKeyResource(private_key=dg.EnvVar(PGP_KEY_VARIABLE))}
    source = resources.get("source")
    if source is not None and hasattr(source, "source_names"):
        check_sources(specs, source.source_names())
    return dg.Definitions(
        assets=[asset for spec in specs for asset in export_assets(spec)],
        asset_checks=[check for spec in specs for check in export_checks(spec)],
        # Delivered exports run when a delivery is complete (their sensor), not on a schedule.
        schedules=build_schedules([s for s in specs if not s.delivered], schedule_status),
        sensors=[
            *failure_sensors(),
            *(
                build_delivery_sensor(s, _sensor_status(schedule_status))
                for s in specs
                if s.delivered
            ),
            *freshness_sensor(specs, _sensor_status(schedule_status)),
        ],
        resources=resources,
        executor=EXECUTOR,
    )


def _sensor_status(schedule_status: dg.DefaultScheduleStatus) -> dg.DefaultSensorStatus:
    """Delivery and freshness sensors start running exactly when the schedules do."""
    return (
        dg.DefaultSensorStatus.RUNNING
        if schedule_status == dg.DefaultScheduleStatus.RUNNING
        else dg.DefaultSensorStatus.STOPPED
    )
