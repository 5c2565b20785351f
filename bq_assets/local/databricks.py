"""The local Databricks stand-in: a DuckDB "warehouse" that copies BigQuery tables.

No Databricks emulator exists, so locally ``settings.py`` wires this subclass of the production
``DatabricksSQLResource`` in. Instead of running the generated DDL it reads the BigQuery table
through the BigQuery Storage Read API (the API Databricks' own BigQuery reader uses) into a
local catalog table ``<catalog>.<schema>.<table>``; each Unity Catalog catalog is one DuckDB file
under ``local_warehouse_dir``. Queries run in DuckDB's dialect (``dialect`` says so).

Memory stays bounded whatever the table's size (the step peaked at 2.6 GB for 10M
``customer_360`` rows before, for two reasons). The rows are not handed to DuckDB as an Arrow
stream: DuckDB's Python client scans a ``RecordBatchReader`` through
``pyarrow.dataset.Scanner.from_batches``, which reads ahead of the insert with no bound,
whatever DuckDB's ``memory_limit``. The stand-in writes the streams' batches to a Parquet file
next to the catalogs as they arrive (a row group per batch), then loads that file in one
``CREATE OR REPLACE TABLE … AS FROM read_parquet(…)``, which DuckDB reads within its memory
limit. And its gRPC channel to the emulator does without bandwidth-delay probing (see
``LocalBigQueryResource.read_client``). Measurements: docs/performance.md.
"""

from __future__ import annotations

import fcntl
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from bq_assets.engine.databricks_sql import DriftProbe
from bq_assets.engine.log import Log
from bq_assets.local.resources import LocalBigQueryResource
from bq_assets.local.storage_read import TableReader, create_session
from bq_assets.resources.databricks import (
    BigQueryTable,
    DatabricksSQLResource,
    StatementError,
    TableName,
)

#: DuckDB would otherwise take up to 80% of RAM; past this it spills to ``<catalog>.tmp``.
STAND_IN_MEMORY_LIMIT = "256MB"
#: How the staged copy is written: the fastest of the codecs both ends know; no dictionary
#: encoding, which cost time and ~70 MB of peak memory for a copy that is read once.
STAGED_PARQUET = {"compression": "lz4", "use_dictionary": False}


