"""Load exactly a manifest's objects into the export's BigQuery table, atomically.

The load job has an explicit schema (from the snapshot's types), ``WRITE_TRUNCATE`` by default
(a failed load leaves the previous data in place), ``allow_quoted_newlines``, ``max_bad_records``
0, and a deterministic job id: a retried step reattaches to the job it already started instead
of loading twice, and a job id that already failed gets a new generation (``bigquery_jobs``).
"""

import hashlib
import json
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import bigquery, storage

from bq_assets.engine.bigquery_columns import (
    apply_column_governance,
    governed_schema,
    policy_tags_of,
)
from bq_assets.engine.bigquery_jobs import (
    TRANSIENT,
    count_rows,
    existing_table,
    start_or_reattach,
    wait_for,
)
from bq_assets.engine.log import Log
from bq_assets.engine.manifest import Manifest
from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import ExportSpec
from bq_assets.partitioning import bigquery_partitioning
from bq_assets.schema import schema_diff, schema_from_json

#: Staging tables left behind (a run killed mid-load) expire after a day by themselves.
STAGING_TABLE_EXPIRATION_MS = 24 * 60 * 60 * 1000


class LocationError(BqAssetsError):
    """The bucket, the dataset and the spec disagree on where the data lives."""


class SchemaDriftError(BqAssetsError):
    """The existing table's schema differs from the snapshot's in a way the spec does not allow."""


@dataclass(frozen=True)
class LoadResult:
    table_id: str
    job_id: str
    location: str
    rows: int
    bytes: int
    schema: list[bigquery.SchemaField]


def locations_compatible(bucket_location: str, dataset_location: str) -> bool:
    """Can a dataset in ``dataset_location`` load from a bucket in ``bucket_location``?

    Same location always; a US or EU multi-region dataset also loads from buckets in the
    regions of that multi-region (BigQuery's documented rule for Cloud Storage loads).
    """
    bucket, dataset = bucket_location.upper(), dataset_location.upper()
    if bucket == dataset:
        return True
    if dataset == "US":
        return bucket.startswith("US-") or bucket == "NAM4"
    if dataset == "EU":
        return bucket.startswith("EUROPE-") or bucket == "EUR4"
    return False


def bucket_location(client: storage.Client, bucket: str, retry: Retry) -> str:
    """The bucket's location, for the location check; needs ``storage.buckets.get``, which
    ``roles/storage.objectAdmin`` does not grant (``roles/storage.legacyBucketReader`` does)."""
    try:
        return client.get_bucket(bucket, retry=retry).location
    except gexc.Forbidden as exc:
        raise LocationError(
            f"cannot read the location of gs://{bucket} to check it against the dataset's: "
            "the service account lacks storage.buckets.get on the bucket. Grant it "
            "roles/storage.legacyBucketReader on the bucket (or a custom role with "
            f"storage.buckets.get). GCS said: {exc.message}"
        ) from None


def check_bucket_location(bucket: str, bucket_location: str, spec: ExportSpec) -> None:
    if not locations_compatible(bucket_location, spec.bigquery.location):
        raise LocationError(
            f"{spec.spec_file}: bigquery.location is {spec.bigquery.location}, but bucket "
            f"gs://{bucket} is in {bucket_location}; BigQuery cannot load across locations. "
            "Use a bucket in the dataset's location or change bigquery.location."
        )


def check_schema_drift(
    existing: list[bigquery.SchemaField],
    incoming: list[bigquery.SchemaField],
    spec: ExportSpec,
    table_id: str,
) -> list[str]:
    """Fail on drift the spec does not allow; return the (allowed) differences."""
    allowed = set(spec.bigquery.schema_update_options)
    diff = schema_diff(existing, incoming)
    disallowed = [
        line
        for line in diff
        if not (line.startswith("+") and "ALLOW_FIELD_ADDITION" in allowed)
        and not ("mode REQUIRED -> NULLABLE" in line and "ALLOW_FIELD_RELAXATION" in allowed)
    ]
    if disallowed:
        raise SchemaDriftError(
            f"{table_id}: the snapshot's schema differs from the existing table's "
            f"(export {spec.name}, {spec.spec_file}):\n  "
            + "\n  ".join(disallowed)
            + "\nAllow additions/relaxations with bigquery.schema_update_options, or drop the "
            "table deliberately if the change is intended."
        )
    return diff


