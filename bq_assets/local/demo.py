"""``python -m bq_assets.local.demo [--verbose]``: materialize every export on the local stack,
one line per step as it ends, then a summary.

Runs all assets and all checks of the unpartitioned exports in one run (the job ``dagster dev``
shows as ``__ASSET_JOB``), then each partitioned export's latest ``DEMO_PARTITIONS`` complete
partitions in one run of their own (as a backfill of them would), then changes a few profiles
of the sample and runs each merge export again: a second, incremental run that moves only
those rows. All through the job's own executor as a run launched from the UI does, against the
instance in ``DAGSTER_HOME``, so the runs appear in the UI afterwards with their full event log
(``--verbose`` prints it here too). Prints rows per hop, the objects, tables, what each merge
moved and every check's result. SIGTERM stops it like Ctrl-C: the executor terminates its step
processes and the run ends as canceled.

A new sample (the first demo of a day, or of another ``BQ_ASSETS_SAMPLE_ROWS``) has other
profiles than the merge exports' tables hold from an earlier demo: their tables are then built
again from the beginning (dropped, and the first run tagged ``bq_assets/cursor_start:
initial``), as a user would rebuild a table whose source was replaced.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb

from bq_assets.dagster_internals import reconstructable_asset_job
from bq_assets.engine.bigquery_metering import JobCosts
from bq_assets.incremental import describe_lookback
from bq_assets.stages.cost import run_cost
from bq_assets.stages.cursor import CURSOR_START_TAG, FROM_INITIAL
from bq_assets.translator import ExportTranslator, bigquery_key, databricks_key, gcs_key, query_key

#: How many of a partitioned export's latest complete partitions the demo materializes.
DEMO_PARTITIONS = 3
#: The tag a demo run carries, so its progress can be followed and a run of a killed demo found.
DEMO_RUN_TAG = "bq_assets/demo_run"
STEP_ENDS = {
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.STEP_UP_FOR_RETRY,
    dg.DagsterEventType.STEP_SKIPPED,
}
POLL_S = 0.5


def _metadata(result: dg.ExecuteJobResult, key: dg.AssetKey) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key == key:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    return {}


def summarize(
    result: dg.ExecuteJobResult,
    exports: list[str],
    delivered: set[str],
    cost: JobCosts | None = None,
) -> str:
    lines = [f"run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}"]
    if cost is not None:
        lines.append(f"cost: {cost.describe()}")
    checks = result.get_asset_check_evaluations()
    for export in exports:
        query = _metadata(result, query_key(export))
        gcs = _metadata(result, gcs_key(export))
        bigquery = _metadata(result, bigquery_key(export))
        databricks = _metadata(result, databricks_key(export))
        lines.append(f"\n{export}")
        if export not in delivered:  # a delivered export has no query
            lines.append(
                f"  query result     {query.get('dagster/row_count', '-'):>8} rows  "
                f"{query.get('dagster/uri', '')}"
            )
        lines.append(
            f"  GCS objects      {gcs.get('dagster/row_count', '-'):>8} rows  "
            f"{gcs.get('dagster/uri', '')}"
        )
        lines += [
            f"                   {'':>8}       {obj['uri']}" for obj in gcs.get("objects", [])
        ]
        if "merge_inserted" in bigquery:
            lines.append(
                f"  merged           {gcs.get('dagster/row_count', '-'):>8} rows  "
                f"{bigquery['cursor_column']} in [{bigquery['cursor_start']}, "
                f"{bigquery['cursor_end']}): {bigquery['merge_inserted']} inserted, "
                f"{bigquery['merge_updated']} updated, {bigquery['merge_deleted']} deleted"
            )
        lines += [
            f"  BigQuery table   {bigquery.get('dagster/row_count', '-'):>8} rows  "
            f"{bigquery.get('dagster/table_name', '')}",
            f"  Databricks table {databricks.get('dagster/row_count', '-'):>8} rows  "
            f"{databricks.get('dagster/table_name', '')} ({databricks.get('engine', '')})",
            "  checks:",
        ]
        lines += [
            f"    {'PASS' if c.passed else 'FAIL'}  {c.asset_key.to_user_string()}: {c.check_name}"
            for c in checks
            if c.asset_key.path[-1] == export
        ]
    passed = sum(c.passed for c in checks)
    lines.append(f"\nchecks: {passed} passed, {len(checks) - passed} failed")
    return "\n".join(lines)


def simulate_deliveries(specs: list) -> None:
    """Before the run: drop one sample delivery for each delivered export (as Amperity would),
    so the run loads it."""
    from bq_assets.local import delivery
    from bq_assets.settings import local_resources

    gcs = local_resources()["gcs"]
    bucket = gcs.get_client().bucket(gcs.get_bucket_name())
    for sent in delivery.simulate_deliveries(specs, bucket):
        print(f"simulated delivery {sent.send}: {len(sent.files)} file(s), marker {sent.marker}")


def prepare_sample() -> bool | None:
    """Before the runs: make the generated sample (the default source) now if the next query
    step would make it again (a new day, another size). True when it was made anew, so the merge
    exports' tables are built again from the beginning; None when a file the generator did not
    make sits where the sample belongs (one message saying whose it is and how to declare it;
    the file is left as it is, and no run starts)."""
    from bq_assets.local import sample_data
    from bq_assets.local.resources import SampleSourceResource
    from bq_assets.settings import local_resources

    source = local_resources()["source"]
    if not isinstance(source, SampleSourceResource):
        return False  # BQ_ASSETS_SOURCE_DATABASE: the user's own default source
    path = Path(source.database)
    if sample_data.is_current(path, source.sample_rows):
        return False
    try:
        sample_data.ensure(path, source.sample_rows)
    except sample_data.NotTheSampleError as exc:
        print(exc, file=sys.stderr)
        return None
    return True


def demo_runs(specs: list, rebuild: bool = False) -> list[tuple[list[str], dict[str, str]]]:
    """The demo's runs: (exports, run tags). The unpartitioned exports together (the merge
    exports' windows from the beginning when ``rebuild``); each partitioned export alone, over
    its latest ``DEMO_PARTITIONS`` complete partitions."""
    translator = ExportTranslator()
    runs: list[tuple[list[str], dict[str, str]]] = []
    unpartitioned = [spec.name for spec in specs if not spec.partitioned]
    if unpartitioned:
        rebuilt = rebuild and any(spec.merged for spec in specs)
        runs.append((unpartitioned, {CURSOR_START_TAG: FROM_INITIAL} if rebuilt else {}))
    for spec in specs:
        definition = translator.get_partitions_def(spec, "query")
        if definition is None:
            continue
        keys = definition.get_partition_keys()[-DEMO_PARTITIONS:]
        range_tags = {
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        }
        runs.append(([spec.name], range_tags))
    return runs


def step_line(entry: dg.EventLogEntry, started: float) -> str:
    """One line for a step that ended: when, which, how, and why when it failed."""
    event = entry.dagster_event
    assert event is not None
    what = {
        dg.DagsterEventType.STEP_SUCCESS: "ok",
        dg.DagsterEventType.STEP_FAILURE: "FAILED",
        dg.DagsterEventType.STEP_UP_FOR_RETRY: "retrying",
        dg.DagsterEventType.STEP_SKIPPED: "skipped",
    }[event.event_type]
    line = f"  [{entry.timestamp - started:6.1f}s] {what:<8} {entry.step_key}"
    if event.event_type == dg.DagsterEventType.STEP_SUCCESS:
        line += f" ({event.step_success_data.duration_ms / 1000:.1f}s)"
    elif event.event_type in (
        dg.DagsterEventType.STEP_FAILURE,
        dg.DagsterEventType.STEP_UP_FOR_RETRY,
    ):
        line += f": {failure_reason(event)}"
    return line


def failure_reason(event: dg.DagsterEvent) -> str:
    """The user's message of a failed step (a ``dg.Failure``'s description), first line."""
    data = event.event_specific_data
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return user.description.strip().splitlines()[0]
    error = getattr(data, "error", None)
    return error.message.strip().splitlines()[0] if error else "no message"


def follow_steps(
    instance: dg.DagsterInstance, tag: str, done: threading.Event, emit: Callable[[str], None]
) -> None:
    """Print a line for each step of the run tagged ``tag`` as it ends, until ``done`` is set
    and every ended step has been printed."""
    started = time.time()
    run_id, cursor = None, None
    while True:
        finishing = done.is_set()
        if run_id is None:
            runs = instance.get_runs(dg.RunsFilter(tags={DEMO_RUN_TAG: tag}), limit=1)
            run_id = runs[0].run_id if runs else None
        if run_id is not None:
            connection = instance.get_records_for_run(run_id, cursor=cursor, of_type=STEP_ENDS)
            for record in connection.records:
                emit(step_line(record.event_log_entry, started))
            cursor = connection.cursor
        if finishing:
            return
        done.wait(POLL_S)


def close_abandoned_runs(instance: dg.DagsterInstance) -> None:
    """Fail the runs an earlier demo left unfinished (killed before it could end them) and free
    the pool slots they held, so this demo's steps do not wait for them forever."""
    unfinished = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]
    for run in instance.get_runs(dg.RunsFilter(statuses=unfinished)):
        if DEMO_RUN_TAG in run.tags:
            instance.report_run_failed(run, "the demo that ran it ended without finishing it")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


