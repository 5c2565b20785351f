"""Column lineage of an export's query, read from its SQL alone with sqlglot: which tables and
files the query reads, and for each result column the source columns it is computed from
(through joins, CTEs, subqueries, expressions, ``CASE``, window functions and aggregates).

Nothing here connects to a database: the source's catalog is never read (the code location
must load without reaching a production database), so a column is traced only as far as the
SQL itself says. What the SQL leaves open is reported as *unresolved*, never guessed:

- an unqualified column in a ``SELECT`` over several tables (``SELECT name FROM a JOIN b``);
- a column that reaches the query through ``SELECT *`` over several tables, or over a subquery;
- a table function that is neither a table nor a file (``generate_series``, ``postgres_query``),
  or a file reader whose path is not a string literal.

A column computed from no source column at all (a literal, ``count(*)``, ``current_date``,
a ``VALUES`` list) is resolved, with no source columns.

Pure: no Dagster, no I/O; same SQL, same answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.lineage import Node, lineage
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import build_scope, traverse_scope

from bq_assets.exports.sql import parse_query, query_columns

DIALECT = "duckdb"
#: DuckDB's table functions that read files; their first argument is the path (or a list).
FILE_READERS = frozenset(
    {
        "read_parquet",
        "parquet_scan",
        "read_csv",
        "read_csv_auto",
        "read_json",
        "read_json_auto",
        "read_ndjson",
        "read_ndjson_auto",
        "read_json_objects",
        "read_text",
        "read_blob",
        "delta_scan",
        "iceberg_scan",
    }
)
#: A table name DuckDB reads as a file (its replacement scan): a URL, a path, a data file name.
_PATH_LIKE = re.compile(
    r"(://|/|\.(parquet|csv|tsv|json|ndjson|jsonl|txt)(\.gz|\.zst)?$)", re.IGNORECASE
)


@dataclass(frozen=True, order=True)
class SourceTable:
    """A table, or a file path, that a query reads, as the query names it.

    ``schema`` and ``catalog`` are None when the query leaves them out (the source's default
    applies); a path (``read_parquet('gs://lake/orders/*.parquet')``) has neither."""

    name: str
    schema: str | None = None
    catalog: str | None = None
    is_path: bool = False

    def __str__(self) -> str:
        return ".".join(p for p in (self.catalog, self.schema, self.name) if p)


@dataclass(frozen=True, order=True)
class SourceColumn:
    """One column of a table (or file) the query reads."""

    table: SourceTable
    column: str

    def __str__(self) -> str:
        return f"{self.table}.{self.column}"


@dataclass(frozen=True)
class ColumnLineage:
    """Where one result column comes from: the source columns the SQL computes it from, and
    what in its expression could not be traced (empty when fully resolved)."""

    sources: tuple[SourceColumn, ...] = ()
    unresolved: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueryLineage:
    """The lineage of one query: every table and file it reads (in ``FROM`` / ``JOIN``,
    CTEs and subqueries alike), each result column's sources (in the query's column order),
    and the parts of ``FROM`` that are not tables or files."""

    tables: tuple[SourceTable, ...]
    columns: dict[str, ColumnLineage]
    unresolved_tables: tuple[str, ...] = field(default=())

    def problems(self) -> list[str]:
        """One line per part of the query that could not be resolved (empty: all resolved)."""
        lines = [f"reads {what}" for what in self.unresolved_tables]
        lines += [
            f"column {name}: {why}"
            for name, column in self.columns.items()
            for why in column.unresolved
        ]
        return lines


def query_lineage(sql: str) -> QueryLineage:
    """The lineage of an export's query (DuckDB SQL, as the export runs it). Never raises for
    SQL that the export spec accepts: what sqlglot cannot trace is reported as unresolved."""
    names = query_columns(sql)
    try:
        qualified = _qualified(parse_query(sql))
        tables, unresolved_tables = _tables(qualified)
        nodes = lineage(None, qualified, dialect=DIALECT, scope=build_scope(qualified), copy=False)
    # sqlglot's optimizer raises more than SqlglotError on SQL it does not follow (KeyError,
    # ValueError, RecursionError…); lineage is information, and must never stop a load.
    except Exception as exc:
        reason = f"sqlglot could not trace the query ({type(exc).__name__}: {exc})"
        return QueryLineage(
            tables=(), columns={n: ColumnLineage(unresolved=(reason,)) for n in names}
        )
    assert isinstance(nodes, dict)
    traced = [nodes.get(select.alias_or_name) for select in qualified.selects]
    return QueryLineage(
        tables=tables,
        columns={
            name: _column_lineage(node) if node else ColumnLineage(unresolved=("not traced",))
            for name, node in zip(names, traced, strict=True)
        },
        unresolved_tables=unresolved_tables,
    )


def select_lineage(sql: str, dialect: str, columns: list[str]) -> dict[str, list[str]]:
    """For a ``SELECT`` over one table whose ``columns`` are known (e.g. a view over the
    BigQuery table), each result column → the table's columns it reads. ``SELECT *`` expands
    to ``columns``; a view's own column list (``CREATE VIEW v (a COMMENT '…', b) AS …``) names
    the results in order. A column traced to no column of the table maps to an empty list."""
    statement = sqlglot.parse_one(sql, read=dialect)
    query = statement if isinstance(statement, exp.Query) else statement.find(exp.Query)
    if query is None:
        raise ValueError(f"no SELECT in {sql!r}")
    read = query.find(exp.Table)
    assert read is not None
    schema: dict = {c: "unknown" for c in columns}
    for part in (read.name, read.db, read.catalog):
        if part:
            schema = {part: schema}
    qualified = qualify(
        query.copy(), dialect=dialect, schema=schema, validate_qualify_columns=False
    )
    nodes = lineage(None, qualified, dialect=dialect, scope=build_scope(qualified), copy=False)
    assert isinstance(nodes, dict)
    by_name = {c.lower(): c for c in columns}
    names = [by_name.get(s.alias_or_name, s.alias_or_name) for s in qualified.selects]
    if isinstance(statement, exp.Create) and isinstance(statement.this, exp.Schema):
        names = [column.name for column in statement.this.expressions]
    found: dict[str, list[str]] = {}
    for name, select in zip(names, qualified.selects, strict=True):
        leaves = _leaves(nodes[select.alias_or_name])
        found[name] = sorted(
            {
                by_name[_leaf_column(leaf)]
                for _, leaf in leaves
                if isinstance(leaf.source, exp.Table) and _leaf_column(leaf) in by_name
            }
        )
    return found


def _qualified(query: exp.Query) -> exp.Query:
    """Every column qualified with its table where the SQL alone tells it (no schema)."""
    return qualify(query.copy(), dialect=DIALECT, validate_qualify_columns=False, identify=False)


def _tables(query: exp.Query) -> tuple[tuple[SourceTable, ...], tuple[str, ...]]:
    """Every table and path the query reads (CTE references excluded), and what it reads
    that is neither."""
    tables: set[SourceTable] = set()
    unresolved: list[str] = []
    for scope in traverse_scope(query):
        for source in scope.sources.values():
            if isinstance(source, exp.Table):
                found, why = _source_tables(source)
                tables.update(found)
                if why and why not in unresolved:
                    unresolved.append(why)
    return tuple(sorted(tables)), tuple(unresolved)


def _source_tables(table: exp.Table) -> tuple[list[SourceTable], str | None]:
    """What one ``FROM`` item reads: tables or paths, or why it cannot be said."""
    this = table.this
    if isinstance(this, exp.Func):
        text = this.sql(dialect=DIALECT)
        if _function_name(this) not in FILE_READERS:
            return [], f"{text}: a table function, not a table or a file"
        paths = _literal_paths(this)
        if not paths:
            return [], f"{text}: the path is not a string literal"
        return [SourceTable(name=p, is_path=True) for p in paths], None
    if isinstance(this, exp.Identifier):
        if _PATH_LIKE.search(table.name):
            return [SourceTable(name=table.name, is_path=True)], None
        return [
            SourceTable(name=table.name, schema=table.db or None, catalog=table.catalog or None)
        ], None
    return [], f"{table.sql(dialect=DIALECT)}: not a table or a file"


def _function_name(function: exp.Func) -> str:
    return (function.name if isinstance(function, exp.Anonymous) else function.sql_name()).lower()


def _literal_paths(function: exp.Func) -> list[str]:
    """The string literal(s) of a file reader's first argument (a path or a list of paths)."""
    first = function.this if isinstance(function.this, exp.Expression) else None
    if first is None:
        positional = [e for e in function.expressions if not isinstance(e, exp.EQ | exp.Kwarg)]
        first = positional[0] if positional else None
    items = first.expressions if isinstance(first, exp.Array) else [first]
    if not items or not all(isinstance(i, exp.Literal) and i.is_string for i in items):
        return []
    return [i.name for i in items]


