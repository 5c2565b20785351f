"""The local Databricks stand-in: the production statements, run as the same text on Apache Spark.

``settings.py`` wires this subclass of the production ``DatabricksSQLResource`` in locally. It
overrides only how a statement is *run* (``run``), where (``endpoint``) and how Unity Catalog
describes a catalog (``foreign_catalog``); everything the stage and the checks call
(``execute``, ``publish``, ``query``, ``row_count``, ``column_names``) is the production code.

- Statements Spark runs (``CREATE SCHEMA``, ``CREATE OR REPLACE VIEW``, the checks' counts and
  key checksums, ``SELECT * … LIMIT 0`` for the columns, ``DESCRIBE … AS JSON``) go to the local
  stack's Spark Connect server as they are. Each Unity Catalog catalog a statement names is a
  ``LocalUnityCatalog`` (``spark_catalog/LocalUnityCatalog.java``) over ``warehouse_dir``.
- Unity-Catalog-only DDL (``CREATE``/``ALTER CONNECTION``, ``CREATE FOREIGN CATALOG``, grants)
  has no open-source engine; ``unity_catalog.UnityCatalogRecord`` keeps what it declares, with
  its ``IF NOT EXISTS`` semantics, so the drift check reads it back as the catalogs API would.
- Lakehouse Federation reads a foreign catalog's tables from BigQuery. Here, when a statement
  binds one (the view), the stand-in copies that BigQuery table through the Storage Read API
  (the API Lakehouse Federation uses) into Parquet under the foreign catalog, with the column
  types Lakehouse Federation gives them (``federation.py``). The copy is a snapshot taken when
  the view is (re)created, where a SQL warehouse reads BigQuery at query time.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlglot
from databricks.sdk.service.catalog import CatalogInfo
from pydantic import Field
from sqlglot import exp
from sqlglot.tokens import TokenType

from bq_assets.errors import BqAssetsError
from bq_assets.local.federation import federation_batch, federation_schema
from bq_assets.local.resources import LocalBigQueryResource
from bq_assets.local.stack import read_state
from bq_assets.local.storage_read import TableReader, create_session
from bq_assets.local.unity_catalog import UnityCatalogRecord, is_unity_catalog_only
from bq_assets.resources.databricks import (
    DatabricksSQLResource,
    StatementError,
    StatementResult,
    TableName,
)

CATALOG_CLASS = "bqassets.standin.LocalUnityCatalog"
#: How the copy of a BigQuery table is written: one row group per Storage Read message.
MIRROR_PARQUET = {"compression": "lz4"}
#: Spark Connect sessions by (process, server, warehouse folder): a session's catalogs point at
#: one folder, and a forked child opens sessions of its own.
_SESSIONS: dict[tuple[int, str, str], Any] = {}
_REGISTERED: dict[tuple[int, str, str], set[str]] = {}
_LOCK = threading.Lock()


class SparkDatabricksResource(DatabricksSQLResource):
    """The local stand-in for a SQL warehouse: Apache Spark (Spark Connect) runs the statements."""

    local_stack_dir: str = Field(description="Directory of the running local stack.")
    warehouse_dir: str = Field(
        description="Where the stand-in's Unity Catalog catalogs, views and BigQuery copies live."
    )
    bigquery: LocalBigQueryResource = Field(
        description="Where the stand-in reads BigQuery tables from (Storage Read API)."
    )

    @property
    def engine(self) -> str:
        return "local Apache Spark stand-in"

    @property
    def endpoint(self) -> str:
        try:
            remote = read_state(Path(self.local_stack_dir)).spark_remote
        except BqAssetsError:
            remote = "(local stack not running)"
        return (
            f"the local Spark stand-in at {remote} (catalogs in {self.warehouse_dir}; reading "
            f"BigQuery from {self.bigquery.read_endpoint})"
        )

    def run(self, statement: str) -> StatementResult:
        """Run one statement as a SQL warehouse would: Unity-Catalog-only DDL is recorded, any
        other statement runs on Spark as the same text."""
        if is_unity_catalog_only(statement):
            self._record().apply(statement)
            return StatementResult([], [])
        tags = self._record().column_tags(statement)
        if tags is not None:  # Unity Catalog's information schema: what SET TAGS recorded
            return StatementResult(*tags)
        key, session = self._session()
        self._register_catalogs(key, session, statement)
        self._copy_foreign_tables(statement)
        return _run_on_spark(session, statement, self.endpoint)

    def foreign_catalog(self, name: str) -> CatalogInfo | None:
        return self._record().catalog(name)

    def read_table(self, name: TableName) -> pa.Table:
        """Every row of ``name`` as Spark shows it (for tests and small checks). Read-only."""
        key, session = self._session()
        statement = f"SELECT * FROM {name.quoted}"
        self._register_catalogs(key, session, statement)
        return session.sql(statement).toArrow()

    # -- Spark ---------------------------------------------------------------------------------

    def _session(self) -> tuple[tuple[int, str, str], Any]:
        """This process's Spark Connect session for this warehouse folder, and its key."""
        from pyspark.sql import SparkSession

        remote = read_state(Path(self.local_stack_dir)).spark_remote
        key = (os.getpid(), remote, self.warehouse_dir)
        with _LOCK:
            if key not in _SESSIONS:
                _SESSIONS[key] = SparkSession.builder.remote(remote).create()
                _REGISTERED[key] = set()
            return key, _SESSIONS[key]

    def _register_catalogs(self, key: tuple[int, str, str], session: Any, statement: str) -> None:
        """Make every catalog the statement names, and every catalog the stand-in holds (a view
        reads the catalogs its query names), a ``LocalUnityCatalog`` of this session."""
        warehouse = Path(self.warehouse_dir)
        held = {p.name for p in warehouse.iterdir() if p.is_dir()} if warehouse.is_dir() else set()
        for catalog in (catalogs_named(statement) | held) - _REGISTERED[key]:
            session.conf.set(f"spark.sql.catalog.{catalog}", CATALOG_CLASS)
            session.conf.set(f"spark.sql.catalog.{catalog}.warehouse", self.warehouse_dir)
            _REGISTERED[key].add(catalog)

    # -- Lakehouse Federation's part -------------------------------------------------------

    def _record(self) -> UnityCatalogRecord:
        return UnityCatalogRecord(Path(self.warehouse_dir))

    def _copy_foreign_tables(self, statement: str) -> None:
        """Before a view is (re)created over a foreign catalog's table, copy that BigQuery
        table (project: the catalog's ``dataProjectId``) into the foreign catalog."""
        if not re.match(r"\s*CREATE\s+(OR\s+REPLACE\s+)?VIEW\b", statement, re.IGNORECASE):
            return
        record = self._record()
        for table in sqlglot.parse_one(statement, read="databricks").find_all(exp.Table):
            catalog = record.catalog(table.catalog) if table.catalog else None
            if catalog is None or catalog.connection_name is None:
                continue
            project = (catalog.options or {}).get("dataProjectId")
            if not project:
                raise StatementError(
                    f"The foreign catalog {catalog.name} has no dataProjectId option; the local "
                    "stand-in cannot tell which BigQuery project it mirrors."
                )
            self.copy_from_bigquery(
                project, table.db, table.name, catalog.name or table.catalog, catalog.options or {}
            )

    def copy_from_bigquery(
        self, project: str, dataset: str, table: str, catalog: str, options: dict[str, str]
    ) -> int:
        """Copy the BigQuery table ``project.dataset.table`` into ``catalog.dataset.table``
        (Parquet, Lakehouse Federation's column types); returns its rows. The previous copy stays
        in place until the new one is complete. Peak memory does not grow with the table."""
        folder = Path(self.warehouse_dir) / catalog.lower() / dataset.lower()
        target = folder / f"{table.lower()}.table"
        partial = folder / f".{table.lower()}.{uuid.uuid4().hex}.partial"
        partial.mkdir(parents=True)
        try:
            rows = self._read_into(
                partial / "part-00000.parquet",
                project,
                f"projects/{project}/datasets/{dataset}/tables/{table}",
                options,
            )
            retired = folder / f".{table.lower()}.{uuid.uuid4().hex}.retired"
            if target.exists():
                target.rename(retired)
            partial.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
            return rows
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def _read_into(self, path: Path, project: str, table_path: str, options: dict) -> int:
        """Every row of ``table_path`` into the Parquet file ``path`` with federation's types,
        one row group per Storage Read message, as they arrive; a stalled or overdue read fails
        naming the endpoint (``StorageReadError``: a retry may get through)."""
        bq = self.bigquery
        client = bq.read_client()
        session = create_session(
            client,
            bq.read_endpoint,
            project,
            table_path,
            bq.read_max_streams,
            bq.read_stall_timeout_s,
        )
        with TableReader(
            client, session, bq.read_endpoint, bq.read_stall_timeout_s, bq.read_timeout_s
        ) as reader:
            schema = federation_schema(reader.schema, options, table_path)
            rows = 0
            with pq.ParquetWriter(path, schema, **MIRROR_PARQUET) as out:
                for batch in reader.batches():
                    out.write_batch(federation_batch(batch, schema))
                    rows += batch.num_rows
            return rows


