"""Refresh automation: one job and one schedule per cadence and timezone, plus failure alerts.

Exports with the same cron and timezone share a job (``<cadence>_<timezone>_refresh``) that
selects their groups, checks included. Each tick requests one run per export, tagged
``bq_assets/export: <export>``: the instance's run queue (``deploy/dagster.yaml``) lets one run
per export run at a time and queues the rest. Schedules run in the exports' IANA timezone; they
are stopped by default locally and running in production (``BQ_ASSETS_SCHEDULES`` overrides).

Failed runs are reported to the log, and to Slack when ``SLACK_WEBHOOK_URL`` (an incoming
webhook) or ``SLACK_BOT_TOKEN`` + ``SLACK_CHANNEL`` (dagster-slack's run-failure sensor) are set.
"""

import datetime as dt
import json
import os
import re
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable

import dagster as dg
from dagster_shared.error import SerializableErrorInfo

from bq_assets.exports.spec import ExportSpec
from bq_assets.stages.cost import run_cost
from bq_assets.stages.partitions import latest_complete_partition
from bq_assets.translator import FRESHNESS, ExportTranslator

#: The run tag naming the export a run refreshes; the run queue allows one run per value.
EXPORT_TAG = "bq_assets/export"
SLACK_TIMEOUT_S = 10


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def cadence_label(spec: ExportSpec) -> str:
    return spec.cadence if spec.cadence in FRESHNESS else "cron_" + _slug(spec.cadence)


def export_tags(export: str) -> dict[str, str]:
    """The tags of a run that refreshes ``export`` (set them on UI launches too)."""
    return {EXPORT_TAG: export}


def build_schedules(
    specs: list[ExportSpec],
    default_status: dg.DefaultScheduleStatus,
    translator: ExportTranslator | None = None,
) -> list[dg.ScheduleDefinition]:
    """One job and schedule per cadence and timezone; a partitioned export gets one of its own
    (a job runs one partitions definition), named like the others unless an unpartitioned
    export has that cadence and timezone too (then ``<cadence>_<timezone>_<export>_refresh``)."""
    groups: dict[tuple[str, str, str, str], list[ExportSpec]] = defaultdict(list)
    for spec in specs:
        partitioned = spec.name if spec.partitioning else ""
        groups[(cadence_label(spec), spec.cron_schedule, spec.timezone, partitioned)].append(spec)
    names = Counter((label, timezone) for label, _, timezone, _ in groups)
    translator = translator or ExportTranslator()
    return [
        _cadence_schedule(
            f"{label}_{_slug(timezone)}"
            + (f"_{partitioned}" if partitioned and names[(label, timezone)] > 1 else ""),
            label,
            cron,
            timezone,
            exports,
            default_status,
            translator,
        )
        for (label, cron, timezone, partitioned), exports in sorted(groups.items())
    ]


def _cadence_schedule(
    name: str,
    label: str,
    cron: str,
    timezone: str,
    specs: list[ExportSpec],
    default_status: dg.DefaultScheduleStatus,
    translator: ExportTranslator,
) -> dg.ScheduleDefinition:
    exports = [spec.name for spec in specs]
    partitioned = specs[0] if specs[0].partitioning else None
    job_tags = {"cadence": label} | (export_tags(exports[0]) if len(exports) == 1 else {})
    job = dg.define_asset_job(
        name=f"{name}_refresh",
        selection=dg.AssetSelection.groups(*exports),
        description=f"Refresh {', '.join(exports)} ({label}, {timezone}"
        + (", the latest complete partition)." if partitioned else ")."),
        tags=job_tags,
    )

    @dg.schedule(
        name=f"{job.name}_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone=timezone,
        default_status=default_status,
        description=f"{label} refresh of {', '.join(exports)} at `{cron}` {timezone}, "
        + ("its latest complete partition" if partitioned else "one run per export"),
    )
    def _refresh(
        context: dg.ScheduleEvaluationContext,
    ) -> list[dg.RunRequest] | dg.SkipReason:
        if partitioned is not None:
            return _latest_partition_request(partitioned, context, translator)
        # The daemon scopes a schedule's run keys to the tick: one run per export per tick.
        return [
            dg.RunRequest(
                run_key=spec.name,
                asset_selection=translator.asset_keys(spec),
                tags=export_tags(spec.name),
            )
            for spec in specs
        ]

    return _refresh


