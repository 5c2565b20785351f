"""Lakehouse Federation's column types for a BigQuery table, as the local stand-in applies them.

Databricks, "Run federated queries on Google BigQuery", section "Data type mappings"
(https://docs.databricks.com/aws/en/query-federation/bigquery#data-type-mappings, also
https://learn.microsoft.com/en-us/azure/databricks/query-federation/bigquery#data-type-mappings):

=============================================================  ===============================
BigQuery                                                       Spark
=============================================================  ===============================
bignumeric, numeric                                            DecimalType
int64                                                          LongType
float64                                                        DoubleType
array, geography, interval, json, string, struct               VarcharType
bytes                                                          BinaryType
bool                                                           BooleanType
date                                                           DateType
datetime, time, timestamp                                      TimestampType / TimestampNTZType
=============================================================  ===============================

with TimestampType unless the foreign catalog sets ``preferTimestampNTZ`` (default false). The
stand-in applies that to the Arrow schema the Storage Read API sends (``federation_schema``) and
writes the copy as Parquet, which Spark reads as exactly those types: a DATETIME's wall-clock time
and a TIME's time of day (on 1970-01-01) become UTC instants, nested and other types JSON text.
BIGNUMERIC holds up to 76 digits and Spark's decimals 38: the page's option
``bigNumericDefaultScale`` sets the scale of the DecimalType(38, scale) it becomes; without it the
stand-in refuses the table, naming the columns.
"""

from __future__ import annotations

import json

import pyarrow as pa

from bq_assets.resources.databricks import StatementError

UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")


def federation_type(arrow_type: pa.DataType, options: dict[str, str]) -> pa.DataType | None:
    """The Arrow type Spark reads as the Databricks type of a column the Storage Read API sends
    as ``arrow_type`` (None: a BIGNUMERIC with no ``bigNumericDefaultScale`` to map it by)."""
    if pa.types.is_decimal256(arrow_type):
        scale = options.get("bigNumericDefaultScale")
        return pa.decimal128(38, int(scale)) if scale and scale.isdigit() else None
    if pa.types.is_timestamp(arrow_type) or pa.types.is_time(arrow_type):
        return UTC_TIMESTAMP
    if pa.types.is_large_string(arrow_type):
        return pa.string()
    if (
        pa.types.is_boolean(arrow_type)
        or pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
        or pa.types.is_date(arrow_type)
        or pa.types.is_binary(arrow_type)
        or pa.types.is_string(arrow_type)
    ):
        return arrow_type
    return pa.string()


def federation_schema(schema: pa.Schema, options: dict[str, str], table_path: str) -> pa.Schema:
    """The copy's schema; refuses, naming the columns, BIGNUMERIC columns it cannot map."""
    fields, refused = [], []
    for field in schema:
        mapped = federation_type(field.type, options)
        if mapped is None:
            refused.append(field.name)
        else:
            fields.append(pa.field(field.name, mapped))
    if refused:
        raise StatementError(
            f"The local Databricks stand-in cannot read {table_path}: its BIGNUMERIC columns "
            f"{', '.join(refused)} hold up to 76 digits, Databricks' decimals 38. Lakehouse "
            "Federation maps them to DECIMAL(38, bigNumericDefaultScale): set "
            "databricks.foreign_catalog_options.bigNumericDefaultScale in the spec, or cast them "
            "to NUMERIC or STRING in the export's query."
        )
    return pa.schema(fields)


def federation_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with every column converted to its type in ``schema``."""
    return pa.RecordBatch.from_arrays(
        [_convert(batch.column(i), schema.field(i).type) for i in range(batch.num_columns)],
        schema=schema,
    )


def _convert(column: pa.Array, target: pa.DataType) -> pa.Array:
    source = column.type
    if source == target:
        return column
    if pa.types.is_time(source):
        micros = column.cast(pa.time64("us")).cast(pa.int64())
        return micros.cast(UTC_TIMESTAMP)
    if pa.types.is_timestamp(source):
        # A DATETIME (no zone) keeps its wall-clock time as a UTC instant.
        return column.cast(pa.timestamp("us", tz=source.tz)).cast(UTC_TIMESTAMP)
    if pa.types.is_string(target) and not (
        pa.types.is_string(source) or pa.types.is_large_string(source)
    ):
        return pa.array(
            [None if v is None else json.dumps(v, default=str) for v in column.to_pylist()],
            pa.string(),
        )
    return column.cast(target)
