"""Types across the hops: the snapshot's Arrow schema → BigQuery schema and Dagster column schema.

The Arrow schema of the Parquet snapshot is the single source of truth; the CSV text, the
BigQuery load schema and the column metadata in the UI are all derived from it.
"""

from __future__ import annotations

import dagster as dg
import pyarrow as pa
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


def column_schema(fields: list[bigquery.SchemaField]) -> dg.TableSchema:
    """The ``dagster/column_schema`` of a table with these BigQuery fields."""
    return dg.TableSchema(columns=[dg.TableColumn(name=f.name, type=f.field_type) for f in fields])


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