def drop_merge_tables(specs: list) -> None:
    """Drop the merge exports' BigQuery tables, to be built again from the beginning."""
    from bq_assets.settings import local_resources

    bigquery = local_resources()["bigquery"]
    with bigquery.get_client() as client:
        for spec in (spec for spec in specs if spec.merged):
            table_id = f"{bigquery.project_id()}.{spec.bigquery.dataset}.{spec.bigquery_table}"
            client.delete_table(table_id, not_found_ok=True)
            print(f"{spec.name}: a new sample: {table_id} is built again from the beginning")


def change_sample() -> int:
    """Change a few profiles of the sample (``sample_data.change_customers``)."""
    from bq_assets.local import sample_data
    from bq_assets.settings import local_resources

    return sample_data.change_customers(Path(local_resources()["source"].database))


def run_demo(verbose: bool) -> bool:
    from bq_assets.exports import exports_dir, load_specs

    specs = load_specs(exports_dir())
    rebuild = prepare_sample()
    if rebuild is None:
        return False
    if rebuild:
        drop_merge_tables(specs)
    simulate_deliveries(specs)
    log_level = "INFO" if verbose else "CRITICAL"
    ok = True
    with dg.DagsterInstance.get() as instance:
        close_abandoned_runs(instance)
        for exports, tags in demo_runs(specs, rebuild):
            chosen = [spec for spec in specs if spec.name in exports]
            if "dagster/asset_partition_range_start" in tags:
                start, end = (
                    tags["dagster/asset_partition_range_start"],
                    tags["dagster/asset_partition_range_end"],
                )
                print(f"\n{', '.join(exports)}: partitions {start}…{end}")
            else:
                print(f"\n{', '.join(exports)}")
            ok = demo_run(instance, specs, chosen, tags, log_level) and ok
        merged = [spec for spec in specs if spec.merged]
        if merged:
            try:
                changed = change_sample()
            except duckdb.Error as exc:  # e.g. `make dev` holds the sample open
                print(f"\ncould not change the sample for a second, incremental run: {exc}")
                return False
            for spec in merged:
                lookback = describe_lookback(spec.load.lookback)
                print(
                    f"\n{spec.name}: {changed} profiles of the sample changed; a second, "
                    f"incremental run moves only them, and the rows its {lookback} lookback "
                    f"sends again ({spec.load.cursor} up to {lookback} before the mark)"
                )
                ok = demo_run(instance, specs, [spec], {}, log_level) and ok
    print("\nThe runs are in the local instance: `make dev` shows them, with every event.")
    return ok


