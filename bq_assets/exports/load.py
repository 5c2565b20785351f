"""The ``load`` block of an export spec: how a run's rows reach the BigQuery table when they are
not a full refresh. Today one mode, ``merge`` (issue 26): each run sends only the rows whose
cursor moved since the last successful load (a window, see ``bq_assets.incremental``) and
applies them to the table by primary key in one MERGE (update, insert, delete by flag)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bq_assets.exports.fields import COLUMN, StrictModel, matching
from bq_assets.incremental import Lookback, describe_lookback, parse_lookback


class LoadOptions(StrictModel):
    """``load: {mode: merge, cursor: updated_at, lookback: 2h, deleted: is_deleted}``."""

    mode: Literal["merge"] = Field(
        description="`merge`: send the rows whose cursor moved, upsert them by primary key"
    )
    cursor: str = Field(
        description="the query's DATE, TIMESTAMP or integer column that grows when a row "
        "changes (e.g. updated_at); its window arrives as $cursor_start / $cursor_end"
    )
    lookback: Lookback = Field(
        0,
        description="how far before the high-water mark each window starts, to catch rows that "
        "arrive late: a duration (2h, 30m, 1d; whole days for a DATE cursor) or an integer "
        "for an integer cursor (default 0: from the mark itself)",
    )
    deleted: str | None = Field(
        None,
        description="the query's BOOLEAN column that flags a deleted row: a flagged row is "
        "deleted from the table (and never inserted)",
    )
    initial: dt.datetime | dt.date | int | None = Field(
        None,
        description="where the first run's window starts (no mark yet): a date, a date and "
        "time (UTC without offset) or an integer; default: the beginning",
    )

    @field_validator("cursor", "deleted")
    @classmethod
    def _column(cls, value: str | None) -> str | None:
        return None if value is None else matching(COLUMN, "column name", value)

    @field_validator("lookback", mode="before")
    @classmethod
    def _lookback(cls, value: Any) -> Lookback:
        return parse_lookback(value)

    @field_validator("initial", mode="before")
    @classmethod
    def _initial(cls, value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return None if value is None else _not_a_cursor(value)
        if isinstance(value, int | dt.date):
            return value
        text = str(value).strip()
        try:
            return (
                dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text)
            )
        except ValueError:
            return _not_a_cursor(value)

    @model_validator(mode="after")
    def _deleted_is_not_the_cursor(self) -> LoadOptions:
        if self.deleted is not None and self.deleted == self.cursor:
            raise ValueError(f"deleted: {self.deleted} is the cursor; name the BOOLEAN flag column")
        return self

    def describe(self) -> str:
        deleted = f", rows flagged by {self.deleted} deleted" if self.deleted else ""
        return (
            f"merged by cursor {self.cursor} (lookback {describe_lookback(self.lookback)}{deleted})"
        )


def _not_a_cursor(value: Any) -> Any:
    raise ValueError(
        f"{value!r} is not a date (2024-01-01), a date and time (2024-01-01T00:00:00+00:00) or "
        "an integer"
    )
