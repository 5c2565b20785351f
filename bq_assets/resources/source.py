"""The source warehouse: a DuckDB database the export queries run on."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
from pydantic import Field

from bq_assets import source_files, source_types, sources
from bq_assets.errors import BqAssetsError
from bq_assets.exports.sql import executable_query
from bq_assets.partitioning import PARTITION_COLUMN_TYPES
from bq_assets.schema import UnsupportedTypeError, values_out_of_range
from bq_assets.sources import DEFAULT_SOURCE, SourceUnreachableError

# Row groups are the unit the CSV stage parallelises over: small enough to spread a 1M-row
# result over both cores, large enough to keep Parquet overhead negligible.
ROW_GROUP_ROWS = 122_880
SNAPSHOT_OBJECT = "snapshot.parquet"


class SourceQueryError(BqAssetsError):
    """The source database rejected an export's query."""


class PartitionColumnError(BqAssetsError):
    """A partitioned export's partition column is not a DATE or TIMESTAMP column."""


def check_partition_column(described: list[tuple[str, str]], column: str, sql_file: Path) -> str:
    """The DuckDB type of the partition ``column`` in the query's result, if it is one of
    ``PARTITION_COLUMN_TYPES``; else a ``PartitionColumnError`` naming file, field and types."""
    types = dict(described)
    found = types.get(column)
    if found not in PARTITION_COLUMN_TYPES:
        what = "is missing from the result" if found is None else f"is {found}"
        raise PartitionColumnError(
            f"{sql_file}: partitioning.column: {column} {what}; allowed: a column of type "
            f"{', '.join(PARTITION_COLUMN_TYPES)} (cast it, e.g. CAST({column} AS DATE))"
        )
    return found


