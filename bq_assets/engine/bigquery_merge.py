"""Merge a window of rows into the export's BigQuery table by primary key, all or nothing
(issue 26, ``load: {mode: merge}``).

The manifest's objects (the window, one row per key) are loaded into a staging table in the
staging dataset, which must hold exactly the manifest's rows before anything touches the
table. A read-only query then plans what the MERGE will do (keys to insert, update and delete,
from the staging table and the table's keys), and one ``MERGE`` applies the window: a key the
table holds is updated with the window's values, or deleted when the window flags it deleted;
a new key is inserted unless flagged. BigQuery applies a MERGE atomically, so a failed one
leaves the table as it was (the emulator's DuckDB too). The staging table is deleted after.

The same statement runs on BigQuery and on the local emulator; the one difference is what the
job reports: BigQuery's ``dmlStats`` (rows inserted, updated, deleted), the emulator only their
total (``numDmlAffectedRows``). See docs/local-stack.md.
Docs: https://cloud.google.com/bigquery/docs/reference/standard-sql/dml-syntax#merge_statement,
https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#DmlStats.

Pure engine code (no Dagster). Idempotent: merging the same window again leaves the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.cloud import bigquery

from bq_assets.engine.bigquery_columns import apply_column_governance
from bq_assets.engine.bigquery_jobs import (
    JOB_TIMEOUT_S,
    TRANSIENT,
    StatementResult,
    count_rows,
    run_statement,
    start_or_reattach,
    wait_for,
)
from bq_assets.engine.bigquery_load import LoadResult, drop_quietly, job_id_base, prepare_load
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


class TableMissingError(BqAssetsError):
    """A merge export's table does not exist and the run's window would not fill it whole."""


@dataclass(frozen=True)
class MergeCounts:
    """Rows a MERGE inserts, updates and deletes."""

    inserted: int
    updated: int
    deleted: int

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.deleted


@dataclass(frozen=True)
class MergeLoad:
    """What one merge did: the table after it, the rows it read, the plan, and the MERGE job's
    own report (``statement``: its total and, on BigQuery, ``dmlStats``; its cost)."""

    result: LoadResult
    staged_rows: int
    rows_before: int
    planned: MergeCounts
    statement: StatementResult
    plan_bytes_processed: int
    plan_bytes_billed: int

    @property
    def bytes_processed(self) -> int:
        """Bytes the merge's query jobs (the plan and the MERGE) processed."""
        return self.plan_bytes_processed + (self.statement.bytes_processed or 0)

    @property
    def bytes_billed(self) -> int:
        """Bytes BigQuery billed for them (on demand; 0 under a reservation)."""
        return self.plan_bytes_billed + (self.statement.bytes_billed or 0)

    @property
    def reported(self) -> MergeCounts | None:
        """The MERGE's rows per kind as BigQuery reports them (None: not reported)."""
        s = self.statement
        if s.inserted_rows is None or s.updated_rows is None or s.deleted_rows is None:
            return None
        return MergeCounts(s.inserted_rows, s.updated_rows, s.deleted_rows)


def _names(columns: list[str]) -> str:
    return ", ".join(f"`{c}`" for c in columns)


def _flagged(deleted: str | None, alias: str) -> str:
    """True for a row flagged deleted (a NULL flag is not)."""
    return f"COALESCE({alias}.`{deleted}`, FALSE)" if deleted else "FALSE"


def merge_statement(
    table_id: str, staging_id: str, columns: list[str], key: list[str], deleted: str | None
) -> str:
    """The MERGE that applies the staging table (one row per key) to the table: update matched
    keys, delete matched keys flagged deleted, insert new keys not flagged. Only validated
    identifiers in it; no values."""
    matches = " AND ".join(f"target.`{k}` = source.`{k}`" for k in key)
    updated = [c for c in columns if c not in key] or list(key)
    assignments = ", ".join(f"`{c}` = source.`{c}`" for c in updated)
    flagged = _flagged(deleted, "source")
    lines = [
        f"MERGE `{table_id}` AS target",
        f"USING `{staging_id}` AS source",
        f"ON {matches}",
    ]
    if deleted:
        lines.append(f"WHEN MATCHED AND {flagged} THEN DELETE")
    lines += [
        f"WHEN MATCHED THEN UPDATE SET {assignments}",
        f"WHEN NOT MATCHED AND NOT {flagged} THEN INSERT ({_names(columns)}) "
        f"VALUES ({', '.join(f'source.`{c}`' for c in columns)})",
    ]
    return "\n".join(lines)


def plan_statement(table_id: str, staging_id: str, key: list[str], deleted: str | None) -> str:
    """A read-only query: how many staging rows the MERGE will insert, update and delete,
    judged by whether the table holds their key (it reads the table's key columns only)."""
    flagged = _flagged(deleted, "source")
    keys = _names(key)
    return (
        "SELECT\n"
        "  COUNTIF(target.in_table IS NULL AND NOT source.flagged) AS inserted,\n"
        "  COUNTIF(target.in_table IS NOT NULL AND NOT source.flagged) AS updated,\n"
        "  COUNTIF(target.in_table IS NOT NULL AND source.flagged) AS deleted\n"
        f"FROM (SELECT {keys}, {flagged} AS flagged FROM `{staging_id}` AS source) AS source\n"
        f"LEFT JOIN (SELECT {keys}, TRUE AS in_table FROM `{table_id}`) AS target USING ({keys})"
    )