def demo_run(
    instance: dg.DagsterInstance, specs: list, chosen: list, tags: dict[str, str], log_level: str
) -> bool:
    """One run of the ``chosen`` exports' assets and checks, a line per step as it ends, then
    the summary; True when it succeeded and every check passed."""
    translator = ExportTranslator()
    exports = [spec.name for spec in chosen]
    tag = uuid.uuid4().hex
    done = threading.Event()
    follower = threading.Thread(target=follow_steps, args=(instance, tag, done, print), daemon=True)
    follower.start()
    try:
        with dg.execute_job(
            reconstructable_asset_job("bq_assets.definitions"),
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            tags={**tags, DEMO_RUN_TAG: tag},
            asset_selection=[key for spec in chosen for key in translator.asset_keys(spec)],
        ) as result:
            done.set()
            follower.join()
            delivered = {s.name for s in specs if s.delivered}
            cost = run_cost(instance, result.run_id)
            print("\n" + summarize(result, exports, delivered, cost))
    finally:
        done.set()
    checks_ok = all(c.passed for c in result.get_asset_check_evaluations())
    return result.success and checks_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bq_assets.local.demo", description=__doc__)
    parser.add_argument(
        "--verbose", action="store_true", help="print the runs' full event logs as they happen"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))  # as Dagster's own CLI does
    return 0 if run_demo(args.verbose) else 1


if __name__ == "__main__":
    sys.exit(main())
