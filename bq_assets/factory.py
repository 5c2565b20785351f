"""The asset factory: every export spec becomes its hops' assets, their checks, its schedule
and sensors, composed here and only here.

Each hop module gives a body (``<hop>_materialization``) and its checks (``<hop>_checks``);
the translator gives every asset attribute; every body, asset or check, is wrapped in the one
error mapping (``bq_assets.failures.failing_clearly``). Queried and delivered exports are
composed the same way: a delivered export's ``gcs`` hop is its delivery, and it has no query.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

from bq_assets.column_lineage import lineage_of
from bq_assets.dagster_internals import STEP_PRELOAD_MODULES
from bq_assets.exports.columns import check_classifications
from bq_assets.exports.source_names import Places, SourcePlace
from bq_assets.exports.spec import ExportSpec, check_sources
from bq_assets.failures import failing_clearly
from bq_assets.resources.google import ExportBigQueryResource
from bq_assets.resources.pgp import PGP_KEY_VARIABLE, PgpKeyResource
from bq_assets.schedules import build_schedules, failure_sensors
from bq_assets.sources.declarations import DEFAULT_SOURCE
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

logger = logging.getLogger(__name__)


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
    )(
        failing_clearly(
            recording(
                translator.get_materialization_metadata(spec, hop),
                hop_parts(spec)[hop].materialization(spec),
            )
        )
    )


def recording(
    metadata: Mapping[str, Any], body: Callable[..., dg.MaterializeResult]
) -> Callable[..., dg.MaterializeResult]:
    """``body``, its materialization also recording ``metadata`` (the translator's, the same
    for every run: the column lineage). Dagster sees ``body``'s parameters and resources."""

    @functools.wraps(body)
    def function(context: dg.AssetExecutionContext, *args: Any, **kwargs: Any) -> Any:
        context.add_asset_metadata(dict(metadata))
        return body(context, *args, **kwargs)

    function.__signature__ = inspect.signature(body, eval_str=True)  # type: ignore[attr-defined]
    return function


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
    translator = (translator or ExportTranslator()).placed(places_of(resources))
    refuse_unrunnable_specs(specs, resources.get("databricks"))
    report_unresolved_lineage(specs)
    if any(s.delivery and s.delivery.decrypt for s in specs) and "pgp" not in resources:
        # Read when a step decrypts, never at load: a missing variable fails only that step.
        resources = {**resources, "pgp": PgpKeyResource(private_key=dg.EnvVar(PGP_KEY_VARIABLE))}
    source = resources.get("source")
    if source is not None and hasattr(source, "source_names"):
        check_sources(specs, source.source_names())
    bigquery = resources.get("bigquery")
    if isinstance(bigquery, ExportBigQueryResource):
        check_classifications(specs, bigquery.policy_tags, bigquery.require_policy_tags)
    return dg.Definitions(
        assets=[
            *translator.get_source_asset_specs(specs),
            *(asset for spec in specs for asset in export_assets(spec, translator)),
        ],
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


def places_of(resources: Mapping[str, Any]) -> Places:
    """The names the resources give where exports read and land: each declared source's kind
    and database, the BigQuery project and the export bucket (a value held in an environment
    variable is read now: neither is a secret; unset, the name is left out)."""
    declared = getattr(resources.get("source"), "sources", None) or []
    sources = {DEFAULT_SOURCE: SourcePlace(DEFAULT_SOURCE, "duckdb")}
    sources |= {d.name: SourcePlace(d.name, d.kind, d.database) for d in declared}
    return Places(
        sources=sources,
        project=_setting(getattr(resources.get("bigquery"), "project", None)),
        bucket=_setting(getattr(resources.get("gcs"), "bucket", None)),
    )


def _setting(value: str | None) -> str | None:
    return value.get_value() if isinstance(value, dg.EnvVar) else value


def report_unresolved_lineage(specs: list[ExportSpec]) -> None:
    """Log, when the code location loads, each part of a query its lineage cannot resolve
    (the asset's ``source_columns`` says so too). Not an error: the export runs the same."""
    for spec in specs:
        if spec.delivered:
            continue
        for problem in lineage_of(spec.sql).problems():
            logger.warning("%s: lineage: %s", spec.sql_file, problem)
