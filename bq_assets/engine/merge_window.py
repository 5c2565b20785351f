"""A merge export's window, settled in its snapshot before anything leaves the query step:
every row inside the window, one row per key (the latest cursor wins), and what the later
hops check the MERGE against (rows, rows flagged deleted, the largest cursor).

Pure engine code (no Dagster); DuckDB over the local Parquet snapshot, within the scans'
memory limit (``engine.scans``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bq_assets.engine.scans import snapshot_connection
from bq_assets.errors import BqAssetsError
from bq_assets.incremental import CursorValue, CursorWindow

#: At most this many keys are named in a message (the count says how many there are).
SAMPLE = 5


class CursorBoundsError(BqAssetsError):
    """Rows of a merge export's result have their cursor outside the run's window (or NULL)."""


class AmbiguousRowsError(BqAssetsError):
    """Two rows of one key share its latest cursor value: which one is current cannot be told."""


@dataclass(frozen=True)
class SettledWindow:
    """The window's rows after deduplication, as the snapshot now holds them."""

    rows: int
    deleted_rows: int  # rows whose deleted flag is true (0 without a flag column)
    duplicates_dropped: int  # older rows of a key that a newer one replaced
    cursor_max: CursorValue | None  # the largest cursor value (None: no rows)


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def settle_window(
    snapshot: Path,
    key: list[str],
    window: CursorWindow,
    deleted: str | None,
    sql_file: Path | str,
    row_group_rows: int,
) -> SettledWindow:
    """Check that every row of the local Parquet ``snapshot`` lies in ``window`` (else
    ``CursorBoundsError``: the query does not filter by its parameters), keep one row per
    ``key``, the one with the latest cursor (two rows of a key with the same latest cursor are an
    ``AmbiguousRowsError`` naming keys), and count what the merge will be checked against.
    Rewrites ``snapshot`` in place only when it held older rows of a key. Idempotent."""
    cursor = _quoted(window.column)
    with snapshot_connection(snapshot) as con:
        outside, total = con.execute(
            f"SELECT count(*) FILTER (WHERE NOT ({cursor} >= $start AND {cursor} < $end) "
            f"OR {cursor} IS NULL), count(*) FROM snapshot",
            {"start": window.start, "end": window.end},
        ).fetchone()
        if outside:
            raise CursorBoundsError(
                f"{sql_file}: {outside} of {total} row(s) have {window.column} outside the window "
                f"{window.describe()} (or NULL); nothing was exported. The query must return "
                f"only the window's rows: WHERE {window.column} >= $cursor_start AND "
                f"{window.column} < $cursor_end (load.cursor must be the column it filters on)."
            )
        keys = ", ".join(_quoted(column) for column in key)
        (distinct,) = con.execute(f"SELECT count(DISTINCT row({keys})) FROM snapshot").fetchone()
        duplicates = total - distinct
        if duplicates:
            _refuse_ties(con, keys, cursor, window.column, sql_file)
            deduplicated = snapshot.with_name(snapshot.name + ".latest")
            con.execute(
                f"COPY (FROM snapshot QUALIFY row_number() OVER (PARTITION BY {keys} "
                f"ORDER BY {cursor} DESC) = 1) TO '{deduplicated}' "
                f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {row_group_rows})"
            )
    if duplicates:
        os.replace(deduplicated, snapshot)
    flagged = f"count(*) FILTER (WHERE {_quoted(deleted)})" if deleted else "0"
    with snapshot_connection(snapshot) as con:
        rows, deleted_rows, cursor_max = con.execute(
            f"SELECT count(*), {flagged}, max({cursor}) FROM snapshot"
        ).fetchone()
    return SettledWindow(int(rows), int(deleted_rows), duplicates, cursor_max)


def _refuse_ties(con, keys: str, cursor: str, column: str, sql_file: Path | str) -> None:
    """An ``AmbiguousRowsError`` when a key's latest cursor value is held by several rows."""
    tied = con.execute(
        f"SELECT {keys}, count(*) AS n, count(*) OVER () AS tied_keys FROM ("
        f"  FROM snapshot QUALIFY rank() OVER (PARTITION BY {keys} ORDER BY {cursor} DESC) = 1"
        f") GROUP BY {keys} HAVING count(*) > 1 ORDER BY n DESC LIMIT {SAMPLE}"
    ).fetchall()
    if not tied:
        return
    sample = ", ".join("/".join(str(v) for v in row[:-2]) + f" ({row[-2]} rows)" for row in tied)
    raise AmbiguousRowsError(
        f"{sql_file}: {tied[0][-1]} key(s) have two or more rows with the same latest "
        f"{column}, so which one is current cannot be told, e.g. {sample}; nothing was "
        f"exported. The query must return at most one row per key and {column} value (a "
        "finer cursor, or a tie-break in the query)."
    )
