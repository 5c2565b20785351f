"""Stage 1: run the export's SQL on the source and keep the result as a Parquet snapshot.

The snapshot is immutable, run-scoped and addressed by URI:
``gs://<staging bucket>/<staging prefix>/<export>/<run id>/snapshot.parquet`` (the GCS emulator
locally, the same code). Every later stage of the run reads exactly this data, whatever happens
to the source meanwhile, from whichever machine or pod it runs on: no local path crosses a step
boundary. Re-running writes the same run's snapshot again (idempotent). Retention keeps the
snapshots of the newest ``staging_keep_runs`` runs of the export, decided by the runs' records
in the Dagster instance (never by object times), and never deletes the snapshot of a run that
has not finished.

A merge export's query reads its window of the cursor column (``stages.cursor``), and the
snapshot keeps one row per key, the latest (``engine.merge_window``); the checks then judge
that window.

Its checks (one step, one copy of the snapshot): the query returned rows (a merge export's
window may be empty once it has a mark: nothing changed), the primary key is unique and never
NULL, required columns are never NULL. All three block the GCS hop.
"""

import datetime as dt
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import bigquery, storage
from google.cloud.storage.retry import DEFAULT_RETRY

from bq_assets.engine.key_checksum import KeyTypeError, refused_key_types
from bq_assets.engine.merge_window import settle_window
from bq_assets.engine.redaction import redacted_row
from bq_assets.engine.scans import (
    KeyReport,
    null_counts,
    primary_key_report,
    rows_by_partition_of,
)
from bq_assets.engine.upload import upload
from bq_assets.engine.writers import CONTENT_TYPES
from bq_assets.exports.spec import ExportSpec
from bq_assets.exports.sql import cursor_parameters, partition_parameters
from bq_assets.incremental import CursorWindow
from bq_assets.resources.google import ExportBigQueryResource, ExportGCSResource
from bq_assets.resources.source import SNAPSHOT_OBJECT, DuckDBSourceResource, gcs_access
from bq_assets.schema import bigquery_schema
from bq_assets.sources.snapshot import ROW_GROUP_ROWS
from bq_assets.stages.cursor import window_for_run, window_handoff
from bq_assets.stages.handoff import HandOff, fetch_snapshot, upstream_materialization
from bq_assets.stages.partitions import run_window
from bq_assets.stages.results import CheckGroup, check_result, column_schema
from bq_assets.translator import query_key

QUERY_HAS_ROWS = "has_rows"
QUERY_PRIMARY_KEY_UNIQUE = "primary_key_unique_and_not_null"
QUERY_REQUIRED_NOT_NULL = "required_columns_not_null"


@dataclass(frozen=True)
class RunStatus:
    """What the Dagster instance knows of a run that wrote a snapshot."""

    created: float  # when the run was created (POSIX seconds), from its run record
    finished: bool  # the run has ended (success, failure or canceled): it reads no more


def refuse_uncomparable_keys(spec: ExportSpec, fields: list[bigquery.SchemaField]) -> None:
    """Before the snapshot leaves the machine: a key column whose BigQuery type the key
    checksum cannot compare between BigQuery and Databricks fails the step, naming it (the
    types the SQL states are refused when the code location loads already)."""
    types = {f.name: f.field_type for f in fields}
    problems = refused_key_types([(c, types[c]) for c in spec.primary_key if c in types])
    if problems:
        raise KeyTypeError(f"{spec.spec_file}: " + "; ".join(problems))


def tidy_snapshots(
    bucket: storage.Bucket,
    export_prefix: str,
    current_run_id: str,
    keep: int,
    statuses: Callable[[Sequence[str]], Mapping[str, RunStatus]],
    retry: Retry = DEFAULT_RETRY,
) -> list[str]:
    """Delete the snapshots of all but the newest ``keep`` runs (newest by run creation, as the
    instance records it), keeping always the current run's, every unfinished run's, and those of
    runs the instance does not know. Returns the deleted run prefixes (``gs://`` URIs)."""
    by_run: dict[str, list[storage.Blob]] = {}
    for blob in bucket.list_blobs(prefix=export_prefix, retry=retry):
        run_id, _, rest = blob.name[len(export_prefix) :].partition("/")
        if rest:
            by_run.setdefault(run_id, []).append(blob)
    known = statuses(sorted(by_run))
    newest_first = sorted(known, key=lambda run_id: known[run_id].created, reverse=True)
    kept = set(newest_first[:keep]) | {current_run_id}
    doomed = [run_id for run_id in newest_first if run_id not in kept and known[run_id].finished]
    for blob in (blob for run_id in doomed for blob in by_run[run_id]):
        with suppress(gexc.NotFound):  # another run's retention got there first
            blob.delete(retry=retry)
    return [f"gs://{bucket.name}/{export_prefix}{run_id}/" for run_id in doomed]


