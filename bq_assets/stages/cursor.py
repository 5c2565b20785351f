"""The Dagster side of merge exports' cursors: where a run's window comes from, and whether the
high-water mark keeps moving.

The mark lives in the metadata of the export's last successful BigQuery materialization
(``cursor_mark``), never in a local file: it survives a new pod, a new day and a failed run (a
failed load records no materialization, so the mark stays where it was). A run's window starts
from it (less the lookback), from the spec's ``initial`` when there is none, or from the run's
tags (``bq_assets/cursor_start``, ``bq_assets/cursor_end``) to re-send a range; the next run
without tags carries on from the stored mark. The window arithmetic is
``bq_assets.incremental`` (no Dagster).

``latest_cursor_fresh`` (a warning) reports a mark that has not moved for longer than the
cadence allows: the source stopped changing, or runs stopped succeeding.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import dagster as dg

from bq_assets.dagster_internals import last_tick_at_or_before
from bq_assets.engine.merge_window import SettledWindow
from bq_assets.exports.spec import ExportSpec
from bq_assets.incremental import (
    CursorError,
    CursorKind,
    CursorState,
    CursorValue,
    CursorWindow,
    as_kind,
    cursor_kind,
    cursor_text,
    parse_cursor,
    run_window,
    smallest,
)
from bq_assets.stages.freshness import check_sensor
from bq_assets.stages.handoff import HandOff
from bq_assets.stages.results import Check
from bq_assets.translator import bigquery_key

#: Run tags that give a merge export's run an explicit window (either bound, or both).
CURSOR_START_TAG = "bq_assets/cursor_start"
CURSOR_END_TAG = "bq_assets/cursor_end"
#: ``bq_assets/cursor_start: initial`` re-sends everything from the spec's ``initial``.
FROM_INITIAL = "initial"
LATEST_CURSOR_FRESH = "latest_cursor_fresh"
#: How long a schedule tick's run may take before its window counts as missing.
RUN_ALLOWANCE = dt.timedelta(hours=2)


def stored_state(instance: dg.DagsterInstance, spec: ExportSpec) -> CursorState | None:
    """What the export's last successful BigQuery materialization recorded of its cursor (None:
    never merged, or loaded by a version that did not merge)."""
    event = instance.get_latest_materialization_event(bigquery_key(spec.name))
    if event is None or event.asset_materialization is None:
        return None
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    handoff = HandOff.read(metadata)
    if handoff.cursor_column is None:
        return None
    return CursorState(handoff.cursor_column, handoff.cursor_mark, handoff.cursor_mark_moved_at)


def cursor_column_kind(spec: ExportSpec, described: list[tuple[str, str]]) -> CursorKind:
    """The kind of the export's cursor column in the query's result (and its deleted flag a
    BOOLEAN), else a ``CursorError`` naming file, field and what is allowed."""
    assert spec.load is not None
    types = dict(described)
    found = types.get(spec.load.cursor)
    kind = cursor_kind(found) if found else None
    if kind is None:
        what = "is missing from the result" if found is None else f"is {found}"
        raise CursorError(
            f"{spec.sql_file}: load.cursor: {spec.load.cursor} {what}; allowed: a DATE, "
            "TIMESTAMP (with or without time zone) or integer column (cast it, e.g. "
            f"CAST({spec.load.cursor} AS TIMESTAMPTZ))"
        )
    deleted = spec.load.deleted
    if deleted is not None and types.get(deleted) != "BOOLEAN":
        raise CursorError(
            f"{spec.sql_file}: load.deleted: {deleted} is {types.get(deleted, 'missing')}; "
            f"allowed: a BOOLEAN column (e.g. CAST({deleted} AS BOOLEAN))"
        )
    return kind


def stored_mark(
    spec: ExportSpec, state: CursorState | None, kind: CursorKind, log: dg.DagsterLogManager
) -> CursorValue | None:
    """The stored high-water mark as a value of the cursor's kind; None when there is none, or
    when it was recorded for another cursor column or kind (then the window starts from
    ``initial``, which a merge applies harmlessly)."""
    assert spec.load is not None
    if state is None or state.mark is None:
        return None
    if state.column != spec.load.cursor:
        log.warning(
            f"{spec.name}: the stored mark is of cursor {state.column}, the spec's is "
            f"{spec.load.cursor}; this window starts from load.initial"
        )
        return None
    try:
        return parse_cursor(state.mark, kind, spec.timezone, "the stored cursor_mark")
    except CursorError as exc:
        log.warning(f"{spec.name}: {exc}; this window starts from load.initial")
        return None


def explicit_bounds(
    spec: ExportSpec, kind: CursorKind, tags: Mapping[str, str]
) -> tuple[CursorValue | None, CursorValue | None]:
    """The window's bounds given by the run's tags, if any, as values of the cursor's kind."""
    start_text, end_text = tags.get(CURSOR_START_TAG), tags.get(CURSOR_END_TAG)
    start = end = None
    if start_text is not None:
        start = (
            initial_value(spec, kind)
            if start_text.strip() == FROM_INITIAL
            else parse_cursor(start_text, kind, spec.timezone, f"run tag {CURSOR_START_TAG}")
        )
    if end_text is not None:
        end = parse_cursor(end_text, kind, spec.timezone, f"run tag {CURSOR_END_TAG}")
    return start, end


