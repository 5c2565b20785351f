"""Load exactly a manifest's objects into the export's BigQuery table, atomically.

The load job has an explicit schema (from the snapshot's types), ``allow_quoted_newlines``,
``max_bad_records`` 0, and a deterministic job id. It fills a staging table that is published
(``WRITE_TRUNCATE`` by default, or ``WRITE_APPEND``) only when it holds exactly the manifest's
rows, so a failed or short load leaves the previous data in place. A retried step reattaches to
the job it already started instead of loading twice, and a job id that already failed gets a
new generation (``bigquery_jobs``).
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
from bq_assets.engine.bigquery_tables import (
    LocationError,
    align_clustering,
    apply_labels_and_description,
    check_partitioning,
    create_staging_table,
    ensure_dataset,
    ensure_export_table,
    ensure_staging_dataset,
    widen_schema,
)
from bq_assets.engine.log import Log
from bq_assets.engine.manifest import Manifest
from bq_assets.engine.publish_guard import refuse_unless_staged_as_promised
from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import ExportSpec
from bq_assets.partitioning import bigquery_partitioning
from bq_assets.schema import schema_diff, schema_from_json


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


#: Regions inside BigQuery's EU multi-region: those in member states of the European Union
#: (https://cloud.google.com/bigquery/docs/locations); London (europe-west2) and Zurich
#: (europe-west6) are in Europe but not in the EU multi-region.
EU_REGIONS = frozenset(
    {"EUROPE-WEST1", "EUROPE-WEST3", "EUROPE-WEST4", "EUROPE-WEST8", "EUROPE-WEST9",
     "EUROPE-WEST10", "EUROPE-WEST12", "EUROPE-NORTH1", "EUROPE-NORTH2", "EUROPE-CENTRAL2",
     "EUROPE-SOUTHWEST1"}
)  # fmt: skip
#: Cloud Storage's predefined dual-regions inside the EU multi-region (EUR4: europe-north1 and
#: europe-west4: https://cloud.google.com/storage/docs/locations#predefined). A configurable
#: dual-region reports its multi-region ("EU", "US") as its location.
EU_DUAL_REGIONS = frozenset({"EUR4"})


def locations_compatible(bucket_location: str, dataset_location: str) -> bool:
    """Can a dataset in ``dataset_location`` load from a bucket in ``bucket_location``?

    BigQuery's rule for loads from Cloud Storage
    (https://cloud.google.com/bigquery/docs/loading-data-cloud-storage-csv#limitations): "If
    your dataset's location is set to a value other than the US multi-region, then the Cloud
    Storage bucket must be in the same region or contained in the same multi-region as the
    dataset." So a US dataset loads from a bucket anywhere; an EU dataset from the EU
    multi-region, a region in it or a dual-region in it; a regional dataset only from a bucket
    in that same region (not from a dual- or multi-region that contains it).
    """
    bucket, dataset = bucket_location.upper(), dataset_location.upper()
    if dataset == "US" or bucket == dataset:
        return True
    if dataset == "EU":
        return bucket in EU_REGIONS or bucket in EU_DUAL_REGIONS
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
    partitioning = declared_partitioning(spec)
    if partitioning is not None:
        config.time_partitioning = partitioning
    if spec.bigquery.clustering_fields:
        config.clustering_fields = spec.bigquery.clustering_fields
    return config


def declared_partitioning(spec: ExportSpec) -> bigquery.TimePartitioning | None:
    """The partitioning the spec declares for its BigQuery table (None: unpartitioned)."""
    if not spec.bigquery_partition_field:
        return None
    return bigquery.TimePartitioning(
        type_=bigquery_partitioning(spec.partitioning.by) if spec.partitioning else "DAY",
        field=spec.bigquery_partition_field,
    )


def job_id_base(spec: ExportSpec, manifest: Manifest, config: bigquery.LoadJobConfig) -> str:
    """Same export, run, objects and load configuration → same job id."""
    fingerprint = json.dumps(
        {"uris": manifest.uris, "config": config.to_api_repr(), "table": spec.bigquery_table},
        sort_keys=True,
    )
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return f"bq_assets_{spec.name}_{manifest.run_id.replace('-', '')[:16]}_{digest}"


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


def appended_schema(
    existing: list[bigquery.SchemaField], incoming: list[bigquery.SchemaField], table_id: str
) -> list[bigquery.SchemaField] | None:
    """The schema the table needs before the staging table (``incoming``) can be appended to it
    by a copy job: ``None`` when it has it already; else the table's columns (REQUIRED relaxed
    to NULLABLE where the snapshot's are) followed by the new ones. A copy job takes no
    ``schema_update_options`` (only loads and queries do), so the table is widened first, the
    way BigQuery's "Modifying table schemas" page adds columns (``tables.patch``); the drift
    check has already refused what the spec does not allow. A column order the table cannot
    take (a new column before an existing one, or the table's columns reordered) is a
    ``SchemaDriftError``, raised before anything is loaded. Pure."""
    if not schema_diff(existing, incoming):
        return None
    wanted = {field.name: field for field in incoming}
    widened = [
        field
        if field.mode != "REQUIRED" or wanted.get(field.name, field).mode == "REQUIRED"
        else bigquery.SchemaField.from_api_repr({**field.to_api_repr(), "mode": "NULLABLE"})
        for field in existing
    ]
    known = {field.name for field in existing}
    widened += [field for field in incoming if field.name not in known]
    order = [field.name for field in widened]
    if [field.name for field in incoming] != order:
        raise SchemaDriftError(
            f"{table_id}: an append copies the checked staging table into the table, which "
            "needs the table's columns in the table's order, then any new ones: the query "
            f"returns ({', '.join(wanted)}), the table would need ({', '.join(order)}). "
            "Reorder the query's columns."
        )
    return widened


def run_load(
    client: bigquery.Client, project: str, spec: ExportSpec, manifest: Manifest, log: Log
) -> LoadResult:
    """Load exactly the manifest's objects into the export's table; publish only what adds up.

    The objects are loaded into a staging table (in the staging dataset, see
    ``ensure_staging_dataset``), which must hold exactly the rows the manifest promises
    (``publish_guard``); only then does one copy job publish it, replacing the table
    (``WRITE_TRUNCATE``) or appending to it (``WRITE_APPEND``, the table widened first where the
    spec allows, see ``appended_schema``). A load that fails or does not add up deletes its
    staging table and never touches the table (BigQuery's own loads are atomic; the emulator's
    are not, and a publish step costs nothing extra in the same location). Job ids are
    deterministic (see ``job_id_base``): running this again for the same manifest reattaches
    instead of loading or appending twice.

    Every table is created before a job writes it, laid out as the spec declares
    (``bigquery_tables``): the staging table like the export's, and the export's table, on its
    first publish, with the spec's partitioning, clustering, labels and description, so it
    takes nothing from its staging table. An existing table keeps its data until the copy
    replaces it; its clustering is first set to the spec's, and a partitioning other than the
    spec's is refused before anything is loaded.
    """
    table_id, config, existing = prepare_load(client, project, spec, manifest, log)
    if existing is not None:
        check_partitioning(existing, config, spec)
        existing = align_clustering(client, existing, config, log)
    base = job_id_base(spec, manifest, config)
    location = spec.bigquery.location
    disposition = spec.bigquery.write_disposition
    appending = disposition == "WRITE_APPEND" and existing is not None
    if appending:
        assert existing is not None
        # Refuses, before anything is loaded, columns in an order the copy cannot append.
        appended_schema(list(existing.schema), list(config.schema), table_id)
    staging = ensure_staging_dataset(client, project, spec)
    load_target = f"{project}.{staging}.{spec.bigquery_table}__staging_{base[-16:]}"
    config.write_disposition = bigquery.WriteDisposition.WRITE_TRUNCATE
    config.schema_update_options = None  # the table's are applied before the publish

    def start_load(job_id: str) -> bigquery.LoadJob:
        # Created only when a load starts: a table made earlier would make a finished job of
        # an earlier run look as if its output were still there.
        create_staging_table(client, load_target, config)
        return client.load_table_from_uri(
            manifest.uris, load_target, job_id=job_id, location=location, job_config=config,
            retry=TRANSIENT,
        )  # fmt: skip

    log.info(f"loading {len(manifest.uris)} object(s) of {manifest.prefix} into {load_target}")
    try:
        job = start_or_reattach(client, base, project, location, start_load, log)
        wait_for(job, table_id, location, existing is not None)
        # A reattached load whose staging table is gone was published (and checked) by an
        # earlier attempt: start_or_reattach reuses a finished load only then.
        if existing_table(client, load_target) is not None:
            staged_rows = count_rows(client, load_target)
            refuse_unless_staged_as_promised(manifest, load_target, table_id, staged_rows)
    except BaseException:
        # A failed or refused load leaves nothing behind; a failed publish below keeps the
        # loaded staging table, so a retry reattaches to the load and only repeats the copy.
        drop_quietly(client, load_target, log)
        raise
    if appending:
        assert existing is not None
        widen_schema(client, existing, config, log)
    publish(
        client, project, load_target, table_id, config, spec, f"{job.job_id}_publish", log,
        disposition,
    )  # fmt: skip
    client.delete_table(load_target, not_found_ok=True, retry=TRANSIENT)

    table = client.get_table(table_id, retry=TRANSIENT)
    table = apply_labels_and_description(client, table, spec)
    table = apply_column_governance(client, table, spec)
    return LoadResult(
        table_id=table_id,
        job_id=job.job_id,
        location=job.location or location,
        rows=count_rows(client, table_id),
        bytes=int(table.num_bytes or 0),
        schema=list(table.schema),
    )


def publish(
    client: bigquery.Client,
    project: str,
    staging_id: str,
    table_id: str,
    config: bigquery.LoadJobConfig,
    spec: ExportSpec,
    job_base: str,
    log: Log,
    write_disposition: str = bigquery.WriteDisposition.WRITE_TRUNCATE,
) -> str:
    """Replace the export's table with the staging table in one copy job (``WRITE_TRUNCATE``;
    ``WRITE_APPEND`` adds it instead), ``CREATE_NEVER``: the table is created first as the
    spec declares it, see ``ensure_export_table``; a table created here is dropped again when
    the copy fails, so a failed first publish leaves no table. Returns the copy job's id.
    Idempotent: the copy job id derives from ``job_base``, so a retry reattaches to it."""
    location = spec.bigquery.location
    created = ensure_export_table(client, table_id, config, spec)
    copy_config = bigquery.CopyJobConfig(
        write_disposition=write_disposition,
        create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
    )
    try:
        copy = start_or_reattach(
            client, job_base, project, location,
            lambda job_id: client.copy_table(
                staging_id, table_id, job_id=job_id, location=location, retry=TRANSIENT,
                job_config=copy_config,
            ),
            log,
        )  # fmt: skip
        wait_for(copy, table_id, location, not created)
    except BaseException:
        if created:
            drop_quietly(client, table_id, log)
        raise
    return copy.job_id


def drop_quietly(client: bigquery.Client, table_id: str, log: Log) -> None:
    """Delete a table this load created (a staging table, or an export table whose first
    publish failed) while another error is on its way: that error is the story. Should this
    delete fail too, a staging table expires by itself; an empty export table stays."""
    try:
        client.delete_table(table_id, not_found_ok=True, retry=TRANSIENT.with_timeout(30))
    except Exception as exc:
        log.warning(f"could not delete table {table_id} ({exc}); a staging table expires in a day")
