"""One translator from an export spec and a hop to the hop's asset: key, deps, group, kinds,
owners, description, metadata, freshness, partitions, automation, and the step's pool, retry
and backfill policies.

Every hop, the schedules and the demo ask it; no asset attribute is written anywhere else.
Its shape follows the integrations' translators (dagster-sling's ``DagsterSlingTranslator``,
dagster-dlt's ``DagsterDltTranslator``): one ``get_asset_spec``, composed of small ``get_*``
methods that a subclass may override (passed to ``build_definitions``). Asset keys are public
(users' history depends on them): ``<hop>/<export>``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import dagster as dg

from bq_assets.dagster_internals import smallest_cron_interval
from bq_assets.engine.databricks_sql import table_name
from bq_assets.exports.spec import ExportSpec
from bq_assets.stages.partitions import backfill_policy, partitions_definition

Hop = Literal["query", "gcs", "bigquery", "databricks"]
#: The hops of an export in lineage order; a delivered export has no ``query`` hop.
HOPS: tuple[Hop, ...] = ("query", "gcs", "bigquery", "databricks")
DELIVERED_HOPS: tuple[Hop, ...] = ("gcs", "bigquery", "databricks")

#: The steps that touch the network run up to three times, waiting 5 s before the second attempt
#: and 15 s before the third (Dagster's exponential backoff): enough for a blip or a restarted
#: emulator. Each attempt's requests are themselves retried by the Google clients (for GCS up to
#: the resource's ``retry_timeout_s``), so a real outage fails the run after the third attempt.
#: Errors that a retry cannot fix fail at once (``BqAssetsError.retryable``).
NETWORK_RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)
#: How stale a daily or weekly export may be before its freshness policy fails.
FRESHNESS = {"daily": timedelta(hours=26), "weekly": timedelta(days=8)}
#: The concurrency pool of each hop's step (limits in deploy/pool-limits.sh).
POOLS: dict[Hop, str] = {
    "query": "source",
    "gcs": "gcs",
    "bigquery": "bigquery",
    "databricks": "databricks",
}


def asset_key(hop: Hop, export: str) -> dg.AssetKey:
    """The asset key of ``export``'s ``hop``: ``<hop>/<export>``."""
    return dg.AssetKey([hop, export])


def query_key(export: str) -> dg.AssetKey:
    return asset_key("query", export)


def gcs_key(export: str) -> dg.AssetKey:
    return asset_key("gcs", export)


def bigquery_key(export: str) -> dg.AssetKey:
    return asset_key("bigquery", export)


def databricks_key(export: str) -> dg.AssetKey:
    return asset_key("databricks", export)


def freshness_policy(spec: ExportSpec) -> dg.FreshnessPolicy:
    """Daily ≈ 26 h, weekly ≈ 8 days; a custom cron must have materialized by its next tick
    (within the hour before it, or within the cron's interval when it ticks more often)."""
    if spec.cadence in FRESHNESS:
        return dg.FreshnessPolicy.time_window(fail_window=FRESHNESS[spec.cadence])
    # Dagster refuses a window longer than the cron's smallest interval (e.g. every 15 minutes).
    window = min(timedelta(hours=1), smallest_cron_interval(spec.cron_schedule))
    return dg.FreshnessPolicy.cron(
        deadline_cron=spec.cron_schedule, lower_bound_delta=window, timezone=spec.timezone
    )


