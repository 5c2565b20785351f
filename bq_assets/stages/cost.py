"""What the BigQuery jobs of a step cost, in sight: every asset and check that runs BigQuery
jobs opens its client with ``bigquery_jobs`` (labelled, capped and counted jobs: see
``bq_assets.engine.bigquery_metering``) and reports ``cost_metadata`` with its result, numeric
so the Dagster UI plots it over time. A step that fails still reports what its jobs cost, as an
observation of its asset, so the run's total (``run_cost``: the demo's summary, the failure
alert) counts it too.

Metadata keys (public: users' history depends on them): ``bigquery_jobs``,
``bigquery_bytes_processed``, ``bigquery_bytes_billed``, ``bigquery_slot_ms``,
``bigquery_job_ms`` (numbers) and ``bigquery_job_costs`` (each job, JSON).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import dagster as dg

from bq_assets.engine.bigquery_metering import JobCost, JobCosts, MeteredClient, job_labels
from bq_assets.exports.spec import ExportSpec
from bq_assets.resources.google import ExportBigQueryResource

Context = dg.AssetExecutionContext | dg.AssetCheckExecutionContext


def cost_metadata(costs: JobCosts) -> dict[str, Any]:
    """The step's BigQuery cost as metadata: totals (numbers, plotted by the UI) and each job."""
    totals = {
        "bigquery_jobs": dg.MetadataValue.int(len(costs.jobs)),
        "bigquery_bytes_processed": dg.MetadataValue.int(costs.bytes_processed),
        "bigquery_bytes_billed": dg.MetadataValue.int(costs.bytes_billed),
        "bigquery_slot_ms": dg.MetadataValue.int(costs.slot_ms),
        "bigquery_job_ms": dg.MetadataValue.int(costs.duration_ms),
    }
    return {**totals, "bigquery_job_costs": dg.MetadataValue.json([asdict(j) for j in costs.jobs])}


def _partition(context: Context) -> str | None:
    if not (context.has_partition_key or context.has_partition_key_range):
        return None
    keys = list(context.partition_keys)
    return keys[0] if len(keys) == 1 else f"{keys[0]}_{keys[-1]}"


def _asset_key(context: Context) -> dg.AssetKey:
    if isinstance(context, dg.AssetCheckExecutionContext):
        return context.check_specs[0].asset_key
    return context.asset_key


def _log_event(context: Context, event: dg.AssetObservation) -> None:
    if isinstance(context, dg.AssetCheckExecutionContext):
        context.op_execution_context.log_event(event)
    else:
        context.log_event(event)


def with_cost(result: dg.AssetCheckResult, costs: JobCosts) -> dg.AssetCheckResult:
    """The check's result with what its BigQuery jobs cost added to its metadata."""
    return result._replace(metadata={**result.metadata, **cost_metadata(costs)})


@contextmanager
def bigquery_jobs(
    context: Context, bigquery: ExportBigQueryResource, spec: ExportSpec
) -> Iterator[MeteredClient]:
    """The step's BigQuery client: each job it creates carries the export's labels plus its
    asset and partition, each query is capped at the export's ``maximum_bytes_billed`` (the
    spec's, else the resource's), and each is counted. Should the step fail, what its jobs cost
    is recorded as an observation of the asset before the error goes on."""
    asset = _asset_key(context)
    labels = job_labels(
        spec.bigquery.labels, spec.name, asset.to_user_string(), _partition(context)
    )
    limit = spec.bigquery.maximum_bytes_billed or bigquery.maximum_bytes_billed
    with bigquery.get_client() as client:
        metered = MeteredClient(client, labels, limit, bigquery.policy_tags)
        try:
            yield metered
        except BaseException:
            costs = metered.costs()
            if costs.jobs:
                context.log.info(f"before it failed, the step ran {costs.describe()}")
                _log_event(context, dg.AssetObservation(asset, metadata=cost_metadata(costs)))
            raise


def run_cost(instance: dg.DagsterInstance, run_id: str) -> JobCosts | None:
    """The totals of every BigQuery cost a run's steps reported (materializations, check
    evaluations, observations of failed steps); None when none did."""
    records = instance.get_records_for_run(
        run_id,
        of_type={
            dg.DagsterEventType.ASSET_MATERIALIZATION,
            dg.DagsterEventType.ASSET_CHECK_EVALUATION,
            dg.DagsterEventType.ASSET_OBSERVATION,
        },
    ).records
    jobs: dict[str, Any] = {}
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        data = event.event_specific_data
        holder = getattr(data, "materialization", None) or getattr(data, "asset_observation", None)
        metadata = getattr(holder or data, "metadata", None) or {}
        listed = metadata.get("bigquery_job_costs")
        for job in listed.value if listed is not None else []:
            jobs[job["job_id"]] = job  # a job reported twice (a retried step) counts once
    if not jobs:
        return None
    return JobCosts([JobCost(**job) for job in jobs.values()])
