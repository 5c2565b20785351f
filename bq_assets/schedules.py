"""Refresh automation: one job and one schedule per cadence and timezone, plus failure alerts.

Exports with the same cron and timezone share a job (``<cadence>_<timezone>_refresh``) that
selects their groups, checks included. Schedules run in the exports' IANA timezone; they are
stopped by default locally and running in production (``BQ_ASSETS_SCHEDULES`` overrides).
"""

import re
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta

import dagster as dg
from dagster_shared.error import SerializableErrorInfo

from bq_assets.exports.spec import ExportSpec

FRESHNESS = {"daily": timedelta(hours=26), "weekly": timedelta(days=8)}


def freshness_policy(spec: ExportSpec) -> dg.FreshnessPolicy:
    """Daily ≈ 26 h, weekly ≈ 8 days; a custom cron must have materialized by its next tick."""
    if spec.cadence in FRESHNESS:
        return dg.FreshnessPolicy.time_window(fail_window=FRESHNESS[spec.cadence])
    return dg.FreshnessPolicy.cron(
        deadline_cron=spec.cron_schedule,
        lower_bound_delta=timedelta(hours=1),
        timezone=spec.timezone,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def cadence_label(spec: ExportSpec) -> str:
    return spec.cadence if spec.cadence in FRESHNESS else "cron_" + _slug(spec.cadence)


def build_schedules(
    specs: list[ExportSpec], default_status: dg.DefaultScheduleStatus
) -> list[dg.ScheduleDefinition]:
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for spec in specs:
        groups[(cadence_label(spec), spec.cron_schedule, spec.timezone)].append(spec.name)
    schedules = []
    for (label, cron, timezone), exports in sorted(groups.items()):
        job = dg.define_asset_job(
            name=f"{label}_{_slug(timezone)}_refresh",
            selection=dg.AssetSelection.groups(*exports),
            description=f"Refresh {', '.join(exports)} ({label}, {timezone}).",
            tags={"cadence": label},
        )
        schedules.append(
            dg.ScheduleDefinition(
                job=job,
                cron_schedule=cron,
                execution_timezone=timezone,
                default_status=default_status,
                description=f"{label} refresh of {', '.join(exports)} at `{cron}` {timezone}",
            )
        )
    return schedules


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
    return f"run {run.run_id} of {run.job_name} failed: {detail}"


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
