"""Refreshes run on time, in the export's timezone, selecting the right exports."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from typing import ClassVar
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator

from bq_assets.factory import build_definitions
from bq_assets.schedules import (
    EXPORT_TAG,
    build_failure_sensor,
    build_schedules,
    failure_message,
    failure_sensors,
)
from bq_assets.settings import local_resources
from bq_assets.translator import FRESHNESS, ExportTranslator, freshness_policy


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
    assert request.run_key == "customer_segments"  # one run per export and tick
    assert request.tags[EXPORT_TAG] == "customer_segments"


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


def test_a_tick_requests_one_run_per_export_each_tagged_with_its_export(shipped_specs) -> None:
    daily = [
        s.model_copy(update={"timezone": "UTC"})
        for s in shipped_specs
        if s.cadence == "daily" and not s.partitioned  # a partitioned export has its own job
    ]
    (schedule,) = build_schedules(daily, dg.DefaultScheduleStatus.STOPPED)
    with dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 11, 30, 6, tzinfo=ZoneInfo("America/New_York"))
    ) as context:
        result = schedule.evaluate_tick(context)
    exports = {request.tags[EXPORT_TAG] for request in result.run_requests}
    assert len(result.run_requests) == len(exports) >= 2
    for request in result.run_requests:
        assert {key.path[-1] for key in request.asset_selection} == {request.tags[EXPORT_TAG]}
        spec = next(s for s in daily if s.name == request.tags[EXPORT_TAG])
        assert request.asset_selection == ExportTranslator().asset_keys(spec)


class FakeSlackWebhook(http.server.BaseHTTPRequestHandler):
    """A fake Slack incoming webhook on 127.0.0.1: records every POSTed body, answers ``ok``."""

    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        FakeSlackWebhook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_a_failed_run_is_posted_to_the_slack_webhook(instance, monkeypatch) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), FakeSlackWebhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/services/T/B/X")
    try:

        @dg.asset
        def broken() -> None:
            raise RuntimeError("the source database is unreachable")

        result = dg.materialize([broken], instance=instance, raise_on_error=False)
        failure = next(
            e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE
        )
        (sensor,) = failure_sensors()
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=result.dagster_run,
        ).for_run_failure()
        sensor(context)
    finally:
        server.shutdown()
        server.server_close()
    (alert,) = FakeSlackWebhook.received
    assert set(alert) == {"text"}
    assert alert["text"].startswith(f"run {result.run_id} of ")
    assert "broken: RuntimeError: the source database is unreachable" in alert["text"]


def test_dagster_slacks_sensor_is_added_when_a_bot_token_is_set(monkeypatch) -> None:
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-fake-token-for-the-test")
    monkeypatch.setenv("SLACK_CHANNEL", "#data-alerts")
    names = [sensor.name for sensor in failure_sensors()]
    assert names == ["report_failed_runs", "slack_on_run_failure"]


def test_a_cron_more_frequent_than_hourly_gets_a_freshness_window_within_its_interval(
    shipped_specs,
) -> None:
    spec = shipped_specs[0].model_copy(update={"cadence": "*/15 * * * *"})
    policy = freshness_policy(spec)
    assert policy.lower_bound_delta == dt.timedelta(minutes=15)
