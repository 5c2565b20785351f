"""The hand-off between stages, on the real local stack: only URIs cross a step boundary, each
step reads its own run's upstream output (else the latest, and says which), and an input that
no longer exists fails the step once, naming the asset to re-materialize."""

from __future__ import annotations

import threading
from pathlib import Path

import dagster as dg
import pytest
from google.cloud import storage

from bq_assets.engine.bigquery_jobs import count_rows
from bq_assets.exports import ExportSpec
from bq_assets.factory import build_definitions
from bq_assets.local.resources import SampleSourceResource
from bq_assets.stages.query import RunStatus, tidy_snapshots
from bq_assets.translator import bigquery_key, gcs_key, query_key
from bq_assets_tests.conftest import run_exports, step_errors
from bq_assets_tests.test_pipeline import metadata

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def spec(shipped_specs: list[ExportSpec]) -> ExportSpec:
    return next(s for s in shipped_specs if s.name == "customer_360")


def object_of(resources: dict, uri: str) -> storage.Blob:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return resources["gcs"].get_client().bucket(bucket).blob(name)


def attempts(result: dg.ExecuteInProcessResult, step_key: str) -> int:
    """How many times the step ran: once, plus once per restart after a retry."""
    restarts = [
        e
        for e in result.all_events
        if e.step_key == step_key and e.event_type == dg.DagsterEventType.STEP_RESTARTED
    ]
    return 1 + len(restarts)


def test_a_deleted_snapshot_fails_the_gcs_step_once_naming_the_query_asset(
    spec, resources, instance
) -> None:
    first = run_exports([spec], resources, instance, "query/customer_360")
    assert first.success, step_errors(first)
    snapshot = metadata(first, query_key(spec.name))["snapshot_uri"]
    object_of(resources, snapshot).delete()

    second = run_exports([spec], resources, instance, "gcs/customer_360")

    assert not second.success
    message = step_errors(second)["gcs__customer_360"]
    assert f"The snapshot {snapshot}" in message
    assert f"written by run {first.run_id}" in message
    assert "re-materialize query/customer_360" in message
    assert "FileNotFoundError" not in message and "Traceback" not in message
    assert attempts(second, "gcs__customer_360") == 1


def test_a_deleted_manifest_fails_the_bigquery_step_once_naming_the_gcs_asset(
    spec, resources, instance
) -> None:
    first = run_exports([spec], resources, instance, ["query/customer_360", "gcs/customer_360"])
    assert first.success, step_errors(first)
    manifest = metadata(first, gcs_key(spec.name))["manifest_uri"]
    object_of(resources, manifest).delete()

    second = run_exports([spec], resources, instance, "bigquery/customer_360")

    message = step_errors(second)["bigquery__customer_360"]
    assert f"The manifest {manifest}" in message
    assert "re-materialize gcs/customer_360" in message
    assert attempts(second, "bigquery__customer_360") == 1


def test_a_later_run_of_one_stage_uses_the_latest_materialization_and_names_its_run(
    spec, resources, instance
) -> None:
    first = run_exports([spec], resources, instance, "query/customer_360")
    second = run_exports([spec], resources, instance, "gcs/customer_360")
    assert second.success, step_errors(second)
    assert metadata(second, gcs_key(spec.name))["input_run_id"] == first.run_id
    logged = [
        entry.user_message
        for entry in instance.all_logs(second.run_id)
        if entry.step_key == "gcs__customer_360" and "input query/" in entry.user_message
    ]
    assert logged and f"the latest materialization, from run {first.run_id}" in logged[0]


def test_two_interleaved_runs_of_one_export_each_export_their_own_snapshot(
    spec, resources, instance, tmp_path: Path
) -> None:
    """Run A snapshots, then run B snapshots (from a source of another size) and exports, then
    run A exports: A must export A's snapshot although B's is the latest."""
    a_snapshotted, b_done = threading.Event(), threading.Event()

    @dg.success_hook(name="pause_after_the_snapshot")
    def pause_after_the_snapshot(context: dg.HookContext) -> None:
        if context.op.name == "query__customer_360":
            a_snapshotted.set()
            assert b_done.wait(timeout=120), "run B did not finish"

    selection = dg.AssetSelection.assets(query_key(spec.name), gcs_key(spec.name))
    job = dg.define_asset_job("run_a", selection=selection, hooks={pause_after_the_snapshot})
    defs = build_definitions([spec], resources, dg.DefaultScheduleStatus.STOPPED)
    defs = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    results: dict[str, dg.ExecuteInProcessResult] = {}

    def run_a() -> None:
        results["a"] = defs.resolve_job_def("run_a").execute_in_process(
            instance=instance, raise_on_error=False
        )

    other_source = SampleSourceResource(
        database=str(tmp_path / "smaller.duckdb"), staging_dir=str(tmp_path), sample_rows=50
    )
    thread = threading.Thread(target=run_a)
    thread.start()
    try:
        assert a_snapshotted.wait(timeout=120)
        results["b"] = run_exports(
            [spec],
            {**resources, "source": other_source},
            instance,
            ["query/customer_360", "gcs/customer_360"],
        )
    finally:
        b_done.set()
        thread.join(timeout=300)

    a, b = results["a"], results["b"]
    assert a.success, step_errors(a)
    assert b.success, step_errors(b)
    for result in (a, b):
        query, gcs = metadata(result, query_key(spec.name)), metadata(result, gcs_key(spec.name))
        assert gcs["input_run_id"] == result.run_id
        assert gcs["dagster/row_count"] == query["dagster/row_count"]
    assert (
        metadata(a, gcs_key(spec.name))["dagster/row_count"]
        != metadata(b, gcs_key(spec.name))["dagster/row_count"]
    )