def _latest_partition_request(
    spec: ExportSpec, context: dg.ScheduleEvaluationContext, translator: ExportTranslator
) -> list[dg.RunRequest] | dg.SkipReason:
    """A run of the partition that ended last before the tick, in the export's timezone
    (a daily 06:00 tick refreshes yesterday)."""
    now = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
    partition = latest_complete_partition(spec, now)
    if partition is None:
        return dg.SkipReason(f"{spec.name}: no partition has ended yet")
    return [
        dg.RunRequest(
            run_key=f"{spec.name}:{partition}",
            partition_key=partition,
            asset_selection=translator.asset_keys(spec),
            tags=export_tags(spec.name),
        )
    ]


def _root_message(error: SerializableErrorInfo) -> str:
    """The user's error inside Dagster's wrappers, first line only."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip().splitlines()[0]


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """``<asset> <check>: <why>`` for each check that failed in the run (Dagster's own message
    for a failed blocking check names the check only; the why is in its evaluation)."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    evaluations = [record.event_log_entry.dagster_event.event_specific_data for record in records]
    return [
        f"{e.asset_key.to_user_string()} {e.check_name}: {e.description or 'failed'}"
        for e in evaluations
        if not e.passed
    ]


def failure_message(context: dg.RunFailureSensorContext) -> str:
    """One line per failed run: the run, the job, each failed step's error and why each
    failed check failed."""
    run = context.dagster_run
    steps = [
        f"{event.step_key}: {_root_message(event.step_failure_data.error)}"
        for event in context.get_step_failure_events()
        if event.step_failure_data.error
    ]
    details = steps + failed_checks(context.instance, run.run_id)
    detail = "; ".join(details) or context.failure_event.message or "no message"
    cost = run_cost(context.instance, run.run_id)
    spent = f" (the run's {cost.describe()})" if cost else ""
    return f"run {run.run_id} of {run.job_name} failed: {detail}{spent}"


def build_failure_sensor(
    notify: Callable[[dg.RunFailureSensorContext, str], None] | None = None,
) -> dg.SensorDefinition:
    """A sensor that reports every failed run: to the log by default, or to ``notify``
    (e.g. a function that posts to a chat webhook or opens an incident)."""

    @dg.run_failure_sensor(
        name="report_failed_runs",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Reports every failed run (to the log unless a notifier is plugged in).",
    )
    def report_failed_runs(context: dg.RunFailureSensorContext) -> None:
        message = failure_message(context)
        if notify is None:
            context.log.error(message)
        else:
            notify(context, message)

    return report_failed_runs


def post_to_slack_webhook(url_variable: str = "SLACK_WEBHOOK_URL") -> Callable[..., None]:
    """A notifier for ``build_failure_sensor`` that posts the message to a Slack incoming
    webhook (``{"text": ...}``). The URL, a secret, is read from the environment only when an
    alert is sent; a webhook that fails is logged and the alert goes to the log instead."""

    def notify(context: dg.RunFailureSensorContext, message: str) -> None:
        context.log.error(message)
        request = urllib.request.Request(
            os.environ[url_variable],
            data=json.dumps({"text": message}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=SLACK_TIMEOUT_S) as response:
                response.read()
        except OSError as exc:  # an unreachable Slack must not fail the sensor's tick forever
            context.log.warning(f"the Slack webhook did not take the alert: {exc}")

    return notify


def failure_sensors() -> list[dg.SensorDefinition]:
    """The log sensor (posting to a Slack webhook when ``SLACK_WEBHOOK_URL`` is set), plus
    dagster-slack's ``make_slack_on_run_failure_sensor`` when ``SLACK_BOT_TOKEN`` and
    ``SLACK_CHANNEL`` are set. dagster-slack takes only a bot token and builds its client when
    the code location loads, so that token is read then; the webhook URL is read per alert."""
    webhook = bool(os.environ.get("SLACK_WEBHOOK_URL"))
    sensors = [build_failure_sensor(post_to_slack_webhook() if webhook else None)]
    if os.environ.get("SLACK_BOT_TOKEN") and os.environ.get("SLACK_CHANNEL"):
        from dagster_slack import make_slack_on_run_failure_sensor

        sensors.append(
            make_slack_on_run_failure_sensor(
                channel=os.environ["SLACK_CHANNEL"],
                slack_token=os.environ["SLACK_BOT_TOKEN"],
                text_fn=failure_message,
                name="slack_on_run_failure",
                default_status=dg.DefaultSensorStatus.RUNNING,
                webserver_base_url=os.environ.get("DAGSTER_WEBSERVER_URL") or None,
            )
        )
    return sensors