def load_job_config(spec: ExportSpec, manifest: Manifest) -> bigquery.LoadJobConfig:
    """The load job for the manifest's objects, in the format the manifest says they are in."""
    config = bigquery.LoadJobConfig(
        schema=schema_from_json(manifest.bigquery_schema),
        max_bad_records=0,
        write_disposition=spec.bigquery.write_disposition,
        create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
    )
    if manifest.format == "parquet":
        config.source_format = bigquery.SourceFormat.PARQUET
        # BigQuery's default for Parquet decimals is NUMERIC only; the schema's rule (NUMERIC
        # when it fits, else BIGNUMERIC) needs both.
        config.decimal_target_types = ["NUMERIC", "BIGNUMERIC"]
    else:
        csv = manifest.csv
        config.source_format = bigquery.SourceFormat.CSV
        config.skip_leading_rows = 1 if csv.get("header", True) else 0
        config.field_delimiter = csv.get("delimiter", ",")
        config.allow_quoted_newlines = True
        config.encoding = "UTF-8"
        if csv.get("null_marker"):
            config.null_marker = csv["null_marker"]
    if spec.bigquery.schema_update_options and spec.bigquery.write_disposition == "WRITE_APPEND":
        config.schema_update_options = list(spec.bigquery.schema_update_options)
    if spec.bigquery_partition_field:
        config.time_partitioning = bigquery.TimePartitioning(
            type_=bigquery_partitioning(spec.partitioning.by) if spec.partitioning else "DAY",
            field=spec.bigquery_partition_field,
        )
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


def _ensure_in_location(
    client: bigquery.Client, dataset: bigquery.Dataset, spec: ExportSpec, what: str, fix: str
) -> bigquery.Dataset:
    """Create ``dataset`` in the spec's location with its labels, unless it exists; an existing
    one in another location is a ``LocationError`` (``what`` names it, ``fix`` says what to do).
    Idempotent."""
    dataset.location = spec.bigquery.location
    dataset.labels = dict(spec.bigquery.labels)
    dataset = client.create_dataset(dataset, exists_ok=True, retry=TRANSIENT)
    if (dataset.location or "").upper() != spec.bigquery.location.upper():
        raise LocationError(
            f"{spec.spec_file}: {what} {dataset.full_dataset_id} already exists in "
            f"{dataset.location}, not in bigquery.location {spec.bigquery.location}{fix}"
        )
    return dataset


def ensure_dataset(client: bigquery.Client, project: str, spec: ExportSpec) -> bigquery.Dataset:
    """The export's dataset, created in the spec's location when missing. Idempotent."""
    dataset = bigquery.Dataset(f"{project}.{spec.bigquery.dataset}")
    dataset.description = "Exports written by bq_assets."
    return _ensure_in_location(client, dataset, spec, "dataset", ".")


def ensure_staging_dataset(client: bigquery.Client, project: str, spec: ExportSpec) -> str:
    """The dataset for the load's staging tables (``bigquery.staging_dataset``, default
    ``<dataset>_staging``): apart from the published dataset, so a Databricks foreign catalog
    over that dataset never shows them; same location; tables expire after a day by default.
    Idempotent."""
    dataset = bigquery.Dataset(f"{project}.{spec.bigquery_staging_dataset}")
    dataset.default_table_expiration_ms = STAGING_TABLE_EXPIRATION_MS
    dataset.description = "Staging tables of bq_assets loads; each is deleted after its load."
    fix = "; set bigquery.staging_dataset to a dataset in that location."
    return _ensure_in_location(client, dataset, spec, "staging dataset", fix).dataset_id


def prepare_load(
    client: bigquery.Client, project: str, spec: ExportSpec, manifest: Manifest, log: Log
) -> tuple[str, bigquery.LoadJobConfig, bigquery.Table | None]:
    """What every load of the manifest starts from: the dataset (created when missing), the
    table id, the load job's configuration and the existing table, if any, whose schema may
    differ from the snapshot's only as the spec allows (``SchemaDriftError`` otherwise).
    Idempotent."""
    ensure_dataset(client, project, spec)
    table_id = f"{project}.{spec.bigquery.dataset}.{spec.bigquery_table}"
    config = load_job_config(spec, manifest)
    config.schema = governed_schema(list(config.schema), spec, policy_tags_of(client))
    existing = existing_table(client, table_id)
    if existing is not None:
        drift = check_schema_drift(list(existing.schema), list(config.schema), spec, table_id)
        if drift:
            log.info(f"{table_id}: allowed schema changes: {'; '.join(drift)}")
    return table_id, config, existing


