"""The asset factory: every export spec becomes its hops' assets, their checks, its schedule
and sensors, composed here and only here.

Each hop module gives a body (``<hop>_materialization``) and its checks (``<hop>_checks``);
the translator gives every asset attribute; every body, asset or check, is wrapped in the one
error mapping (``bq_assets.failures.failing_clearly``). Queried and delivered exports are
composed the same way: a delivered export's ``gcs`` hop is its delivery, and it has no query.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from bq_assets.dagster_internals import STEP_PRELOAD_MODULES
from bq_assets.exports.spec import ExportSpec, check_sources
from bq_assets.failures import failing_clearly
from bq_assets.resources.pgp import PGP_KEY_VARIABLE, PgpKeyResource
from bq_assets.schedules import build_schedules, failure_sensors
from bq_assets.stages.bigquery import bigquery_checks, bigquery_materialization
from bq_assets.stages.cursor import cursor_checks, cursor_freshness_sensor
from bq_assets.stages.databricks import (
    databricks_checks,
    databricks_materialization,
    refuse_unrunnable_specs,
)
from bq_assets.stages.delivery import (
    build_delivery_sensor,
    delivery_checks,
    delivery_materialization,
)
from bq_assets.stages.freshness import freshness_checks, freshness_sensor
from bq_assets.stages.gcs import gcs_checks, gcs_materialization
from bq_assets.stages.query import query_checks, query_materialization
from bq_assets.stages.results import Check, CheckGroup
from bq_assets.translator import ExportTranslator, Hop


@dataclass(frozen=True)
class HopParts:
    """What a hop module gives the factory for one export."""

    materialization: Callable[[ExportSpec], Callable[..., dg.MaterializeResult]]
    checks: Callable[[ExportSpec], list[Check] | list[CheckGroup]]


QUERIED: dict[Hop, HopParts] = {
    "query": HopParts(query_materialization, query_checks),
    "gcs": HopParts(gcs_materialization, gcs_checks),
    "bigquery": HopParts(bigquery_materialization, bigquery_checks),
    "databricks": HopParts(databricks_materialization, databricks_checks),
}
#: A delivered export's ``gcs`` hop is the delivery itself; the rest is a queried export's.
DELIVERED: dict[Hop, HopParts] = {
    **QUERIED,
    "gcs": HopParts(delivery_materialization, delivery_checks),
}
#: Checks that are not one hop's: the latest-partition freshness of a partitioned export, the
#: high-water mark's of a merge export.
EXPORT_CHECKS = (freshness_checks, cursor_checks)

# Every run (from the UI, a schedule, `make demo`) uses this executor. Each step keeps its own
# process, so a crashed step does not take the run's other steps with it; the processes fork
# from a server that imported STEP_PRELOAD_MODULES once (`forkserver`) instead of starting
# Python and importing everything per step (see docs/performance.md, "Executor").
# Four steps at a time: the checks of a hop run side by side.
EXECUTOR_CONFIG = {
    "max_concurrent": 4,
    "start_method": {"forkserver": {"preload_modules": STEP_PRELOAD_MODULES}},
}
EXECUTOR = dg.multiprocess_executor.configured(EXECUTOR_CONFIG, name="bq_assets_multiprocess")


def hop_parts(spec: ExportSpec) -> dict[Hop, HopParts]:
    return DELIVERED if spec.delivered else QUERIED


def hop_asset(spec: ExportSpec, hop: Hop, translator: ExportTranslator) -> dg.AssetsDefinition:
    """The asset of ``spec``'s ``hop``: the translator's spec around the hop's body."""
    asset_spec = translator.get_asset_spec(spec, hop)
    return dg.multi_asset(
        specs=[asset_spec],
        name=asset_spec.key.to_python_identifier(),
        pool=translator.get_pool(spec, hop),
        retry_policy=translator.get_retry_policy(spec, hop),
        backfill_policy=translator.get_backfill_policy(spec, hop),
    )(failing_clearly(hop_parts(spec)[hop].materialization(spec)))


def built_check(check: Check | CheckGroup) -> dg.AssetChecksDefinition:
    """A declared check (or group of checks run as one step) as Dagster's, its body wrapped."""
    body = failing_clearly(check.body)
    if isinstance(check, CheckGroup):
        return dg.multi_asset_check(specs=check.specs, name=check.name, can_subset=True)(body)
    spec = check.spec
    return dg.asset_check(
        asset=spec.asset_key,
        name=spec.name,
        blocking=spec.blocking,
        description=spec.description,
    )(body)


def export_assets(
    spec: ExportSpec, translator: ExportTranslator | None = None
) -> list[dg.AssetsDefinition]:
    """The export's assets (four, or three when delivered), in lineage order."""
    translator = translator or ExportTranslator()
    return [hop_asset(spec, hop, translator) for hop in translator.hops(spec)]


def export_checks(
    spec: ExportSpec, translator: ExportTranslator | None = None
) -> list[dg.AssetChecksDefinition]:
    """Every check of the export: each hop's from the hop's module, then the export's own."""
    translator = translator or ExportTranslator()
    parts = hop_parts(spec)
    declared = [check for hop in translator.hops(spec) for check in parts[hop].checks(spec)]
    declared += [check for build in EXPORT_CHECKS for check in build(spec)]
    return [built_check(check) for check in declared]


def build_definitions(
    specs: list[ExportSpec],
    resources: dict[str, dg.ConfigurableResource],
    schedule_status: dg.DefaultScheduleStatus,
    translator: ExportTranslator | None = None,
) -> dg.Definitions:
    translator = translator or ExportTranslator()
    refuse_unrunnable_specs(specs, resources.get("databricks"))
    if any(s.delivery and s.delivery.decrypt for s in specs) and "pgp" not in resources:
        # Read when a step decrypts, never at load: a missing variable fails only that step.
        resources = {**resources, "pgp": PgpKeyResource(private_key=dg.EnvVar(PGP_KEY_VARIABLE))}
    source = resources.get("source")
    if source is not None and hasattr(source, "source_names"):
        check_sources(specs, source.source_names())
    return dg.Definitions(
        assets=[asset for spec in specs for asset in export_assets(spec, translator)],
        asset_checks=[check for spec in specs for check in export_checks(spec, translator)],
        # Delivered exports run when a delivery is complete (their sensor), not on a schedule.
        schedules=build_schedules(
            [s for s in specs if not s.delivered], schedule_status, translator
        ),
        sensors=[
            *failure_sensors(),
            *(
                build_delivery_sensor(s, _sensor_status(schedule_status))
                for s in specs
                if s.delivered
            ),
            *freshness_sensor(specs, _sensor_status(schedule_status)),
            *cursor_freshness_sensor(specs, _sensor_status(schedule_status)),
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
