"""The datasets and tables a load writes, made as the spec declares them, never left to what a
load or copy job would give a table it creates.

A load job that creates its table, or a copy job that creates its destination, gives the new
table properties BigQuery does not fully document: a copy takes its source's partitioning and
clustering (and, as measured by others, its partition expiration); whether it takes the staging
table's expiration is not written anywhere, and the staging dataset expires its tables after a
day. So every table is created here first, with ``tables.insert``: the staging table with the
load's schema, partitioning and clustering and an expiration of its own; the export's table
with the spec's partitioning, clustering, labels and description and no expiration but its
dataset's default. Jobs then write into tables that exist (``CREATE_NEVER`` for the publish).
Docs: https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/insert,
https://cloud.google.com/bigquery/docs/managing-tables#copy-table.

Pure engine code (no Dagster); every function here is idempotent.
"""

import contextlib
import datetime as dt
from collections.abc import Iterator

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bq_assets.engine.bigquery_jobs import TRANSIENT, query_rows
from bq_assets.engine.log import Log
from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import ExportSpec

#: Staging tables left behind (a run killed mid-load) expire after a day by themselves.
STAGING_TABLE_EXPIRATION_MS = 24 * 60 * 60 * 1000


class LocationError(BqAssetsError):
    """The bucket, the dataset and the spec disagree on where the data lives."""


def _ensure_in_location(
    client: bigquery.Client, dataset: bigquery.Dataset, spec: ExportSpec, what: str, fix: str
) -> bigquery.Dataset:
    """The dataset, read when it exists, else created in the spec's location with its labels;
    one in another location is a ``LocationError`` (``what`` names it, ``fix`` says what to do).

    Read first: ``datasets.insert`` needs ``bigquery.datasets.create`` on the project even when
    the dataset exists (BigQuery checks the permission before the name), and a service account
    granted BigQuery Data Editor on the two datasets alone has ``bigquery.datasets.get`` but not
    that (https://cloud.google.com/bigquery/docs/datasets#required_permissions)."""
    try:
        found = client.get_dataset(dataset.reference, retry=TRANSIENT)
    except gexc.NotFound:
        dataset.location = spec.bigquery.location
        dataset.labels = dict(spec.bigquery.labels)
        found = client.create_dataset(dataset, exists_ok=True, retry=TRANSIENT)
    if (found.location or "").upper() != spec.bigquery.location.upper():
        raise LocationError(
            f"{spec.spec_file}: {what} {found.full_dataset_id} already exists in "
            f"{found.location}, not in bigquery.location {spec.bigquery.location}{fix}"
        )
    return found


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


def laid_out(table_id: str, config: bigquery.LoadJobConfig) -> bigquery.Table:
    """A table with the load's schema, partitioning and clustering (not yet created)."""
    table = bigquery.Table(table_id, schema=config.schema)
    table.time_partitioning = config.time_partitioning
    table.clustering_fields = config.clustering_fields
    return table


def create_staging_table(
    client: bigquery.Client, table_id: str, config: bigquery.LoadJobConfig
) -> None:
    """Create the staging table the load writes, laid out like the export's table (a copy into
    a partitioned or clustered table needs a source partitioned and clustered the same way:
    https://cloud.google.com/bigquery/docs/managing-partitioned-tables#copy_partitions), with an
    expiration of its own a day from now, whatever its dataset's defaults. Also what the
    emulator needs: it loads Parquet only into a table that exists, and gives a table its load
    creates no partitioning or clustering. Idempotent (an existing table is kept)."""
    table = laid_out(table_id, config)
    table.expires = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=STAGING_TABLE_EXPIRATION_MS)
    with _refusal_explained(table_id):
        client.create_table(table, exists_ok=True, retry=TRANSIENT)


def ensure_export_table(
    client: bigquery.Client, table_id: str, config: bigquery.LoadJobConfig, spec: ExportSpec
) -> bool:
    """Create the export's table as the spec declares it (schema, partitioning, clustering,
    labels, description; no expiration of its own) unless it exists, before the first publish
    writes into it. Returns whether it was created now. Idempotent."""
    table = laid_out(table_id, config)
    table.labels = dict(spec.bigquery.labels)
    table.description = spec.description or None
    try:
        with _refusal_explained(table_id):
            client.create_table(table, retry=TRANSIENT)
    except gexc.Conflict:
        return False
    return True


