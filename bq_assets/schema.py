"""Types across the hops: the snapshot's Arrow schema → BigQuery schema and Dagster column schema.

The Arrow schema of the Parquet snapshot is the single source of truth; the CSV text, the
Parquet transfer files, the BigQuery load schema and the column metadata in the UI are all
derived from it.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from google.cloud import bigquery


class UnsupportedTypeError(TypeError):
    """A column's type cannot travel through CSV into BigQuery."""


def bigquery_type(arrow_type: pa.DataType) -> str:
    """The BigQuery type a snapshot column loads as."""
    if pa.types.is_boolean(arrow_type):
        return "BOOL"
    if pa.types.is_integer(arrow_type):
        if pa.types.is_uint64(arrow_type):
            raise UnsupportedTypeError("UINT64 does not fit INT64; cast it in the query")
        return "INT64"
    if pa.types.is_floating(arrow_type):
        return "FLOAT64"
    if pa.types.is_decimal(arrow_type):
        fits_numeric = arrow_type.scale <= 9 and arrow_type.precision - arrow_type.scale <= 29
        return "NUMERIC" if fits_numeric else "BIGNUMERIC"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "STRING"
    if pa.types.is_date(arrow_type):
        return "DATE"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP" if arrow_type.tz else "DATETIME"
    if pa.types.is_time(arrow_type):
        return "TIME"
    raise UnsupportedTypeError(f"{arrow_type} has no CSV representation BigQuery loads; cast it")


def bigquery_schema(schema: pa.Schema) -> list[bigquery.SchemaField]:
    """The explicit load schema; every column NULLABLE (required columns are checked, not enforced)."""
    fields = []
    for field in schema:
        try:
            fields.append(bigquery.SchemaField(field.name, bigquery_type(field.type)))
        except UnsupportedTypeError as exc:
            raise UnsupportedTypeError(f"column {field.name!r}: {exc}") from None
    return fields


def schema_to_json(fields: list[bigquery.SchemaField]) -> list[dict]:
    return [f.to_api_repr() for f in fields]


def schema_from_json(fields: list[dict]) -> list[bigquery.SchemaField]:
    return [bigquery.SchemaField.from_api_repr(f) for f in fields]


def schema_diff(
    actual: list[bigquery.SchemaField], expected: list[bigquery.SchemaField]
) -> list[str]:
    """Column-by-column differences of ``actual`` from ``expected``, readable one per line."""
    have = {f.name: f for f in actual}
    want = {f.name: f for f in expected}
    diff = [f"+ {n} {f.field_type} (new column)" for n, f in want.items() if n not in have]
    diff += [
        f"- {n} {f.field_type} (column would be dropped)" for n, f in have.items() if n not in want
    ]
    for name, field in want.items():
        if name in have and have[name].field_type != field.field_type:
            diff.append(f"~ {name}: {have[name].field_type} -> {field.field_type} (type change)")
        elif name in have and have[name].mode != field.mode:
            diff.append(f"~ {name}: mode {have[name].mode} -> {field.mode}")
    return diff


# -- the transfer files ---------------------------------------------------------------------
#
# What BigQuery parses back exactly. pyarrow's own text for most types already is: integers,
# booleans (true/false), dates (YYYY-MM-DD), naive timestamps (YYYY-MM-DD HH:MM:SS.ffffff →
# DATETIME), tz-aware timestamps in UTC with a Z (→ TIMESTAMP), floats in shortest round-trip
# form. Two need help: decimals with more than 6 fractional digits, which pyarrow writes in
# scientific notation when small (0.000000001 → "1E-9"), and nanosecond timestamps, finer than
# BigQuery's microseconds.

# pyarrow switches to scientific notation only below 10^-6, so only larger scales need help.
_SCIENTIFIC_BELOW_SCALE = 6


