"""Stage 3: load exactly the manifest's objects into a BigQuery table.

The load job has an explicit schema (from the snapshot's types), ``WRITE_TRUNCATE`` by default
(a failed load leaves the previous data in place), ``allow_quoted_newlines``, ``max_bad_records``
0, and a deterministic job id: a retried step reattaches to the job it already started instead
of loading twice, and a job id that already failed gets a new generation.
"""

import contextlib
import hashlib
import json
from dataclasses import dataclass

import dagster as dg
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import bigquery

from bq_assets.exports.spec import ExportSpec
from bq_assets.resources.google import StackAwareBigQueryResource, StackAwareGCSResource
from bq_assets.schema import column_schema, schema_from_json
from bq_assets.stages import bigquery_key, gcs_key, latest_metadata
from bq_assets.stages.gcs_csv import Manifest, read_manifest

MAX_GENERATIONS = 20
# Only transient failures are retried: rate limits and server errors, with exponential backoff.
TRANSIENT = Retry(
    predicate=lambda exc: isinstance(
        exc, gexc.TooManyRequests | gexc.InternalServerError | gexc.BadGateway
        | gexc.ServiceUnavailable | gexc.GatewayTimeout
    ),
    initial=1.0, maximum=30.0, multiplier=2.0, timeout=300.0,
)  # fmt: skip


class LoadError(RuntimeError):
    """A BigQuery load job failed; the message lists every error the job reported."""


@dataclass(frozen=True)
class LoadResult:
    table_id: str
    job_id: str
    location: str
    rows: int
    bytes: int
    schema: list[bigquery.SchemaField]


def load_job_config(spec: ExportSpec, manifest: Manifest) -> bigquery.LoadJobConfig:
    csv = manifest.csv
    config = bigquery.LoadJobConfig(
        schema=schema_from_json(manifest.bigquery_schema),
        source_format=bigquery.SourceFormat.CSV,
        skip_leading_rows=1 if csv.get("header", True) else 0,
        field_delimiter=csv.get("delimiter", ","),
        allow_quoted_newlines=True,
        encoding="UTF-8",
        max_bad_records=0,
        write_disposition=spec.bigquery.write_disposition,
        create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
    )
    if csv.get("null_marker"):
        config.null_marker = csv["null_marker"]
    if spec.bigquery.partition_field:
        config.time_partitioning = bigquery.TimePartitioning(field=spec.bigquery.partition_field)
    if spec.bigquery.clustering_fields:
        config.clustering_fields = spec.bigquery.clustering_fields
    return config


def job_id_base(spec: ExportSpec, manifest: Manifest, config: bigquery.LoadJobConfig) -> str:
    """Same export, run, objects and load configuration → same job id."""
    fingerprint = json.dumps(
        {"uris": manifest.uris, "config": config.to_api_repr(), "table": spec.bigquery_table},
        sort_keys=True,
    )
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return f"bq_assets_{spec.name}_{manifest.run_id.replace('-', '')[:16]}_{digest}"


def _describe_errors(job: bigquery.LoadJob) -> str:
    errors = job.errors or ([job.error_result] if job.error_result else [])
    return "\n".join(
        f"  - [{e.get('reason', '?')}] {e.get('location', '')}: {e.get('message', '')}".replace(
            ": :", ":"
        )
        for e in errors
    )


def ensure_dataset(client: bigquery.Client, project: str, spec: ExportSpec) -> bigquery.Dataset:
    dataset = bigquery.Dataset(f"{project}.{spec.bigquery.dataset}")
    dataset.location = spec.bigquery.location
    dataset.labels = dict(spec.bigquery.labels)
    dataset.description = "Exports written by bq_assets."
    return client.create_dataset(dataset, exists_ok=True, retry=TRANSIENT)


def run_load(
    client: bigquery.Client,
    project: str,
    spec: ExportSpec,
    manifest: Manifest,
    log: dg.DagsterLogManager,
) -> LoadResult:
    """Start (or reattach to) the load job for this manifest and wait for it."""
    ensure_dataset(client, project, spec)
    table_id = f"{project}.{spec.bigquery.dataset}.{spec.bigquery_table}"
    config = load_job_config(spec, manifest)
    base = job_id_base(spec, manifest, config)
    location = spec.bigquery.location
    for generation in range(1, MAX_GENERATIONS + 1):
        job_id = f"{base}_{generation}"
        try:
            job = client.get_job(job_id, project=project, location=location, retry=TRANSIENT)
        except gexc.NotFound:
            log.info(f"starting load job {job_id}: {len(manifest.uris)} object(s) → {table_id}")
            job = client.load_table_from_uri(
                manifest.uris,
                table_id,
                job_id=job_id,
                location=location,
                job_config=config,
                retry=TRANSIENT,
            )
            break
        if job.state == "DONE" and job.error_result:
            log.info(f"load job {job_id} already failed; starting generation {generation + 1}")
            continue
        log.info(f"reattaching to load job {job_id} (state {job.state})")
        break
    else:
        raise LoadError(f"{table_id}: {MAX_GENERATIONS} load job generations failed for one run.")
    with contextlib.suppress(gexc.GoogleAPICallError):  # the job's own errors are reported below
        job.result(retry=TRANSIENT)
    if job.error_result:
        raise LoadError(
            f"BigQuery load job {job.job_id} (location {job.location}) into {table_id} failed; "
            f"the table keeps its previous data. Errors:\n{_describe_errors(job)}"
        )
    table = client.get_table(table_id, retry=TRANSIENT)
    if spec.bigquery.labels or spec.description:
        table.labels = dict(spec.bigquery.labels)
        table.description = spec.description
        table = client.update_table(table, ["labels", "description"], retry=TRANSIENT)
    return LoadResult(
        table_id=table_id,
        job_id=job.job_id,
        location=job.location or location,
        rows=int(table.num_rows or 0),
        bytes=int(table.num_bytes or 0),
        schema=list(table.schema),
    )


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
        retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    )
    def _bigquery(
        context: dg.AssetExecutionContext,
        bigquery: StackAwareBigQueryResource,
        gcs: StackAwareGCSResource,
    ) -> dg.MaterializeResult:
        manifest_uri = str(latest_metadata(context, gcs_key(spec.name))["manifest_uri"])
        manifest = read_manifest(gcs.get_client(), manifest_uri)
        with bigquery.get_client() as client:
            result = run_load(client, bigquery.project_id(), spec, manifest, context.log)
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
                "console": dg.MetadataValue.url(console_url(result.table_id)),
            }
        )

    return _bigquery
