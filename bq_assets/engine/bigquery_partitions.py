"""Partitioned exports (issue 14): replace exactly the partitions of a run's window in the
export's BigQuery table, and count rows per partition.

Pure engine code (no Dagster). The objects are loaded into a staging table partitioned and
clustered like the export's table, every row is checked to fall inside the window, then each
partition is replaced: by a copy job from the staging table's partition to the table's
(``staging$YYYYMMDD`` → ``table$YYYYMMDD``, ``WRITE_TRUNCATE``) where BigQuery supports it for
the export's partitions, else by one multi-statement transaction (the emulator, weeks,
TIMESTAMP days outside UTC). See docs/exports.md, "Partitioned exports".
"""

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bq_assets.engine.bigquery_columns import apply_column_governance
from bq_assets.engine.bigquery_jobs import (
    JOB_TIMEOUT_S,
    TRANSIENT,
    query_rows,
    start_or_reattach,
    still_running_error,
    wait_for,
)
from bq_assets.engine.bigquery_load import (
    LoadResult,
    drop_quietly,
    job_id_base,
    prepare_load,
)
from bq_assets.engine.bigquery_tables import (
    align_clustering,
    apply_labels_and_description,
    check_partitioning,
    create_staging_table,
    ensure_export_table,
    ensure_staging_dataset,
    widen_schema,
)
from bq_assets.engine.log import Log
from bq_assets.engine.manifest import Manifest
from bq_assets.engine.publish_guard import refuse_unless_staged_as_promised
from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import ExportSpec
from bq_assets.partitioning import Window, aligned_with_bigquery, decorator, window_predicate

#: How a partition's rows replace that partition of the table:
#: ``decorator``: copy jobs to ``table$YYYYMMDD`` / ``table$YYYYMM`` with WRITE_TRUNCATE
#: (BigQuery replaces exactly that partition, atomically); ``transaction``: one multi-statement
#: transaction deleting the window's rows and inserting the staging table's. The emulator knows
#: no partition decorators, so it always uses ``transaction``; so does BigQuery when the
#: export's partitions are not BigQuery's own (weeks; TIMESTAMP days outside UTC).
PartitionOverwrite = Literal["decorator", "transaction"]
#: Errors of the transaction's query job that a new attempt may not meet again.
RETRYABLE_ERRORS = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
)


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


def _column_type(config: bigquery.LoadJobConfig, column: str) -> str:
    return next(f.field_type for f in config.schema if f.name == column).upper()


def partition_column_type(client: bigquery.Client, table_id: str, column: str) -> str:
    """The BigQuery type of the table's partition column (DATE, TIMESTAMP or DATETIME)."""
    table = client.get_table(table_id, retry=TRANSIENT)
    return next(f.field_type for f in table.schema if f.name == column).upper()


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
    client: bigquery.Client,
    table_id: str,
    column: str,
    column_type: str,
    window: Window,
    pruned: bool = False,
) -> tuple[dict[str, int], int]:
    """Rows of ``table_id`` in each partition of ``window``, and rows outside the window
    (or with a NULL partition column). One query; read-only.

    ``pruned``: read only the window's partitions (a filter on the partition column with
    constant bounds, which BigQuery prunes to:
    https://cloud.google.com/bigquery/docs/querying-partitioned-tables#prune_partitions), for a
    published table whose other partitions are not this run's business; the rows outside are
    then not counted (0)."""
    parts = window.split()
    counts = [f"COUNTIF(`{column}` >= ? AND `{column}` < ?) AS p{i}" for i, _ in enumerate(parts)]
    params = [_bound(b, column_type) for part in parts for b in _window_bounds(part, column_type)]
    start, end = _window_bounds(window, column_type)
    sql = (
        f"SELECT {', '.join(counts)}, "
        f"COUNTIF(`{column}` IS NULL OR `{column}` < ? OR `{column}` >= ?) AS outside "
        f"FROM `{table_id}`"
    )
    if pruned:
        sql += f" WHERE {window_predicate('bigquery', column, column_type, window)}"
    params += [_bound(start, column_type), _bound(end, column_type)]
    (row,) = query_rows(client, sql, bigquery.QueryJobConfig(query_parameters=params))
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


