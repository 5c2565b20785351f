"""Merge exports without a stack (issue 26): the spec's load block refused at load with file,
field and what is allowed; the window and its high-water mark; the snapshot settled to one row
per key; and the merge check and the mark's freshness seen passing and failing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from bq_assets.engine.bigquery_merge import merge_statement, plan_statement
from bq_assets.engine.merge_window import AmbiguousRowsError, CursorBoundsError, settle_window
from bq_assets.exports import SHIPPED_EXPORTS_DIR, load_specs
from bq_assets.factory import build_definitions
from bq_assets.incremental import (
    INT64_MAX,
    CursorError,
    CursorState,
    CursorWindow,
    advanced_mark,
    parse_cursor,
    parse_lookback,
    run_window,
)
from bq_assets.settings import local_resources
from bq_assets.stages.cursor import LATEST_CURSOR_FRESH, latest_cursor_result, previous_tick
from bq_assets.stages.handoff import HandOff
from bq_assets.stages.merge import merge_problems
from bq_assets.stages.query import _has_rows as has_rows
from bq_assets.translator import bigquery_key
from bq_assets_tests.test_export_spec import load_error, write_export

UTC = dt.UTC
NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
SQL = (
    "SELECT id, name, updated_at, gone FROM t "
    "WHERE updated_at >= $cursor_start AND updated_at < $cursor_end"
)
MERGE = "primary_key: [id]\ncadence: daily\nload: {mode: merge, cursor: updated_at}\n"


# -- the spec ---------------------------------------------------------------------------------
def test_a_merge_spec_loads_with_its_lookback_and_initial(tmp_path: Path) -> None:
    write_export(
        tmp_path,
        "profiles",
        "primary_key: [id]\ncadence: daily\nload:\n  mode: merge\n  cursor: updated_at\n"
        "  lookback: 1h30m\n  deleted: gone\n  initial: 2024-01-01\n",
        SQL,
    )
    (spec,) = load_specs(tmp_path)
    assert spec.merged and spec.load is not None
    assert spec.load.lookback == dt.timedelta(hours=1, minutes=30)
    assert (spec.load.deleted, spec.load.initial) == ("gone", dt.date(2024, 1, 1))


@pytest.mark.parametrize(
    ("yaml_text", "sql", "fragment"),
    [
        (MERGE.replace("updated_at}", "modified_at}"), SQL, "load.cursor: modified_at not among"),
        (
            MERGE,
            SQL.replace("updated_at, gone", "CAST(updated_at AS VARCHAR) AS updated_at, gone"),
            "load.cursor: updated_at is TEXT in the query; it must be a DATE, TIMESTAMP or "
            "integer column",
        ),
        (
            MERGE.replace("updated_at}", "updated_at, deleted: removed}"),
            SQL,
            "load.deleted: removed not among the query's columns",
        ),
        (
            MERGE.replace("updated_at}", "updated_at, deleted: gone}"),
            SQL.replace(", gone FROM", ", 'no' AS gone FROM"),
            "load.deleted: gone is VARCHAR in the query; it must be a BOOLEAN column",
        ),
        (MERGE.replace("primary_key: [id]\n", ""), SQL, "primary_key: required by load"),
        (
            MERGE + "partitioning: {by: day, start: 2024-01-01, column: updated_at}\n",
            SQL,
            "load: a merge export cannot be partitioned",
        ),
        (
            MERGE + "bigquery: {write_disposition: WRITE_APPEND}\n",
            SQL,
            "bigquery.write_disposition: a merge export applies its rows with MERGE; "
            "WRITE_APPEND is not allowed",
        ),
        (
            "primary_key: [id]\ncadence: daily\n",
            SQL,
            "load: the query uses $cursor_end, $cursor_start but the export does not merge",
        ),
        (
            MERGE,
            SQL.replace(" AND updated_at < $cursor_end", ""),
            "load: the query must select the window's rows with both bound parameters",
        ),
        (
            MERGE,
            SQL.replace("$cursor_end", "$cursor_stop"),
            "load: the query uses unknown parameter(s) $cursor_stop; allowed: $cursor_start, "
            "$cursor_end",
        ),
        (MERGE.replace("merge,", "upsert,"), SQL, "load.mode: 'upsert' is not allowed"),
        (MERGE.replace("updated_at}", "updated_at, lookback: soon}"), SQL, "load.lookback: "),
        (
            MERGE.replace("updated_at}", "updated_at, initial: yesterday}"),
            SQL,
            "load.initial: 'yesterday' is not a date",
        ),
        (
            MERGE.replace("primary_key: [id]", "primary_key: [id, gone]").replace(
                "updated_at}", "updated_at, deleted: gone}"
            ),
            SQL,
            "load.deleted: gone is part of the primary key",
        ),
    ],
    ids=[
        "cursor-not-returned",
        "cursor-not-a-time-or-integer",
        "flag-not-returned",
        "flag-not-boolean",
        "no-primary-key",
        "partitioned",
        "write-append",
        "parameters-without-merge",
        "one-parameter",
        "unknown-parameter",
        "unknown-mode",
        "bad-lookback",
        "bad-initial",
        "flag-in-the-key",
    ],
)
def test_a_merge_spec_that_cannot_work_is_refused_at_load(
    tmp_path: Path, yaml_text: str, sql: str, fragment: str
) -> None:
    path = write_export(tmp_path, "profiles", yaml_text, sql)
    message = load_error(tmp_path)
    assert message.startswith(f"{path}: invalid export spec:")
    assert fragment in message


def test_a_delivered_export_cannot_merge(tmp_path: Path) -> None:
    shipped = (SHIPPED_EXPORTS_DIR / "amperity_orders.yaml").read_text()
    merged = shipped + "load: {mode: merge, cursor: order_date}\n"
    write_export(tmp_path, "drops", merged, sql=None)
    assert "load: a delivered export cannot merge" in load_error(tmp_path)


# -- the window and the mark ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", dt.timedelta(hours=2)),
        ("1h30m", dt.timedelta(hours=1, minutes=30)),
        ("1d", dt.timedelta(days=1)),
        (0, 0),
        (500, 500),
    ],
)
def test_a_lookback_is_a_duration_or_an_integer(text: object, expected: object) -> None:
    assert parse_lookback(text) == expected


@pytest.mark.parametrize("text", ["2 hours", "-1", -5, "h", True])
def test_anything_else_is_no_lookback(text: object) -> None:
    with pytest.raises(ValueError, match=r"is not a duration|is negative"):
        parse_lookback(text)


def window(kind="timestamp", **kwargs) -> CursorWindow:
    arguments = {
        "mark": None,
        "lookback": dt.timedelta(hours=2),
        "initial": None,
        "now": NOW,
        "timezone": "America/New_York",
    } | kwargs
    return run_window("updated_at", kind, **arguments)


def test_the_first_window_starts_at_initial_or_the_beginning_and_ends_now() -> None:
    first = window()
    assert (first.origin, first.from_start, first.end) == ("initial", True, NOW)
    assert first.start == dt.datetime(1, 1, 1, tzinfo=UTC)
    start = dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert window(initial=start).start == start and window(initial=start).from_start


def test_a_window_starts_at_the_mark_less_the_lookback() -> None:
    mark = dt.datetime(2026, 3, 9, 8, 0, tzinfo=UTC)
    later = window(mark=mark)
    assert (later.origin, later.start, later.from_start) == (
        "mark",
        mark - dt.timedelta(hours=2),
        False,
    )
    assert later.parameters({"cursor_start", "cursor_end"}) == {
        "cursor_start": mark - dt.timedelta(hours=2),
        "cursor_end": NOW,
    }


def test_run_tags_give_the_window_exactly() -> None:
    start, end = dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 2, tzinfo=UTC)
    tagged = window(mark=NOW - dt.timedelta(days=1), explicit_start=start, explicit_end=end)
    assert (tagged.origin, tagged.start, tagged.end) == ("tags", start, end)
    with pytest.raises(CursorError, match="its start must come before its end"):
        window(explicit_start=end, explicit_end=start)


def test_each_kind_binds_values_of_its_own() -> None:
    dates = window("date", mark=dt.date(2026, 3, 9), lookback=dt.timedelta(days=1))
    # today (New York) is 2026-03-10: the window includes today, the next run sends it again
    assert (dates.start, dates.end) == (dt.date(2026, 3, 8), dt.date(2026, 3, 11))
    naive = window("datetime", mark=dt.datetime(2026, 3, 9, 8, 0))
    assert naive.end == dt.datetime(2026, 3, 10, 12, 0) and naive.end.tzinfo is None
    integers = window("integer", mark=1_000, lookback=100)
    assert (integers.start, integers.end) == (900, INT64_MAX)


@pytest.mark.parametrize(
    ("kind", "mark", "lookback", "says"),
    [
        ("integer", 1_000, dt.timedelta(hours=2), "the cursor is an integer"),
        ("timestamp", NOW, 100, "the lookback must be a duration"),
        ("date", dt.date(2026, 3, 9), dt.timedelta(hours=2), "is not whole days"),
    ],
)
def test_a_lookback_of_the_wrong_kind_is_refused_when_the_cursor_is_known(
    kind: str, mark: object, lookback: object, says: str
) -> None:
    with pytest.raises(CursorError, match=says):
        window(kind, mark=mark, lookback=lookback)


def test_the_mark_never_moves_back() -> None:
    assert advanced_mark(None, 5) == 5
    assert advanced_mark(5, None) == 5
    assert advanced_mark(5, 3) == 5
    assert advanced_mark(5, 8) == 8


def test_cursor_text_is_read_as_its_kind() -> None:
    assert parse_cursor("2026-01-31T06:00:00", "timestamp", "UTC", "x") == dt.datetime(
        2026, 1, 31, 6, tzinfo=UTC
    )
    # a date means midnight in the export's timezone
    assert parse_cursor("2026-01-31", "timestamp", "America/New_York", "x") == dt.datetime(
        2026, 1, 31, 5, tzinfo=UTC
    )
    assert parse_cursor("42", "integer", "UTC", "x") == 42
    with pytest.raises(CursorError, match="tag t: 'soon' is not an ISO 8601 date"):
        parse_cursor("soon", "timestamp", "UTC", "tag t")


# -- the snapshot settled ---------------------------------------------------------------------
WIDE = CursorWindow(
    "updated_at",
    "timestamp",
    dt.datetime(2026, 1, 1, tzinfo=UTC),
    dt.datetime(2026, 2, 1, tzinfo=UTC),
    "mark",
    from_start=False,
)


def snapshot(tmp_path: Path, rows: str) -> Path:
    path = tmp_path / "snapshot.parquet"
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(
            f"COPY (FROM (VALUES {rows}) t(id, score, updated_at, gone)) TO '{path}' "
            "(FORMAT parquet)"
        )
    return path


def test_the_latest_row_of_each_key_wins(tmp_path: Path) -> None:
    path = snapshot(
        tmp_path,
        "('a', 1.5, TIMESTAMPTZ '2026-01-02 00:00:00+00', false), "
        "('a', 2.5, TIMESTAMPTZ '2026-01-03 00:00:00+00', true), "
        "('b', 3.5, TIMESTAMPTZ '2026-01-02 00:00:00+00', NULL)",
    )
    with duckdb.connect() as con:
        types_before = con.execute(f"DESCRIBE FROM '{path}'").fetchall()
    settled = settle_window(path, ["id"], WIDE, "gone", "x.sql", 1_000)
    assert (settled.rows, settled.deleted_rows, settled.duplicates_dropped) == (2, 1, 1)
    assert settled.cursor_max == dt.datetime(2026, 1, 3, tzinfo=UTC)
    with duckdb.connect() as con:
        assert con.execute(f"DESCRIBE FROM '{path}'").fetchall() == types_before
        rows = con.execute(f"SELECT id, score FROM '{path}' ORDER BY id").fetchall()
    assert [(key, float(score)) for key, score in rows] == [("a", 2.5), ("b", 3.5)]


def test_two_latest_rows_of_a_key_are_refused_naming_the_key(tmp_path: Path) -> None:
    path = snapshot(
        tmp_path,
        "('a', 1, TIMESTAMPTZ '2026-01-03 00:00:00+00', false), "
        "('a', 2, TIMESTAMPTZ '2026-01-03 00:00:00+00', false), "
        "('a', 0, TIMESTAMPTZ '2026-01-02 00:00:00+00', false)",
    )
    with pytest.raises(AmbiguousRowsError, match=r"1 key\(s\) .* e.g. a \(2 rows\)"):
        settle_window(path, ["id"], WIDE, None, "x.sql", 1_000)
    # Two keys of one id told apart by a second key column are no tie.
    settled = settle_window(path, ["id", "score"], WIDE, None, "x.sql", 1_000)
    assert settled.rows == 3


def test_a_row_outside_the_window_is_refused(tmp_path: Path) -> None:
    path = snapshot(
        tmp_path,
        "('a', 1, TIMESTAMPTZ '2025-12-31 23:59:59+00', false), "
        "('b', 1, NULL::TIMESTAMPTZ, false), ('c', 1, TIMESTAMPTZ '2026-01-05 00:00:00+00', false)",
    )
    with pytest.raises(CursorBoundsError, match=r"x.sql: 2 of 3 row\(s\) have updated_at outside"):
        settle_window(path, ["id"], WIDE, None, "x.sql", 1_000)


# -- the MERGE and its check ------------------------------------------------------------------
def test_the_merge_statement_updates_deletes_and_inserts_by_key() -> None:
    sql = merge_statement("p.d.t", "p.s.t__merge", ["id", "name", "gone"], ["id"], "gone")
    assert sql == (
        "MERGE `p.d.t` AS target\n"
        "USING `p.s.t__merge` AS source\n"
        "ON target.`id` = source.`id`\n"
        "WHEN MATCHED AND COALESCE(source.`gone`, FALSE) THEN DELETE\n"
        "WHEN MATCHED THEN UPDATE SET `name` = source.`name`, `gone` = source.`gone`\n"
        "WHEN NOT MATCHED AND NOT COALESCE(source.`gone`, FALSE) THEN INSERT (`id`, `name`, "
        "`gone`) VALUES (source.`id`, source.`name`, source.`gone`)"
    )
    plan = plan_statement("p.d.t", "p.s.t__merge", ["id"], None)
    assert "FALSE AS flagged" in plan and "USING (`id`)" in plan


def merged(**counts: int) -> HandOff:
    values = {
        "row_count": 7,
        "rows_before_load": 6,
        "window_deleted_rows": 1,
        "planned_inserted": 2,
        "planned_updated": 3,
        "planned_deleted": 1,
        "merge_inserted": 2,
        "merge_updated": 3,
        "merge_deleted": 1,
        "merge_affected_rows": 6,
    } | counts
    return HandOff(**values)  # type: ignore[arg-type]


def test_the_merge_check_passes_when_the_merge_did_what_the_window_says() -> None:
    assert merge_problems(merged(), window_rows=6)[0] == []


@pytest.mark.parametrize(
    ("counts", "window_rows", "says"),
    [
        ({}, 7, "2 inserted + 3 updated, but the window holds 6 row(s) not flagged deleted"),
        ({"window_deleted_rows": 0}, 5, "1 deleted, but only 0 row(s) are flagged deleted"),
        ({"merge_deleted": 0, "row_count": 8}, 6, "the MERGE reports 2/3/0"),
        ({"merge_affected_rows": 5}, 6, "the MERGE changed 5 row(s) in all, the plan expected 6"),
        ({"row_count": 8}, 6, "the table went from 6 to 8 rows, not by 2 inserted - 1 deleted"),
    ],
    ids=["rows-left-out", "deleted-unflagged", "report-differs", "total-differs", "table-delta"],
)
def test_the_merge_check_fails_on_every_disagreement(
    counts: dict, window_rows: int, says: str
) -> None:
    problems, _ = merge_problems(merged(**counts), window_rows)
    assert says in "; ".join(problems)


# -- the mark's freshness ---------------------------------------------------------------------
def test_the_mark_is_fresh_while_it_moves_within_a_cadence(tmp_path: Path) -> None:
    write_export(tmp_path, "profiles", MERGE + "timezone: UTC\n", SQL)
    (spec,) = load_specs(tmp_path)
    # daily at 06:00 UTC; at noon on the 10th the tick before the last is the 9th, 06:00
    moved = CursorState("updated_at", "2026-03-09T20:00:00+00:00", "2026-03-09T06:30:00+00:00")
    assert latest_cursor_result(spec, moved, NOW).passed
    stuck = CursorState("updated_at", "2026-03-07T20:00:00+00:00", "2026-03-08T06:30:00+00:00")
    result = latest_cursor_result(spec, stuck, NOW)
    assert not result.passed and result.severity.value == "WARN"
    assert "unchanged since 2026-03-08T06:30:00+00:00" in (result.description or "")
    never = latest_cursor_result(spec, None, NOW)
    assert not never.passed and "no row has been merged yet" in (never.description or "")


def test_the_mark_s_sensor_checks_each_merge_export_once_per_tick() -> None:
    specs = load_specs(SHIPPED_EXPORTS_DIR)
    defs = build_definitions(
        specs, local_resources(Path("/nonexistent-stack")), dg.DefaultScheduleStatus.STOPPED
    )
    sensor = next(s for s in defs.sensors if s.name == "latest_cursor_freshness")
    check = dg.AssetCheckKey(bigquery_key("customer_360"), LATEST_CURSOR_FRESH)
    with dg.build_sensor_context(repository_def=defs.get_repository_def()) as context:
        (request,) = sensor.evaluate_tick(context).run_requests
    assert request.asset_check_keys == [check]
    (spec,) = [s for s in specs if s.merged]
    tick = previous_tick(spec, dt.datetime.now(dt.UTC)).isoformat()
    assert request.run_key == f"customer_360:{tick}"  # one run per tick


def test_an_empty_window_passes_has_rows_only_after_the_first_load(tmp_path: Path) -> None:
    write_export(tmp_path, "profiles", MERGE, SQL)
    (spec,) = load_specs(tmp_path)
    assert not has_rows(spec, 0, "initial").passed  # the first load found nothing at all
    assert has_rows(spec, 0, "mark").passed and has_rows(spec, 0, "tags").passed
    assert has_rows(spec.model_copy(update={"load": None}), 0, "mark").passed is False
