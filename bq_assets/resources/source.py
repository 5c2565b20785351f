"""The source warehouse: a DuckDB database the export queries run on."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
from pydantic import Field

from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import executable_query
from bq_assets.local import sample_data

# Row groups are the unit the CSV stage parallelises over: small enough to spread a 1M-row
# result over both cores, large enough to keep Parquet overhead negligible.
ROW_GROUP_ROWS = 122_880
SNAPSHOT_OBJECT = "snapshot.parquet"


class SourceQueryError(BqAssetsError):
    """The source database rejected an export's query."""


class DuckDBSourceResource(dg.ConfigurableResource):
    """Runs export queries on a DuckDB database and stores each result as a Parquet snapshot.

    Locally the database is the generated Amperity-style sample (created on first use with
    ``sample_rows`` customers). Connections are read-only, so concurrent runs never lock it.

    Snapshots are handed to the next stage through object storage, never as a local path:
    ``gs://<staging_bucket>/<staging_prefix>/<export>/<run id>/snapshot.parquet`` (the query
    stage writes it; see ``staging_uri``). The same code runs on the GCS emulator locally.
    """

    database: str = Field(description="Path of the DuckDB database file the queries run on.")
    staging_bucket: str | None = Field(
        default=None,
        description="GCS bucket for the run-scoped Parquet snapshots handed from the query stage "
        "to the GCS stage (default: the export bucket of the `gcs` resource).",
    )
    staging_prefix: str = Field(
        default="staging",
        description="Object prefix of the snapshots in the staging bucket.",
    )
    staging_keep_runs: int = Field(
        default=3,
        ge=1,
        description="Snapshots of this many most recent runs of an export are kept (more when "
        "runs are still going: a snapshot of an unfinished run is never deleted).",
    )
    staging_dir: str | None = Field(
        default=None,
        description="Local scratch directory where the query result is written before it goes "
        "up to the staging bucket (default: the system's temporary directory). Nothing stays.",
    )
    sample_rows: int | None = Field(
        default=None,
        description="Generate the sample source with this many customers when the database "
        "does not exist (local only; unset in production).",
    )

    def _database_path(self) -> Path:
        path = Path(self.database)
        if self.sample_rows is not None:
            sample_data.ensure(path, self.sample_rows)
        if not path.exists():
            raise SourceQueryError(f"The source database {path} does not exist.")
        return path

    def snapshot(self, sql: str, sql_file: Path, destination: Path) -> pq.FileMetaData:
        """Run ``sql`` and write its result to ``destination`` as Parquet, all or nothing.

        The snapshot is written beside its final name and renamed into place, so a failed query
        leaves no partial file. Returns the Parquet footer (rows, schema, row groups).
        """
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".partial")
        query = executable_query(sql)
        try:
            with duckdb.connect(str(self._database_path()), read_only=True) as con:
                con.execute("SET TimeZone = 'UTC'")
                con.execute(
                    f"COPY ({query}) TO '{partial}' "
                    f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
                )
        except duckdb.Error as exc:
            partial.unlink(missing_ok=True)
            message = str(exc).strip().splitlines()[0]
            raise SourceQueryError(
                f"{sql_file}: the source database {self.database} rejected the query: {message}"
            ) from None
        os.replace(partial, destination)
        return pq.read_metadata(destination)

    def staging_export_prefix(self, export: str) -> str:
        """The object prefix under which every run's snapshot of ``export`` lives."""
        return f"{self.staging_prefix.strip('/')}/{export}/".lstrip("/")

    def staging_object(self, export: str, run_id: str) -> str:
        """The object name of the snapshot of ``export`` for ``run_id`` (one folder per run)."""
        return f"{self.staging_export_prefix(export)}{run_id}/{SNAPSHOT_OBJECT}"
