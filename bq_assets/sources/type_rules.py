"""Every result column of a source query carried exactly or refused: server columns DuckDB would
read inexactly (PostgreSQL's unconstrained ``numeric``, MySQL's ``DECIMAL`` beyond 38 digits)
are found in the server's catalog, and every DuckDB result type is mapped by
``schema.snapshot_query``. No Dagster."""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import sqlglot
from sqlglot import exp

from bq_assets.schema import UnsupportedTypeError, snapshot_query
from bq_assets.sources.connection import ATTACHED_AS
from bq_assets.sources.declarations import Source, sql_string

# -- Server columns DuckDB would read inexactly ---------------------------------------------

# PostgreSQL: numeric (1700) and numeric[] (1231) without a precision, or with one above
# DuckDB's 38, arrive in DuckDB as DOUBLE: silently rounded. They are found in the catalog,
# since the query's result only says DOUBLE.
_PG_INEXACT_NUMERIC = """
SELECT c.relname AS table_name, a.attname AS column_name
FROM pg_attribute a
JOIN pg_class c ON a.attrelid = c.oid
JOIN pg_namespace n ON c.relnamespace = n.oid
WHERE a.atttypid IN (1700, 1231) AND a.attnum > 0 AND NOT a.attisdropped
  AND (a.atttypmod = -1 OR ((a.atttypmod - 4) >> 16) & 65535 > 38)
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""
# MySQL / MariaDB: DECIMAL(p, s) with p > 38 (up to 65) arrives in DuckDB as DOUBLE.
_MYSQL_INEXACT_NUMERIC = """
SELECT table_name, column_name FROM information_schema.columns
WHERE table_schema = DATABASE() AND data_type = 'decimal' AND numeric_precision > 38
"""
_INEXACT_NUMERIC = {
    "postgres": ("postgres_query", _PG_INEXACT_NUMERIC, "numeric without a precision (or "),
    "mysql": ("mysql_query", _MYSQL_INEXACT_NUMERIC, "DECIMAL ("),
}


def inexact_columns(con: duckdb.DuckDBPyConnection, kind: str) -> list[tuple[str, str]]:
    """``(table, column)`` of every numeric column of the attached ``kind`` server (postgres,
    mysql) that DuckDB would read as DOUBLE."""
    function, catalog_query, _ = _INEXACT_NUMERIC[kind]
    rows = con.execute(
        f"SELECT * FROM {function}('{ATTACHED_AS}', {sql_string(catalog_query)})"
    ).fetchall()
    return [(str(table), str(column)) for table, column in rows]


def _inexact_message(kind: str, table: str, column: str) -> str:
    if kind == "postgres":
        return (
            f"column {column!r} of PostgreSQL table {table!r} is numeric without a precision (or "
            f"with more than 38 digits), which DuckDB reads as DOUBLE and would round: cast "
            f"it in PostgreSQL, e.g. a view with {column}::numeric(38, 9) (NUMERIC) or "
            f"{column}::text (STRING), or read it with postgres_query('{ATTACHED_AS}', "
            f"'SELECT {column}::numeric(38, 9) AS {column} FROM {table}')"
        )
    return (
        f"column {column!r} of MySQL table {table!r} is DECIMAL with more than 38 digits, which "
        f"DuckDB reads as DOUBLE and would round: read it as text with mysql_query("
        f"'{ATTACHED_AS}', 'SELECT CAST({column} AS CHAR) AS {column} FROM {table}') (STRING), "
        f"or as CAST({column} AS DECIMAL(38, 9)) if it fits"
    )


def refuse_inexact_columns(con: duckdb.DuckDBPyConnection, query: str, kind: str) -> None:
    """Refuse a query that reads a server numeric column DuckDB would round to DOUBLE
    (PostgreSQL numeric without precision or above 38 digits, MySQL DECIMAL above 38 digits),
    naming the column and the fix."""
    parsed = sqlglot.parse_one(query, read="duckdb")
    tables = {t.name for t in parsed.find_all(exp.Table)}
    columns = {c.name for c in parsed.find_all(exp.Column)}
    stars = any(True for _ in parsed.find_all(exp.Star))
    hits = [
        (t, c) for t, c in inexact_columns(con, kind) if t in tables and (c in columns or stars)
    ]
    if hits:
        raise UnsupportedTypeError("; ".join(_inexact_message(kind, t, c) for t, c in hits))


def result_types(
    con: duckdb.DuckDBPyConnection, query: str, parameters: Mapping[str, object] | None = None
) -> list[tuple[str, str]]:
    """``(column, DuckDB type)`` of each result column (``DESCRIBE``, which reads no row);
    ``parameters`` are the query's bound parameters, if it has any."""
    described = con.execute(f"DESCRIBE {query}", dict(parameters or {})).fetchall()
    return [(str(row[0]), str(row[1])) for row in described]


def check_result_types(
    con: duckdb.DuckDBPyConnection,
    query: str,
    source: Source,
    parameters: Mapping[str, object] | None = None,
) -> str:
    """The query the snapshot is written from, after checking every result column's type
    (DuckDB ``DESCRIBE``, which runs nothing): each is carried exactly or refused with one
    ``UnsupportedTypeError`` naming every refused column and the cast to write."""
    if source.kind in _INEXACT_NUMERIC:
        refuse_inexact_columns(con, query, source.kind)
    return snapshot_query(query, result_types(con, query, parameters))
