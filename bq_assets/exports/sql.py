"""The export's SQL, read with sqlglot: parsed once at load, its output columns named, its
partition and cursor window parameters found, and the text the source runs. Refusals name the
file, line and column."""

from __future__ import annotations

import sqlglot
import sqlglot.errors
from sqlglot import exp
from sqlglot.tokens import TokenType

from bq_assets.incremental import CURSOR_KINDS, CURSOR_PARAMETERS
from bq_assets.partitioning import PARAMETERS as PARTITION_PARAMETERS


class SqlError(ValueError):
    """The SQL file cannot be used; the message says where (line, column) and why."""


def _syntax_error(exc: sqlglot.errors.ParseError) -> SqlError:
    """A parse error in words a SQL author knows: line, column and the text it stopped at."""
    error = exc.errors[0] if exc.errors else {}
    line, column = error.get("line"), error.get("col")
    near = str(error.get("highlight") or "").strip()
    where = f"line {line}, column {column}: " if line else ""
    what = f"syntax error at or near {near!r}" if near else "syntax error"
    return SqlError(f"{where}{what}")


def _is_star(select: exp.Expression) -> bool:
    """``*``, ``t.*`` or DuckDB's ``COLUMNS(...)``: columns the spec cannot name statically."""
    select = select.unalias()
    return isinstance(select, exp.Star | exp.Columns) or (
        isinstance(select, exp.Column) and isinstance(select.this, exp.Star)
    )