def test_snapshot_retention_decides_by_run_status_never_deleting_an_unfinished_run(
    resources,
) -> None:
    bucket = resources["gcs"].get_client().bucket(resources["gcs"].get_bucket_name())
    prefix = "staging-retention-test/x/"
    runs = {
        "current": RunStatus(created=500, finished=False),
        "newer_done": RunStatus(created=400, finished=True),
        "new_done": RunStatus(created=300, finished=True),
        "old_done": RunStatus(created=200, finished=True),
        "old_still_running": RunStatus(created=100, finished=False),
    }
    for run_id in [*runs, "unknown_to_the_instance"]:
        bucket.blob(f"{prefix}{run_id}/snapshot.parquet").upload_from_string(b"x")

    deleted = tidy_snapshots(bucket, prefix, "current", 3, lambda ids: runs)

    assert deleted == [f"gs://{bucket.name}/{prefix}old_done/"]
    left = {b.name.removeprefix(prefix).split("/")[0] for b in bucket.list_blobs(prefix=prefix)}
    assert left == {
        "current",
        "newer_done",
        "new_done",
        "old_still_running",
        "unknown_to_the_instance",
    }


def test_the_bigquery_stage_names_the_run_of_the_manifest_it_loaded(
    spec, resources, instance
) -> None:
    result = run_exports(
        [spec], resources, instance, [f"{k}/customer_360" for k in ("query", "gcs", "bigquery")]
    )
    assert result.success, step_errors(result)
    assert metadata(result, bigquery_key(spec.name))["input_run_id"] == result.run_id


def test_repairing_a_deleted_table_loads_it_again_with_a_new_job(spec, resources, instance) -> None:
    selection = [f"{hop}/customer_360" for hop in ("query", "gcs", "bigquery")]
    first = run_exports([spec], resources, instance, selection)
    assert first.success, step_errors(first)
    loaded = metadata(first, bigquery_key(spec.name))
    with resources["bigquery"].get_client() as client:
        client.delete_table(loaded["dagster/table_name"])

    repair = run_exports([spec], resources, instance, "bigquery/customer_360")

    assert repair.success, step_errors(repair)
    repaired = metadata(repair, bigquery_key(spec.name))
    assert repaired["input_run_id"] == first.run_id  # the same manifest, loaded again
    assert repaired["job_id"] != loaded["job_id"]
    assert repaired["dagster/row_count"] == loaded["dagster/row_count"] > 0


def test_repairing_an_altered_table_loads_it_again(spec, resources, instance) -> None:
    selection = [f"{hop}/customer_360" for hop in ("query", "gcs", "bigquery")]
    first = run_exports([spec], resources, instance, selection)
    assert first.success, step_errors(first)
    loaded = metadata(first, bigquery_key(spec.name))
    table_id = loaded["dagster/table_name"]
    with resources["bigquery"].get_client() as client:
        client.query(f"DELETE FROM `{table_id}` WHERE amperity_id IN "
                     f"(SELECT amperity_id FROM `{table_id}` LIMIT 10)").result()  # fmt: skip
        assert count_rows(client, table_id) == loaded["dagster/row_count"] - 10

    repair = run_exports([spec], resources, instance, "bigquery/customer_360")

    assert repair.success, step_errors(repair)
    assert (
        metadata(repair, bigquery_key(spec.name))["dagster/row_count"]
        == loaded["dagster/row_count"]
    )
    assert metadata(repair, bigquery_key(spec.name))["job_id"] != loaded["job_id"]


def test_a_deleted_table_fails_the_databricks_step_once_naming_the_bigquery_asset(
    spec, resources, instance
) -> None:
    loaded = run_exports(
        [spec],
        resources,
        instance,
        ["query/customer_360", "gcs/customer_360", "bigquery/customer_360"],
    )
    assert loaded.success, step_errors(loaded)
    table_id = metadata(loaded, bigquery_key(spec.name))["dagster/table_name"]
    with resources["bigquery"].get_client() as client:
        client.delete_table(table_id)

    published = run_exports([spec], resources, instance, "databricks/customer_360")

    message = step_errors(published)["databricks__customer_360"]
    assert f"The table {table_id}" in message
    assert "re-materialize bigquery/customer_360" in message
    assert attempts(published, "databricks__customer_360") == 1
