"""Hop 3: load exactly the manifest's objects into the export's BigQuery table.

The load is the engine's (``bq_assets.engine.bigquery_load``): an explicit schema from the
snapshot's types, ``WRITE_TRUNCATE`` by default through a staging table and one copy job (a
failed load leaves the previous data in place), ``max_bad_records`` 0, and deterministic job
ids, so a retried step reattaches instead of loading twice. Before loading, the bucket's
location is checked against the dataset's. Checks (blocking): the table holds the manifest's
rows, and its schema is the snapshot's.
"""

import dagster as dg

from bq_assets.engine.bigquery_jobs import count_rows
from bq_assets.engine.bigquery_load import bucket_location, check_bucket_location, run_load
from bq_assets.engine.bigquery_partitions import PartitionLoad, run_partition_load
from bq_assets.engine.manifest import read_manifest
from bq_assets.exports.spec import ExportSpec
from bq_assets.resources.google import ExportBigQueryResource, ExportGCSResource
from bq_assets.schema import schema_diff, schema_from_json
from bq_assets.stages import (
    NETWORK_RETRY,
    bigquery_key,
    check_result,
    column_schema,
    gcs_key,
    reading_input,
    reported_as_failure,
    upstream_materialization,
)
from bq_assets.stages.partitions import run_window, window_metadata

BIGQUERY_ROWS_MATCH_MANIFEST = "rows_match_manifest"
BIGQUERY_SCHEMA_MATCHES = "schema_matches_snapshot"


def console_url(table_id: str) -> str:
    project, dataset, table = table_id.split(".")
    return (
        f"https://console.cloud.google.com/bigquery?project={project}"
        f"&ws=!1m5!1m4!4m3!1s{project}!2s{dataset}!3s{table}"
    )


def build_bigquery_asset(spec: ExportSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=bigquery_key(spec.name),
        deps=[gcs_key(spec.name)],
        group_name=spec.name,
        kinds={"bigquery"},
        owners=spec.owners,
        pool="bigquery",
        description=f"BigQuery table {spec.bigquery.dataset}.{spec.bigquery_table}, loaded from "
        "exactly the objects of the latest CSV manifest.",
        retry_policy=NETWORK_RETRY,
    )
    def _bigquery(
        context: dg.AssetExecutionContext,
        bigquery: ExportBigQueryResource,
        gcs: ExportGCSResource,
    ) -> dg.MaterializeResult:
        with reported_as_failure(GCS=gcs, BigQuery=bigquery):
            upstream = upstream_materialization(context, gcs_key(spec.name))
            manifest_uri = str(upstream["manifest_uri"])
            storage_client = gcs.get_client()
            with reading_input(upstream, "The manifest", manifest_uri):
                manifest = read_manifest(storage_client, manifest_uri, gcs.retry())
            bucket = manifest.prefix.removeprefix("gs://").split("/")[0]
            location = bucket_location(storage_client, bucket, gcs.retry())
            check_bucket_location(bucket, location, spec)
            window = run_window(context, spec)
            partition_metadata: dict[str, object] = {}
            with bigquery.get_client() as client:
                if window is None:
                    result = run_load(client, bigquery.project_id(), spec, manifest, context.log)
                else:
                    loaded = run_partition_load(
                        client, bigquery.project_id(), spec, manifest, window,
                        bigquery.partition_overwrite, context.log,
                    )  # fmt: skip
                    result = loaded.result
                    partition_metadata = partition_load_metadata(loaded)
            context.log.info(f"{result.table_id}: {result.rows} rows (job {result.job_id})")
            return dg.MaterializeResult(
                metadata={
                    "dagster/table_name": result.table_id,
                    "dagster/row_count": result.rows,
                    "dagster/column_schema": column_schema(result.schema),
                    "job_id": result.job_id,
                    "location": result.location,
                    "bytes": result.bytes,
                    "source_manifest": manifest_uri,
                    "input_run_id": upstream.run_id,
                    "console": dg.MetadataValue.url(console_url(result.table_id)),
                    **partition_metadata,
                }
            )

    return _bigquery


def partition_load_metadata(loaded: PartitionLoad) -> dict[str, object]:
    """The materialization metadata of a partitioned load, besides the unpartitioned ones
    (where ``dagster/row_count`` counts the rows of this run's partitions, not the table)."""
    return {
        **window_metadata(loaded.window),
        "partition_overwrite": loaded.mechanism,
        "rows_by_partition": dg.MetadataValue.json(loaded.rows_by_partition),
        "publish_job_ids": dg.MetadataValue.json(loaded.publish_jobs),
    }


def bigquery_checks(spec: ExportSpec) -> list[dg.AssetChecksDefinition]:
    """The BigQuery hop's checks (also those of a delivered export's table)."""
    key = bigquery_key(spec.name)

    @dg.asset_check(
        asset=key,
        name=BIGQUERY_ROWS_MATCH_MANIFEST,
        blocking=True,
        description="The table's row count equals the rows in the loaded manifest.",
    )
    def rows_match(
        context: dg.AssetCheckExecutionContext, bigquery: ExportBigQueryResource
    ) -> dg.AssetCheckResult:
        table_id = str(upstream_materialization(context, key)["dagster/table_name"])
        expected = int(upstream_materialization(context, gcs_key(spec.name))["dagster/row_count"])
        with reported_as_failure(BigQuery=bigquery), bigquery.get_client() as client:
            actual = count_rows(client, table_id)
        return check_result(
            actual == expected,
            f"the table holds {actual} rows, the loaded manifest {expected}",
            {"table_rows": actual, "manifest_rows": expected},
        )

    @dg.asset_check(
        asset=key,
        name=BIGQUERY_SCHEMA_MATCHES,
        blocking=True,
        description="The table's columns and types equal the snapshot's schema.",
    )
    def schema_matches(
        context: dg.AssetCheckExecutionContext,
        bigquery: ExportBigQueryResource,
        gcs: ExportGCSResource,
    ) -> dg.AssetCheckResult:
        materialization = upstream_materialization(context, key)
        table_id = str(materialization["dagster/table_name"])
        with reported_as_failure(GCS=gcs, BigQuery=bigquery):
            manifest = read_manifest(
                gcs.get_client(), str(materialization["source_manifest"]), gcs.retry()
            )
            with bigquery.get_client() as client:
                actual = client.get_table(table_id).schema
        diff = schema_diff(list(actual), schema_from_json(manifest.bigquery_schema))
        return check_result(
            not diff,
            "the table's schema differs from the snapshot's: " + "; ".join(diff),
            {"differences": dg.MetadataValue.json(diff)},
        )

    return [rows_match, schema_matches]