@contextlib.contextmanager
def _refusal_explained(table_id: str) -> Iterator[None]:
    """A table BigQuery refuses to create (a column type it cannot hold, a bad clustering
    column) fails the step once, with BigQuery's reason and the table named."""
    try:
        yield
    except gexc.BadRequest as exc:
        raise BqAssetsError(
            f"BigQuery refused to create {table_id}: {exc.message}; nothing was loaded."
        ) from None


def check_partitioning(
    existing: bigquery.Table, config: bigquery.LoadJobConfig, spec: ExportSpec
) -> None:
    """A table's partitioning cannot change, and a copy or load into it must carry the same
    (BigQuery refuses "Incompatible table partitioning specification"): refuse an existing
    table partitioned otherwise than the spec says, saying what to do."""
    wanted = config.time_partitioning
    found = existing.time_partitioning
    if _partitioning(found) == _partitioning(wanted):
        return
    table_id = f"{existing.project}.{existing.dataset_id}.{existing.table_id}"
    declared = (
        "declares it not partitioned"
        if wanted is None
        else f"partitions it by {wanted.type_} on {wanted.field}"
    )
    raise BqAssetsError(
        f"{table_id} is {_describe(found)}, but {spec.spec_file} {declared}: BigQuery cannot "
        "change a table's partitioning. Drop the table "
        "deliberately and load it again (backfill its partitions), or load into another table "
        "(bigquery.table)."
    )


def _partitioning(value: bigquery.TimePartitioning | None) -> tuple[str, str] | None:
    return None if value is None else (str(value.type_), str(value.field))


def _describe(value: bigquery.TimePartitioning | None) -> str:
    return "not partitioned" if value is None else f"partitioned by {value.type_} on {value.field}"


def align_clustering(
    client: bigquery.Client, existing: bigquery.Table, config: bigquery.LoadJobConfig, log: Log
) -> bigquery.Table:
    """Give an existing table the spec's clustering before a job writes into it: BigQuery
    refuses to copy a table into one clustered otherwise, and a table's clustering can be
    changed in place (it applies to data written from then on):
    https://cloud.google.com/bigquery/docs/manage-clustered-tables#modifying-cluster-spec.
    Idempotent."""
    wanted = list(config.clustering_fields or [])
    if list(existing.clustering_fields or []) == wanted:
        return existing
    log.info(
        f"{existing.full_table_id}: clustering {existing.clustering_fields or 'none'} -> "
        f"{wanted or 'none'} (bigquery.clustering_fields)"
    )
    existing.clustering_fields = wanted or None
    return client.update_table(existing, ["clustering_fields"], retry=TRANSIENT)


def apply_labels_and_description(
    client: bigquery.Client, table: bigquery.Table, spec: ExportSpec
) -> bigquery.Table:
    """Set the spec's labels and description on the table when they differ (a table already
    published before the spec changed). Labels the spec no longer names are left on the table
    (see docs/production-truth.md); the ``table_matches_spec`` check reports them. Idempotent."""
    labels = dict(spec.bigquery.labels)
    description = spec.description or None
    if {**table.labels, **labels} == table.labels and (table.description or None) == description:
        return table
    table.labels = labels
    table.description = description
    return client.update_table(table, ["labels", "description"], retry=TRANSIENT)


#: GoogleSQL's names for the legacy type names a table schema may report.
_DDL_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "RECORD": "STRUCT"}


def _ddl_type(field: bigquery.SchemaField) -> str:
    name = _DDL_TYPES.get(field.field_type.upper(), field.field_type.upper())
    if field.precision is not None:
        return f"{name}({field.precision}{f', {field.scale}' if field.scale is not None else ''})"
    return name


