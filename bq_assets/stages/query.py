"""Stage 1: run the export's SQL on the source and keep the result as a Parquet snapshot.

The snapshot is immutable and run-scoped (``<staging>/<export>/<run id>/snapshot.parquet``):
every later stage of the run reads exactly this data, whatever happens to the source meanwhile.
Re-running writes the same run's snapshot again (idempotent); snapshots of all but the newest
``KEEP_RUNS`` runs are deleted.
"""

import shutil
from pathlib import Path

import dagster as dg

from bq_assets.exports.spec import ExportSpec
from bq_assets.resources.source import DuckDBSourceResource
from bq_assets.schema import bigquery_schema, column_schema
from bq_assets.stages import query_key, reported_as_failure

KEEP_RUNS = 3


def delete_old_snapshots(export_dir: Path, keep: int, current: Path) -> None:
    runs = sorted(
        (p for p in export_dir.iterdir() if p.is_dir()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for run_dir in runs[keep:]:
        if run_dir != current:
            shutil.rmtree(run_dir, ignore_errors=True)


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
    )
    def _query(
        context: dg.AssetExecutionContext, source: DuckDBSourceResource
    ) -> dg.MaterializeResult:
        with reported_as_failure():
            path = source.staging_path(spec.name, context.run.run_id)
            parquet = source.snapshot(spec.sql, spec.sql_file, path, spec.source)
            fields = bigquery_schema(parquet.schema.to_arrow_schema())
            context.log.info(f"{spec.name}: {parquet.num_rows} rows snapshotted to {path}")
            delete_old_snapshots(path.parent.parent, KEEP_RUNS, path.parent)
            return dg.MaterializeResult(
                metadata={
                    "dagster/row_count": parquet.num_rows,
                    "dagster/column_schema": column_schema(fields),
                    "dagster/uri": path.as_uri(),
                    "snapshot_path": dg.MetadataValue.path(str(path)),
                    "bytes": path.stat().st_size,
                }
            )

    return _query
