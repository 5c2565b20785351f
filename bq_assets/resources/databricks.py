"""Databricks: run the SQL that exposes a BigQuery table, on a SQL warehouse or locally.

This is the one place where local and production differ in more than endpoints:

* **workspace** (production): statements run through dagster-databricks'
  ``DatabricksClientResource`` → ``WorkspaceClient.statement_execution`` on the SQL warehouse
  ``warehouse_id``, polled until they finish, every failure state mapped to ``StatementError``.
* **local** (no Databricks emulator exists): a DuckDB stand-in "warehouse" reads the BigQuery
  table through the BigQuery Storage Read API (the API Databricks' own BigQuery reader uses)
  into a local catalog table ``<catalog>.<schema>.<table>``. Each Unity Catalog catalog is one
  DuckDB file under ``local_warehouse_dir``.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
from dagster_databricks import DatabricksClientResource
from databricks.sdk.service.sql import StatementExecutionAPI, StatementResponse, StatementState
from pydantic import Field

from bq_assets.engine.databricks_sql import BigQueryTable, TableName
from bq_assets.errors import BqAssetsError
from bq_assets.resources.google import ExportBigQueryResource
from bq_assets.resources.storage_read import StorageReadError, TableReader, create_session

STAND_IN_MEMORY_LIMIT = "256MB"


class StatementError(BqAssetsError):
    """A Databricks SQL statement failed, was canceled, or did not finish in time."""


class DatabricksSQLResource(dg.ConfigurableResource):
    """Where the Databricks hop runs: a SQL warehouse (``workspace`` set) or the local stand-in."""

    workspace: DatabricksClientResource | None = Field(
        default=None, description="Databricks workspace client (production)."
    )
    warehouse_id: str | None = Field(default=None, description="SQL warehouse for statements.")
    statement_timeout_s: int = Field(default=600, description="Give up on a statement after this.")
    local_warehouse_dir: str | None = Field(
        default=None, description="Local stand-in: directory of the DuckDB catalog files."
    )
    bigquery: ExportBigQueryResource | None = Field(
        default=None, description="Local stand-in: where it reads BigQuery tables from."
    )
    bigquery_key_secret_scope: str = Field(
        default="bq_assets",
        description="federation: Databricks secret scope holding the BigQuery service-account key.",
    )
    bigquery_key_secret_name: str = Field(
        default="bigquery_service_account_key",
        description="federation: name of that secret (the key JSON never appears in SQL).",
    )

    @property
    def is_local(self) -> bool:
        return self.workspace is None

    @property
    def endpoint(self) -> str:
        """The SQL warehouse's workspace, or where the local stand-in keeps its catalogs."""
        if self.workspace is not None:
            return f"{self.workspace.host} (SQL warehouse {self.warehouse_id})"
        reads = self.bigquery.read_endpoint if self.bigquery else "(no BigQuery resource)"
        return f"the local stand-in in {self.local_warehouse_dir} (reading BigQuery from {reads})"

    @property
    def dialect(self) -> str:
        """The SQL dialect ``query`` speaks: ``databricks``, or ``duckdb`` for the stand-in."""
        return "duckdb" if self.is_local else "databricks"

    # -- production: statement execution on a SQL warehouse --------------------------------

    def execute(self, statement: str) -> list[list[str | None]]:
        """Run one statement on the SQL warehouse and return its rows (as strings).

        A statement still running when the step is interrupted (the run is terminated: Dagster
        raises ``DagsterExecutionInterruptedError``, a SIGINT ``KeyboardInterrupt``) or when
        ``statement_timeout_s`` passes is cancelled on the warehouse, so nothing keeps running
        after the run is gone.
        """
        if self.workspace is None or not self.warehouse_id:
            raise StatementError("No Databricks workspace and SQL warehouse are configured.")
        api = self.workspace.get_client().workspace_client.statement_execution
        response = api.execute_statement(
            statement=statement, warehouse_id=self.warehouse_id, wait_timeout="30s"
        )
        try:
            response = self._poll(api, response)
        except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
            api.cancel_execution(response.statement_id)
            raise
        state = _state(response)
        if state != StatementState.SUCCEEDED:
            error = response.status.error if response.status else None
            detail = f"{error.error_code}: {error.message}" if error else "no error detail"
            raise StatementError(
                f"Databricks statement {response.statement_id} ended {state.value if state else '?'} "
                f"on warehouse {self.warehouse_id}: {detail}"
            )
        return [list(row) for row in (response.result.data_array or [])] if response.result else []

    def _poll(self, api: StatementExecutionAPI, response: StatementResponse) -> StatementResponse:
        """Wait for a statement to leave PENDING/RUNNING; cancel it at the deadline."""
        deadline = time.monotonic() + self.statement_timeout_s
        while _state(response) in (StatementState.PENDING, StatementState.RUNNING):
            if time.monotonic() > deadline:
                api.cancel_execution(response.statement_id)
                raise StatementError(
                    f"Statement {response.statement_id} did not finish within "
                    f"{self.statement_timeout_s}s on warehouse {self.warehouse_id} and was canceled."
                )
            time.sleep(2)
            response = api.get_statement(response.statement_id)
        return response

    # -- local stand-in ---------------------------------------------------------------------

    @contextmanager
    def _local_connection(self, catalog: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the stand-in with ``catalog`` attached, held under a file lock.

        DuckDB lets one process at a time open a database file for writing; the lock makes
        concurrent runs (several exports, several processes) take turns instead of failing.
        """
        if not self.local_warehouse_dir:
            raise StatementError("No local Databricks stand-in directory is configured.")
        folder = Path(self.local_warehouse_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"{catalog}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with duckdb.connect() as con:
                # UTC, not the machine's zone: TIMESTAMPs come back as UTC whatever TZ is set.
                con.execute("SET TimeZone = 'UTC'")
                # "main" is reserved in DuckDB, so catalogs attach under an alias.
                con.execute(f"ATTACH '{folder / catalog}.duckdb' AS {_alias(catalog)}")
                yield con

    def _local_name(self, name: TableName) -> str:
        return f"{_alias(name.catalog)}.{name.schema}.{name.table}"

    def copy_from_bigquery(self, project: str, dataset: str, table: str, name: TableName) -> int:
        """Local stand-in: stream a BigQuery table through the Storage Read API into ``name``.

        Large tables are read over several streams in parallel (``read_max_streams`` of the
        BigQuery resource) and flow into DuckDB batch by batch: the reader holds a few batches
        whatever the table's size (DuckDB's own memory still grows with the rows ingested: 2.6 GB
        peak for 10M ``customer_360`` rows, see README "Performance"). A stalled or overdue read fails naming the endpoint (retried by the
        step's policy). The table is replaced in one statement, so a failure leaves the previous
        copy in place.
        """
        if self.bigquery is None:
            raise StatementError("The local Databricks stand-in needs a BigQuery resource.")
        bq = self.bigquery
        client = bq.read_client()
        table_path = f"projects/{project}/datasets/{dataset}/tables/{table}"
        try:
            session = create_session(
                client,
                bq.read_endpoint,
                project,
                table_path,
                bq.read_max_streams,
                bq.read_stall_timeout_s,
            )
            with (
                TableReader(
                    client, session, bq.read_endpoint, bq.read_stall_timeout_s, bq.read_timeout_s
                ) as rows,
                self._local_connection(name.catalog) as con,
            ):
                # DuckDB would otherwise take up to 80% of RAM; past this it spills to disk.
                con.execute(f"SET memory_limit = '{STAND_IN_MEMORY_LIMIT}'")
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {_alias(name.catalog)}.{name.schema}")
                con.register("bigquery_rows", rows.reader())
                try:
                    con.execute(
                        f"CREATE OR REPLACE TABLE {self._local_name(name)} AS FROM bigquery_rows"
                    )
                except Exception:
                    if rows.error is not None:  # DuckDB re-wraps the reader's error: show ours
                        raise rows.error from None
                    raise
                return con.execute(f"SELECT count(*) FROM {self._local_name(name)}").fetchone()[0]
        except StorageReadError as exc:
            raise dg.Failure(description=str(exc), allow_retries=True) from None

    def read_table(self, name: TableName) -> pa.Table:
        """Local stand-in: the whole table (for tests and small checks)."""
        with self._local_connection(name.catalog) as con:
            return con.execute(f"FROM {self._local_name(name)}").to_arrow_table()

    # -- both -------------------------------------------------------------------------------

    def publish(self, statements: list[str], source: BigQueryTable, name: TableName) -> None:
        """Make ``source`` queryable as ``name``.

        On a workspace this runs ``statements`` (the generated Databricks DDL) in order; the
        local stand-in copies the BigQuery table instead, since no local engine runs that DDL.
        Idempotent either way.
        """
        if self.is_local:
            self.copy_from_bigquery(source.project, source.dataset, source.table, name)
            return
        for statement in statements:
            self.execute(statement)

    def query(self, sql_for_name: str, name: TableName) -> list[tuple]:
        """Run a query that both engines understand; ``{table}`` in it stands for ``name``."""
        if self.is_local:
            with self._local_connection(name.catalog) as con:
                return con.execute(sql_for_name.format(table=self._local_name(name))).fetchall()
        return [tuple(row) for row in self.execute(sql_for_name.format(table=name.quoted))]

    def row_count(self, name: TableName) -> int:
        return int(self.query("SELECT count(*) FROM {table}", name)[0][0])

    def column_names(self, name: TableName) -> list[str]:
        if self.is_local:
            with self._local_connection(name.catalog) as con:
                return [
                    d[0] for d in con.execute(f"FROM {self._local_name(name)} LIMIT 0").description
                ]
        # Unity Catalog stores schema and table names in lower case ("Names",
        # https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-names): a spec's
        # `Amperity` is `amperity` in information_schema.
        rows = self.execute(
            f"SELECT column_name FROM `{name.catalog}`.information_schema.columns "
            f"WHERE table_schema = '{name.schema.lower()}' AND table_name = '{name.table.lower()}' "
            "ORDER BY ordinal_position"
        )
        return [str(row[0]) for row in rows]


def _alias(catalog: str) -> str:
    return f"uc_{catalog}"


def _state(response: StatementResponse) -> StatementState | None:
    return response.status.state if response.status else None