class LocalDatabricksResource(DatabricksSQLResource):
    """The local stand-in for a SQL warehouse: BigQuery tables copied into DuckDB catalogs."""

    local_warehouse_dir: str = Field(description="Directory of the stand-in's DuckDB catalogs.")
    bigquery: LocalBigQueryResource = Field(
        description="Where the stand-in reads BigQuery tables from (Storage Read API)."
    )

    @property
    def engine(self) -> str:
        return "local DuckDB stand-in"

    @property
    def runnable_modes(self) -> tuple[str, ...]:
        """Both: the stand-in copies the table whichever way production would expose it."""
        return ("federation", "external")

    @property
    def endpoint(self) -> str:
        """Where the stand-in keeps its catalogs and where it reads BigQuery from."""
        return (
            f"the local stand-in in {self.local_warehouse_dir} "
            f"(reading BigQuery from {self.bigquery.read_endpoint})"
        )

    @property
    def dialect(self) -> str:
        return "duckdb"

    def publish(
        self,
        statements: list[str],
        probes: list[DriftProbe],
        source: BigQueryTable,
        name: TableName,
        log: Log,
    ) -> list[str]:
        """Copy ``source`` into ``name``; ``statements`` and ``probes`` are not run (DuckDB runs
        no Databricks DDL). Idempotent."""
        self.copy_from_bigquery(source.project, source.dataset, source.table, name)
        return ["local stand-in: the statements are recorded, not run"]

    def query(self, sql_for_name: str, name: TableName) -> list[tuple]:
        with self._connection(name.catalog) as con:
            return con.execute(sql_for_name.format(table=_local_name(name))).fetchall()

    def column_names(self, name: TableName) -> list[str]:
        with self._connection(name.catalog) as con:
            return [d[0] for d in con.execute(f"FROM {_local_name(name)} LIMIT 0").description]

    def read_table(self, name: TableName) -> pa.Table:
        """The whole table (for tests and small checks)."""
        with self._connection(name.catalog) as con:
            return con.execute(f"FROM {_local_name(name)}").to_arrow_table()

    def copy_from_bigquery(self, project: str, dataset: str, table: str, name: TableName) -> int:
        """Copy the BigQuery table ``project.dataset.table`` into ``name``; returns its rows.

        The rows are read over up to ``read_max_streams`` parallel Storage Read streams (of the
        BigQuery resource) into a staged Parquet file, then loaded in one statement that
        replaces the table: a failure at any point leaves the previous copy in place, and the
        catalog is locked only while loading. A stalled or overdue read fails naming the
        endpoint (retried by the step's policy). Peak memory does not grow with the table.
        """
        folder = self._folder()
        staged = folder / f".{name}.{uuid.uuid4().hex}.parquet"
        try:
            self._read_into(
                staged, project, f"projects/{project}/datasets/{dataset}/tables/{table}"
            )
            with self._connection(name.catalog) as con:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {_alias(name.catalog)}.{name.schema}")
                con.execute(
                    f"CREATE OR REPLACE TABLE {_local_name(name)} AS "
                    f"FROM read_parquet({_literal(str(staged))})"
                )
                return con.execute(f"SELECT count(*) FROM {_local_name(name)}").fetchone()[0]
        finally:
            staged.unlink(missing_ok=True)

    def _read_into(self, path: Path, project: str, table_path: str) -> None:
        """Every row of ``table_path`` (``projects/…/datasets/…/tables/…``) into the Parquet
        file ``path``, one row group per Storage Read message, as the messages arrive; the
        read session is billed to ``project``."""
        bq = self.bigquery
        client = self.bigquery.read_client()
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
        ) as rows:
            refuse_what_duckdb_cannot_hold(rows.schema, table_path)
            with pq.ParquetWriter(path, rows.schema, **STAGED_PARQUET) as out:
                for batch in rows.batches():
                    out.write_batch(batch)

    def _folder(self) -> Path:
        folder = Path(self.local_warehouse_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @contextmanager
    def _connection(self, catalog: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the stand-in with ``catalog`` attached, held under a file lock.

        DuckDB lets one process at a time open a database file for writing; the lock makes
        concurrent runs (several exports, several processes) take turns instead of failing.
        """
        folder = self._folder()
        with (folder / f"{catalog}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with duckdb.connect() as con:
                # UTC, not the machine's zone: TIMESTAMPs come back as UTC whatever TZ is set.
                con.execute("SET TimeZone = 'UTC'")
                con.execute(f"SET memory_limit = '{STAND_IN_MEMORY_LIMIT}'")
                con.execute(f"SET temp_directory = {_literal(str(folder / f'{catalog}.tmp'))}")
                # Rows arrive interleaved from parallel streams: there is no order to keep, and
                # keeping one makes DuckDB buffer more while it loads.
                con.execute("SET preserve_insertion_order = false")
                # "main" is reserved in DuckDB, so catalogs attach under an alias.
                con.execute(
                    f"ATTACH {_literal(str(folder / f'{catalog}.duckdb'))} AS {_alias(catalog)}"
                )
                yield con


def refuse_what_duckdb_cannot_hold(schema: pa.Schema, table_path: str) -> None:
    """Fail, naming the columns, if the table has BIGNUMERIC columns (Arrow decimal256):
    DuckDB's decimals stop at 38 digits, and its Parquet reader would silently turn them into
    DOUBLE. (bqemulator cannot create such columns; real BigQuery can.)"""
    wide = [field.name for field in schema if pa.types.is_decimal256(field.type)]
    if wide:
        raise StatementError(
            f"The local Databricks stand-in cannot copy {table_path}: its BIGNUMERIC columns "
            f"{', '.join(wide)} have more digits than DuckDB's decimals hold (38). Cast them "
            "to NUMERIC or STRING in the export's query to try the export locally; a SQL "
            "warehouse reads them through Lakehouse Federation."
        )


def _alias(catalog: str) -> str:
    return f"uc_{catalog}"


def _local_name(name: TableName) -> str:
    return f"{_alias(name.catalog)}.{name.schema}.{name.table}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
