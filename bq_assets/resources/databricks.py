"""Databricks: run the SQL that exposes a BigQuery table on a SQL warehouse.

Statements run through dagster-databricks' ``DatabricksClientResource`` →
``WorkspaceClient.statement_execution`` on the SQL warehouse ``warehouse_id``, polled until they
finish, every failure state mapped to ``StatementError``.

No Databricks emulator exists: locally ``settings.py`` wires in a subclass,
``bq_assets.local.databricks.LocalDatabricksResource``, that overrides the methods below marked
as the seam (``engine``, ``runnable_modes``, ``endpoint``, ``dialect``, ``publish``, ``query``,
``column_names``) with a stand-in. Stages and checks type-hint this class, work with either,
and never ask which one they have.
"""

from __future__ import annotations

import time
from typing import ClassVar

import dagster as dg
from dagster_databricks import DatabricksClientResource
from databricks.sdk.service.sql import StatementExecutionAPI, StatementResponse, StatementState
from pydantic import Field

from bq_assets.engine.databricks_sql import (
    BigQueryTable,
    DriftProbe,
    TableName,
    publish_checking_drift,
)
from bq_assets.engine.log import Log
from bq_assets.errors import BqAssetsError


class StatementError(BqAssetsError):
    """A Databricks SQL statement failed, was canceled, or did not finish in time."""


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

    @property
    def dialect(self) -> str:
        """The SQL dialect ``query`` speaks."""
        return "databricks"

    def publish(
        self,
        statements: list[str],
        probes: list[DriftProbe],
        source: BigQueryTable,
        name: TableName,
        log: Log,
    ) -> list[str]:
        """Make ``source`` queryable as ``name`` by running ``statements`` (the generated
        Databricks DDL) in order, each drift probe right after its statement; returns what
        the probes found (``DriftError`` on drift, before anything after it runs). Idempotent."""
        return publish_checking_drift(self.execute, statements, probes, log)

    def query(self, sql_for_name: str, name: TableName) -> list[tuple]:
        """Run a query that both engines understand; ``{table}`` in it stands for ``name``."""
        return [tuple(row) for row in self.execute(sql_for_name.format(table=name.quoted))]

    def row_count(self, name: TableName) -> int:
        return int(self.query("SELECT count(*) FROM {table}", name)[0][0])

    def column_names(self, name: TableName) -> list[str]:
        # Unity Catalog stores schema and table names in lower case ("Names",
        # https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-names): a spec's
        # `Amperity` is `amperity` in information_schema.
        rows = self.execute(
            f"SELECT column_name FROM `{name.catalog}`.information_schema.columns "
            f"WHERE table_schema = '{name.schema.lower()}' AND table_name = '{name.table.lower()}' "
            "ORDER BY ordinal_position"
        )
        return [str(row[0]) for row in rows]

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


def _state(response: StatementResponse) -> StatementState | None:
    return response.status.state if response.status else None