def close_sessions() -> None:
    """End this process's Spark Connect sessions (before the server goes away, so the client
    does not try to release them against a stopped server at exit). Idempotent."""
    with _LOCK:
        for key in [k for k in _SESSIONS if k[0] == os.getpid()]:
            session = _SESSIONS.pop(key)
            _REGISTERED.pop(key, None)
            # The server may be gone already (a stack stopped before this process ends); then
            # nothing is left to release, and the client's default retries would wait minutes.
            with contextlib.suppress(Exception):
                session.client.set_retry_policies([])
                session.stop()


def catalogs_named(statement: str) -> set[str]:
    """The catalogs a statement names: the first part of every dotted name of three parts
    (``catalog.schema.table``), and of two in a statement about a schema (``CREATE SCHEMA
    catalog.schema``)."""
    tokens = sqlglot.Dialect.get_or_raise("databricks").tokenize(statement)
    about_schema = any(t.token_type in (TokenType.SCHEMA, TokenType.DATABASE) for t in tokens)
    chains: list[list[str]] = []
    previous: TokenType | None = None
    for token in tokens:
        if token.token_type in (TokenType.VAR, TokenType.IDENTIFIER):
            if previous == TokenType.DOT and chains:
                chains[-1].append(token.text)
            else:
                chains.append([token.text])
        previous = token.token_type
    return {
        chain[0].lower()
        for chain in chains
        if len(chain) >= 3 or (len(chain) == 2 and about_schema)
    }


def _run_on_spark(session: Any, statement: str, endpoint: str) -> StatementResult:
    """One statement on Spark, answered in the Statement Execution API's shape (JSON_ARRAY: every
    value a string, NULL as None). Spark's errors read like a FAILED statement's."""
    from pyspark.errors import PySparkException

    try:
        frame = session.sql(statement)
        rows = frame.collect()
        columns = list(frame.columns)
    except PySparkException as exc:
        if exc.getCondition() is None:  # no answer from the server, not an error of the SQL
            raise StatementError(
                f"The local Spark stand-in at {endpoint} did not answer: {_first_line(exc)}",
                retryable=True,
            ) from None
        raise StatementError(
            f"Databricks statement failed on {endpoint}: {_first_line(exc)}\n  {statement}"
        ) from None
    return StatementResult(columns, [[_json_array_value(v) for v in row] for row in rows])


def _first_line(exc: Exception) -> str:
    return str(exc).split("\n\nJVM stacktrace:")[0].strip()


def _json_array_value(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
