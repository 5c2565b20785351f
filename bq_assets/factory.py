"""The asset factory: every export spec becomes four assets, their checks and a schedule."""

from __future__ import annotations

import dagster as dg

from bq_assets.checks import build_checks
from bq_assets.exports.spec import ExportSpec
from bq_assets.schedules import build_failure_sensor, build_schedules, freshness_policy
from bq_assets.stages.bigquery import build_bigquery_asset
from bq_assets.stages.databricks import build_databricks_asset
from bq_assets.stages.gcs_csv import build_gcs_asset
from bq_assets.stages.query import build_query_asset

STAGES = (build_query_asset, build_gcs_asset, build_bigquery_asset, build_databricks_asset)

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
    """The export's four assets, in lineage order, each with the cadence's freshness policy."""
    policy = freshness_policy(spec)
    return [
        build(spec).map_asset_specs(lambda asset: asset.replace_attributes(freshness_policy=policy))
        for build in STAGES
    ]


def build_definitions(
    specs: list[ExportSpec],
    resources: dict[str, dg.ConfigurableResource],
    schedule_status: dg.DefaultScheduleStatus,
) -> dg.Definitions:
    return dg.Definitions(
        assets=[asset for spec in specs for asset in export_assets(spec)],
        asset_checks=[check for spec in specs for check in build_checks(spec)],
        schedules=build_schedules(specs, schedule_status),
        sensors=[build_failure_sensor()],
        resources=resources,
        executor=EXECUTOR,
    )