def widen_schema(
    client: bigquery.Client, existing: bigquery.Table, config: bigquery.LoadJobConfig, log: Log
) -> bigquery.Table:
    """Add the load's new columns to an existing table, and relax the columns the load makes
    NULLABLE, before partitions are written into it (the drift check has already allowed only
    what ``bigquery.schema_update_options`` permits). Neither way of replacing a partition can
    do it itself: a copy job has no ``schemaUpdateOptions`` (JobConfigurationTableCopy), and a
    transaction's INSERT names columns the table must have. BigQuery's documented DDL does it,
    and runs on the emulator too (whose ``tables.patch`` changes the schema it reports but not
    the table): ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` and ``ALTER COLUMN ... DROP NOT
    NULL`` (https://cloud.google.com/bigquery/docs/managing-table-schemas#add_columns,
    #change_a_columns_mode). New columns go last, as BigQuery appends them. Idempotent."""
    incoming = {f.name: f for f in config.schema}
    have = {f.name: f for f in existing.schema}
    statements = [
        f"ALTER TABLE `{table_ref(existing)}` ADD COLUMN IF NOT EXISTS `{f.name}` {_ddl_type(f)}"
        for f in config.schema
        if f.name not in have
    ]
    statements += [
        f"ALTER TABLE `{table_ref(existing)}` ALTER COLUMN `{name}` DROP NOT NULL"
        for name, field in have.items()
        if field.mode == "REQUIRED" and name in incoming and incoming[name].mode == "NULLABLE"
    ]
    if not statements:
        return existing
    for statement in statements:
        log.info(f"{table_ref(existing)}: {statement}")
        query_rows(client, statement)
    table = client.get_table(table_ref(existing), retry=TRANSIENT)
    wider = [incoming.get(f.name, f) if f.name in have else f for f in existing.schema]
    wider += [f for f in config.schema if f.name not in have]
    if [f.name for f in table.schema] != [f.name for f in wider]:
        # The emulator's DDL changes the table but not the schema it reports; BigQuery's
        # reports it at once, and never gets here.
        table.schema = wider
        table = client.update_table(table, ["schema"], retry=TRANSIENT)
    return table


def table_ref(table: bigquery.Table) -> str:
    """``project.dataset.table`` of a table."""
    return f"{table.project}.{table.dataset_id}.{table.table_id}"


def spec_differences(
    table: bigquery.Table, spec: ExportSpec, partitioning: bigquery.TimePartitioning | None
) -> list[str]:
    """How the table differs from what the spec declares, one line per property (empty: it
    matches): partitioning (``partitioning`` is what the spec's load declares), clustering,
    labels, description, and expiration (a spec declares none: an export's table must not
    expire, neither as a whole nor by partition). Read-only."""
    found: list[str] = []
    if _partitioning(table.time_partitioning) != _partitioning(partitioning):
        found.append(
            f"partitioning: the table is {_describe(table.time_partitioning)}, the spec "
            f"{_describe(partitioning).replace('not partitioned', 'declares none')}"
        )
    clustering, wanted = list(table.clustering_fields or []), list(spec.bigquery.clustering_fields)
    if clustering != wanted:
        found.append(
            f"clustering: the table has {clustering or 'none'}, the spec {wanted or 'none'}"
        )
    labels, declared = dict(table.labels or {}), dict(spec.bigquery.labels)
    for key in sorted(set(labels) | set(declared)):
        if labels.get(key) != declared.get(key):
            found.append(
                f"label {key}: the table has {labels.get(key, '(none)')!r}, the spec "
                f"{declared.get(key, '(none)')!r}"
            )
    if (table.description or None) != (spec.description or None):
        found.append(
            f"description: the table has {table.description!r}, the spec {spec.description!r}"
        )
    if table.expires is not None:
        found.append(f"expiration: the table expires at {table.expires.isoformat()}, the spec "
                     "declares none")  # fmt: skip
    if table.time_partitioning is not None and table.time_partitioning.expiration_ms:
        days = table.time_partitioning.expiration_ms / 86_400_000
        found.append(
            f"partition expiration: the table's partitions expire after {days:g} day(s), the "
            "spec declares none"
        )
    return found