def parse_query(sql: str) -> exp.Query:
    """The one SELECT of an export's SQL file, parsed as DuckDB SQL; ``SqlError`` otherwise."""
    try:
        parsed = sqlglot.parse(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise _syntax_error(exc) from None
    # A comment after the last ``;`` parses as an empty statement holding the comment.
    statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        raise SqlError("the SQL file must hold exactly one SELECT query")
    return statements[0]


def query_columns(sql: str) -> list[str]:
    """The output column names of a SELECT, read statically (no database needed)."""
    query = parse_query(sql)
    stars = [s.sql(dialect="duckdb") for s in query.selects if _is_star(s)]
    if stars:
        raise SqlError(
            f"the query must name its columns (no SELECT *, t.* or COLUMNS(...); found "
            f"{', '.join(stars)}), so the schema is reviewable"
        )
    unnamed = [s.sql(dialect="duckdb") for s in query.selects if not s.alias_or_name]
    if unnamed:
        raise SqlError(f"every column needs a name: add AS <name> to {', '.join(unnamed)}")
    columns = query.named_selects
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise SqlError(f"the query returns duplicate column names: {', '.join(duplicates)}")
    return columns


def _parameters(sql: str, prefix: str) -> set[str]:
    query = parse_query(sql)
    names = {p.name for p in query.find_all(exp.Placeholder, exp.Parameter) if p.name}
    return {n for n in names if n.startswith(prefix)}


def partition_parameters(sql: str) -> set[str]:
    """The ``$partition_*`` parameters the query uses (empty for an unpartitioned query)."""
    return _parameters(sql, "partition_")


def cursor_parameters(sql: str) -> set[str]:
    """The ``$cursor_*`` parameters the query uses (empty unless the export merges)."""
    return _parameters(sql, "cursor_")


def _static_type(select: exp.Expression) -> str | None:
    """The column's type when the SQL alone tells it (a cast or a literal), else None."""
    select = select.unalias()
    if isinstance(select, exp.Cast):
        return select.to.sql(dialect="duckdb").upper()
    if isinstance(select, exp.Literal):
        return "VARCHAR" if select.is_string else "NUMBER"
    if isinstance(select, exp.Boolean):
        return "BOOLEAN"
    return None


#: DuckDB's names of types the SQL may state (as sqlglot spells them), as the BigQuery type the
#: column loads as (``schema.bigquery_type``); a type not named here is typed when the query runs.
_STATED_BIGQUERY_TYPES = {
    **dict.fromkeys(("TEXT", "VARCHAR", "STRING", "CHAR", "BPCHAR"), "STRING"),
    **dict.fromkeys(
        ("TINYINT", "SMALLINT", "INT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"),
        "INT64",
    ),
    **dict.fromkeys(("DOUBLE", "FLOAT", "REAL", "FLOAT4", "FLOAT8"), "FLOAT64"),
    "BOOLEAN": "BOOL",
    "DATE": "DATE",
    "TIMESTAMP": "DATETIME",
    "TIMESTAMPTZ": "TIMESTAMP",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP",
    "TIME": "TIME",
    "BLOB": "BYTES",
    "JSON": "JSON",
}


def stated_bigquery_types(sql: str) -> dict[str, str]:
    """Column → the BigQuery type it loads as, for the columns whose type the SQL states (a
    cast); others are typed when the query runs."""
    found = {}
    for select in parse_query(sql).selects:
        stated = _static_type(select)
        if stated is None:
            continue
        name = stated.split("(")[0].strip()
        if name in ("DECIMAL", "NUMERIC") and "(" in stated:
            precision, _, scale = stated.split("(")[1].rstrip(")").partition(",")
            digits, places = int(precision), int(scale or 0)
            found[select.alias_or_name] = (
                "NUMERIC" if places <= 9 and digits - places <= 29 else "BIGNUMERIC"
            )
        elif stated.endswith("[]") or name in ("STRUCT", "MAP", "LIST", "UNION"):
            found[select.alias_or_name] = "ARRAY" if stated.endswith("[]") else "STRUCT"
        elif name in _STATED_BIGQUERY_TYPES:
            found[select.alias_or_name] = _STATED_BIGQUERY_TYPES[name]
    return found


PARTITION_CAST_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE")


def partition_problems(sql: str, column: str, used: set[str]) -> list[str]:
    """What makes ``sql`` unusable for an export partitioned on ``column`` (empty: usable).

    The query must bound its rows by the partition's window (a start and an end parameter)
    and return ``column``; when the SQL states the column's type (a cast, a literal), it must
    be DATE or TIMESTAMP. A column whose type the SQL does not state is checked when the query
    runs (``DESCRIBE``, before any row is read)."""
    allowed = ", ".join("$" + p for p in PARTITION_PARAMETERS)
    problems = []
    unknown = sorted(used - set(PARTITION_PARAMETERS))
    if unknown:
        problems.append(
            f"partitioning: the query uses unknown parameter(s) "
            f"{', '.join('$' + u for u in unknown)}; allowed: {allowed}"
        )
    if not used & {"partition_start", "partition_start_date"} or not used & {
        "partition_end",
        "partition_end_date",
    }:
        problems.append(
            "partitioning: the query must select the partition's rows with bound parameters, "
            "a start and an end (e.g. WHERE order_datetime >= $partition_start AND "
            f"order_datetime < $partition_end); allowed: {allowed}"
        )
    query = parse_query(sql)
    selects = {s.alias_or_name: s for s in query.selects}
    if column not in selects:
        problems.append(
            f"partitioning.column: {column} not among the query's columns ({', '.join(selects)})"
        )
    else:
        stated = _static_type(selects[column])
        if stated is not None and stated not in PARTITION_CAST_TYPES:
            problems.append(
                f"partitioning.column: {column} is {stated} in the query; it must be a DATE or "
                "TIMESTAMP column"
            )
    return problems


#: Types a cursor column may be stated as in the SQL (a cast); sqlglot's DuckDB spellings.
CURSOR_CAST_TYPES = (*CURSOR_KINDS, "TIMESTAMPTZ", "INT")


def merge_problems(sql: str, cursor: str, deleted: str | None, used: set[str]) -> list[str]:
    """What makes ``sql`` unusable for an export that merges by ``cursor`` (empty: usable).

    The query must select its rows by the window's bound parameters (a start and an end) and
    return ``cursor`` (and the ``deleted`` flag, if declared); where the SQL states a type (a
    cast, a literal), the cursor must be a DATE, TIMESTAMP or integer and the flag a BOOLEAN.
    A type the SQL does not state is checked when the query runs (``DESCRIBE``, before any row
    is read)."""
    allowed = ", ".join("$" + p for p in CURSOR_PARAMETERS)
    problems = []
    unknown = sorted(used - set(CURSOR_PARAMETERS))
    if unknown:
        problems.append(
            f"load: the query uses unknown parameter(s) {', '.join('$' + u for u in unknown)}; "
            f"allowed: {allowed}"
        )
    if set(CURSOR_PARAMETERS) - used:
        problems.append(
            f"load: the query must select the window's rows with both bound parameters, e.g. "
            f"WHERE {cursor} >= $cursor_start AND {cursor} < $cursor_end"
        )
    selects = {s.alias_or_name: s for s in parse_query(sql).selects}
    for field, column, allowed_types, what in [
        ("load.cursor", cursor, CURSOR_CAST_TYPES, "a DATE, TIMESTAMP or integer column"),
        ("load.deleted", deleted, ("BOOLEAN",), "a BOOLEAN column"),
    ]:
        if column is None:
            continue
        if column not in selects:
            problems.append(
                f"{field}: {column} not among the query's columns ({', '.join(selects)})"
            )
            continue
        stated = _static_type(selects[column])
        number_cursor = stated == "NUMBER" and field == "load.cursor"  # maybe an integer
        if stated is not None and not number_cursor and stated not in allowed_types:
            problems.append(f"{field}: {column} is {stated} in the query; it must be {what}")
    return problems


def executable_query(sql: str) -> str:
    """The query's text as the source runs it inside ``COPY (...)``: without the trailing
    semicolon and the comments after the last token (a trailing ``--`` comment would swallow
    the closing parenthesis)."""
    tokens = [
        t for t in sqlglot.tokenize(sql, read="duckdb") if t.token_type != TokenType.SEMICOLON
    ]
    return sql[: tokens[-1].end + 1] if tokens else sql