def _create_for_parquet(client: bigquery.Client, table_id: str, config: bigquery.LoadJobConfig):
    """Create the load target with the load's schema, partitioning and clustering. BigQuery does
    not need it (a Parquet load creates its table); the emulator loads Parquet only into a table
    that exists, and creating it first costs BigQuery nothing. Idempotent."""
    target = bigquery.Table(table_id, schema=config.schema)
    target.time_partitioning = config.time_partitioning
    target.clustering_fields = config.clustering_fields
    client.create_table(target, exists_ok=True, retry=TRANSIENT)


def run_load(
    client: bigquery.Client, project: str, spec: ExportSpec, manifest: Manifest, log: Log
) -> LoadResult:
    """Load exactly the manifest's objects into the export's table, atomically.

    ``WRITE_TRUNCATE`` loads go to a staging table first (in the staging dataset, see
    ``ensure_staging_dataset``; deleted if the load fails) and are published with one copy job,
    so a failed load never touches the table (BigQuery's own loads are atomic; the emulator's
    are not, and a publish step costs nothing extra in the same location). ``WRITE_APPEND``
    loads go straight to the table. Job ids are deterministic (see ``job_id_base``): running
    this again for the same manifest reattaches instead of loading twice.
    """
    table_id, config, existing = prepare_load(client, project, spec, manifest, log)
    base = job_id_base(spec, manifest, config)
    location = spec.bigquery.location
    staged = spec.bigquery.write_disposition == "WRITE_TRUNCATE"
    load_target = table_id
    if staged:
        staging = ensure_staging_dataset(client, project, spec)
        load_target = f"{project}.{staging}.{spec.bigquery_table}__staging_{base[-16:]}"
        config.write_disposition = bigquery.WriteDisposition.WRITE_TRUNCATE
    if manifest.format == "parquet":
        _create_for_parquet(client, load_target, config)

    log.info(f"loading {len(manifest.uris)} object(s) of {manifest.prefix} into {load_target}")
    try:
        job = start_or_reattach(
            client, base, project, location,
            lambda job_id: client.load_table_from_uri(
                manifest.uris, load_target, job_id=job_id, location=location, job_config=config,
                retry=TRANSIENT,
            ),
            log,
        )  # fmt: skip
        wait_for(job, table_id, location, existing is not None)
    except BaseException:
        # A failed load leaves nothing behind; a failed publish below keeps the loaded staging
        # table, so a retry reattaches to the load and only repeats the copy.
        if staged:
            drop_quietly(client, load_target, log)
        raise
    if staged:
        copy = start_or_reattach(
            client, f"{job.job_id}_publish", project, location,
            lambda job_id: client.copy_table(
                load_target, table_id, job_id=job_id, location=location, retry=TRANSIENT,
                job_config=bigquery.CopyJobConfig(write_disposition="WRITE_TRUNCATE"),
            ),
            log,
        )  # fmt: skip
        wait_for(copy, table_id, location, existing is not None)
        client.delete_table(load_target, not_found_ok=True, retry=TRANSIENT)

    table = client.get_table(table_id, retry=TRANSIENT)
    if spec.bigquery.labels or spec.description:
        table.labels = dict(spec.bigquery.labels)
        table.description = spec.description
        table = client.update_table(table, ["labels", "description"], retry=TRANSIENT)
    table = apply_column_governance(client, table, spec)
    return LoadResult(
        table_id=table_id,
        job_id=job.job_id,
        location=job.location or location,
        rows=count_rows(client, table_id),
        bytes=int(table.num_bytes or 0),
        schema=list(table.schema),
    )


def drop_quietly(client: bigquery.Client, table_id: str, log: Log) -> None:
    """Delete a staging table while another error is on its way (that error is the story;
    should this delete fail too, the staging dataset's expiration removes the table)."""
    try:
        client.delete_table(table_id, not_found_ok=True, retry=TRANSIENT.with_timeout(30))
    except Exception as exc:
        log.warning(f"could not delete staging table {table_id} ({exc}); it expires in a day")
