"""Refreshes run on time, in the export's timezone, selecting the right exports."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator

from bq_assets.factory import build_definitions
from bq_assets.schedules import FRESHNESS, build_failure_sensor, failure_message, freshness_policy
from bq_assets.settings import local_resources


@pytest.fixture(scope="module")
def defs(shipped_specs, tmp_path_factory) -> dg.Definitions:
    resources = local_resources(tmp_path_factory.mktemp("unused"))
    return build_definitions(shipped_specs, resources, dg.DefaultScheduleStatus.STOPPED)


def schedules_by_name(defs: dg.Definitions) -> dict[str, dg.ScheduleDefinition]:
    return {s.name: s for s in defs.schedules}


def test_one_schedule_per_cadence_and_timezone(defs) -> None:
    schedules = schedules_by_name(defs)
    assert set(schedules) == {
        "daily_america_los_angeles_refresh_schedule",
        "daily_america_new_york_refresh_schedule",
        "weekly_europe_london_refresh_schedule",
    }
    weekly = schedules["weekly_europe_london_refresh_schedule"]
    assert (weekly.cron_schedule, weekly.execution_timezone) == ("0 6 * * 1", "Europe/London")
    assert weekly.default_status == dg.DefaultScheduleStatus.STOPPED


def test_the_next_ticks_fall_at_six_in_the_exports_timezone(defs) -> None:
    schedule = schedules_by_name(defs)["daily_america_los_angeles_refresh_schedule"]
    start = dt.datetime(2026, 3, 7, 12, tzinfo=ZoneInfo("UTC"))  # spans the DST change
    ticks = cron_string_iterator(
        start.timestamp(), schedule.cron_schedule, schedule.execution_timezone
    )
    first, second = next(ticks), next(ticks)
    assert (first.hour, second.hour) == (6, 6)
    assert str(first.tzinfo) == "America/Los_Angeles"
    assert second.timestamp() - first.timestamp() == 23 * 3600  # 8 March 2026: DST starts


def test_a_tick_requests_a_run_of_exactly_its_exports(defs) -> None:
    schedule = schedules_by_name(defs)["weekly_europe_london_refresh_schedule"]
    with dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 11, 30, 6, tzinfo=ZoneInfo("Europe/London"))
    ) as context:
        result = schedule.evaluate_tick(context)
    (request,) = result.run_requests
    job = defs.resolve_job_def(schedule.job_name)
    selected = job.asset_layer.selected_asset_keys
    assert {key.path[-1] for key in selected} == {"customer_segments"}
    assert len(selected) == 4
    assert request.run_key is None


def test_freshness_follows_the_cadence(shipped_specs) -> None:
    daily = next(s for s in shipped_specs if s.cadence == "daily")
    weekly = next(s for s in shipped_specs if s.cadence == "weekly")
    assert freshness_policy(daily).fail_window.to_timedelta() == FRESHNESS["daily"]
    assert freshness_policy(weekly).fail_window.to_timedelta() == FRESHNESS["weekly"]


def test_a_failed_run_is_reported_to_the_plugged_in_notifier(instance) -> None:
    @dg.asset
    def broken() -> None:
        raise RuntimeError("the source database is unreachable")

    result = dg.materialize([broken], instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    received: list[str] = []
    sensor = build_failure_sensor(lambda context, message: received.append(message))
    context = dg.build_run_status_sensor_context(
        sensor_name="report_failed_runs",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()
    sensor(context)
    assert received == [failure_message(context)]
    assert result.run_id in received[0]
    assert "broken: RuntimeError: the source database is unreachable" in received[0]
