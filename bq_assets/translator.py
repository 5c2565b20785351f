"""One translator from an export spec and a hop to the hop's asset: key, deps, group, kinds,
owners, description, metadata, freshness, partitions, automation, and the step's pool, retry
and backfill policies.

Every hop, the schedules and the demo ask it; no asset attribute is written anywhere else.
Its shape follows the integrations' translators (dagster-sling's ``DagsterSlingTranslator``,
dagster-dlt's ``DagsterDltTranslator``): one ``get_asset_spec``, composed of small ``get_*``
methods that a subclass may override (passed to ``build_definitions``). Asset keys are public
(users' history depends on them): ``<hop>/<export>``, and ``source/...`` for what an export
reads (``bq_assets.exports.source_names``): external assets upstream of its first hop.

Lineage is part of each asset's definition: the deps on the source assets, each column's
``dagster/column_lineage`` and the readable ``source_columns`` table, and the names catalogs
read (``dagster/table_name``, ``dagster/uri``). Dagster's UI draws a column's lineage from the
latest materialization's ``dagster/column_lineage`` and falls back to the definition's
(``getColumnLineage`` in dagster-io/dagster's
``js_modules/dagster-ui/packages/ui-core/src/assets/lineage/useColumnLineageDataForAssets.tsx``),
so every hop records it both ways (``get_materialization_metadata``): the definition draws it
before any run (and for external assets, which never run), and each materialization keeps
the lineage that produced its data.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

import dagster as dg

from bq_assets.column_lineage import (
    ColumnDeps,
    HopLineage,
    carried_column_deps,
    databricks_column_deps,
    lineage_of,
    query_column_deps,
    source_columns_markdown,
    table_column_lineage,
)
from bq_assets.dagster_internals import smallest_cron_interval
from bq_assets.engine.databricks_sql import table_name
from bq_assets.engine.layout import export_prefix
from bq_assets.exports import source_names
from bq_assets.exports.lineage import SourceTable
from bq_assets.exports.source_names import Places
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


#: The group of the external assets that stand for what the exports read.
SOURCES_GROUP = "sources"


class ExportTranslator:
    """What each hop's asset of an export is called and how Dagster treats it."""

    #: Where the environment's exports read and land (names only). ``build_definitions``
    #: gives the translator its resources' places (``placed``).
    places: Places = Places()

    def placed(self, places: Places) -> ExportTranslator:
        """A copy of this translator (of its class) that names things with ``places``."""
        placed = copy.copy(self)
        placed.places = places
        return placed

    def hops(self, spec: ExportSpec) -> tuple[Hop, ...]:
        """The export's hops in lineage order (three when delivered: no query)."""
        return DELIVERED_HOPS if spec.delivered else HOPS

    def get_asset_key(self, spec: ExportSpec, hop: Hop) -> dg.AssetKey:
        return asset_key(hop, spec.name)

    def get_deps(self, spec: ExportSpec, hop: Hop) -> list[dg.AssetKey]:
        """The hop before: lineage runs query → gcs → bigquery → databricks; the first hop
        depends on what the export reads (its query's tables and files, or its delivery)."""
        previous = self.get_previous_key(spec, hop)
        return [previous] if previous else self.get_source_keys(spec)

    def get_previous_key(self, spec: ExportSpec, hop: Hop) -> dg.AssetKey | None:
        hops = self.hops(spec)
        position = hops.index(hop)
        return self.get_asset_key(spec, hops[position - 1]) if position else None

    def get_source_keys(self, spec: ExportSpec) -> list[dg.AssetKey]:
        """The external assets the export reads: every table and file its SQL names, or the
        bucket prefix its files are delivered to."""
        if spec.delivery is not None:
            return [self.get_delivery_key(spec)]
        return [self.get_source_key(spec, table) for table in lineage_of(spec.sql).tables]

    def get_source_key(self, spec: ExportSpec, table: SourceTable) -> dg.AssetKey:
        """``source/<source>/<schema>/<table>`` (or a file path's parts); see source_names."""
        place = self.places.source(spec.source)
        return dg.AssetKey(source_names.table_key_path(place, table))

    def get_delivery_key(self, spec: ExportSpec) -> dg.AssetKey:
        assert spec.delivery is not None
        return dg.AssetKey(source_names.delivery_key_path(spec.delivery.prefix))

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
        """The SQL (query hop), the names catalogs read, and the column lineage."""
        metadata: dict[str, Any] = {}
        if hop == "query" and spec.sql_file is not None:
            metadata["sql_file"] = str(spec.sql_file)
            metadata["sql"] = dg.MetadataValue.md(f"```sql\n{spec.sql.strip()}\n```")
        metadata.update(self.get_location_metadata(spec, hop))
        metadata.update(self.get_materialization_metadata(spec, hop))
        metadata["source_columns"] = dg.MetadataValue.md(self.get_source_columns(spec, hop))
        return metadata

    def get_location_metadata(self, spec: ExportSpec, hop: Hop) -> dict[str, str]:
        """Where the asset is, fully qualified, when the environment's places say so:
        ``dagster/table_name`` of the BigQuery table and the Databricks view, ``dagster/uri``
        of the export's objects (each materialization records its own run's too)."""
        if hop == "bigquery" and self.places.project:
            table = f"{self.places.project}.{spec.bigquery.dataset}.{spec.bigquery_table}"
            return {"dagster/table_name": table}
        if hop == "databricks":
            return {"dagster/table_name": str(table_name(spec))}
        if hop == "gcs" and self.places.bucket:
            folder = (
                spec.delivery.prefix
                if spec.delivery
                else export_prefix(spec.objects.template, spec.name)
            )
            return {"dagster/uri": f"gs://{self.places.bucket}/{folder}"}
        return {}

    def get_materialization_metadata(self, spec: ExportSpec, hop: Hop) -> dict[str, Any]:
        """What each materialization records besides its own results: the column lineage."""
        return {"dagster/column_lineage": table_column_lineage(self.get_column_deps(spec, hop))}

    def get_column_deps(self, spec: ExportSpec, hop: Hop) -> ColumnDeps:
        """Each column of the hop's table → the (asset, column) pairs it is computed from:
        the source columns (query), the same column one hop before (gcs, bigquery, and a
        delivery's gcs), the BigQuery columns the Databricks view reads."""
        previous = self.get_previous_key(spec, hop)
        if hop == "query":
            return query_column_deps(spec, lambda table: self.get_source_key(spec, table))
        if previous is None:  # a delivery: its columns are those of the delivered files
            return carried_column_deps(spec, self.get_delivery_key(spec))
        if hop == "databricks":
            return databricks_column_deps(spec, previous)
        return carried_column_deps(spec, previous)

    def get_source_columns(self, spec: ExportSpec, hop: Hop) -> str:
        """The ``source_columns`` table: each column traced back to its source columns."""
        hops = self.hops(spec)
        chain = [
            HopLineage(self.get_asset_key(spec, h), self.get_column_deps(spec, h))
            for h in hops[: hops.index(hop) + 1]
        ]
        unresolved = (
            {}
            if spec.delivered
            else {n: list(c.unresolved) for n, c in lineage_of(spec.sql).columns.items()}
        )
        return source_columns_markdown(chain, unresolved)

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

    def get_source_asset_specs(self, specs: Sequence[ExportSpec]) -> list[dg.AssetSpec]:
        """One external asset (no materialization function: Dagster does not run it) per
        table, file or delivery prefix the exports read, shared by the exports that read it,
        in the group ``sources``."""
        readers: dict[dg.AssetKey, list[ExportSpec]] = {}
        for spec in specs:
            for key in self.get_source_keys(spec):
                readers.setdefault(key, []).append(spec)
        return [
            dg.AssetSpec(
                key=key,
                group_name=self.get_source_group_name(key),
                description=self.get_source_description(key, readers[key]),
                kinds=self.get_source_kinds(key, readers[key][0]),
                metadata=self.get_source_metadata(key, readers[key][0]),
            )
            for key in sorted(readers, key=lambda k: k.to_user_string())
        ]

    def get_source_group_name(self, key: dg.AssetKey) -> str:
        """One group for everything the exports read, whoever reads it."""
        return SOURCES_GROUP

    def _source_table(self, key: dg.AssetKey, spec: ExportSpec) -> SourceTable | None:
        if spec.delivered:
            return None
        tables = lineage_of(spec.sql).tables
        return next(t for t in tables if self.get_source_key(spec, t) == key)

    def get_source_description(self, key: dg.AssetKey, readers: list[ExportSpec]) -> str:
        spec, names = readers[0], ", ".join(r.name for r in readers)
        table = self._source_table(key, spec)
        if table is None:
            assert spec.delivery is not None
            what = f"The files delivered to the bucket prefix {spec.delivery.prefix}"
        elif table.is_path:
            uri = source_names.path_uri(table.name)
            what = f"The files at {uri} (read as {table.name}; source {spec.source})"
        else:
            place = self.places.source(spec.source)
            what = f"The table {source_names.table_name(place, table)} of the {place.kind} source {place.name}"
        return f"{what}, read by {names}. External: Dagster does not materialize it."

    def get_source_kinds(self, key: dg.AssetKey, spec: ExportSpec) -> set[str]:
        table = self._source_table(key, spec)
        if table is None:
            return {"gcs", "csv"}
        if table.is_path:
            return {"gcs"} if table.name.startswith("gs://") else {"file"}
        return {self.places.source(spec.source).kind}

    def get_source_metadata(self, key: dg.AssetKey, spec: ExportSpec) -> dict[str, str]:
        table = self._source_table(key, spec)
        if table is None:
            assert spec.delivery is not None
            bucket = self.places.bucket
            return {"dagster/uri": f"gs://{bucket}/{spec.delivery.prefix}"} if bucket else {}
        if table.is_path:
            return {"dagster/uri": source_names.path_uri(table.name)}
        name = source_names.table_name(self.places.source(spec.source), table)
        return {"dagster/table_name": name} if name else {}


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