def _transfer_type(arrow_type: pa.DataType, plain_decimals: bool) -> pa.DataType:
    if pa.types.is_timestamp(arrow_type) and arrow_type.unit == "ns":
        return pa.timestamp("us", tz=arrow_type.tz)
    if (
        plain_decimals
        and pa.types.is_decimal(arrow_type)
        and arrow_type.scale > _SCIENTIFIC_BELOW_SCALE
    ):
        return pa.string()
    if pa.types.is_unsigned_integer(arrow_type) and not pa.types.is_uint64(arrow_type):
        return pa.int64()
    return arrow_type


def csv_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of the CSV text: decimals that pyarrow would write in scientific notation
    become plain decimal strings, nanosecond timestamps become microseconds."""
    return pa.schema(
        [pa.field(f.name, _transfer_type(f.type, plain_decimals=True)) for f in schema]
    )


def parquet_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of the Parquet transfer files: nanosecond timestamps become microseconds,
    small unsigned integers INT64; everything else travels as it is."""
    return pa.schema(
        [pa.field(f.name, _transfer_type(f.type, plain_decimals=False)) for f in schema]
    )


def plain_decimal_text(array: pa.Array) -> pa.Array:
    """Decimals as plain strings with all their fractional digits (``0.000000001``, never
    ``1E-9``), NULL stays NULL."""
    text = pc.cast(array, pa.string())
    scale = array.type.scale
    if scale <= _SCIENTIFIC_BELOW_SCALE:
        return text
    # Scientific notation here always means |value| < 10^-6: "-1.0E-8" at scale 9 is
    # "-0." followed by the mantissa's digits ("10") padded to 9 places: "-0.000000010".
    digits = pc.replace_substring_regex(text, r"^-?(\d)(?:\.(\d*))?E.*$", r"\1\2")
    sign = pc.if_else(pc.starts_with(text, "-"), "-", "")
    small = pc.binary_join_element_wise(sign, "0.", pc.utf8_lpad(digits, scale, "0"), "")
    return pc.if_else(pc.match_substring(text, "E"), small, text)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    columns = []
    for column, target in zip(batch.columns, schema, strict=True):
        if column.type.equals(target.type):
            columns.append(column)
        elif pa.types.is_decimal(column.type) and pa.types.is_string(target.type):
            columns.append(plain_decimal_text(column))
        else:
            columns.append(column.cast(target.type))  # safe: fails rather than lose precision
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def csv_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A snapshot batch in the CSV text schema (see ``csv_schema``)."""
    return _conform(batch, schema)


def parquet_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A snapshot batch in the Parquet transfer schema (see ``parquet_schema``)."""
    return _conform(batch, schema)


# -- source types → snapshot columns --------------------------------------------------------
#
# The query's result types (DuckDB ``DESCRIBE``) decide, before the COPY, how each column is
# written to the snapshot. Every DuckDB type is listed in exactly one place below: carried as
# it is, converted to a type that holds every value exactly, or refused naming the cast to
# write. See the README table "What each source type becomes".