def initial_value(spec: ExportSpec, kind: CursorKind) -> CursorValue:
    """Where a window from the beginning starts: ``load.initial``, else the smallest value."""
    assert spec.load is not None
    if spec.load.initial is None:
        return smallest(kind)
    return as_kind(spec.load.initial, kind, spec.timezone, f"{spec.spec_file}: load.initial")


def window_for_run(
    context: dg.AssetExecutionContext,
    spec: ExportSpec,
    described: list[tuple[str, str]],
    now: dt.datetime,
) -> CursorWindow:
    """The window this run of the merge export sends (see the module)."""
    assert spec.load is not None
    kind = cursor_column_kind(spec, described)
    state = stored_state(context.instance, spec)
    start, end = explicit_bounds(spec, kind, context.run.tags)
    initial = initial_value(spec, kind) if spec.load.initial is not None else None
    return run_window(
        spec.load.cursor,
        kind,
        mark=stored_mark(spec, state, kind, context.log),
        lookback=spec.load.lookback,
        initial=initial,
        now=now,
        timezone=spec.timezone,
        explicit_start=start,
        explicit_end=end,
    )


def previous_tick(spec: ExportSpec, now: dt.datetime) -> dt.datetime:
    """The tick before the export's last tick whose run has had ``RUN_ALLOWANCE`` to finish: a
    mark that has not moved since then missed a whole cadence."""
    last = last_tick_at_or_before(now - RUN_ALLOWANCE, spec.cron_schedule, spec.timezone)
    return last_tick_at_or_before(last - dt.timedelta(seconds=1), spec.cron_schedule, spec.timezone)


def latest_cursor_result(
    spec: ExportSpec, state: CursorState | None, now: dt.datetime
) -> dg.AssetCheckResult:
    """Pass while the mark has moved since the tick before the last one (see
    ``previous_tick``); warn when it has not, or when nothing was ever merged."""
    since = previous_tick(spec, now)
    moved = dt.datetime.fromisoformat(state.moved_at) if state and state.moved_at else None
    fresh = moved is not None and moved >= since
    if state is None or state.mark is None:
        why = "no row has been merged yet: the table has no high-water mark"
    else:
        why = (
            f"the high-water mark of {state.column} is {state.mark}, unchanged since "
            f"{state.moved_at}: no changed row arrived through a whole cadence (since "
            f"{since.isoformat()}); the source may have stopped changing, or runs stopped "
            "succeeding"
        )
    return dg.AssetCheckResult(
        passed=fresh,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if fresh else why,
        metadata={
            "high_water_mark": (state.mark if state else None) or "",
            "mark_moved_at": (state.moved_at if state else None) or "",
            "expected_moved_after": since.isoformat(),
        },
    )


def cursor_checks(spec: ExportSpec) -> list[Check]:
    """The high-water mark's freshness check of a merge export's table (none otherwise)."""
    if spec.load is None:
        return []

    def latest_cursor_fresh(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        state = stored_state(context.instance, spec)
        return latest_cursor_result(spec, state, dt.datetime.now(dt.UTC))

    return [
        Check(
            dg.AssetCheckSpec(
                LATEST_CURSOR_FRESH,
                asset=bigquery_key(spec.name),
                description=f"The high-water mark of {spec.load.cursor} moved within the last "
                f"cadence; warns when no changed row arrived for longer (the source stopped "
                "changing, or runs stopped succeeding).",
            ),
            latest_cursor_fresh,
        )
    ]


def cursor_freshness_sensor(
    specs: list[ExportSpec], status: dg.DefaultSensorStatus
) -> list[dg.SensorDefinition]:
    """One sensor that runs each merge export's ``latest_cursor_fresh`` once per schedule tick
    (run key ``<export>:<tick>``), so a mark that stopped moving is reported without a run."""
    return check_sensor(
        "latest_cursor_freshness",
        "Checks that each merge export's high-water mark keeps moving, once per schedule tick.",
        [spec for spec in specs if spec.load is not None],
        LATEST_CURSOR_FRESH,
        lambda spec, now: previous_tick(spec, now).isoformat(),
        status,
    )


def window_handoff(window: CursorWindow, settled: SettledWindow) -> HandOff:
    """What the query step records of a merge export's window, for the load after it."""
    return HandOff(
        cursor_column=window.column,
        cursor_kind=window.kind,
        cursor_start=cursor_text(window.start),
        cursor_end=cursor_text(window.end),
        cursor_from=window.origin,
        cursor_max=None if settled.cursor_max is None else cursor_text(settled.cursor_max),
        window_deleted_rows=settled.deleted_rows,
    )
