"""Stage 3: load exactly the manifest's objects into a BigQuery table.

The load job has an explicit schema (from the snapshot's types), ``WRITE_TRUNCATE`` by default
(a failed load leaves the previous data in place), ``allow_quoted_newlines``, ``max_bad_records``
0, and a deterministic job id: a retried step reattaches to the job it already started instead
of loading twice, and a job id that already failed gets a new generation.
"""

import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import dagster as dg
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import bigquery, storage

from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import ExportSpec
from bq_assets.partitioning import (
    Window,
    aligned_with_bigquery,
    bigquery_partitioning,
    decorator,
    window_predicate,
)
from bq_assets.resources.google import StackAwareBigQueryResource, StackAwareGCSResource
from bq_assets.schema import column_schema, schema_diff, schema_from_json
from bq_assets.stages import (
    NETWORK_RETRY,
    bigquery_key,
    gcs_key,
    reading_input,
    reported_as_failure,
    upstream_materialization,
)
from bq_assets.stages.gcs_csv import Manifest, read_manifest
from bq_assets.stages.partitions import run_window, window_metadata

MAX_GENERATIONS = 20
# A load or copy job that has not finished by then fails the step (and its retry re-attaches).
JOB_TIMEOUT_S = 3600.0
# Only transient failures are retried: rate limits and server errors, with exponential backoff.
TRANSIENT = Retry(
    predicate=lambda exc: isinstance(
        exc, gexc.TooManyRequests | gexc.InternalServerError | gexc.BadGateway
        | gexc.ServiceUnavailable | gexc.GatewayTimeout
    ),
    initial=1.0, maximum=30.0, multiplier=2.0, timeout=300.0,
)  # fmt: skip


class LocationError(BqAssetsError):
    """The bucket, the dataset and the spec disagree on where the data lives."""


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


class SchemaDriftError(BqAssetsError):
    """The existing table's schema differs from the snapshot's in a way the spec does not allow."""


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


@dataclass(frozen=True)
class LoadResult:
    table_id: str
    job_id: str
    location: str
    rows: int
    bytes: int
    schema: list[bigquery.SchemaField]


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


def _describe_errors(job: bigquery.LoadJob) -> str:
    errors = job.errors or ([job.error_result] if job.error_result else [])
    lines = []
    for error in errors:
        where = f" {error['location']}" if error.get("location") else ""
        lines.append(f"  - [{error.get('reason', '?')}]{where}: {error.get('message', '')}")
    return "\n".join(lines)


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
    dataset = bigquery.Dataset(f"{project}.{spec.bigquery.dataset}")
    dataset.description = "Exports written by bq_assets."
    return _ensure_in_location(client, dataset, spec, "dataset", ".")


#: Staging tables left behind (a run killed mid-load) expire after a day by themselves.
STAGING_TABLE_EXPIRATION_MS = 24 * 60 * 60 * 1000


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


def _start_or_reattach(
    client: bigquery.Client,
    base: str,
    project: str,
    location: str,
    start: Callable[[str], bigquery.job.LoadJob | bigquery.job.CopyJob],
    log: dg.DagsterLogManager,
) -> bigquery.job.LoadJob | bigquery.job.CopyJob:
    """The job ``<base>_<generation>``: reattach to a running one, or to a finished one whose
    table is still as it left it; start a new generation after a failed one, or when its table
    has since been deleted or changed. A retried step therefore never runs the same work twice,
    and a repair (re-materializing after the table went missing or was altered) loads again."""
    for generation in range(1, MAX_GENERATIONS + 1):
        job_id = f"{base}_{generation}"
        try:
            job = client.get_job(job_id, project=project, location=location, retry=TRANSIENT)
        except gexc.NotFound:
            log.info(f"starting job {job_id}")
            return start(job_id)
        if job.state == "DONE" and job.error_result:
            log.info(f"job {job_id} already failed; starting generation {generation + 1}")
            continue
        if job.state == "DONE" and not _output_unchanged(client, job):
            log.info(
                f"job {job_id} finished, but its table {_table_id(job.destination)} was deleted or "
                f"changed since; starting generation {generation + 1}"
            )
            continue
        log.info(f"reattaching to job {job_id} (state {job.state})")
        return job
    raise dg.Failure(f"{MAX_GENERATIONS} generations of job {base} failed for one run.")


