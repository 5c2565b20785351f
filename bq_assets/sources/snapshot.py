"""The query step's body: an export's SQL run on a declared source, its result written as a
Parquet snapshot, all or nothing. No Dagster (the resource ``DuckDBSourceResource`` holds the
configuration, the query hop wires it to a run)."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from bq_assets.errors import BqAssetsError
from bq_assets.exports.sql import executable_query
from bq_assets.partitioning import PARTITION_COLUMN_TYPES
from bq_assets.schema import UnsupportedTypeError, snapshot_column, values_out_of_range
from bq_assets.sources.connection import EngineSettings, connect
from bq_assets.sources.declarations import Source, SourceUnreachableError, blank_secret
from bq_assets.sources.files import GcsAccessLike
from bq_assets.sources.type_rules import check_result_types, result_types

# Row groups are the unit the CSV stage parallelises over: small enough to spread a 1M-row
# result over both cores, large enough to keep Parquet overhead negligible.
ROW_GROUP_ROWS = 122_880
SNAPSHOT_OBJECT = "snapshot.parquet"


class SourceQueryError(BqAssetsError):
    """The source database rejected an export's query."""


class PartitionColumnError(BqAssetsError):
    """A partitioned export's partition column is not a DATE or TIMESTAMP column."""


def check_partition_column(described: list[tuple[str, str]], column: str, sql_file: Path) -> str:
    """The DuckDB type of the partition ``column`` in the query's result, if it is one of
    ``PARTITION_COLUMN_TYPES``; else a ``PartitionColumnError`` naming file, field and types."""
    types = dict(described)
    found = types.get(column)
    if found not in PARTITION_COLUMN_TYPES:
        what = "is missing from the result" if found is None else f"is {found}"
        raise PartitionColumnError(
            f"{sql_file}: partitioning.column: {column} {what}; allowed: a column of type "
            f"{', '.join(PARTITION_COLUMN_TYPES)} (cast it, e.g. CAST({column} AS DATE))"
        )
    return found


#: Asked with each result column ``(name, source type, BigQuery type)``: the ones the BigQuery
#: the export loads into cannot store, one sentence each (``ExportBigQueryResource.unstorable``).
Unstorable = Callable[[list[tuple[str, str, str]]], list[str]]


class UnstorableColumnError(BqAssetsError):
    """A result column the BigQuery the export loads into cannot store (the local emulator)."""


def refuse_unstorable(
    described: list[tuple[str, str]], unstorable: Unstorable, sql_file: Path
) -> None:
    """Refuse, before anything is written, the result columns the target BigQuery cannot
    store, naming each with the reason and the cast that makes it fit."""
    columns = [(name, kind, snapshot_column(name, kind)[1]) for name, kind in described]
    problems = unstorable(columns)
    if problems:
        raise UnstorableColumnError(f"{sql_file}: " + "; ".join(problems) + " Nothing was written.")


def describe_result(
    source: Source,
    settings: EngineSettings,
    sql: str,
    sql_file: Path,
    gcs: GcsAccessLike = None,
    parameter_names: Collection[str] = (),
) -> list[tuple[str, str]]:
    """``(column, DuckDB type)`` of each column the query returns, read without running it
    (``DESCRIBE``, each parameter bound to NULL): what a merge export's window is typed by,
    before its values can be bound. Read-only."""
    query = executable_query(sql)
    try:
        with connect(source, settings, query, gcs) as con:
            return result_types(con, query, dict.fromkeys(parameter_names))
    except SourceUnreachableError as exc:
        raise SourceUnreachableError(f"{sql_file}: {exc}") from None
    except duckdb.Error as exc:
        message = blank_secret(str(exc).strip().splitlines()[0], source)
        raise SourceQueryError(
            f"{sql_file}: the source {source.name!r} ({source.address}) rejected the query: "
            f"{message}"
        ) from None


def write_snapshot(
    source: Source,
    settings: EngineSettings,
    sql: str,
    sql_file: Path,
    destination: Path,
    gcs: GcsAccessLike = None,
    parameters: Mapping[str, object] | None = None,
    partition_column: str | None = None,
    unstorable: Unstorable | None = None,
) -> pq.FileMetaData:
    """Run ``sql`` on ``source`` and write its result to ``destination`` as Parquet, all or
    nothing, streamed (DuckDB's COPY; the result is never held in memory).

    Every result column's type is checked before the COPY: carried exactly or refused naming
    the column and the cast to write. The snapshot is written beside its final name and renamed
    into place, so a failed query leaves no partial file. Returns the Parquet footer (rows,
    schema, row groups). A source server that does not answer fails naming its host and port,
    and may be retried; a refused login is not retried. ``gs://`` paths in the query are read
    with ``gcs`` (a callable is called only then); one that matches nothing fails naming it.
    A date or timestamp outside BigQuery's range fails naming the column and the value (from
    the snapshot's Parquet statistics); nothing is kept.

    ``parameters`` are bound to the query's ``$name`` placeholders by DuckDB (a partitioned
    export's window; never formatted into the SQL). ``partition_column`` must then be a DATE or
    TIMESTAMP column of the result, checked before any row is read. ``unstorable`` (the target
    BigQuery's rule, see ``refuse_unstorable``) is asked before any row is read too. Idempotent.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    query = executable_query(sql)
    try:
        with connect(source, settings, query, gcs) as con:
            if partition_column is not None:
                check_partition_column(
                    result_types(con, query, parameters), partition_column, sql_file
                )
            snapshot_query = check_result_types(con, query, source, parameters)
            if unstorable is not None:
                refuse_unstorable(result_types(con, query, parameters), unstorable, sql_file)
            con.execute(
                f"COPY ({snapshot_query}) TO '{partial}' "
                f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS})",
                dict(parameters or {}),
            )
    except SourceUnreachableError as exc:
        raise SourceUnreachableError(f"{sql_file}: {exc}") from None
    except UnsupportedTypeError as exc:
        raise UnsupportedTypeError(f"{sql_file}: {exc}") from None
    except duckdb.Error as exc:
        partial.unlink(missing_ok=True)
        message = blank_secret(str(exc).strip().splitlines()[0], source)
        raise SourceQueryError(
            f"{sql_file}: the source {source.name!r} ({source.address}) rejected the query: "
            f"{message}"
        ) from None
    footer = pq.read_metadata(partial)
    out_of_range = values_out_of_range(footer)
    if out_of_range:
        partial.unlink(missing_ok=True)
        raise SourceQueryError(f"{sql_file}: " + "; ".join(out_of_range))
    os.replace(partial, destination)
    return footer
