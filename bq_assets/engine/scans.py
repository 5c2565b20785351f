"""The query hop's checks (and its rows per partition), as scans of the snapshot: in DuckDB, with a memory limit (what does
not fit spills to a temporary directory), so they stay within bounds at any size."""

from dataclasses import dataclass
from pathlib import Path

import duckdb

from bq_assets.partitioning import Window, window_predicate

#: DuckDB's budget for one check's scan; a GROUP BY over 10M keys spills beyond it.
SCAN_MEMORY_LIMIT = "256MB"
SCAN_THREADS = 2
SAMPLE = 5


@dataclass(frozen=True)
class KeyReport:
    null_keys: int
    duplicated_keys: int
    duplicate_sample: list[list[str]]  # key values, then how often the key occurs

    @property
    def passed(self) -> bool:
        return self.null_keys == 0 and self.duplicated_keys == 0


def _quoted(columns: list[str]) -> str:
    return ", ".join('"' + column.replace('"', '""') + '"' for column in columns)


def primary_key_report(snapshot: Path, key: list[str]) -> KeyReport:
    """How many rows have a NULL in a key column, how many key values occur more than once, and
    a sample of the most repeated ones. ``snapshot`` is a local Parquet file; its directory
    takes DuckDB's spill files. Read-only."""
    columns = _quoted(key)
    null_keys = " OR ".join(f"{_quoted([column])} IS NULL" for column in key)
    with snapshot_connection(snapshot) as con:
        (nulls,) = con.execute(f"SELECT count(*) FROM snapshot WHERE {null_keys}").fetchone()
        con.execute(
            f"CREATE TEMP TABLE repeated AS SELECT {columns}, count(*) AS n FROM snapshot "
            "GROUP BY ALL HAVING n > 1"
        )
        (duplicated,) = con.execute("SELECT count(*) FROM repeated").fetchone()
        sample = con.execute(f"FROM repeated ORDER BY n DESC LIMIT {SAMPLE}").fetchall()
    return KeyReport(nulls, duplicated, [[str(v) for v in row] for row in sample])


def null_counts(snapshot: Path, columns: list[str]) -> dict[str, int]:
    """NULLs per column of the local Parquet ``snapshot``. Read-only."""
    counts = ", ".join(f"count(*) FILTER (WHERE {_quoted([c])} IS NULL)" for c in columns)
    with snapshot_connection(snapshot) as con:
        row = con.execute(f"SELECT {counts} FROM snapshot").fetchone()
    return dict(zip(columns, (int(n) for n in row), strict=True))


def rows_by_partition_of(
    snapshot: Path, column: str, column_type: str, window: Window
) -> dict[str, int]:
    """Rows of the local Parquet ``snapshot`` in each partition of ``window`` (``column_type``:
    the column's BigQuery type): what the later hops' per-partition checks compare with.
    Read-only."""
    parts = window.split()
    counts = ", ".join(
        f"count(*) FILTER (WHERE {window_predicate('duckdb', column, column_type, part)})"
        for part in parts
    )
    with snapshot_connection(snapshot) as con:
        row = con.execute(f"SELECT {counts} FROM snapshot").fetchone()
    return {part.keys[0]: int(n) for part, n in zip(parts, row, strict=True)}


def snapshot_connection(snapshot: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the local Parquet ``snapshot`` as the view ``snapshot``, within
    the scans' memory limit (spilling next to the file)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{SCAN_MEMORY_LIMIT}'")
    con.execute(f"SET threads = {SCAN_THREADS}")
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"SET temp_directory = '{snapshot.parent / 'duckdb_spill'}'")
    con.execute(f"CREATE VIEW snapshot AS FROM read_parquet('{snapshot}')")
    return con
