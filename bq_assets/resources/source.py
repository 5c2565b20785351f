"""The source resource: where export queries run, as configuration. The work is
``bq_assets.sources`` (no Dagster); this holds the settings and hands them over."""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
from pydantic import Field

from bq_assets.sources import DEFAULT_SOURCE, EngineSettings, Source
from bq_assets.sources.files import GcsAccess, GcsAccessLike
from bq_assets.sources.snapshot import (
    SNAPSHOT_OBJECT,
    SourceQueryError,
    Unstorable,
    describe_result,
    write_snapshot,
)

__all__ = ["SNAPSHOT_OBJECT", "DuckDBSourceResource", "SourceDeclaration", "SourceQueryError"]


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

    def to_source(self) -> Source:
        """The engine's view of this declaration, the password read now (at run time)."""
        fields = self.model_dump()
        if isinstance(self.password, dg.EnvVar):  # a resource used outside a run
            fields["password"] = self.password.get_value()
        return Source(**fields)


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

    def source(self, name: str) -> Source:
        """The declared source ``name`` (``default``: the DuckDB file ``database``)."""
        if name == DEFAULT_SOURCE:
            return Source(name=name, kind="duckdb", path=str(self._database_path()))
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

    def engine_settings(self) -> EngineSettings:
        scratch = Path(self.staging_dir or Path(tempfile.gettempdir()) / "bq_assets")
        spill = self.temp_directory or str(scratch / ".spill")
        return EngineSettings(
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
        gcs: GcsAccessLike = None,
        parameters: Mapping[str, object] | None = None,
        partition_column: str | None = None,
        unstorable: Unstorable | None = None,
    ) -> pq.FileMetaData:
        """Run ``sql`` on the source ``source_name`` and write its result to ``destination``
        as Parquet, all or nothing (``bq_assets.sources.write_snapshot``, which says how;
        ``unstorable``: the target BigQuery's refusals, asked before anything is written).
        Idempotent."""
        return write_snapshot(
            self.source(source_name),
            self.engine_settings(),
            sql,
            sql_file,
            destination,
            gcs,
            parameters,
            partition_column,
            unstorable,
        )

    def describe(
        self,
        sql: str,
        sql_file: Path,
        source_name: str = DEFAULT_SOURCE,
        gcs: GcsAccessLike = None,
        parameter_names: Collection[str] = (),
    ) -> list[tuple[str, str]]:
        """The query's result columns and their DuckDB types, without running it (see
        ``bq_assets.sources.snapshot.describe_result``). Read-only."""
        return describe_result(
            self.source(source_name), self.engine_settings(), sql, sql_file, gcs, parameter_names
        )

    def staging_export_prefix(self, export: str) -> str:
        """The object prefix under which every run's snapshot of ``export`` lives."""
        return f"{self.staging_prefix.strip('/')}/{export}/".lstrip("/")

    def staging_object(self, export: str, run_id: str) -> str:
        """The object name of the snapshot of ``export`` for ``run_id`` (one folder per run)."""
        return f"{self.staging_export_prefix(export)}{run_id}/{SNAPSHOT_OBJECT}"


def gcs_access(gcs: dg.ConfigurableResource) -> GcsAccess:
    """How a source reads ``gs://`` paths: with the ``gcs`` resource's own client settings
    (its endpoint, project and credentials: a service account or ADC in production, the
    emulator with anonymous credentials locally). Nothing is read until a query needs it."""
    client = gcs.get_client()
    # google-cloud-core keeps the credentials a client was built with on ``_credentials``;
    # reusing them (rather than rebuilding them) keeps one place that decides them.
    return GcsAccess(
        endpoint=client.api_endpoint or "https://storage.googleapis.com",
        project=client.project,
        credentials=client._credentials,
    )
