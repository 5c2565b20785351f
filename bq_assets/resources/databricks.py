"""Databricks: run the SQL that exposes a BigQuery table on a SQL warehouse.

Statements run through dagster-databricks' ``DatabricksClientResource`` →
``WorkspaceClient.statement_execution`` on the SQL warehouse ``warehouse_id`` (the Statement
Execution API, https://docs.databricks.com/api/workspace/statementexecution), polled until they
finish, every failure state mapped to ``StatementError``; Unity Catalog objects are read through
``WorkspaceClient.catalogs`` (https://docs.databricks.com/api/workspace/catalogs/get), never
parsed from ``DESCRIBE`` text.

No Databricks emulator exists: locally ``settings.py`` wires in a subclass that runs the same
statements on Apache Spark (``bq_assets.local.spark_warehouse``), overriding only the seam marked
below (``engine``, ``endpoint``, ``run``, ``foreign_catalog``). Stages and checks type-hint this
class, work with either, and never ask which one they have.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import ClassVar

import dagster as dg
from dagster_databricks import DatabricksClientResource
from databricks.sdk.errors import DatabricksError, NotFound
from databricks.sdk.service.catalog import CatalogInfo
from databricks.sdk.service.sql import (
    ExecuteStatementRequestOnWaitTimeout,
    StatementExecutionAPI,
    StatementResponse,
    StatementState,
)
from pydantic import Field

from bq_assets.engine.databricks_sql import BigQueryTable as BigQueryTable
from bq_assets.engine.databricks_sql import (
    ForeignCatalogExpectation,
    TableName,
    publish_checking_catalog,
)
from bq_assets.errors import BqAssetsError


class StatementError(BqAssetsError):
    """A Databricks SQL statement failed, was canceled, or did not finish in time."""


#: How long ``execute_statement`` waits for a result before answering with a statement id to
#: poll ("wait_timeout": ``0s`` or 5 to 50 s; ``on_wait_timeout: CONTINUE`` keeps it running).
WAIT_TIMEOUT = "30s"
POLL_S = 2.0


@dataclass(frozen=True)
class StatementResult:
    """What a statement returned: its columns' names (the result manifest's schema) and its rows,
    every value as the Statement Execution API's ``JSON_ARRAY`` format gives it (a string, or
    None for NULL)."""

    columns: list[str]
    rows: list[list[str | None]]


class DatabricksSQLResource(dg.ConfigurableResource):
    """Where the Databricks hop runs: the SQL warehouse ``warehouse_id`` of ``workspace``."""

    #: How failures name this service (``bq_assets.failures``).
    service_name: ClassVar[str] = "Databricks"

    workspace: DatabricksClientResource | None = Field(
        default=None, description="Databricks workspace client."
    )
    warehouse_id: str | None = Field(default=None, description="SQL warehouse for statements.")
    statement_timeout_s: int = Field(default=600, description="Give up on a statement after this.")
    bigquery_key_secret_scope: str = Field(
        default="bq_assets",
        description="federation: Databricks secret scope holding the BigQuery service-account key.",
    )
    bigquery_key_secret_name: str = Field(
        default="bigquery_service_account_key",
        description="federation: name of that secret (the key JSON never appears in SQL).",
    )

    # -- the seam a stand-in overrides -------------------------------------------------------

    @property
    def engine(self) -> str:
        """What runs the statements, as the materialization's metadata shows it."""
        return "SQL warehouse"

    @property
    def runnable_modes(self) -> tuple[str, ...]:
        """The spec's ``databricks.mode`` values this engine can publish. A SQL warehouse runs
        Lakehouse Federation only: Databricks documents the ``USING bigquery`` connector
        (``external``) as legacy and unsupported, for clusters with the connector."""
        return ("federation",)

    @property
    def endpoint(self) -> str:
        """The SQL warehouse's workspace."""
        host = self.workspace.host if self.workspace else "(no workspace configured)"
        return f"{host} (SQL warehouse {self.warehouse_id})"

    def run(self, statement: str) -> StatementResult:
        """Run one statement on the SQL warehouse: its columns and all its rows.

        Statement Execution API, INLINE disposition, JSON_ARRAY format (the defaults): the first
        chunk of rows comes with the response, later ones are fetched by ``next_chunk_index``;
        a result cut short (``manifest.truncated``) fails rather than pass for the whole.

        A statement still running when the step is interrupted (the run is terminated: Dagster
        raises ``DagsterExecutionInterruptedError``, a SIGINT ``KeyboardInterrupt``), when a
        status poll fails, or when ``statement_timeout_s`` passes is canceled on the warehouse, so
        nothing keeps running after the run is gone.
        """
        if self.workspace is None or not self.warehouse_id:
            raise StatementError("No Databricks workspace and SQL warehouse are configured.")
        api = self.workspace.get_client().workspace_client.statement_execution
        try:
            response = api.execute_statement(
                statement=statement,
                warehouse_id=self.warehouse_id,
                wait_timeout=WAIT_TIMEOUT,
                on_wait_timeout=ExecuteStatementRequestOnWaitTimeout.CONTINUE,
            )
        except DatabricksError as exc:
            raise self._api_error("could not submit a statement", exc) from None
        deadline = time.monotonic() + self.statement_timeout_s
        try:
            while _state(response) in (StatementState.PENDING, StatementState.RUNNING):
                if time.monotonic() > deadline:
                    raise StatementError(
                        f"Statement {response.statement_id} did not finish within "
                        f"{self.statement_timeout_s}s on warehouse {self.warehouse_id} and was "
                        "canceled.",
                        retryable=True,
                    )
                time.sleep(POLL_S)
                response = self._status(api, response)
        except BaseException:
            _cancel_quietly(api, response.statement_id)
            raise
        return self._result(api, response)

    def foreign_catalog(self, name: str) -> CatalogInfo | None:
        """Unity Catalog's description of the catalog ``name`` (connection and options as
        structured data: ``GET /api/2.1/unity-catalog/catalogs/{name}``), None if there is none."""
        if self.workspace is None:
            raise StatementError("No Databricks workspace is configured.")
        try:
            return self.workspace.get_client().workspace_client.catalogs.get(name)
        except NotFound:
            return None
        except DatabricksError as exc:
            raise self._api_error(f"could not read catalog {name}", exc) from None

    # -- built on the seam -------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        """The SQL dialect ``query`` speaks."""
        return "databricks"

    def execute(self, statement: str) -> list[list[str | None]]:
        """Run one statement and return its rows (values as strings)."""
        return self.run(statement).rows

    def publish(
        self,
        statements: list[str],
        expected_catalog: ForeignCatalogExpectation | None,
        source: BigQueryTable,
        name: TableName,
    ) -> list[str]:
        """Make ``source`` queryable as ``name`` by running ``statements`` (the generated
        Databricks DDL) in order; right after the foreign catalog's statement, read the catalog
        back through the catalogs API (``DriftError`` on drift, before anything after it runs).
        Returns what was verified. Idempotent."""

        def read_catalog(catalog: str) -> tuple[str | None, dict[str, str] | None] | None:
            info = self.foreign_catalog(catalog)
            return (info.connection_name, info.options) if info is not None else None

        return publish_checking_catalog(self.execute, statements, expected_catalog, read_catalog)

    def query(self, sql_for_name: str, name: TableName) -> list[tuple]:
        """Run a query; ``{table}`` in it stands for ``name``. Read-only."""
        return [tuple(row) for row in self.execute(sql_for_name.format(table=name.quoted))]

    def row_count(self, name: TableName) -> int:
        return int(self.query("SELECT count(*) FROM {table}", name)[0][0])

    def column_names(self, name: TableName) -> list[str]:
        """The object's columns, in order, from the result manifest of a query that reads no row
        (``manifest.schema.columns``): structured, and what Spark answers too (it has no
        ``information_schema``)."""
        return self.run(f"SELECT * FROM {name.quoted} LIMIT 0").columns

    # -- production: statement execution on a SQL warehouse --------------------------------

    def _status(self, api: StatementExecutionAPI, response: StatementResponse) -> StatementResponse:
        """The statement's current state (``GET /api/2.0/sql/statements/{id}``)."""
        try:
            return api.get_statement(response.statement_id)
        except DatabricksError as exc:
            raise self._api_error(f"lost track of statement {response.statement_id}", exc) from None

    def _result(self, api: StatementExecutionAPI, response: StatementResponse) -> StatementResult:
        state = _state(response)
        if state != StatementState.SUCCEEDED:
            error = response.status.error if response.status else None
            detail = f"{_text(error.error_code)}: {error.message}" if error else "no error detail"
            raise StatementError(
                f"Databricks statement {response.statement_id} ended "
                f"{state.value if state else '?'} on warehouse {self.warehouse_id}: {detail}"
            )
        manifest = response.manifest
        if manifest is not None and manifest.truncated:
            raise StatementError(
                f"Databricks statement {response.statement_id} returned a truncated result "
                f"on warehouse {self.warehouse_id}; nothing was read from it."
            )
        columns = [
            str(column.name)
            for column in sorted(
                (manifest.schema.columns or []) if manifest and manifest.schema else [],
                key=lambda column: column.position or 0,
            )
        ]
        rows: list[list[str | None]] = []
        chunk = response.result
        while chunk is not None:
            rows += [list(row) for row in (chunk.data_array or [])]
            if chunk.next_chunk_index is None:
                break
            try:
                chunk = api.get_statement_result_chunk_n(
                    response.statement_id, chunk.next_chunk_index
                )
            except DatabricksError as exc:
                raise self._api_error(
                    f"could not fetch the rows of statement {response.statement_id}", exc
                ) from None
        return StatementResult(columns, rows)

    def _api_error(self, what: str, exc: DatabricksError) -> StatementError:
        """A failed API call as a ``StatementError``: retryable unless the request itself was
        refused (bad request, denied, not found)."""
        status = getattr(exc, "error_code", None) or type(exc).__name__
        final = any(
            word in type(exc).__name__
            for word in ("BadRequest", "Invalid", "Permission", "Unauthenticated", "NotFound")
        )
        return StatementError(
            f"Databricks {what} on {self.endpoint}: {status}: {exc}", retryable=not final
        )


def _state(response: StatementResponse) -> StatementState | None:
    return response.status.state if response.status else None


def _text(code: object) -> str:
    """An API enum (``ServiceErrorCode.PERMISSION_DENIED``) as its documented name."""
    return str(getattr(code, "value", code))


def _cancel_quietly(api: StatementExecutionAPI, statement_id: str | None) -> None:
    """Ask the warehouse to cancel ``statement_id``; a failure to ask is not the error to
    report (the one that made us cancel is)."""
    if statement_id is None:
        return
    with contextlib.suppress(Exception):
        api.cancel_execution(statement_id)