#: Table modification times a little after the job's end still count as the job's own write.
_SAME_WRITE = dt.timedelta(seconds=5)


def _table_id(table: bigquery.TableReference | None) -> str:
    return f"{table.project}.{table.dataset_id}.{table.table_id}" if table else "(unknown)"


def _output_unchanged(
    client: bigquery.Client, job: bigquery.job.LoadJob | bigquery.job.CopyJob
) -> bool:
    """Does the finished job's table still exist, unmodified since the job (and our own label
    update right after it) ended? A staged load's table is gone once published: its output then
    lives on in the table of its publish job (``<load job id>_publish_<generation>``)."""
    table = _existing_table(client, job.destination)
    if table is None:
        publish = _published_by(client, job) if isinstance(job, bigquery.LoadJob) else None
        return (
            publish is not None
            and _output_unchanged(client, publish)
            # A DML change need not show in the table's modification time (the emulator's does
            # not move): the published table must also still hold exactly the loaded rows.
            and (
                job.output_rows is None or _rows_of(client, publish.destination) == job.output_rows
            )
        )
    if table.modified is None or job.ended is None:
        return True
    return table.modified <= job.ended + _SAME_WRITE


def _existing_table(
    client: bigquery.Client, table: bigquery.TableReference | None
) -> bigquery.Table | None:
    if table is None:
        return None
    try:
        return client.get_table(table, retry=TRANSIENT)
    except gexc.NotFound:
        return None


def _rows_of(client: bigquery.Client, table: bigquery.TableReference) -> int:
    return count_rows(client, f"{table.project}.{table.dataset_id}.{table.table_id}")


def _published_by(client: bigquery.Client, load: bigquery.LoadJob) -> bigquery.CopyJob | None:
    """The successful publish (copy) job of a staged load, if any."""
    for generation in range(1, MAX_GENERATIONS + 1):
        job_id = f"{load.job_id}_publish_{generation}"
        try:
            job = client.get_job(
                job_id, project=load.project, location=load.location, retry=TRANSIENT
            )
        except gexc.NotFound:
            return None
        if job.state == "DONE" and not job.error_result:
            return job
    return None


#: Job error reasons that a new attempt can fix: BigQuery's own failures and rate limits
#: (https://cloud.google.com/bigquery/docs/error-messages: "retry" for these). Any other reason
#: (invalid data, a bad schema, access denied, a missing object) fails the step at once.
RETRYABLE_REASONS = frozenset(
    {"backendError", "internalError", "rateLimitExceeded", "jobBackendError", "jobInternalError"}
)


def retryable(job: bigquery.job.LoadJob | bigquery.job.CopyJob) -> bool:
    """Whether the failed job's error is one a new attempt can fix."""
    return (job.error_result or {}).get("reason") in RETRYABLE_REASONS


