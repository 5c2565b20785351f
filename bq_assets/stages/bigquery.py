"""Hop 3: load exactly the manifest's objects into the export's BigQuery table.

The load is the engine's (``bq_assets.engine.bigquery_load``): an explicit schema from the
snapshot's types, ``WRITE_TRUNCATE`` by default through a staging table and one copy job (a
failed load leaves the previous data in place), ``max_bad_records`` 0, and deterministic job
ids, so a retried step reattaches instead of loading twice. Before loading, the bucket's
location is checked against the dataset's. Checks (blocking): the table holds the manifest's
rows, and its schema is the snapshot's; (not blocking) the table has the partitioning,
clustering, labels, description and expiration its spec declares.
"""

from collections.abc import Callable

import dagster as dg
from google.cloud import bigquery as bigquery_client

from bq_assets.engine.bigquery_columns import column_differences
from bq_assets.engine.bigquery_jobs import count_rows, existing_table
from bq_assets.engine.bigquery_load import (
    bucket_location,
    check_bucket_location,
    declared_partitioning,
    run_load,
)
from bq_assets.engine.bigquery_partitions import (
    PartitionLoad,
    partition_column_type,
    partition_row_counts,
    run_partition_load,
)
from bq_assets.engine.bigquery_tables import spec_differences
from bq_assets.exports.spec import ExportSpec
from bq_assets.partitioning import Window
from bq_assets.resources.google import ExportBigQueryResource, ExportGCSResource
from bq_assets.schema import schema_diff, schema_from_json
from bq_assets.stages.cost import bigquery_jobs, cost_metadata, with_cost
from bq_assets.stages.handoff import (
    HandOff,
    Upstream,
    handed_manifest,
    upstream_materialization,
)
from bq_assets.stages.merge import merge_checks, merged_materialization
from bq_assets.stages.partitions import checked_partitions, run_window, same_window
from bq_assets.stages.results import Check, check_result, column_schema
from bq_assets.translator import bigquery_key, gcs_key, query_key

BIGQUERY_ROWS_MATCH_MANIFEST = "rows_match_manifest"
BIGQUERY_SCHEMA_MATCHES = "schema_matches_snapshot"
BIGQUERY_TABLE_MATCHES_SPEC = "table_matches_spec"
BIGQUERY_COLUMN_GOVERNANCE = "column_governance_matches_spec"
SAMPLE = 5


def console_url(table_id: str) -> str:
    project, dataset, table = table_id.split(".")
    return (
        f"https://console.cloud.google.com/bigquery?project={project}"
        f"&ws=!1m5!1m4!4m3!1s{project}!2s{dataset}!3s{table}"
    )


def bigquery_materialization(spec: ExportSpec) -> Callable[..., dg.MaterializeResult]:
    """The body of ``bigquery/<export>``: exactly the manifest's objects loaded into the table
    (of a partitioned export: exactly the run's partitions replaced)."""

    def _bigquery(
        context: dg.AssetExecutionContext,
        bigquery: ExportBigQueryResource,
        gcs: ExportGCSResource,
    ) -> dg.MaterializeResult:
        upstream = upstream_materialization(context, gcs_key(spec.name))
        window = run_window(context, spec)
        if window is not None:
            same_window(upstream, window)
        storage_client = gcs.get_client()
        manifest = handed_manifest(storage_client, upstream, gcs.retry())
        bucket = manifest.prefix.removeprefix("gs://").split("/")[0]
        location = bucket_location(storage_client, bucket, gcs.retry())
        check_bucket_location(bucket, location, spec)
        rows_before_load = None
        partition_metadata: dict[str, object] = {}
        with bigquery_jobs(context, bigquery, spec) as client:
            if spec.merged:
                loaded, metadata = merged_materialization(
                    context, spec, client, bigquery.project_id(), manifest, upstream
                )
                console = dg.MetadataValue.url(console_url(loaded.result.table_id))
                return dg.MaterializeResult(
                    metadata={**metadata, "console": console, **cost_metadata(client.costs())}
                )
            if window is None:
                if spec.bigquery.write_disposition == "WRITE_APPEND":
                    rows_before_load = rows_before_append(client, bigquery.project_id(), spec)
                result = run_load(client, bigquery.project_id(), spec, manifest, context.log)
                rows_by_partition = None
            else:
                loaded = run_partition_load(
                    client, bigquery.project_id(), spec, manifest, window,
                    bigquery.partition_overwrite, context.log,
                )  # fmt: skip
                result = loaded.result
                rows_by_partition = loaded.rows_by_partition
                partition_metadata = partition_load_metadata(loaded)
            costs = client.costs()
        context.log.info(f"{result.table_id}: {result.rows} rows (job {result.job_id})")
        handoff = HandOff(
            row_count=result.rows,
            table_name=result.table_id,
            source_manifest=upstream.manifest_uri,
            rows_before_load=rows_before_load,
            rows_by_partition=rows_by_partition,
            input_run_id=upstream.run_id,
        ).of_window(window)
        return dg.MaterializeResult(
            metadata={
                **handoff.metadata(),
                "dagster/column_schema": column_schema(result.schema, spec),
                "job_id": result.job_id,
                "location": result.location,
                "bytes": result.bytes,
                "console": dg.MetadataValue.url(console_url(result.table_id)),
                **partition_metadata,
                **cost_metadata(costs),
            }
        )

    return _bigquery


