"""The key checksum that BigQuery, Databricks and DuckDB (the local stand-in) all compute the
same way, so the Databricks hop can prove it shows the very keys BigQuery holds."""

# Identifier quoting per dialect: backticks in BigQuery and Databricks SQL, double quotes in
# DuckDB. Key columns are validated identifiers, so a key named like a reserved word (`order`,
# `select`) is the only case quoting has to handle.
_QUOTE = {"bigquery": "`{}`", "databricks": "`{}`", "duckdb": '"{}"'}

# The key checksum: XOR of the first 60 bits of each key's MD5, computed with functions every
# engine has (MD5, SUBSTR, BIT_XOR, COUNT); only the hex → integer step is spelled per engine.
_HEX_TO_INT = {
    "bigquery": "CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5({key})), 1, 15)) AS INT64)",
    "databricks": "CAST(CONV(SUBSTR(MD5({key}), 1, 15), 16, 10) AS BIGINT)",
    "duckdb": "CAST('0x' || SUBSTR(MD5({key}), 1, 15) AS BIGINT)",
}


def key_checksum_sql(
    dialect: str, table: str, key_columns: list[str], where: str | None = None
) -> str:
    """``SELECT count, checksum`` of the key columns of ``table`` (of its rows matching
    ``where``, e.g. one partition's window), in ``dialect``."""
    text = "STRING" if dialect != "duckdb" else "VARCHAR"
    parts = [f"CAST({_QUOTE[dialect].format(column)} AS {text})" for column in key_columns]
    key = parts[0] if len(parts) == 1 else "CONCAT(" + ", '|', ".join(parts) + ")"
    sql = f"SELECT COUNT(*), BIT_XOR({_HEX_TO_INT[dialect].format(key=key)}) FROM {table}"
    return f"{sql} WHERE {where}" if where else sql


def same_column_names(databricks: list[str], bigquery: list[str]) -> bool:
    """Same columns in the same order, compared as Unity Catalog compares them: case-insensitively
    (it preserves a column's casing, but queries are case-insensitive; "Names",
    https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-names). BigQuery column
    names are case-insensitive too."""
    return [c.lower() for c in databricks] == [c.lower() for c in bigquery]