def _plan(
    client: bigquery.Client, table_id: str, staging_id: str, spec: ExportSpec
) -> tuple[MergeCounts, bigquery.QueryJob]:
    assert spec.load is not None
    sql = plan_statement(table_id, staging_id, spec.primary_key, spec.load.deleted)
    job = client.query(sql, location=spec.bigquery.location, retry=TRANSIENT)
    (row,) = list(job.result(retry=TRANSIENT, timeout=JOB_TIMEOUT_S))
    return MergeCounts(int(row["inserted"]), int(row["updated"]), int(row["deleted"])), job


def run_merge_load(
    client: bigquery.Client,
    project: str,
    spec: ExportSpec,
    manifest: Manifest,
    from_start: bool,
    log: Log,
) -> MergeLoad:
    """Merge exactly the manifest's rows into the export's table (see the module). A table
    that does not exist yet is created as the spec declares it, but only by a window that
    reaches back to the beginning (``from_start``): a later window alone would leave out
    every row merged before it (``TableMissingError``, saying how to re-send everything).
    Job ids are deterministic: a retry reattaches to the load, and waits for a MERGE still
    running; a MERGE that ran already is run again, harmlessly."""
    assert spec.load is not None
    table_id, config, existing = prepare_load(client, project, spec, manifest, log)
    if existing is None and not from_start:
        raise TableMissingError(
            f"{table_id} does not exist, and this run's window does not reach back to the "
            "beginning (it starts from the export's high-water mark, or from the run's tags): "
            "merged alone, it would leave out every older row. Re-send everything: materialize "
            "the export with the run tag bq_assets/cursor_start: initial."
        )
    if existing is not None:
        check_partitioning(existing, config, spec)
        existing = align_clustering(client, existing, config, log)
    # The export's table is laid out as the spec declares; the staging table is read once, by
    # the MERGE, and needs no layout.
    table_layout = bigquery.LoadJobConfig(
        schema=config.schema,
        time_partitioning=config.time_partitioning,
        clustering_fields=config.clustering_fields,
    )
    config.time_partitioning = None
    config.clustering_fields = None
    config.write_disposition = bigquery.WriteDisposition.WRITE_TRUNCATE
    base = job_id_base(spec, manifest, config)
    location = spec.bigquery.location
    staging_id = (
        f"{project}.{ensure_staging_dataset(client, project, spec)}."
        f"{spec.bigquery_table}__merge_{base[-16:]}"
    )

    def start_load(job_id: str) -> bigquery.LoadJob:
        create_staging_table(client, staging_id, config)
        return client.load_table_from_uri(
            manifest.uris, staging_id, job_id=job_id, location=location, job_config=config,
            retry=TRANSIENT,
        )  # fmt: skip

    created = False
    try:
        log.info(f"loading {len(manifest.uris)} object(s) of {manifest.prefix} into {staging_id}")
        job = start_or_reattach(client, base, project, location, start_load, log)
        wait_for(job, table_id, location, existing is not None)
        staged_rows = count_rows(client, staging_id)
        refuse_unless_staged_as_promised(manifest, staging_id, table_id, staged_rows)
        if existing is None:
            created = ensure_export_table(client, table_id, table_layout, spec)
        else:
            widen_schema(client, existing, config, log)
        rows_before = count_rows(client, table_id)
        planned, plan = _plan(client, table_id, staging_id, spec)
        sql = merge_statement(
            table_id,
            staging_id,
            [f.name for f in config.schema],
            spec.primary_key,
            spec.load.deleted,
        )
        log.info(
            f"merging {staged_rows} row(s) into {table_id}: {planned.inserted} to insert, "
            f"{planned.updated} to update, {planned.deleted} to delete"
        )
        statement = run_statement(
            client, sql, f"{job.job_id}_merge", project, location,
            f"the MERGE of {staging_id} into {table_id}", log,
        )  # fmt: skip
    except BaseException:
        if created:  # a failed first merge leaves no empty table behind
            drop_quietly(client, table_id, log)
        raise
    finally:
        drop_quietly(client, staging_id, log)
    table = client.get_table(table_id, retry=TRANSIENT)
    table = apply_labels_and_description(client, table, spec)
    table = apply_column_governance(client, table, spec)
    result = LoadResult(
        table_id=table_id,
        job_id=job.job_id,
        location=job.location or location,
        rows=count_rows(client, table_id),
        bytes=int(table.num_bytes or 0),
        schema=list(table.schema),
    )
    return MergeLoad(
        result, staged_rows, rows_before, planned, statement,
        plan_bytes_processed=plan.total_bytes_processed or 0,
        plan_bytes_billed=plan.total_bytes_billed or 0,
    )  # fmt: skip