def rows_before_append(client: bigquery_client.Client, project: str, spec: ExportSpec) -> int:
    """The table's rows before an append (0 before the first): what the row check subtracts."""
    table_id = f"{project}.{spec.bigquery.dataset}.{spec.bigquery_table}"
    if existing_table(client, table_id) is None:
        return 0
    return count_rows(client, table_id)


def partition_load_metadata(loaded: PartitionLoad) -> dict[str, object]:
    """The materialization metadata of a partitioned load besides the hand-off (where
    ``dagster/row_count`` counts the rows of this run's partitions, not the table)."""
    return {
        "partition_overwrite": loaded.mechanism,
        "publish_job_ids": dg.MetadataValue.json(loaded.publish_jobs),
    }


def bigquery_checks(spec: ExportSpec) -> list[Check]:
    """The BigQuery hop's checks (also those of a delivered export's table)."""
    key = bigquery_key(spec.name)

    def rows_match(
        context: dg.AssetCheckExecutionContext, bigquery: ExportBigQueryResource
    ) -> dg.AssetCheckResult:
        materialization = upstream_materialization(context, key)
        table_id = materialization.table_name
        expected = upstream_materialization(context, gcs_key(spec.name)).row_count
        partitions = checked_partitions(context, spec)
        if spec.merged:  # the table holds more than the window: the MERGE's input is compared
            staged = int(materialization.handoff.staged_rows or 0)
            return check_result(
                staged == expected,
                f"the MERGE read {staged} rows (its staging table), the loaded manifest {expected}",
                {"merge_source_rows": staged, "manifest_rows": expected},
            )
        with bigquery_jobs(context, bigquery, spec) as client:
            if partitions is not None:
                result = _partition_rows_match(context, client, table_id, expected, partitions)
            elif spec.bigquery.write_disposition == "WRITE_APPEND":
                result = _appended_rows_match(client, materialization, expected)
            else:
                actual = count_rows(client, table_id)
                result = check_result(
                    actual == expected,
                    f"the table holds {actual} rows, the loaded manifest {expected}",
                    {"table_rows": actual, "manifest_rows": expected},
                )
            return with_cost(result, client.costs())

    def _appended_rows_match(
        client: bigquery_client.Client, materialization: Upstream, expected: int
    ) -> dg.AssetCheckResult:
        """An append adds the manifest's rows to what the table held: the check compares the
        rows the run added (the table's rows now, less those before its load; one run per
        export at a time), not the table's total, which grows with every run. (The load job's
        ``output_rows`` would say it on BigQuery; the emulator reports the table's total.)"""
        table_id = materialization.table_name
        before = int(materialization.handoff.rows_before_load or 0)
        loaded = count_rows(client, table_id) - before
        return check_result(
            loaded == expected,
            f"the run appended {loaded} rows, the loaded manifest holds {expected}",
            {"loaded_rows": loaded, "manifest_rows": expected, "rows_before_load": before},
        )

    def _partition_rows_match(
        context: dg.AssetCheckExecutionContext,
        client: bigquery_client.Client,
        table_id: str,
        expected: int,
        partitions: list[Window],
    ) -> dg.AssetCheckResult:
        """Each partition the run loaded holds exactly the snapshot's rows of it, and all of
        them together the manifest's rows; other partitions are not counted."""
        assert spec.partitioning is not None
        column = spec.partitioning.column
        column_type = partition_column_type(client, table_id, column)
        window = Window(tuple(p.keys[0] for p in partitions), partitions[0].by, spec.timezone)
        table, _ = partition_row_counts(client, table_id, column, column_type, window, pruned=True)
        query = upstream_materialization(context, query_key(spec.name))
        snapshot = dict(query.handoff.rows_by_partition or {})
        wrong = [k for k in table if table[k] != snapshot.get(k)]
        loaded = sum(table.values())
        return check_result(
            loaded == expected and not wrong,
            f"the loaded partitions hold {loaded} rows, the loaded manifest {expected}"
            + (
                "; per partition (table / snapshot): "
                + ", ".join(f"{k}: {table[k]} / {snapshot.get(k)}" for k in wrong[:SAMPLE])
                if wrong
                else ""
            ),
            {
                "table_rows": loaded,
                "manifest_rows": expected,
                "table_rows_by_partition": dg.MetadataValue.json(table),
                "snapshot_rows_by_partition": dg.MetadataValue.json(snapshot),
            },
        )

    def schema_matches(
        context: dg.AssetCheckExecutionContext,
        bigquery: ExportBigQueryResource,
        gcs: ExportGCSResource,
    ) -> dg.AssetCheckResult:
        materialization = upstream_materialization(context, key)
        table_id = materialization.table_name
        manifest = handed_manifest(
            gcs.get_client(), materialization, gcs.retry(), materialization.source_manifest
        )
        with bigquery.get_client() as client:
            actual = client.get_table(table_id).schema
        diff = schema_diff(list(actual), schema_from_json(manifest.bigquery_schema))
        return check_result(
            not diff,
            "the table's schema differs from the snapshot's: " + "; ".join(diff),
            {"columns_differing": len(diff), "differences": dg.MetadataValue.json(diff)},
        )

    def column_governance_matches(
        context: dg.AssetCheckExecutionContext, bigquery: ExportBigQueryResource
    ) -> dg.AssetCheckResult:
        """Each column's description and policy tag, read back from the table, against the
        spec's (and the deployment's policy tag of its classification)."""
        table_id = upstream_materialization(context, key).table_name
        with bigquery.get_client() as client:
            fields = list(client.get_table(table_id).schema)
        differences = column_differences(fields, spec, bigquery.policy_tags)
        return check_result(
            not differences,
            f"{table_id}: {len(differences)} column propert(ies) differ from "
            f"{spec.spec_file.name}: " + "; ".join(differences),
            {
                "columns_differing": len({line.split(":")[0] for line in differences}),
                "described_columns": sum(bool(f.description) for f in fields),
                "policy_tagged_columns": sum(
                    bool(f.policy_tags and f.policy_tags.names) for f in fields
                ),
                "differences": dg.MetadataValue.json(differences),
            },
        )

    def table_matches(
        context: dg.AssetCheckExecutionContext, bigquery: ExportBigQueryResource
    ) -> dg.AssetCheckResult:
        """The table's properties, read back from BigQuery, against the spec's (see
        ``spec_differences``): one line per difference."""
        table_id = upstream_materialization(context, key).table_name
        with bigquery.get_client() as client:
            table = client.get_table(table_id)
        differences = spec_differences(table, spec, declared_partitioning(spec))
        return check_result(
            not differences,
            f"{table_id} differs from {spec.spec_file.name}: " + "; ".join(differences),
            {
                "properties_differing": len(differences),
                "differences": dg.MetadataValue.json(differences),
            },
        )

    return [
        *(merge_checks(spec) if spec.merged else []),
        Check(
            dg.AssetCheckSpec(
                BIGQUERY_ROWS_MATCH_MANIFEST,
                asset=key,
                blocking=True,
                description="The rows this run loaded equal the rows in the loaded manifest: the "
                "table's rows (WRITE_TRUNCATE), the load job's (WRITE_APPEND), each loaded "
                "partition's rows against the snapshot's (a partitioned export), or the rows the "
                "MERGE read (a merge export).",
            ),
            rows_match,
        ),
        Check(
            dg.AssetCheckSpec(
                BIGQUERY_SCHEMA_MATCHES,
                asset=key,
                blocking=True,
                description="The table's columns and types equal the snapshot's schema.",
            ),
            schema_matches,
        ),
        Check(
            dg.AssetCheckSpec(
                BIGQUERY_TABLE_MATCHES_SPEC,
                asset=key,
                # Not blocking: a property that differs (a label the spec dropped, which BigQuery
                # keeps) does not make the rows wrong, so the next hop still publishes them.
                blocking=False,
                description="The table has the partitioning, clustering, labels and description "
                "its spec declares, and no expiration (of the table or its partitions).",
            ),
            table_matches,
        ),
        Check(
            dg.AssetCheckSpec(
                BIGQUERY_COLUMN_GOVERNANCE,
                asset=key,
                # Blocking: a classified column without its policy tag would be published to
                # Databricks readable by anyone the view lets in.
                blocking=True,
                description="Each column has the description its spec declares and the Data "
                "Catalog policy tag of its classification (read back from the table).",
            ),
            column_governance_matches,
        ),
    ]