def run_statuses(instance: dg.DagsterInstance, run_ids: Sequence[str]) -> dict[str, RunStatus]:
    """The instance's records of ``run_ids`` (runs it does not know are left out)."""
    if not run_ids:
        return {}
    records = instance.get_run_records(dg.RunsFilter(run_ids=list(run_ids)))
    return {
        record.dagster_run.run_id: RunStatus(
            created=record.create_timestamp.timestamp(), finished=record.dagster_run.is_finished
        )
        for record in records
    }


def query_materialization(spec: ExportSpec) -> Callable[..., dg.MaterializeResult]:
    """The body of ``query/<export>``: the query's result as the run's snapshot in GCS."""

    def _query(
        context: dg.AssetExecutionContext,
        source: DuckDBSourceResource,
        gcs: ExportGCSResource,
        bigquery: ExportBigQueryResource,
    ) -> dg.MaterializeResult:
        run_id = context.run.run_id
        with _scratch(source, run_id) as scratch:
            local = scratch / SNAPSHOT_OBJECT
            window = run_window(context, spec)
            parameters = window.parameters(partition_parameters(spec.sql)) if window else None
            if window is not None:
                context.log.info(f"{spec.name}: exporting {window.describe()}")
            cursor = _cursor_window(context, spec, source, gcs)
            if cursor is not None:
                parameters = cursor.parameters(cursor_parameters(spec.sql))
            parquet = source.snapshot(
                spec.sql,
                spec.sql_file,
                local,
                spec.source,
                lambda: gcs_access(gcs),
                parameters=parameters,
                partition_column=spec.partitioning.column if spec.partitioning else None,
                # What the target BigQuery cannot store is refused before anything is written
                # (the local emulator: BIGNUMERIC; production: nothing).
                unstorable=bigquery.unstorable,
            )
            settled = None
            if cursor is not None:
                assert spec.load is not None
                settled = settle_window(
                    local, spec.primary_key, cursor, spec.load.deleted, spec.sql_file,
                    ROW_GROUP_ROWS,
                )  # fmt: skip
                parquet = pq.read_metadata(local)
                context.log.info(
                    f"{spec.name}: {settled.rows} row(s) in the window ({settled.deleted_rows} "
                    f"flagged deleted; {settled.duplicates_dropped} older row(s) of a key dropped)"
                )
            fields = bigquery_schema(parquet.schema.to_arrow_schema())
            refuse_uncomparable_keys(spec, fields)
            rows_by_partition = None
            if window is not None and spec.partitioning is not None:
                column_type = next(
                    f.field_type for f in fields if f.name == spec.partitioning.column
                )
                rows_by_partition = rows_by_partition_of(
                    local, spec.partitioning.column, column_type, window
                )
            size = local.stat().st_size
            bucket = gcs.get_client().bucket(source.staging_bucket or gcs.get_bucket_name())
            name = source.staging_object(spec.name, run_id)
            crc32c = upload(bucket, local, name, CONTENT_TYPES[".parquet"], gcs.retry())
            uri = f"gs://{bucket.name}/{name}"
            context.log.info(f"{spec.name}: {parquet.num_rows} rows snapshotted to {uri}")
            deleted = tidy_snapshots(
                bucket,
                source.staging_export_prefix(spec.name),
                run_id,
                source.staging_keep_runs,
                lambda run_ids: run_statuses(context.instance, run_ids),
                gcs.retry(),
            )
            if deleted:
                context.log.info(f"deleted the snapshots of older runs: {', '.join(deleted)}")
            handoff = HandOff(
                row_count=parquet.num_rows,
                snapshot_uri=uri,
                rows_by_partition=rows_by_partition,
            ).of_window(window)
            if cursor is not None and settled is not None:
                handoff = handoff.carrying_cursor(window_handoff(cursor, settled))
            return dg.MaterializeResult(
                metadata={
                    **handoff.metadata(),
                    **(
                        {"window_duplicates_dropped": settled.duplicates_dropped}
                        if settled is not None
                        else {}
                    ),
                    "dagster/column_schema": column_schema(fields, spec),
                    "dagster/uri": uri,
                    "snapshot_crc32c": crc32c,
                    "bytes": size,
                }
            )

    return _query


def _cursor_window(
    context: dg.AssetExecutionContext,
    spec: ExportSpec,
    source: DuckDBSourceResource,
    gcs: ExportGCSResource,
) -> CursorWindow | None:
    """A merge export's window for this run (None for any other export): typed by the cursor
    column's type in the query's result, read without running the query."""
    if spec.load is None:
        return None
    assert spec.sql_file is not None
    used = cursor_parameters(spec.sql)
    described = source.describe(
        spec.sql, spec.sql_file, spec.source, lambda: gcs_access(gcs), parameter_names=used
    )
    window = window_for_run(context, spec, described, dt.datetime.now(dt.UTC))
    context.log.info(f"{spec.name}: exporting {window.describe()}")
    return window