#: DuckDB types written as they are (the BigQuery type follows from the Arrow type).
AS_IS = {
    "BOOLEAN": "BOOL",
    "TINYINT": "INT64",
    "SMALLINT": "INT64",
    "INTEGER": "INT64",
    "BIGINT": "INT64",
    "UTINYINT": "INT64",
    "USMALLINT": "INT64",
    "UINTEGER": "INT64",
    "DOUBLE": "FLOAT64",
    "VARCHAR": "STRING",
    "TIME": "TIME",
}
#: DuckDB types converted exactly: type → (DuckDB SQL template, BigQuery type).
CONVERTED = {
    "FLOAT": ("CAST({c} AS DOUBLE)", "FLOAT64"),  # every float32 is a double, exactly
    "UBIGINT": ("CAST({c} AS DECIMAL(20, 0))", "NUMERIC"),
    "UUID": ("CAST({c} AS VARCHAR)", "STRING"),
    "JSON": ("CAST({c} AS VARCHAR)", "STRING"),
    "TIMESTAMP_S": ("CAST({c} AS TIMESTAMP)", "DATETIME"),
    "TIMESTAMP_MS": ("CAST({c} AS TIMESTAMP)", "DATETIME"),
}
#: DuckDB types refused: type → the cast to write in the query (``{c}`` is the column).
REFUSED = {
    "INTERVAL": "epoch({c}) (seconds, FLOAT64) or CAST({c} AS VARCHAR)",
    "BLOB": "base64({c}) or hex({c}) (STRING)",
    "BIT": "CAST({c} AS VARCHAR)",
    "TIMESTAMP_NS": "CAST({c} AS TIMESTAMP) (microseconds, BigQuery's precision) if dropping "
    "the nanoseconds is acceptable",
    "TIME WITH TIME ZONE": "CAST({c} AS TIME) (in UTC) or CAST({c} AS VARCHAR)",
    "TIME_NS": "CAST({c} AS TIME) (microseconds) if dropping the nanoseconds is acceptable",
    "BIGNUM": "CAST({c} AS DECIMAL(38, 0)) or CAST({c} AS VARCHAR)",
    "VARINT": "CAST({c} AS DECIMAL(38, 0)) or CAST({c} AS VARCHAR)",
}
# Dates and timestamps are carried as they are; a value outside BigQuery's range (DuckDB's is
# wider, and has ±infinity) is found afterwards in the snapshot's Parquet statistics
# (``values_out_of_range``), which the writer computes anyway: no per-row guard in the query.
_IN_RANGE = {"DATE": "DATE", "TIMESTAMP": "DATETIME", "TIMESTAMP WITH TIME ZONE": "TIMESTAMP"}
#: BigQuery's range, 0001-01-01 to 9999-12-31 23:59:59.999999, as Parquet stores it.
_DAYS_RANGE = (-719_162, 2_932_896)
_MICROS_RANGE = (-62_135_596_800_000_000, 253_402_300_799_999_999)
_MICROS_PER = {"milliseconds": 1_000, "microseconds": 1, "nanoseconds": 0.001}
_DECIMAL = re.compile(r"^DECIMAL\((\d+),\s*(\d+)\)$")
# 10^38: the first integer with 39 digits, beyond DECIMAL(38, 0).
_HUGE_LIMIT = "CAST('1" + "0" * 38 + "' AS {t})"


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _nested(duckdb_type: str) -> bool:
    """LIST (``T[]``), ARRAY (``T[n]``), STRUCT and MAP; not UNION, whose JSON would lose
    which member a value is."""
    return duckdb_type.endswith("]") or duckdb_type.startswith(("STRUCT(", "MAP("))


def _refusal(name: str, duckdb_type: str, cast: str) -> str:
    column = quote_identifier(name)
    return f"column {name!r} is {duckdb_type}: cast it in the query, e.g. {cast.format(c=column)}"


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def snapshot_column(name: str, duckdb_type: str) -> tuple[str, str]:
    """``(select expression, BigQuery type)`` of one result column of DuckDB type
    ``duckdb_type``; ``UnsupportedTypeError`` naming the column and the cast to write when the
    type cannot be carried exactly."""
    column = quote_identifier(name)
    alias = f" AS {column}"
    if duckdb_type in AS_IS:
        return column + alias, AS_IS[duckdb_type]
    if duckdb_type in CONVERTED:
        template, bigquery = CONVERTED[duckdb_type]
        return template.format(c=column) + alias, bigquery
    if duckdb_type in _IN_RANGE:
        return column + alias, _IN_RANGE[duckdb_type]
    decimal = _DECIMAL.match(duckdb_type)
    if decimal:
        precision, scale = int(decimal[1]), int(decimal[2])
        fits_numeric = scale <= 9 and precision - scale <= 29
        return column + alias, "NUMERIC" if fits_numeric else "BIGNUMERIC"
    if duckdb_type in ("HUGEINT", "UHUGEINT"):
        # Exact as DECIMAL(38, 0) (BIGNUMERIC) up to 38 digits; a 39-digit value fails the
        # query naming the column, never rounds.
        limit = _HUGE_LIMIT.format(t="HUGEINT")
        message = _sql_literal(
            f"column {name!r} holds an integer of 39 digits, beyond BIGNUMERIC's 38: "
        )
        hint = _sql_literal(f"; cast it to VARCHAR in the query (CAST({column} AS VARCHAR))")
        return (
            f"CASE WHEN {column} >= {limit} OR {column} <= -{limit} "
            f"THEN error({message} || CAST({column} AS VARCHAR) || {hint}) "
            f"ELSE CAST({column} AS DECIMAL(38, 0)) END" + alias,
            "BIGNUMERIC",
        )
    if duckdb_type.startswith("ENUM("):
        return f"CAST({column} AS VARCHAR)" + alias, "STRING"
    if _nested(duckdb_type):
        # Lists, structs and maps travel as their JSON text: every value exactly, one column.
        return f"CAST(to_json({column}) AS VARCHAR)" + alias, "STRING"
    cast = REFUSED.get(duckdb_type, "CAST({c} AS VARCHAR)")
    raise UnsupportedTypeError(_refusal(name, duckdb_type, cast))