def run_partition_load(
    client: bigquery.Client,
    project: str,
    spec: ExportSpec,
    manifest: Manifest,
    window: Window,
    overwrite: PartitionOverwrite,
    log: Log,
) -> PartitionLoad:
    """Replace exactly the partitions of ``window`` in the export's table with the manifest's
    rows; every other partition stays as it was.

    The objects are loaded into a staging table partitioned and clustered like the table; the
    load fails (nothing published) when it does not hold the manifest's rows, in total and per
    partition (``publish_guard``), or when any of its rows falls outside the window. New columns
    the spec allows are added to the table first (``widen_schema``). Then each partition of the
    window is replaced: by a copy job from the staging table's partition to the table's
    (``publish_partitions``) when the export's partitions are BigQuery's own and ``overwrite``
    is ``decorator``, else by one transaction (delete the window's rows, insert the staging
    table's). Idempotent: running it
    again with the same manifest gives the same table.
    """
    assert spec.partitioning is not None
    column = spec.partitioning.column
    table_id, config, existing = prepare_load(client, project, spec, manifest, log)
    column_type = _column_type(config, column)
    if ensure_export_table(client, table_id, config, spec):
        existing = None
    elif existing is not None:
        existing = widen_schema(client, existing, config, log)
    aligned = aligned_with_bigquery(spec.partitioning.by, column_type, spec.timezone)
    mechanism: PartitionOverwrite = (
        "decorator" if overwrite == "decorator" and aligned else ("transaction")
    )
    if mechanism == "decorator" and existing is not None:
        check_partitioning(existing, config, spec)
        existing = align_clustering(client, existing, config, log)
    base = job_id_base(spec, manifest, config)
    location = spec.bigquery.location
    staging_dataset = ensure_staging_dataset(client, project, spec)
    staging_id = f"{project}.{staging_dataset}.{spec.bigquery_table}__staging_{base[-16:]}"
    config.write_disposition = bigquery.WriteDisposition.WRITE_TRUNCATE
    staged: list[str] = [staging_id]
    publish_jobs: list[str] = []

    def start_load(job_id: str) -> bigquery.LoadJob:
        # Created only when a load starts (the emulator loads only into a table that exists):
        # a staging table made earlier would make a finished job of an earlier run look as if
        # its output were still there, and be reattached to instead of loading.
        create_staging_table(client, staging_id, config)
        return client.load_table_from_uri(
            manifest.uris, staging_id, job_id=job_id, location=location, job_config=config,
            retry=TRANSIENT,
        )  # fmt: skip

    try:
        log.info(f"loading {len(manifest.uris)} object(s) of {manifest.prefix} into {staging_id}")
        job = start_or_reattach(client, base, project, location, start_load, log)
        wait_for(job, table_id, location, True)
        loaded, outside = partition_row_counts(client, staging_id, column, column_type, window)
        staged_rows = sum(loaded.values()) + outside
        refuse_unless_staged_as_promised(manifest, staging_id, table_id, staged_rows, loaded)
        if outside:
            raise PartitionBoundsError(
                f"{spec.sql_file}: {outside} row(s) of {window.describe()} have {column} outside "
                f"the partition (or NULL); nothing was published. The query must return only "
                "the window's rows: WHERE <column> >= $partition_start AND <column> < "
                "$partition_end (partitioning.column must be the column the query filters on)."
            )
        if mechanism == "decorator":
            publish_jobs += publish_partitions(
                client, project, staging_id, table_id, window, loaded, job.job_id, location, log
            )
        else:
            script = _transaction_script(
                table_id, staging_id, column, column_type, window, [f.name for f in config.schema]
            )
            log.info(f"replacing {window.describe()} of {table_id} in one transaction")
            query = client.query(
                script, job_id_prefix=f"{job.job_id}_publish_", location=location, retry=TRANSIENT
            )
            try:
                query.result(retry=TRANSIENT, timeout=JOB_TIMEOUT_S)
            except Exception as exc:
                if query.state != "DONE":  # not known to have rolled back: it may still commit
                    raise still_running_error(query, table_id, location, exc) from None
                if not isinstance(exc, gexc.GoogleAPICallError):
                    raise
                raise BqAssetsError(
                    f"BigQuery job {query.job_id} replacing {window.describe()} of {table_id} "
                    f"failed; the transaction rolled back, the table keeps its previous data: "
                    f"{exc.message}",
                    retryable=isinstance(exc, RETRYABLE_ERRORS),
                ) from None
            publish_jobs.append(query.job_id)
    finally:
        for staging in staged:
            drop_quietly(client, staging, log)
    table = client.get_table(table_id, retry=TRANSIENT)
    table = apply_labels_and_description(client, table, spec)
    table = apply_column_governance(client, table, spec)
    published, _ = partition_row_counts(client, table_id, column, column_type, window, pruned=True)
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


def publish_partitions(
    client: bigquery.Client,
    project: str,
    staging_id: str,
    table_id: str,
    window: Window,
    loaded: dict[str, int],
    load_job_id: str,
    location: str,
    log: Log,
) -> list[str]:
    """Replace every partition of ``window`` in the export's table with the staging table's,
    partition to partition, and return the jobs' ids.

    The documented form (https://cloud.google.com/bigquery/docs/managing-partitioned-tables#copy_partitions):
    a copy job from ``staging$YYYYMMDD`` to ``table$YYYYMMDD`` with ``WRITE_TRUNCATE``, which
    replaces exactly that partition, atomically; both tables partitioned and clustered alike
    (BigQuery refuses to copy into a column-partitioned table from one that is not: "Failed to
    copy Non partitioned table to Column partitioned table"). ``CREATE_NEVER``: the table was
    created as the spec declares it. A partition of the window the run found empty is deleted
    from the table (``tables.delete`` on its decorator, documented in the same page), since
    there is no staging partition to copy. Idempotent: job ids derive from the load job's, so a
    retry reattaches to the copies already done.
    """
    config = bigquery.CopyJobConfig(
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
    )
    jobs = []
    for part in window.split():
        key = part.keys[0]
        suffix = decorator(key, part.by)
        source, target = f"{staging_id}{suffix}", f"{table_id}{suffix}"
        if not loaded.get(key):
            log.info(f"{target}: no rows in this run's snapshot; deleting the partition")
            client.delete_table(target, not_found_ok=True, retry=TRANSIENT)
            continue
        copy = start_or_reattach(
            client, f"{load_job_id}_publish_{key.replace('-', '')}", project, location,
            lambda job_id, source=source, target=target: client.copy_table(
                source, target, job_id=job_id, location=location, retry=TRANSIENT,
                job_config=config,
            ),
            log,
        )  # fmt: skip
        wait_for(copy, target, location, True)
        jobs.append(copy.job_id)
    return jobs
