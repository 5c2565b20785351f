"""``python -m bq_assets.demo``: materialize every export on the local stack and summarize.

Runs all assets and all checks of the unpartitioned exports in one run (the same job
``dagster dev`` shows as ``__ASSET_JOB``), then each partitioned export's latest
``DEMO_PARTITIONS`` complete partitions in one run of their own (as a backfill of them would),
through the job's own executor as a run launched from the UI does, against the instance in
``DAGSTER_HOME``, so the runs appear in the UI afterwards. Prints rows per hop, the objects,
tables and every check's result. SIGTERM stops it like Ctrl-C: the executor terminates its step
processes and the run ends as canceled.
"""

from __future__ import annotations

import signal
import sys

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository

from bq_assets.stages import bigquery_key, databricks_key, gcs_key, query_key

STAGE_KEYS = (query_key, gcs_key, bigquery_key, databricks_key)


def _metadata(result: dg.ExecuteJobResult, key: dg.AssetKey) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key == key:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    return {}


def summarize(result: dg.ExecuteJobResult, exports: list[str]) -> str:
    lines = [f"run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}"]
    checks = result.get_asset_check_evaluations()
    for export in exports:
        query = _metadata(result, query_key(export))
        gcs = _metadata(result, gcs_key(export))
        bigquery = _metadata(result, bigquery_key(export))
        databricks = _metadata(result, databricks_key(export))
        lines += [
            f"\n{export}",
            f"  query result     {query.get('dagster/row_count', '-'):>8} rows  {query.get('dagster/uri', '')}",
            f"  GCS CSV          {gcs.get('dagster/row_count', '-'):>8} rows  {gcs.get('dagster/uri', '')}",
        ]
        lines += [
            f"                   {'':>8}       {obj['uri']}" for obj in gcs.get("objects", [])
        ]
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
    so the run loads it (issue 16)."""
    from bq_assets.local import delivery
    from bq_assets.settings import local_resources

    gcs = local_resources()["gcs"]
    bucket = gcs.get_client().bucket(gcs.get_bucket_name())
    for sent in delivery.simulate_deliveries(specs, bucket):
        print(f"simulated delivery {sent.send}: {len(sent.files)} file(s), marker {sent.marker}")


def demo_job() -> ReconstructableJob:
    """Every asset and check of the code location (``__ASSET_JOB``), as a step process of the
    multiprocess executor loads it: from the module, like the UI's run worker."""
    return ReconstructableRepository.for_module(
        "bq_assets.definitions", "defs"
    ).get_reconstructable_job("__ASSET_JOB")


#: How many of a partitioned export's latest complete partitions the demo materializes.
DEMO_PARTITIONS = 3


def demo_runs(specs: list) -> list[tuple[list[str], dict[str, str]]]:
    """The demo's runs: (exports, run tags). The unpartitioned exports together; each
    partitioned export alone, over its latest ``DEMO_PARTITIONS`` complete partitions."""
    from bq_assets.stages.partitions import partitions_definition

    runs: list[tuple[list[str], dict[str, str]]] = []
    unpartitioned = [spec.name for spec in specs if not spec.partitioned]
    if unpartitioned:
        runs.append((unpartitioned, {}))
    for spec in specs:
        definition = partitions_definition(spec)
        if definition is None:
            continue
        keys = definition.get_partition_keys()[-DEMO_PARTITIONS:]
        range_tags = {
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        }
        runs.append(([spec.name], range_tags))
    return runs


def main() -> int:
    from bq_assets.exports import exports_dir, load_specs

    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))  # as Dagster's own CLI does
    specs = load_specs(exports_dir())
    simulate_deliveries(specs)
    delivered = {spec.name for spec in specs if spec.delivered}
    ok = True
    with dg.DagsterInstance.get() as instance:
        for exports, tags in demo_runs(specs):
            selection = [
                key(export)
                for export in exports
                for key in STAGE_KEYS
                if not (key is query_key and export in delivered)
            ]
            with dg.execute_job(
                demo_job(),
                instance=instance,
                raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
                tags=tags,
                asset_selection=selection,
            ) as result:
                if tags:
                    print(
                        f"\npartitions {tags['dagster/asset_partition_range_start']}…"
                        f"{tags['dagster/asset_partition_range_end']}"
                    )
                print(summarize(result, exports))
            for event in result.all_events:
                if event.is_step_failure and event.step_failure_data.error:
                    print(
                        f"\nstep {event.step_key} failed: {event.step_failure_data.error.message}",
                        file=sys.stderr,
                    )
            checks_ok = all(c.passed for c in result.get_asset_check_evaluations())
            ok = ok and result.success and checks_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
