"""The asset factory: every export spec becomes four assets, their checks and a schedule."""

from __future__ import annotations

import dagster as dg

from bq_assets.checks import build_checks
from bq_assets.exports.spec import ExportSpec, check_sources
from bq_assets.schedules import build_failure_sensor, build_schedules, freshness_policy
from bq_assets.stages.bigquery import build_bigquery_asset
from bq_assets.stages.databricks import build_databricks_asset, refuse_unrunnable_specs
from bq_assets.stages.gcs_csv import build_gcs_asset
from bq_assets.stages.query import build_query_asset

STAGES = (build_query_asset, build_gcs_asset, build_bigquery_asset, build_databricks_asset)


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
    refuse_unrunnable_specs(specs, resources.get("databricks"))
    source = resources.get("source")
    if source is not None and hasattr(source, "source_names"):
        check_sources(specs, source.source_names())
    return dg.Definitions(
        assets=[asset for spec in specs for asset in export_assets(spec)],
        asset_checks=[check for spec in specs for check in build_checks(spec)],
        schedules=build_schedules(specs, schedule_status),
        sensors=[build_failure_sensor()],
        resources=resources,
    )