@contextmanager
def _scratch(source: DuckDBSourceResource, run_id: str) -> Iterator[Path]:
    """A local directory of this step alone for the query result; gone when the step ends."""
    if source.staging_dir:
        Path(source.staging_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"bq_assets_{run_id}_", dir=source.staging_dir) as name:
        yield Path(name)


def query_checks(spec: ExportSpec) -> list[CheckGroup]:
    """The query hop's checks, blocking: they run as one step that copies the snapshot once and
    scans it in bounded memory (``engine.scans``); each can still be run on its own."""
    key = query_key(spec.name)
    specs = [
        dg.AssetCheckSpec(
            QUERY_HAS_ROWS, asset=key, blocking=True,
            description="The query returned at least one row (unless the spec allows empty, or "
            "a merge export's window after its first load found no change).",
        ),
        dg.AssetCheckSpec(
            QUERY_PRIMARY_KEY_UNIQUE, asset=key, blocking=True,
            description=f"Primary key ({', '.join(spec.primary_key)}) is unique and never NULL.",
        ),
    ]  # fmt: skip
    if spec.required:
        specs.append(
            dg.AssetCheckSpec(
                QUERY_REQUIRED_NOT_NULL,
                asset=key,
                blocking=True,
                description=f"Required columns ({', '.join(spec.required)}) are never NULL.",
            )
        )

    def _query_checks(
        context: dg.AssetCheckExecutionContext, gcs: ExportGCSResource
    ) -> Iterator[dg.AssetCheckResult]:
        selected = {check.name for check in context.selected_asset_check_keys}
        upstream = upstream_materialization(context, key)
        if QUERY_HAS_ROWS in selected:
            yield _has_rows(spec, upstream.row_count, upstream.handoff.cursor_from)
        if not selected & {QUERY_PRIMARY_KEY_UNIQUE, QUERY_REQUIRED_NOT_NULL}:
            return
        with tempfile.TemporaryDirectory(prefix=f"bq_assets_{context.run.run_id}_") as scratch:
            snapshot = fetch_snapshot(gcs.get_client(), upstream, Path(scratch), gcs.retry())
            if QUERY_PRIMARY_KEY_UNIQUE in selected:
                yield _primary_key(spec, primary_key_report(snapshot, spec.primary_key))
            if QUERY_REQUIRED_NOT_NULL in selected:
                yield _required(null_counts(snapshot, spec.required))

    return [CheckGroup(f"{key.to_python_identifier()}_checks", specs, _query_checks)]


def _has_rows(spec: ExportSpec, rows: int, cursor_from: str | None) -> dg.AssetCheckResult:
    """Rows, unless the spec allows none, or a merge export's window after its first load
    (from the mark or the run's tags) found nothing that changed."""
    unchanged = spec.merged and cursor_from not in (None, "initial")
    return check_result(
        rows > 0 or spec.allow_empty or unchanged,
        "the query returned no rows (set allow_empty: true if that can be right)",
        {"rows": rows, "allow_empty": spec.allow_empty, "incremental_window": unchanged},
        QUERY_HAS_ROWS,
    )


def _primary_key(spec: ExportSpec, report: KeyReport) -> dg.AssetCheckResult:
    """The key check's result; the sample of duplicated keys shows a classified key column's
    values redacted (with how often each occurs)."""
    classes = [spec.classification_of(column) for column in spec.primary_key]
    sample = [redacted_row(row, classes) for row in report.duplicate_sample]
    keys = [row[:-1] for row in sample]
    return check_result(
        report.passed,
        f"{report.duplicated_keys} duplicated key(s)"
        + (f", e.g. {', '.join('/'.join(key) for key in keys)}" if keys else "")
        + f"; {report.null_keys} row(s) with a NULL key",
        {
            "null_keys": report.null_keys,
            "duplicated_keys": report.duplicated_keys,
            "duplicate_sample": dg.MetadataValue.json(sample),
        },
        QUERY_PRIMARY_KEY_UNIQUE,
    )


def _required(nulls: dict[str, int]) -> dg.AssetCheckResult:
    return check_result(
        not any(nulls.values()),
        "NULLs in required columns: "
        + ", ".join(f"{column} ({n})" for column, n in nulls.items() if n),
        {"null_values": sum(nulls.values()), "null_counts": dg.MetadataValue.json(nulls)},
        QUERY_REQUIRED_NOT_NULL,
    )