def _column_lineage(node: Node) -> ColumnLineage:
    sources: set[SourceColumn] = set()
    unresolved: list[str] = []
    for parent, leaf in _leaves(node):
        found, why = _leaf_sources(parent, leaf)
        sources.update(found)
        if why and why not in unresolved:
            unresolved.append(why)
    return ColumnLineage(sources=tuple(sorted(sources)), unresolved=tuple(unresolved))


def _leaves(node: Node) -> Iterator[tuple[Node | None, Node]]:
    """Every end of the lineage graph below ``node``, with the node it hangs from."""
    seen: set[int] = set()
    stack: list[tuple[Node | None, Node]] = [(None, node)]
    while stack:
        parent, current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if not current.downstream:
            yield parent, current
        stack.extend((current, child) for child in current.downstream)


def _leaf_column(leaf: Node) -> str:
    """The column an end of the graph names (its name is the column's SQL, ``t."a b"``)."""
    return sqlglot.parse_one(leaf.name, read=DIALECT).name


def _leaf_sources(parent: Node | None, leaf: Node) -> tuple[list[SourceColumn], str | None]:
    """The source columns one end of the graph stands for, or why it stands for none that
    can be named. An end that is no table (a literal, ``count(*)``, ``VALUES``) has none."""
    source = leaf.source
    if isinstance(source, exp.Placeholder):
        return [], (
            f"{leaf.name} cannot be traced to one table: the query reads several here "
            "(write <table or alias>.column)"
        )
    if leaf.name == "*":
        return _star_sources(parent, leaf)
    if not isinstance(source, exp.Table):
        return [], None
    tables, why = _source_tables(source)
    return [SourceColumn(t, _leaf_column(leaf)) for t in tables], why


def _star_sources(parent: Node | None, leaf: Node) -> tuple[list[SourceColumn], str | None]:
    """A column that reaches the query through ``SELECT *`` (in a CTE or subquery): traced
    when the star covers exactly one table (a column of that name can only be the table's);
    over several tables, or over a subquery, it is left unresolved."""
    column = parent.name.rsplit(".", 1)[-1] if parent is not None else "?"
    stars = parent.downstream if parent is not None else [leaf]
    if len(stars) == 1 and isinstance(leaf.source, exp.Table):
        tables, why = _source_tables(leaf.source)
        return [SourceColumn(t, column) for t in tables], why
    over = ", ".join(s.source.sql(dialect=DIALECT) for s in stars)
    return [], (
        f"{column} comes through SELECT * over {over}: name the columns in that SELECT to trace it"
    )


__all__ = [
    "ColumnLineage",
    "QueryLineage",
    "SourceColumn",
    "SourceTable",
    "query_lineage",
    "select_lineage",
]