class ExportTranslator:
    """What each hop's asset of an export is called and how Dagster treats it."""

    def hops(self, spec: ExportSpec) -> tuple[Hop, ...]:
        """The export's hops in lineage order (three when delivered: no query)."""
        return DELIVERED_HOPS if spec.delivered else HOPS

    def get_asset_key(self, spec: ExportSpec, hop: Hop) -> dg.AssetKey:
        return asset_key(hop, spec.name)

    def get_deps(self, spec: ExportSpec, hop: Hop) -> list[dg.AssetKey]:
        """The hop before, if any: lineage runs query → gcs → bigquery → databricks."""
        hops = self.hops(spec)
        position = hops.index(hop)
        return [self.get_asset_key(spec, hops[position - 1])] if position else []

    def get_group_name(self, spec: ExportSpec, hop: Hop) -> str:
        """One group per export, named after it: its lane in the asset graph."""
        return spec.name

    def get_kinds(self, spec: ExportSpec, hop: Hop) -> set[str]:
        if hop == "query":
            return {"duckdb", "parquet"}
        if hop == "gcs":
            return {"gcs", "csv" if spec.delivered else spec.format}
        return {hop}

    def get_owners(self, spec: ExportSpec, hop: Hop) -> list[str]:
        return list(spec.owners)

    def get_description(self, spec: ExportSpec, hop: Hop) -> str:
        if hop == "query":
            assert spec.sql_file is not None
            return spec.description or f"Result of {spec.sql_file.name}."
        if hop == "gcs":
            return _gcs_description(spec)
        if hop == "bigquery" and spec.load is not None:
            return (
                f"BigQuery table {spec.bigquery.dataset}.{spec.bigquery_table}, "
                f"{spec.load.describe()}: each run's window of changed rows is merged by "
                f"primary key ({', '.join(spec.primary_key)}) in one MERGE."
            )
        if hop == "bigquery":
            return (
                f"BigQuery table {spec.bigquery.dataset}.{spec.bigquery_table}, loaded from "
                "exactly the objects of the latest manifest."
            )
        return _databricks_description(spec)

    def get_metadata(self, spec: ExportSpec, hop: Hop) -> dict[str, Any]:
        if hop == "query" and spec.sql_file is not None:
            return {
                "sql_file": str(spec.sql_file),
                "sql": dg.MetadataValue.md(f"```sql\n{spec.sql.strip()}\n```"),
            }
        return {}

    def get_freshness_policy(self, spec: ExportSpec, hop: Hop) -> dg.FreshnessPolicy:
        return freshness_policy(spec)

    def get_partitions_def(
        self, spec: ExportSpec, hop: Hop
    ) -> dg.TimeWindowPartitionsDefinition | None:
        """A partitioned export's four assets share its partitions definition."""
        return partitions_definition(spec)

    def get_automation_condition(self, spec: ExportSpec, hop: Hop) -> dg.AutomationCondition | None:
        """None: exports refresh on their schedule (or, delivered, their sensor)."""
        return None

    def get_pool(self, spec: ExportSpec, hop: Hop) -> str:
        return POOLS[hop]

    def get_retry_policy(self, spec: ExportSpec, hop: Hop) -> dg.RetryPolicy:
        return NETWORK_RETRY

    def get_backfill_policy(self, spec: ExportSpec, hop: Hop) -> dg.BackfillPolicy | None:
        return backfill_policy(spec)

    def get_asset_spec(self, spec: ExportSpec, hop: Hop) -> dg.AssetSpec:
        """The asset of ``spec``'s ``hop``, every attribute from the methods above."""
        return dg.AssetSpec(
            key=self.get_asset_key(spec, hop),
            deps=self.get_deps(spec, hop),
            group_name=self.get_group_name(spec, hop),
            kinds=self.get_kinds(spec, hop),
            owners=self.get_owners(spec, hop),
            description=self.get_description(spec, hop),
            metadata=self.get_metadata(spec, hop),
            freshness_policy=self.get_freshness_policy(spec, hop),
            partitions_def=self.get_partitions_def(spec, hop),
            automation_condition=self.get_automation_condition(spec, hop),
        )

    def asset_keys(self, spec: ExportSpec) -> list[dg.AssetKey]:
        """Every asset key of the export, in lineage order."""
        return [self.get_asset_key(spec, hop) for hop in self.hops(spec)]


def _gcs_description(spec: ExportSpec) -> str:
    if spec.delivery is None:
        what = "Parquet" if spec.format == "parquet" else "CSV"
        return f"{spec.name} as {what} objects in GCS, one prefix per run, with a manifest."
    options = spec.delivery
    return (
        f"{spec.name}: the files delivered to {options.prefix}{options.files}, one run per "
        "delivery, with a manifest"
        + (
            " (PGP encrypted: decrypted into a run-scoped prefix first)."
            if options.decrypt
            else "."
        )
    )


def _databricks_description(spec: ExportSpec) -> str:
    name = table_name(spec)
    if spec.databricks.mode == "federation":
        return (
            f"{name} in Databricks: a view over the Lakehouse Federation foreign catalog "
            f"{spec.databricks.foreign_catalog} (connection {spec.databricks.connection}, key from "
            "a Databricks secret); needs Unity Catalog and a Pro or Serverless SQL warehouse."
        )
    return (
        f"{name} in Databricks: a legacy `USING bigquery` table. Databricks calls this connector "
        "legacy, experimental and unsupported; it needs a cluster with the Spark BigQuery "
        "connector (not a SQL warehouse) and the base64 key in a Databricks secret. Prefer "
        "mode: federation."
    )
