"""Partitioned exports: the time windows a partition covers, the query's bound parameters, and
how a window maps onto BigQuery's own partitions.

Pure engine code (no Dagster). A partition is one day, ISO week (Monday to Monday) or month in
the export's timezone; its key is the date it starts on (``2026-01-31``). The export's query
receives the window as DuckDB prepared parameters, never as text formatted into the SQL:

- ``$partition_start`` / ``$partition_end``: the window's bounds as timezone-aware timestamps
  (start inclusive, end exclusive), for TIMESTAMP columns;
- ``$partition_start_date`` / ``$partition_end_date``: the same bounds as local dates (end
  exclusive), for DATE columns.

A run may cover several consecutive partitions (a backfill run): its window spans all of them.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Granularity = Literal["day", "week", "month"]
#: The query parameters a partitioned export's SQL may use (DuckDB ``$name`` placeholders).
PARAMETERS = ("partition_start", "partition_end", "partition_start_date", "partition_end_date")
PARTITION_COLUMN_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE")
KEY_FORMAT = "%Y-%m-%d"
UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/GMT", "GMT", "Etc/Zulu", "Zulu", "Universal"})


def partition_start(key: str) -> dt.date:
    """The local date a partition key names (the first day of its window)."""
    return dt.datetime.strptime(key, KEY_FORMAT).date()


def next_start(day: dt.date, by: Granularity) -> dt.date:
    """The first day of the partition after the one starting on ``day``."""
    if by == "day":
        return day + dt.timedelta(days=1)
    if by == "week":
        return day + dt.timedelta(days=7)
    return (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class Window:
    """The time a run's partition(s) cover: ``[start, end)`` in the export's timezone."""

    keys: tuple[str, ...]
    by: Granularity
    timezone: str

    @property
    def start_date(self) -> dt.date:
        return partition_start(self.keys[0])

    @property
    def end_date(self) -> dt.date:
        return next_start(partition_start(self.keys[-1]), self.by)

    def _instant(self, day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), tzinfo=zoneinfo.ZoneInfo(self.timezone))

    @property
    def start(self) -> dt.datetime:
        return self._instant(self.start_date)

    @property
    def end(self) -> dt.datetime:
        return self._instant(self.end_date)

    def parameters(self, used: Iterable[str] = PARAMETERS) -> dict[str, object]:
        """The bound parameters of the query, limited to those it ``used`` (DuckDB refuses
        parameters a statement does not reference)."""
        values: dict[str, object] = {
            "partition_start": self.start,
            "partition_end": self.end,
            "partition_start_date": self.start_date,
            "partition_end_date": self.end_date,
        }
        return {name: values[name] for name in used if name in values}

    def split(self) -> list[Window]:
        """One window per partition, in order."""
        return [Window((key,), self.by, self.timezone) for key in self.keys]

    def describe(self) -> str:
        keys = self.keys[0] if len(self.keys) == 1 else f"{self.keys[0]}…{self.keys[-1]}"
        return f"partition {keys} ([{self.start.isoformat()}, {self.end.isoformat()}))"


def aligned_with_bigquery(by: Granularity, column_type: str, timezone: str) -> bool:
    """Does each partition of the export coincide with one partition of the BigQuery table?

    BigQuery partitions by day or month only (no week) and cuts TIMESTAMP columns at UTC
    midnight; DATE and DATETIME columns are cut at their own date. So a day or month partition
    is one BigQuery partition when the column is a DATE, or when the export's timezone is UTC.
    Only then can a load replace it through a partition decorator (``table$YYYYMMDD``).
    """
    if by == "week":
        return False
    return column_type == "DATE" or timezone in UTC_NAMES


def bigquery_partitioning(by: Granularity) -> str:
    """BigQuery's ``TimePartitioning.type_`` for the table of an export partitioned ``by``
    (weeks are days in BigQuery: it has no weekly partitioning)."""
    return "MONTH" if by == "month" else "DAY"


def decorator(key: str, by: Granularity) -> str:
    """The partition decorator that names the partition ``key`` in BigQuery (``$20260131``,
    ``$202601``)."""
    day = partition_start(key)
    return "$" + day.strftime("%Y%m" if by == "month" else "%Y%m%d")


#: SQL literals of a window bound per engine and BigQuery column type (DATE, TIMESTAMP: an
#: instant, DATETIME: UTC wall time, as the query step compared it).
_LITERALS = {
    ("bigquery", "DATE"): "DATE '{date}'",
    ("bigquery", "TIMESTAMP"): "TIMESTAMP '{utc}+00'",
    ("bigquery", "DATETIME"): "DATETIME '{utc}'",
    ("databricks", "DATE"): "DATE'{date}'",
    ("databricks", "TIMESTAMP"): "CAST('{utc}Z' AS TIMESTAMP)",
    ("databricks", "DATETIME"): "CAST('{utc}' AS TIMESTAMP_NTZ)",
    ("duckdb", "DATE"): "DATE '{date}'",
    ("duckdb", "TIMESTAMP"): "TIMESTAMPTZ '{utc}+00'",
    ("duckdb", "DATETIME"): "TIMESTAMP '{utc}'",
}


def bound_literal(dialect: str, column_type: str, bound: dt.datetime) -> str:
    """A window bound (midnight in the export's timezone) as a literal of the column's type."""
    utc = bound.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
    return _LITERALS[(dialect, column_type)].format(date=bound.date().isoformat(), utc=utc)


def window_predicate(dialect: str, column: str, column_type: str, window: Window) -> str:
    """``<column> >= <start> AND <column> < <end>`` in ``dialect`` (``bigquery``,
    ``databricks`` or ``duckdb``): the rows of the window. Only computed dates in it, and the
    column is a validated identifier."""
    quoted = f'"{column}"' if dialect == "duckdb" else f"`{column}`"
    start = bound_literal(dialect, column_type, window.start)
    end = bound_literal(dialect, column_type, window.end)
    return f"{quoted} >= {start} AND {quoted} < {end}"
