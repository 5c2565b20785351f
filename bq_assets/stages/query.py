"""Stage 1: run the export's SQL on the source and keep the result as a Parquet snapshot.

The snapshot is immutable, run-scoped and addressed by URI:
``gs://<staging bucket>/<staging prefix>/<export>/<run id>/snapshot.parquet`` (the GCS emulator
locally, the same code). Every later stage of the run reads exactly this data, whatever happens
to the source meanwhile, from whichever machine or pod it runs on: no local path crosses a step
boundary. Re-running writes the same run's snapshot again (idempotent). Retention keeps the
snapshots of the newest ``staging_keep_runs`` runs of the export, decided by the runs' records
in the Dagster instance (never by object times), and never deletes the snapshot of a run that
has not finished.
"""

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from bq_assets.exports.spec import ExportSpec, partition_parameters
from bq_assets.partitioning import Window, window_predicate
from bq_assets.resources.google import StackAwareGCSResource
from bq_assets.resources.source import SNAPSHOT_OBJECT, DuckDBSourceResource
from bq_assets.schema import bigquery_schema, column_schema
from bq_assets.stages import NETWORK_RETRY, query_key, reported_as_failure
from bq_assets.stages.gcs_csv import CONTENT_TYPES, upload
from bq_assets.stages.partitions import run_window, window_metadata


@dataclass(frozen=True)
class RunStatus:
    """What the Dagster instance knows of a run that wrote a snapshot."""

    created: float  # when the run was created (POSIX seconds), from its run record
    finished: bool  # the run has ended (success, failure or canceled): it reads no more


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


def build_query_asset(spec: ExportSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=query_key(spec.name),
        group_name=spec.name,
        kinds={"duckdb", "parquet"},
        owners=spec.owners,
        pool="source",
        description=spec.description or f"Result of {spec.sql_file.name}.",
        metadata={
            "sql_file": str(spec.sql_file),
            "sql": dg.MetadataValue.md(f"```sql\n{spec.sql.strip()}\n```"),
        },
        retry_policy=NETWORK_RETRY,
    )
    def _query(
        context: dg.AssetExecutionContext,
        source: DuckDBSourceResource,
        gcs: StackAwareGCSResource,
    ) -> dg.MaterializeResult:
        run_id = context.run.run_id
        with reported_as_failure(GCS=gcs), _scratch(source, run_id) as scratch:
            local = scratch / SNAPSHOT_OBJECT
            window = run_window(context, spec)
            parameters = window.parameters(partition_parameters(spec.sql)) if window else None
            if window is not None:
                context.log.info(f"{spec.name}: exporting {window.describe()}")
            parquet = source.snapshot(
                spec.sql,
                spec.sql_file,
                local,
                spec.source,
                parameters=parameters,
                partition_column=spec.partitioning.column if spec.partitioning else None,
            )
            fields = bigquery_schema(parquet.schema.to_arrow_schema())
            rows_by_partition = None
            if window is not None and spec.partitioning is not None:
                column_type = next(
                    f.field_type for f in fields if f.name == spec.partitioning.column
                )
                rows_by_partition = snapshot_rows_by_partition(
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
            return dg.MaterializeResult(
                metadata={
                    "dagster/row_count": parquet.num_rows,
                    "dagster/column_schema": column_schema(fields),
                    "dagster/uri": uri,
                    "snapshot_uri": uri,
                    "snapshot_crc32c": crc32c,
                    "bytes": size,
                    **(window_metadata(window) if window else {}),
                    **(
                        {"rows_by_partition": dg.MetadataValue.json(rows_by_partition)}
                        if rows_by_partition is not None
                        else {}
                    ),
                }
            )

    return _query


def snapshot_rows_by_partition(
    snapshot: Path, column: str, column_type: str, window: Window
) -> dict[str, int]:
    """Rows of the local snapshot in each partition of ``window`` (the per-partition counts
    the later hops' checks compare with). Read-only."""
    parts = window.split()
    counts = ", ".join(
        f"count(*) FILTER (WHERE {window_predicate('duckdb', column, column_type, part)})"
        for part in parts
    )
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        row = con.execute(f"SELECT {counts} FROM read_parquet(?)", [str(snapshot)]).fetchone()
    assert row is not None
    return {part.keys[0]: int(n) for part, n in zip(parts, row, strict=True)}


@contextmanager
def _scratch(source: DuckDBSourceResource, run_id: str) -> Iterator[Path]:
    """A local directory of this step alone for the query result; gone when the step ends."""
    if source.staging_dir:
        Path(source.staging_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"bq_assets_{run_id}_", dir=source.staging_dir) as name:
        yield Path(name)
