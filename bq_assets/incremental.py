"""Incremental exports that merge (issue 26): the cursor's window, its bound parameters and its
high-water mark.

Pure code (no Dagster). A merge export's query selects the rows whose cursor column falls in
the run's window ``[start, end)`` and receives it as DuckDB prepared parameters, never as text
formatted into the SQL: ``$cursor_start`` (inclusive) and ``$cursor_end`` (exclusive), values of
the cursor column's own kind:

- ``timestamp`` (TIMESTAMP WITH TIME ZONE): timezone-aware datetimes in UTC;
- ``datetime`` (TIMESTAMP without time zone): naive datetimes, read as UTC wall time;
- ``date`` (DATE): dates;
- ``integer`` (TINYINT … BIGINT): integers.

The high-water mark is the largest cursor value any merged window held. A window starts at the
mark less the lookback (inclusive: rows sharing the mark's value that arrive late are sent
again), or at ``initial`` (else the smallest value of the kind) when there is no mark, and ends
now (timestamps; dates: tomorrow in the export's timezone, so today's rows go now and again
with the next run; integers: no upper bound). An explicit window (run tags) replaces either
bound. Re-sending a window is harmless: the merge is idempotent.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass
from typing import Literal

from bq_assets.errors import BqAssetsError

#: The query parameters a merge export's SQL uses (DuckDB ``$name`` placeholders).
CURSOR_PARAMETERS = ("cursor_start", "cursor_end")
CursorKind = Literal["timestamp", "datetime", "date", "integer"]
CursorValue = dt.datetime | dt.date | int
Lookback = dt.timedelta | int
#: Where a run's window comes from: no mark yet, the stored mark, or the run's tags.
WindowOrigin = Literal["initial", "mark", "tags"]

#: DuckDB result types a cursor may have, and the kind of value each binds.
CURSOR_KINDS: dict[str, CursorKind] = {
    "TIMESTAMP WITH TIME ZONE": "timestamp",
    "TIMESTAMP": "datetime",
    "DATE": "date",
    "TINYINT": "integer",
    "SMALLINT": "integer",
    "INTEGER": "integer",
    "BIGINT": "integer",
    "UTINYINT": "integer",
    "USMALLINT": "integer",
    "UINTEGER": "integer",
}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_DURATION = re.compile(r"^(\d+[smhd])+$")


class CursorError(BqAssetsError):
    """A merge export's cursor, its window or its stored mark cannot be used as declared."""


