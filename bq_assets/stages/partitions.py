"""The Dagster side of partitioned exports: one partitions definition and backfill policy per
export, shared by its four assets, and the window a step's run covers.

The time arithmetic lives in ``bq_assets.partitioning`` (no Dagster).
"""

import datetime as dt

import dagster as dg

from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import ExportSpec
from bq_assets.partitioning import Window
from bq_assets.stages.handoff import Upstream, UpstreamMissingError


def partitions_definition(spec: ExportSpec) -> dg.TimeWindowPartitionsDefinition | None:
    """Days, weeks (starting Mondays) or months in the export's timezone, from
    ``partitioning.start`` up to the last *complete* one (``end_offset`` 0: today's partition
    appears once today is over). None for an unpartitioned export."""
    if spec.partitioning is None:
        return None
    start = spec.partitioning.start.isoformat()
    timezone = spec.timezone
    if spec.partitioning.by == "day":
        return dg.DailyPartitionsDefinition(start_date=start, timezone=timezone, end_offset=0)
    if spec.partitioning.by == "week":
        return dg.WeeklyPartitionsDefinition(
            start_date=start, timezone=timezone, day_offset=1, end_offset=0
        )
    return dg.MonthlyPartitionsDefinition(start_date=start, timezone=timezone, end_offset=0)


def backfill_policy(spec: ExportSpec) -> dg.BackfillPolicy | None:
    """A backfill of a partitioned export runs ``max_partitions_per_run`` partitions per run:
    one query, one set of objects and one load step per run instead of one run per day."""
    if spec.partitioning is None:
        return None
    return dg.BackfillPolicy.multi_run(
        max_partitions_per_run=spec.partitioning.max_partitions_per_run
    )


class NoPartitionError(BqAssetsError):
    """A partitioned export's asset was materialized without choosing a partition."""


def run_window(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, spec: ExportSpec
) -> Window | None:
    """The partitions this step's run covers (None when the export is not partitioned)."""
    if spec.partitioning is None:
        return None
    if not (context.has_partition_key or context.has_partition_key_range):
        raise NoPartitionError(
            f"{spec.name} is partitioned by {spec.partitioning.by}: materialize one partition "
            "or a range of them (in the UI: Materialize, then pick the partitions; a backfill "
            "for a date range)."
        )
    keys = tuple(context.partition_keys)
    return Window(keys=keys, by=spec.partitioning.by, timezone=spec.timezone)


def checked_partitions(
    context: dg.AssetCheckExecutionContext, spec: ExportSpec
) -> list[Window] | None:
    """The partitions a check of this run compares, one window each (None: unpartitioned).

    Dagster 1.13 runs a check once per run, not per partition ("Checks are currently only
    supported per-asset, not per-partition", docs.dagster.io/concepts/assets/asset-checks;
    ``AssetCheckSpec.partitions_def`` is a preview), so a check of a partitioned export compares
    each partition of its run's window, and says which, in its metadata."""
    window = run_window(context, spec)
    return window.split() if window is not None else None


def partition_label(window: Window | None) -> str:
    """What ``{partition}`` in object names renders as: the run's partition key, or
    ``<first>_<last>`` for a run of several ("" when unpartitioned)."""
    if window is None:
        return ""
    return window.keys[0] if len(window.keys) == 1 else f"{window.keys[0]}_{window.keys[-1]}"


class OtherWindowError(UpstreamMissingError):
    """The upstream materialization a partitioned step would use covers other partitions."""


def same_window(upstream: Upstream, window: Window) -> None:
    """Refuse an input written for other partitions than this run's (e.g. a backfill's objects
    of three days for a run of one of them): its rows would not fit the run's window."""
    written = (upstream.handoff.partition_start, upstream.handoff.partition_end)
    if written != (window.start.isoformat(), window.end.isoformat()):
        asset = upstream.key.to_user_string()
        raise OtherWindowError(
            f"{asset}, which this step reads, was materialized by run {upstream.run_id} for "
            f"[{written[0]}, {written[1]}), not for this run's {window.describe()}; "
            f"re-materialize {asset} (with its upstream) for exactly these partitions."
        )


def latest_complete_partition(spec: ExportSpec, now: dt.datetime) -> str | None:
    """The key of the newest partition that has ended by ``now`` in the export's timezone."""
    definition = partitions_definition(spec)
    assert definition is not None
    keys = definition.get_partition_keys(current_time=now)
    return keys[-1] if keys else None
