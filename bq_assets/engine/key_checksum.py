"""The key checksum that BigQuery and Databricks both compute, so the Databricks hop can prove it
shows the very keys BigQuery holds.

Both engines hash one *canonical string* per key, defined per BigQuery type and spelled in each
dialect so that the two strings are equal for every value. ``CAST(key AS STRING)`` is not that
string: BigQuery renders a TIMESTAMP as ``2024-01-01 00:00:00+00`` and Spark (Databricks SQL) as
``2024-01-01 00:00:00``, a NUMERIC 1.5 as ``1.5`` and ``1.500000000``, a FLOAT64 1 as ``1`` and
``1.0``. The canonical strings (proven equal on Spark and on the BigQuery emulator over
adversarial values in ``test_key_checksum.py``):

- STRING: the value; INT64, BOOL, DATE: ``CAST(… AS STRING)`` (``-5``, ``true``,
  ``0001-01-01``: the same text in both engines);
- TIMESTAMP: its microseconds since the epoch (``UNIX_MICROS``), whatever the session's zone;
- DATETIME: the microseconds since the epoch of its wall-clock time read as UTC (Lakehouse
  Federation reads a DATETIME as a Spark timestamp; see ``FEDERATION_TYPES``);
- NUMERIC: the decimal text without trailing fractional zeros (``1.5``, ``-2``, ``10``);
- BYTES: lower-case hex.

A key of another type (FLOAT64, BIGNUMERIC, TIME, GEOGRAPHY, JSON, INTERVAL, RANGE, ARRAY,
STRUCT) has no spelling that is equal in both engines for every value (FLOAT64: each engine
prints the shortest decimal in its own format and rounds differently when asked for a fixed
precision; BIGNUMERIC: up to 76 digits, Spark's decimals stop at 38; TIME and the rest: Lakehouse
Federation turns them into timestamps or text of its own), so an export keyed on one is refused
(``refused_key_types``).

A NULL key part hashes as ``n``, any other as ``v`` + its canonical string, so a NULL-key row
counts in the checksum too (not only in the row count) and cannot pass for an empty string.
"""

from __future__ import annotations

from collections.abc import Iterable

from bq_assets.errors import BqAssetsError

# Identifier quoting: backticks in BigQuery and Databricks SQL. Key columns are validated
# identifiers, so a key named like a reserved word (`order`, `select`) is the only case quoting
# has to handle.
DIALECTS = ("bigquery", "databricks")

#: BigQuery's legacy type names (the REST API's ``SchemaField.field_type``) → standard SQL.
_TYPE_ALIASES = {
    "INTEGER": "INT64",
    "BOOLEAN": "BOOL",
    "FLOAT": "FLOAT64",
    "RECORD": "STRUCT",
    "BIGDECIMAL": "BIGNUMERIC",
    "DECIMAL": "NUMERIC",
}

_STRIP_ZEROS = {
    # Trailing zeros of the fraction, then a bare point: 1.500000000 → 1.5, -2.000 → -2.
    "bigquery": r"REGEXP_REPLACE(REGEXP_REPLACE(CAST({c} AS STRING), r'([.][0-9]*?)0+$', r'\1'), r'[.]$', '')",
    "databricks": "REGEXP_REPLACE(REGEXP_REPLACE(CAST({c} AS STRING), '([.][0-9]*?)0+$', '$1'), '[.]$', '')",
}

#: BigQuery type → {dialect: SQL for the canonical string of the column ``{c}``}.
CANONICAL: dict[str, dict[str, str]] = {
    "STRING": {"bigquery": "{c}", "databricks": "{c}"},
    "INT64": {"bigquery": "CAST({c} AS STRING)", "databricks": "CAST({c} AS STRING)"},
    "BOOL": {"bigquery": "CAST({c} AS STRING)", "databricks": "CAST({c} AS STRING)"},
    "DATE": {"bigquery": "CAST({c} AS STRING)", "databricks": "CAST({c} AS STRING)"},
    "TIMESTAMP": {
        "bigquery": "CAST(UNIX_MICROS({c}) AS STRING)",
        "databricks": "CAST(UNIX_MICROS({c}) AS STRING)",
    },
    "DATETIME": {
        "bigquery": "CAST(UNIX_MICROS(TIMESTAMP({c})) AS STRING)",
        "databricks": "CAST(UNIX_MICROS({c}) AS STRING)",
    },
    "NUMERIC": _STRIP_ZEROS,
    "BYTES": {"bigquery": "TO_HEX({c})", "databricks": "LOWER(HEX({c}))"},
}