def _wait(
    job: bigquery.job.LoadJob | bigquery.job.CopyJob,
    table_id: str,
    location: str,
    table_existed: bool,
) -> None:
    try:
        with contextlib.suppress(gexc.GoogleAPICallError):  # the job's own errors: see below
            job.result(retry=TRANSIENT, timeout=JOB_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        raise dg.Failure(
            f"BigQuery job {job.job_id} (location {job.location or location}) for {table_id} "
            f"did not finish within {JOB_TIMEOUT_S:g} s (JOB_TIMEOUT_S).",
            allow_retries=True,
        ) from None
    if job.error_result:
        kind = "load" if isinstance(job, bigquery.LoadJob) else "copy"
        kept = "the table keeps its previous data" if table_existed else "the table was not created"
        raise dg.Failure(
            description=(
                f"BigQuery {kind} job {job.job_id} (location {job.location or location}) for "
                f"{table_id} failed; {kept}. Errors:\n{_describe_errors(job)}"
            ),
            metadata={
                "job_id": job.job_id,
                "location": job.location or location,
                "table": table_id,
                "errors": dg.MetadataValue.json(job.errors or [job.error_result]),
            },
            allow_retries=retryable(job),
        )


def run_load(
    client: bigquery.Client,
    project: str,
    spec: ExportSpec,
    manifest: Manifest,
    log: dg.DagsterLogManager,
) -> LoadResult:
    """Load exactly the manifest's objects into the export's table, atomically.

    ``WRITE_TRUNCATE`` loads go to a staging table first (in the staging dataset, see
    ``ensure_staging_dataset``; deleted if the load fails) and are published with one copy job,
    so a failed load never touches the table (BigQuery's own loads are atomic; the emulator's
    are not, and a publish step costs nothing extra in the same location). ``WRITE_APPEND``
    loads go straight to the table. Job ids are deterministic (see ``job_id_base``).
    """
    ensure_dataset(client, project, spec)
    table_id = f"{project}.{spec.bigquery.dataset}.{spec.bigquery_table}"
    config = load_job_config(spec, manifest)
    try:
        existing = client.get_table(table_id, retry=TRANSIENT).schema
    except gexc.NotFound:
        existing = None
    if existing is not None:
        drift = check_schema_drift(list(existing), list(config.schema), spec, table_id)
        if drift:
            log.info(f"{table_id}: allowed schema changes: {'; '.join(drift)}")
    base = job_id_base(spec, manifest, config)
    location = spec.bigquery.location
    staged = spec.bigquery.write_disposition == "WRITE_TRUNCATE"
    load_target = table_id
    if staged:
        staging = ensure_staging_dataset(client, project, spec)
        load_target = f"{project}.{staging}.{spec.bigquery_table}__staging_{base[-16:]}"
        config.write_disposition = bigquery.WriteDisposition.WRITE_TRUNCATE
    if manifest.format == "parquet":
        # The emulator loads Parquet only into a table that exists (BigQuery does not mind):
        # create the load target with the load's schema, partitioning and clustering first.
        target = bigquery.Table(load_target, schema=config.schema)
        target.time_partitioning = config.time_partitioning
        target.clustering_fields = config.clustering_fields
        client.create_table(target, exists_ok=True, retry=TRANSIENT)

    log.info(f"loading {len(manifest.uris)} object(s) of {manifest.prefix} into {load_target}")
    try:
        job = _start_or_reattach(
            client, base, project, location,
            lambda job_id: client.load_table_from_uri(
                manifest.uris, load_target, job_id=job_id, location=location, job_config=config,
                retry=TRANSIENT,
            ),
            log,
        )  # fmt: skip
        _wait(job, table_id, location, existing is not None)
    except BaseException:
        # A failed load leaves nothing behind; a failed publish below keeps the loaded staging
        # table, so a retry reattaches to the load and only repeats the copy.
        if staged:
            _drop_quietly(client, load_target, log)
        raise
    if staged:
        copy = _start_or_reattach(
            client, f"{job.job_id}_publish", project, location,
            lambda job_id: client.copy_table(
                load_target, table_id, job_id=job_id, location=location, retry=TRANSIENT,
                job_config=bigquery.CopyJobConfig(write_disposition="WRITE_TRUNCATE"),
            ),
            log,
        )  # fmt: skip
        _wait(copy, table_id, location, existing is not None)
        client.delete_table(load_target, not_found_ok=True, retry=TRANSIENT)

    table = client.get_table(table_id, retry=TRANSIENT)
    if spec.bigquery.labels or spec.description:
        table.labels = dict(spec.bigquery.labels)
        table.description = spec.description
        table = client.update_table(table, ["labels", "description"], retry=TRANSIENT)
    return LoadResult(
        table_id=table_id,
        job_id=job.job_id,
        location=job.location or location,
        rows=count_rows(client, table_id),
        bytes=int(table.num_bytes or 0),
        schema=list(table.schema),
    )


def _drop_quietly(client: bigquery.Client, table_id: str, log: dg.DagsterLogManager) -> None:
    """Delete a staging table while another error is on its way (that error is the story;
    should this delete fail too, the staging dataset's expiration removes the table)."""
    try:
        client.delete_table(table_id, not_found_ok=True, retry=TRANSIENT.with_timeout(30))
    except Exception as exc:
        log.warning(f"could not delete staging table {table_id} ({exc}); it expires in a day")


def count_rows(client: bigquery.Client, table_id: str) -> int:
    """``COUNT(*)`` of the table: exact right after a publish (the emulator's ``num_rows`` is
    stale after a copy job; BigQuery answers this from metadata, without scanning)."""
    (count,) = next(iter(client.query(f"SELECT COUNT(*) FROM `{table_id}`").result()))
    return int(count)


def console_url(table_id: str) -> str:
    project, dataset, table = table_id.split(".")
    return (
        f"https://console.cloud.google.com/bigquery?project={project}"
        f"&ws=!1m5!1m4!4m3!1s{project}!2s{dataset}!3s{table}"
    )


# --- Partitioned exports (issue 14) -----------------------------------------------------------
#: How a partition's rows replace that partition of the table:
#: ``decorator``: copy jobs to ``table$YYYYMMDD`` / ``table$YYYYMM`` with WRITE_TRUNCATE
#: (BigQuery replaces exactly that partition, atomically); ``transaction``: one multi-statement
#: transaction deleting the window's rows and inserting the staging table's. The emulator knows
#: no partition decorators, so it always uses ``transaction``; so does BigQuery when the
#: export's partitions are not BigQuery's own (weeks; TIMESTAMP days outside UTC).
PartitionOverwrite = Literal["decorator", "transaction"]


class PartitionBoundsError(BqAssetsError):
    """Rows of a partition's load fall outside the partition's window."""


@dataclass(frozen=True)
class PartitionLoad:
    """What one run loaded into a partitioned table: the run's window, one load job, how the
    partitions were replaced, and how many rows each partition of the window now holds
    (exactly the rows loaded, or the load fails)."""

    result: LoadResult
    window: Window
    mechanism: PartitionOverwrite
    rows_by_partition: dict[str, int]
    publish_jobs: list[str]


def partition_overwrite(resource: object) -> PartitionOverwrite:
    """The mechanism the BigQuery resource supports: ``decorator`` for BigQuery, unless the
    resource says otherwise (the local stack's resource says ``transaction``)."""
    declared = getattr(resource, "partition_overwrite", None)
    if declared in ("decorator", "transaction"):
        return declared
    return "transaction" if getattr(resource, "local_stack_dir", None) else "decorator"


def _column_type(config: bigquery.LoadJobConfig, column: str) -> str:
    return next(f.field_type for f in config.schema if f.name == column).upper()


def _bound(value: dt.datetime | dt.date, column_type: str) -> bigquery.ScalarQueryParameter:
    """A window bound as a query parameter of the column's type (a TIMESTAMP is an instant;
    a DATETIME holds UTC wall time, as the query step compared it; a DATE the local date)."""
    if column_type == "DATE":
        day = value.date() if isinstance(value, dt.datetime) else value
        return bigquery.ScalarQueryParameter(None, "DATE", day)
    assert isinstance(value, dt.datetime)
    utc = value.astimezone(dt.UTC)
    if column_type == "DATETIME":
        return bigquery.ScalarQueryParameter(None, "DATETIME", utc.replace(tzinfo=None))
    return bigquery.ScalarQueryParameter(None, "TIMESTAMP", utc)


def _window_bounds(window: Window, column_type: str) -> tuple[dt.date | dt.datetime, ...]:
    if column_type == "DATE":
        return window.start_date, window.end_date
    return window.start, window.end


def partition_row_counts(
    client: bigquery.Client, table_id: str, column: str, column_type: str, window: Window
) -> tuple[dict[str, int], int]:
    """Rows of ``table_id`` in each partition of ``window``, and rows outside the window
    (or with a NULL partition column). One query; read-only."""
    parts = window.split()
    counts = [f"COUNTIF(`{column}` >= ? AND `{column}` < ?) AS p{i}" for i, _ in enumerate(parts)]
    params = [_bound(b, column_type) for part in parts for b in _window_bounds(part, column_type)]
    start, end = _window_bounds(window, column_type)
    sql = (
        f"SELECT {', '.join(counts)}, "
        f"COUNTIF(`{column}` IS NULL OR `{column}` < ? OR `{column}` >= ?) AS outside "
        f"FROM `{table_id}`"
    )
    params += [_bound(start, column_type), _bound(end, column_type)]
    job = client.query(
        sql, job_config=bigquery.QueryJobConfig(query_parameters=params), retry=TRANSIENT
    )
    row = next(iter(job.result()))
    return {part.keys[0]: int(row[f"p{i}"]) for i, part in enumerate(parts)}, int(row["outside"])


def _transaction_script(
    table_id: str,
    staging_id: str,
    column: str,
    column_type: str,
    window: Window,
    columns: list[str],
) -> str:
    """Replace the window's rows of ``table_id`` with the staging table's, all or nothing. The
    bounds are literals (the emulator binds no parameters in scripts): computed dates only."""
    names = ", ".join(f"`{c}`" for c in columns)
    return (
        "BEGIN TRANSACTION;\n"
        f"DELETE FROM `{table_id}` WHERE {window_predicate('bigquery', column, column_type, window)};\n"
        f"INSERT INTO `{table_id}` ({names}) SELECT {names} FROM `{staging_id}`;\n"
        "COMMIT TRANSACTION;"
    )


def _ensure_partitioned_table(
    client: bigquery.Client, table_id: str, config: bigquery.LoadJobConfig
) -> None:
    """Create the partitioned table (schema, partitioning, clustering) unless it exists, so a
    partition can be written into it. Idempotent."""
    table = bigquery.Table(table_id, schema=config.schema)
    table.time_partitioning = config.time_partitioning
    table.clustering_fields = config.clustering_fields
    client.create_table(table, exists_ok=True, retry=TRANSIENT)


def run_partition_load(
    client: bigquery.Client,
    project: str,
    spec: ExportSpec,
    manifest: Manifest,
    window: Window,
    overwrite: PartitionOverwrite,
    log: dg.DagsterLogManager,
) -> PartitionLoad:
    """Replace exactly the partitions of ``window`` in the export's table with the manifest's
    rows; every other partition stays as it was.

    The objects are loaded into a staging table first; the load fails (nothing published) when
    any of its rows falls outside the window. Then each partition of the window is replaced:
    by a copy job to its decorator (``table$YYYYMMDD`` or ``$YYYYMM``, WRITE_TRUNCATE) when the
    export's partitions are BigQuery's own and ``overwrite`` is ``decorator``, else by one
    transaction (delete the window's rows, insert the staging table's). Idempotent: running it
    again with the same manifest gives the same table.
    """
    assert spec.partitioning is not None
    column = spec.partitioning.column
    ensure_dataset(client, project, spec)
    table_id = f"{project}.{spec.bigquery.dataset}.{spec.bigquery_table}"
    config = load_job_config(spec, manifest)
    column_type = _column_type(config, column)
    existing = _existing_table(client, bigquery.TableReference.from_string(table_id))
    if existing is not None:
        drift = check_schema_drift(list(existing.schema), list(config.schema), spec, table_id)
        if drift:
            log.info(f"{table_id}: allowed schema changes: {'; '.join(drift)}")
    _ensure_partitioned_table(client, table_id, config)
    aligned = aligned_with_bigquery(spec.partitioning.by, column_type, spec.timezone)
    mechanism: PartitionOverwrite = (
        "decorator" if overwrite == "decorator" and aligned else ("transaction")
    )
    base = job_id_base(spec, manifest, config)
    location = spec.bigquery.location
    staging_dataset = ensure_staging_dataset(client, project, spec)
    staging_id = f"{project}.{staging_dataset}.{spec.bigquery_table}__staging_{base[-16:]}"
    config.write_disposition = bigquery.WriteDisposition.WRITE_TRUNCATE
    staged: list[str] = [staging_id]
    publish_jobs: list[str] = []
    try:
        _ensure_partitioned_table(client, staging_id, config)
        log.info(f"loading {len(manifest.uris)} object(s) of {manifest.prefix} into {staging_id}")
        job = _start_or_reattach(
            client, base, project, location,
            lambda job_id: client.load_table_from_uri(
                manifest.uris, staging_id, job_id=job_id, location=location, job_config=config,
                retry=TRANSIENT,
            ),
            log,
        )  # fmt: skip
        _wait(job, table_id, location, True)
        loaded, outside = partition_row_counts(client, staging_id, column, column_type, window)
        if outside:
            raise PartitionBoundsError(
                f"{spec.sql_file}: {outside} row(s) of {window.describe()} have {column} outside "
                f"the partition (or NULL); nothing was published. The query must return only "
                "the window's rows: WHERE <column> >= $partition_start AND <column> < "
                "$partition_end (partitioning.column must be the column the query filters on)."
            )
        if mechanism == "decorator":
            for part in window.split():
                source_id = staging_id
                if len(window.keys) > 1:
                    source_id = f"{staging_id}_{part.keys[0].replace('-', '')}"
                    staged.append(source_id)
                    _select_partition(client, staging_id, source_id, column, column_type, part)
                target = f"{table_id}{decorator(part.keys[0], part.by)}"
                copy = _start_or_reattach(
                    client, f"{job.job_id}_publish_{part.keys[0].replace('-', '')}", project,
                    location,
                    lambda job_id, source_id=source_id, target=target: client.copy_table(
                        source_id, target, job_id=job_id, location=location, retry=TRANSIENT,
                        job_config=bigquery.CopyJobConfig(write_disposition="WRITE_TRUNCATE"),
                    ),
                    log,
                )  # fmt: skip
                _wait(copy, target, location, True)
                publish_jobs.append(copy.job_id)
        else:
            script = _transaction_script(
                table_id, staging_id, column, column_type, window, [f.name for f in config.schema]
            )
            log.info(f"replacing {window.describe()} of {table_id} in one transaction")
            query = client.query(
                script, job_id_prefix=f"{job.job_id}_publish_", location=location, retry=TRANSIENT
            )
            query.result(retry=TRANSIENT, timeout=JOB_TIMEOUT_S)
            publish_jobs.append(query.job_id)
    finally:
        for staging in staged:
            _drop_quietly(client, staging, log)
    table = client.get_table(table_id, retry=TRANSIENT)
    if spec.bigquery.labels or spec.description:
        table.labels = dict(spec.bigquery.labels)
        table.description = spec.description
        table = client.update_table(table, ["labels", "description"], retry=TRANSIENT)
    published, _ = partition_row_counts(client, table_id, column, column_type, window)
    result = LoadResult(
        table_id=table_id,
        job_id=job.job_id,
        location=job.location or location,
        rows=sum(published.values()),
        bytes=int(table.num_bytes or 0),
        schema=list(table.schema),
    )
    if published != loaded:
        raise PartitionBoundsError(
            f"{table_id}: after publishing {window.describe()} the table holds {published} "
            f"row(s) per partition, but {loaded} were loaded; re-materialize the partition(s)."
        )
    return PartitionLoad(result, window, mechanism, published, publish_jobs)


def partition_load_metadata(loaded: PartitionLoad) -> dict[str, object]:
    """The materialization metadata of a partitioned load, besides the unpartitioned ones
    (where ``dagster/row_count`` counts the rows of this run's partitions, not the table)."""
    return {
        **window_metadata(loaded.window),
        "partition_overwrite": loaded.mechanism,
        "rows_by_partition": dg.MetadataValue.json(loaded.rows_by_partition),
        "publish_job_ids": dg.MetadataValue.json(loaded.publish_jobs),
    }


def _select_partition(
    client: bigquery.Client,
    staging_id: str,
    destination: str,
    column: str,
    column_type: str,
    part: Window,
) -> None:
    """Write the rows of one partition of the staging table to a table of their own, the
    source of that partition's copy job (a copy to a decorator needs exactly its rows)."""
    start, end = (_bound(b, column_type) for b in _window_bounds(part, column_type))
    config = bigquery.QueryJobConfig(
        destination=destination,
        write_disposition="WRITE_TRUNCATE",
        query_parameters=[start, end],
    )
    sql = f"SELECT * FROM `{staging_id}` WHERE `{column}` >= ? AND `{column}` < ?"
    client.query(sql, job_config=config, retry=TRANSIENT).result(
        retry=TRANSIENT, timeout=JOB_TIMEOUT_S
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
        bigquery: StackAwareBigQueryResource,
        gcs: StackAwareGCSResource,
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
                        partition_overwrite(bigquery), context.log,
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