def parse_lookback(value: object) -> Lookback:
    """``load.lookback`` as a duration (``2h``, ``30m``, ``1d``, ``1h30m``) or an integer (for
    an integer cursor; ``0`` suits every kind). ``ValueError`` saying what is allowed."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (e.g. 2h, 30m, 1d) or an integer")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; a lookback reaches back, give 0 or more")
        return value
    text = str(value).strip()
    if not _DURATION.fullmatch(text):
        raise ValueError(
            f"{value!r} is not a duration (a number and s, m, h or d: 2h, 30m, 1d, 1h30m) or a "
            "non-negative integer (for an integer cursor)"
        )
    parts = re.findall(r"(\d+)([smhd])", text)
    return sum((dt.timedelta(**{_UNITS[unit]: int(n)}) for n, unit in parts), dt.timedelta())


def describe_lookback(lookback: Lookback) -> str:
    if isinstance(lookback, int):
        return str(lookback)
    seconds = int(lookback.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cursor_kind(duckdb_type: str) -> CursorKind | None:
    """The kind of a cursor column of this DuckDB result type (None: not allowed)."""
    return CURSOR_KINDS.get(duckdb_type.upper())


def smallest(kind: CursorKind) -> CursorValue:
    """The start of a window with no lower bound: the smallest value of the kind."""
    if kind == "timestamp":
        return dt.datetime(1, 1, 1, tzinfo=dt.UTC)
    if kind == "datetime":
        return dt.datetime(1, 1, 1)
    if kind == "date":
        return dt.date(1, 1, 1)
    return INT64_MIN


def default_end(kind: CursorKind, now: dt.datetime, timezone: str) -> CursorValue:
    """Where a window ends when the run names no end: now, tomorrow, or no bound."""
    if kind == "timestamp":
        return now.astimezone(dt.UTC)
    if kind == "datetime":
        return now.astimezone(dt.UTC).replace(tzinfo=None)
    if kind == "date":
        return now.astimezone(zoneinfo.ZoneInfo(timezone)).date() + dt.timedelta(days=1)
    return INT64_MAX


def as_kind(value: CursorValue, kind: CursorKind, timezone: str, what: str) -> CursorValue:
    """``value`` (from the spec's ``initial``, a tag or a stored mark) as a value of ``kind``:
    a date means midnight in the export's timezone for timestamps; a datetime without offset
    is UTC. A ``CursorError`` naming ``what`` when it cannot be one."""
    if kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise CursorError(f"{what}: {value!r} is not an integer, as the cursor column is")
    if isinstance(value, int):  # bool is an int too
        raise CursorError(f"{what}: {value!r} is a number; the cursor column is a {kind.upper()}")
    if kind == "date":
        if isinstance(value, dt.datetime):
            if value.time() != dt.time() or value.tzinfo not in (None, dt.UTC):
                raise CursorError(f"{what}: {value.isoformat()} is not a date (YYYY-MM-DD)")
            return value.date()
        return value
    instant = value
    if not isinstance(instant, dt.datetime):
        instant = dt.datetime.combine(instant, dt.time(), tzinfo=zoneinfo.ZoneInfo(timezone))
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=dt.UTC)
    instant = instant.astimezone(dt.UTC)
    return instant if kind == "timestamp" else instant.replace(tzinfo=None)


def cursor_text(value: CursorValue) -> str:
    """A cursor value as written in metadata and tags (ISO 8601, or the integer)."""
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def parse_cursor(text: str, kind: CursorKind, timezone: str, what: str) -> CursorValue:
    """A cursor value written as text (a stored mark, a run tag) as a value of ``kind``: an
    integer, or an ISO 8601 date or date and time (without offset: UTC). ``CursorError`` naming
    ``what`` when it is none."""
    text = text.strip()
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise CursorError(f"{what}: {text!r} is not an integer, as the cursor is") from None
    try:
        value: CursorValue = (
            dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text)
        )
    except ValueError:
        raise CursorError(
            f"{what}: {text!r} is not an ISO 8601 date or time (e.g. 2026-01-31 or "
            "2026-01-31T06:00:00+00:00)"
        ) from None
    return as_kind(value, kind, timezone, what)


def minus(value: CursorValue, lookback: Lookback, kind: CursorKind, what: str) -> CursorValue:
    """``value`` less the lookback, never below the kind's smallest value."""
    if kind == "integer":
        if isinstance(lookback, dt.timedelta):
            raise CursorError(
                f"{what}: {describe_lookback(lookback)} is a duration; the cursor is an integer, "
                "so the lookback must be one too (e.g. lookback: 1000)"
            )
        assert isinstance(value, int)
        return max(value - lookback, INT64_MIN)
    if isinstance(lookback, int):
        if lookback:
            raise CursorError(
                f"{what}: {lookback} is a number; the cursor is a {kind.upper()}, so the lookback "
                "must be a duration (e.g. lookback: 2h)"
            )
        lookback = dt.timedelta()
    if kind == "date" and lookback % dt.timedelta(days=1):
        raise CursorError(
            f"{what}: {describe_lookback(lookback)} is not whole days; the cursor is a DATE"
        )
    assert isinstance(value, dt.date)
    floor = smallest(kind)
    assert isinstance(floor, dt.date)
    if value - floor <= lookback:  # type: ignore[operator]
        return floor
    return value - lookback


@dataclass(frozen=True)
class CursorWindow:
    """The rows a run of a merge export sends: cursor in ``[start, end)``."""

    column: str
    kind: CursorKind
    start: CursorValue
    end: CursorValue
    origin: WindowOrigin
    #: The window reaches back to the beginning (``initial``, or no lower bound): only such a
    #: window may create the table, as it holds every row the source has.
    from_start: bool

    def parameters(self, used: set[str] | tuple[str, ...] = CURSOR_PARAMETERS) -> dict[str, object]:
        """The query's bound parameters, limited to those it ``used`` (DuckDB refuses
        parameters a statement does not reference)."""
        values = {"cursor_start": self.start, "cursor_end": self.end}
        return {name: values[name] for name in used if name in values}

    def describe(self) -> str:
        end = "" if self.end == INT64_MAX else cursor_text(self.end)
        start = "" if self.start == smallest(self.kind) else cursor_text(self.start)
        return f"{self.column} in [{start or '-∞'}, {end or '+∞'}) (from {self.origin})"


@dataclass(frozen=True)
class CursorState:
    """What the last successful load of a merge export recorded: its cursor column, the
    high-water mark (as text) and when the mark last moved."""

    column: str
    mark: str | None
    moved_at: str | None


def run_window(
    column: str,
    kind: CursorKind,
    *,
    mark: CursorValue | None,
    lookback: Lookback,
    initial: CursorValue | None,
    now: dt.datetime,
    timezone: str,
    explicit_start: CursorValue | None = None,
    explicit_end: CursorValue | None = None,
) -> CursorWindow:
    """The window a run sends. With an explicit bound (from the run's tags) the window is
    exactly that; else from the mark less ``lookback``, or from ``initial`` when there is no
    mark. ``CursorError`` when the window would be empty by construction (start ≥ end)."""
    origin: WindowOrigin
    if explicit_start is not None or explicit_end is not None:
        origin = "tags"
    else:
        origin = "initial" if mark is None else "mark"
    if explicit_start is not None:
        start = explicit_start
    elif mark is not None:
        start = minus(mark, lookback, kind, "load.lookback")
    else:
        start = initial if initial is not None else smallest(kind)
    end = explicit_end if explicit_end is not None else default_end(kind, now, timezone)
    if not start < end:  # type: ignore[operator]
        raise CursorError(
            f"the window of {column} would be [{cursor_text(start)}, {cursor_text(end)}): its "
            "start must come before its end"
        )
    floor = initial if initial is not None else smallest(kind)
    return CursorWindow(column, kind, start, end, origin, from_start=not floor < start)  # type: ignore[operator]


def advanced_mark(stored: CursorValue | None, window_max: CursorValue | None) -> CursorValue | None:
    """The high-water mark after a window with ``window_max`` lands: it never moves back."""
    if stored is None:
        return window_max
    if window_max is None:
        return stored
    return max(stored, window_max)  # type: ignore[type-var]