_REFUSAL_REASONS = {
    "FLOAT64": "each engine prints a FLOAT64 in its own format (1 and 1.0, 1e+20 and 1.0E20) "
    "and rounds it differently at a fixed precision",
    "BIGNUMERIC": "its up to 76 digits do not fit Databricks' decimals (38 digits)",
    "TIME": "Lakehouse Federation turns a TIME into a Databricks timestamp",
}

# The key checksum: XOR of the first 60 bits of each key's MD5, computed with functions both
# engines have (MD5, SUBSTR, BIT_XOR, COUNT); only the hex → integer step is spelled per engine.
_HEX_TO_INT = {
    "bigquery": "CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5({key})), 1, 15)) AS INT64)",
    "databricks": "CAST(CONV(SUBSTR(MD5({key}), 1, 15), 16, 10) AS BIGINT)",
}


class KeyTypeError(BqAssetsError):
    """A key column's type has no canonical string both engines compute alike."""


def standard_type(bigquery_type: str) -> str:
    """BigQuery's standard SQL name for a type as the REST API or a spec spells it
    (``INTEGER`` → ``INT64``, ``NUMERIC(10, 2)`` → ``NUMERIC``)."""
    name = bigquery_type.strip().upper().split("(")[0].split("<")[0].strip()
    return _TYPE_ALIASES.get(name, name)


def key_type_refusal(bigquery_type: str) -> str | None:
    """Why a key of ``bigquery_type`` cannot be checksummed alike in both engines (None: it can)."""
    name = standard_type(bigquery_type)
    if name in CANONICAL:
        return None
    return _REFUSAL_REASONS.get(
        name, f"Lakehouse Federation shows a {name} as text of its own making in Databricks"
    )


def refused_key_types(key_types: Iterable[tuple[str, str]]) -> list[str]:
    """One line per key column (``(name, BigQuery type)``) the checksum cannot compare."""
    return [
        f"primary_key: {name} is {standard_type(kind)}, which the key checksum cannot compare "
        f"between BigQuery and Databricks ({reason}); key the export on columns of type "
        f"{', '.join(CANONICAL)}, or cast {name} to one of them in the query"
        for name, kind in key_types
        if (reason := key_type_refusal(kind)) is not None
    ]


def canonical_key_sql(dialect: str, key_columns: list[tuple[str, str]]) -> str:
    """The canonical string of a row's key in ``dialect``: each part ``n`` (NULL) or ``v`` + the
    canonical string of its type, joined by ``|``."""
    problems = refused_key_types(key_columns)
    if problems:
        raise KeyTypeError("; ".join(problems))
    parts = []
    for name, kind in key_columns:
        value = CANONICAL[standard_type(kind)][dialect].format(c=f"`{name}`")
        parts.append(f"COALESCE(CONCAT('v', {value}), 'n')")
    return parts[0] if len(parts) == 1 else "CONCAT(" + ", '|', ".join(parts) + ")"


def key_checksum_sql(
    dialect: str, table: str, key_columns: list[tuple[str, str]], where: str | None = None
) -> str:
    """``SELECT count, checksum`` of the key columns (``(name, BigQuery type)``) of ``table``
    (of its rows matching ``where``, e.g. one partition's window), in ``dialect``. Read-only."""
    key = canonical_key_sql(dialect, key_columns)
    sql = f"SELECT COUNT(*), BIT_XOR({_HEX_TO_INT[dialect].format(key=key)}) FROM {table}"
    return f"{sql} WHERE {where}" if where else sql


def same_column_names(databricks: list[str], bigquery: list[str]) -> bool:
    """Same columns in the same order, compared as Unity Catalog compares them: case-insensitively
    (it preserves a column's casing, but queries are case-insensitive; "Names",
    https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-names). BigQuery column
    names are case-insensitive too."""
    return [c.lower() for c in databricks] == [c.lower() for c in bigquery]