class SourceDeclaration(dg.Config):
    """A named source an export can pick with ``source: <name>`` (see ``bq_assets.sources``).
    ``password`` is set through ``dg.EnvVar`` only, and read only when a run connects."""

    name: str = Field(description="the name specs use (`source: <name>`)")
    kind: str = Field(description="duckdb, postgres, mysql, sqlite or files")
    path: str | None = Field(default=None, description="duckdb / sqlite: the database file")
    host: str | None = Field(default=None, description="postgres / mysql: server host")
    port: int | None = Field(default=None, description="postgres / mysql: server port")
    database: str | None = Field(default=None, description="postgres / mysql: database name")
    user: str | None = Field(default=None, description="postgres / mysql: user name")
    password: str | None = Field(default=None, description="postgres / mysql: dg.EnvVar only")

    def to_source(self) -> sources.Source:
        """The engine's view of this declaration, the password read now (at run time)."""
        fields = self.model_dump()
        if isinstance(self.password, dg.EnvVar):  # a resource used outside a run
            fields["password"] = self.password.get_value()
        return sources.Source(**fields)


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
    sources: list[SourceDeclaration] = Field(
        default_factory=list,
        description="further named sources; the DuckDB file above is the source `default`",
    )
    # Bounded memory: DuckDB spills to temp_directory beyond memory_limit.
    memory_limit: str = Field(
        default="192MB", description="DuckDB memory_limit of the query step (spills beyond it)"
    )
    threads: int = Field(default=2, description="DuckDB threads of the query step")
    temp_directory: str | None = Field(
        default=None,
        description="where DuckDB spills beyond memory_limit (default: <staging_dir>/.spill, "
        "or <system temp dir>/bq_assets/.spill without a staging_dir)",
    )

    def source_names(self) -> list[str]:
        """Every source an export may name: ``default`` first, then the declared ones."""
        return [DEFAULT_SOURCE, *(s.name for s in self.sources)]

    def source(self, name: str) -> sources.Source:
        """The declared source ``name`` (``default``: the DuckDB file ``database``)."""
        if name == DEFAULT_SOURCE:
            return sources.Source(name=name, kind="duckdb", path=str(self._database_path()))
        for declaration in self.sources:
            if declaration.name == name:
                source = declaration.to_source()
                problems = source.problems()
                if problems:
                    raise SourceQueryError(f"source {name!r}: " + "; ".join(problems))
                return source
        raise SourceQueryError(
            f"source {name!r} is not declared; declared: {', '.join(self.source_names())}"
        )

    def engine_settings(self) -> sources.EngineSettings:
        scratch = Path(self.staging_dir or Path(tempfile.gettempdir()) / "bq_assets")
        spill = self.temp_directory or str(scratch / ".spill")
        return sources.EngineSettings(
            memory_limit=self.memory_limit, threads=self.threads, temp_directory=spill
        )

    def _database_path(self) -> Path:
        """The DuckDB file the default source is (it must exist)."""
        path = Path(self.database)
        if not path.exists():
            raise SourceQueryError(f"The source database {path} does not exist.")
        return path

    def snapshot(
        self,
        sql: str,
        sql_file: Path,
        destination: Path,
        source_name: str = DEFAULT_SOURCE,
        gcs: source_files.GcsAccessLike = None,
        parameters: Mapping[str, object] | None = None,
        partition_column: str | None = None,
    ) -> pq.FileMetaData:
        """Run ``sql`` on the source ``source_name`` and write its result to ``destination`` as
        Parquet, all or nothing, streamed (DuckDB's COPY; the result is never held in memory).

        Every result column's type is checked before the COPY: carried exactly or refused
        naming the column and the cast to write. The snapshot is written beside its final name
        and renamed into place, so a failed query leaves no partial file. Returns the Parquet
        footer (rows, schema, row groups). A source server that does not answer fails naming
        its host and port, and may be retried; a refused login is not retried. ``gs://`` paths
        in the query are read with ``gcs`` (see ``gcs_access``; a callable is called only then);
        one that matches nothing fails naming it.
        A date or timestamp outside BigQuery's range fails naming the column and the value
        (from the snapshot's Parquet statistics); nothing is kept.

        ``parameters`` are bound to the query's ``$name`` placeholders by DuckDB (a partitioned
        export's window; never formatted into the SQL). ``partition_column`` must then be a
        DATE or TIMESTAMP column of the result, checked before any row is read.
        """
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".partial")
        query = executable_query(sql)
        source = self.source(source_name)
        try:
            with sources.connect(source, self.engine_settings(), query, gcs) as con:
                if partition_column is not None:
                    check_partition_column(
                        source_types.result_types(con, query, parameters),
                        partition_column,
                        sql_file,
                    )
                snapshot_query = source_types.check_result_types(con, query, source, parameters)
                con.execute(
                    f"COPY ({snapshot_query}) TO '{partial}' "
                    f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS})",
                    dict(parameters or {}),
                )
        except SourceUnreachableError as exc:
            raise dg.Failure(description=f"{sql_file}: {exc}", allow_retries=True) from None
        except UnsupportedTypeError as exc:
            raise UnsupportedTypeError(f"{sql_file}: {exc}") from None
        except duckdb.Error as exc:
            partial.unlink(missing_ok=True)
            message = sources.blank_secret(str(exc).strip().splitlines()[0], source)
            raise SourceQueryError(
                f"{sql_file}: the source {source.name!r} ({source.address}) rejected the query: "
                f"{message}"
            ) from None
        footer = pq.read_metadata(partial)
        out_of_range = values_out_of_range(footer)
        if out_of_range:
            partial.unlink(missing_ok=True)
            raise SourceQueryError(f"{sql_file}: " + "; ".join(out_of_range))
        os.replace(partial, destination)
        return footer

    def staging_export_prefix(self, export: str) -> str:
        """The object prefix under which every run's snapshot of ``export`` lives."""
        return f"{self.staging_prefix.strip('/')}/{export}/".lstrip("/")

    def staging_object(self, export: str, run_id: str) -> str:
        """The object name of the snapshot of ``export`` for ``run_id`` (one folder per run)."""
        return f"{self.staging_export_prefix(export)}{run_id}/{SNAPSHOT_OBJECT}"


def gcs_access(gcs: dg.ConfigurableResource) -> source_files.GcsAccess:
    """How a source reads ``gs://`` paths: with the ``gcs`` resource's own client settings
    (its endpoint, project and credentials: a service account or ADC in production, the
    emulator with anonymous credentials locally). Nothing is read until a query needs it."""
    client = gcs.get_client()
    # google-cloud-core keeps the credentials a client was built with on ``_credentials``;
    # reusing them (rather than rebuilding them) keeps one place that decides them.
    return source_files.GcsAccess(
        endpoint=client.api_endpoint or "https://storage.googleapis.com",
        project=client.project,
        credentials=client._credentials,
    )