def snapshot_query(query: str, columns: list[tuple[str, str]]) -> str:
    """The query the snapshot is written from: ``query``'s columns, each carried exactly (see
    ``snapshot_column``). Raises one ``UnsupportedTypeError`` listing every refused column."""
    selects, refused = [], []
    for name, duckdb_type in columns:
        try:
            selects.append(snapshot_column(name, duckdb_type)[0])
        except UnsupportedTypeError as exc:
            refused.append(str(exc))
    if refused:
        raise UnsupportedTypeError("; ".join(refused))
    return f"SELECT {', '.join(selects)} FROM ({query}) AS export_query"


def _raw_date_text(value: int, unit: str) -> str:
    """A raw Parquet date (``D``: days) or timestamp (``ms``, ``us``, ``ns``) as text, whatever
    its year; DuckDB writes ±infinity as the type's largest magnitude."""
    import numpy as np

    infinite = 2**31 - 1 if unit == "D" else 2**63 - 1
    if abs(value) >= infinite:
        return "infinity" if value > 0 else "-infinity"
    return str(np.datetime64(value, unit))


_TIME_UNITS = {"milliseconds": ("ms", 1_000), "microseconds": ("us", 1), "nanoseconds": ("ns", 0)}


def _out_of_range(kind: str, logical: object, value: int) -> str | None:
    """``value``'s text when it lies outside BigQuery's range, else None."""
    if kind == "DATE":
        low, high = _DAYS_RANGE
        return None if low <= value <= high else _raw_date_text(value, "D")
    unit, per_micro = next(v for k, v in _TIME_UNITS.items() if k in logical.to_json())
    micros = value * per_micro if per_micro else value // 1_000
    low, high = _MICROS_RANGE
    return None if low <= micros <= high else _raw_date_text(value, unit)


def values_out_of_range(metadata: pq.FileMetaData) -> list[str]:
    """One message per date / timestamp column of a snapshot holding a value outside
    BigQuery's range (0001-01-01 to 9999-12-31, ±infinity included), read from the Parquet
    footer's min / max statistics: no value is read again. A column whose statistics are
    missing while it holds values is reported too (it cannot be vouched for)."""
    names = metadata.schema.to_arrow_schema().names
    found: dict[str, str] = {}
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            stats = chunk.statistics
            logical = stats.logical_type if stats is not None else None
            kind = str(logical.type) if logical is not None else ""
            name = names[index] if index < len(names) else chunk.path_in_schema
            if kind not in ("DATE", "TIMESTAMP") or "." in chunk.path_in_schema or name in found:
                continue
            if not stats.has_min_max:
                if stats.null_count < chunk.num_values:
                    found[name] = f"column {name!r} has no statistics to check its range"
                continue
            for value in (stats.min_raw, stats.max_raw):
                text = _out_of_range(kind, logical, value)
                if text is not None:
                    found[name] = (
                        f"column {name!r} holds a value outside BigQuery's range (0001-01-01 to "
                        f"9999-12-31): {text}; filter or clamp it in the query"
                    )
                    break
    return list(found.values())
