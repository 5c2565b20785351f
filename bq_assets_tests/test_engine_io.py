"""What the stages rely on the engine for, called directly on the emulators: a manifest read
back as written, the objects that no longer match it, the retention's log lines, a partitioned
table's column type, an append's widened schema, and a Parquet load. (Written where `make
mutation` found mutants that no fast test reached.)"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import uuid
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import bigquery
from google.cloud.storage.retry import DEFAULT_RETRY

from bq_assets.engine.bigquery_load import (
    LocationError,
    bucket_location,
    check_bucket_location,
    run_load,
)
from bq_assets.engine.bigquery_partitions import _bound, check_partitioning, partition_column_type
from bq_assets.engine.layout import ObjectLayout
from bq_assets.engine.manifest import (
    MANIFEST,
    SUCCESS_MARKER,
    Manifest,
    Shard,
    objects_differing,
    publish_manifest,
    read_manifest,
)
from bq_assets.engine.retention import Tidied, tidy_runs
from bq_assets.engine.upload import delete_objects, delete_prefix, upload
from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import load_spec
from bq_assets.schema import schema_to_json

LOG = logging.getLogger("test_engine_io")
SCHEMA = [bigquery.SchemaField("id", "INTEGER"), bigquery.SchemaField("name", "STRING")]


def test_the_retention_summary_says_what_was_deleted_and_what_was_left() -> None:
    assert Tidied([], [], []).summary() == []
    assert Tidied(["a/", "b/"], ["c/", "f/"], ["d/", "e/"]).summary() == [
        "deleted 2 older run prefix(es): a/, b/",
        "deleted the partial objects of 2 failed run(s): c/, f/",
        "left alone, as their runs may still be writing: d/, e/",
    ]
    assert Tidied([], [], ["d/"]).summary() == [
        "left alone, as their runs may still be writing: d/"
    ]


@pytest.fixture
def bucket(local_stack, resources):
    return resources["gcs"].get_client().bucket(local_stack.bucket)


def written_run(bucket, tmp_path: Path, texts: list[str]) -> Manifest:
    """Objects holding ``texts`` under a run prefix of their own, and their manifest."""
    run_id = uuid.uuid4().hex
    prefix = f"tests/io/{run_id}/"
    shards = []
    for index, text in enumerate(texts):
        local = tmp_path / f"part-{index}.csv"
        local.write_text(text)
        crc = upload(bucket, local, f"{prefix}part-{index}.csv", "text/csv")
        uri = f"gs://{bucket.name}/{prefix}part-{index}.csv"
        shards.append(Shard(uri, text.count("\n") - 1, local.stat().st_size, crc))
    manifest = Manifest(
        "t", run_id, f"gs://{bucket.name}/{prefix}", sum(s.rows for s in shards), shards,
        schema_to_json(SCHEMA), {"header": True, "delimiter": ","},
    )  # fmt: skip
    publish_manifest(bucket, prefix, manifest)
    return manifest


@pytest.mark.stack
def test_a_published_manifest_reads_back_as_written_and_a_gone_one_is_not_found(
    bucket, resources, tmp_path: Path
) -> None:
    manifest = written_run(bucket, tmp_path, ["id,name\n1,a\n"])
    client = resources["gcs"].get_client()
    assert read_manifest(client, manifest.prefix + MANIFEST) == manifest
    bucket.blob(manifest.prefix.removeprefix(f"gs://{bucket.name}/") + MANIFEST).delete()
    with pytest.raises(gexc.NotFound):
        read_manifest(client, manifest.prefix + MANIFEST)


@pytest.mark.stack
def test_objects_that_no_longer_match_the_manifest_are_named_in_its_order(
    bucket, resources, tmp_path: Path
) -> None:
    manifest = written_run(bucket, tmp_path, ["id,name\n1,a\n", "id,name\n2,b\n", "id,name\n3,c\n"])
    client = resources["gcs"].get_client()
    assert objects_differing(client, manifest) == []
    first, second, third = manifest.shards
    name = first.uri.removeprefix(f"gs://{bucket.name}/")
    bucket.blob(name).upload_from_string("id,name\n1,altered\n")
    bucket.blob(third.uri.removeprefix(f"gs://{bucket.name}/")).delete()
    altered = bucket.get_blob(name)
    assert objects_differing(client, manifest) == [
        f"{first.uri}: size {altered.size} crc32c {altered.crc32c}, "
        f"manifest says {first.bytes} / {first.crc32c}",
        f"{third.uri}: missing",
    ]
    same_size = dataclasses.replace(second, crc32c="AAAAAA==")  # right size, other checksum
    assert objects_differing(client, dataclasses.replace(manifest, shards=[same_size])) == [
        f"{second.uri}: size {second.bytes} crc32c {bucket.get_blob(second.uri.split('/', 3)[3]).crc32c}, "
        f"manifest says {second.bytes} / AAAAAA=="
    ]


@pytest.mark.stack
def test_a_partitioned_tables_column_type_is_read_from_the_table(local_stack, resources) -> None:
    table_id = f"{local_stack.project}.amperity_exports.io_partitioned_{uuid.uuid4().hex[:8]}"
    table = bigquery.Table(
        table_id,
        schema=[bigquery.SchemaField("id", "INTEGER"), bigquery.SchemaField("sold_at", "DATE")],
    )
    table.time_partitioning = bigquery.TimePartitioning(type_="DAY", field="sold_at")
    with resources["bigquery"].get_client() as client:
        client.create_dataset(f"{local_stack.project}.amperity_exports", exists_ok=True)
        client.create_table(table)
        assert partition_column_type(client, table_id, "sold_at") == "DATE"
        assert partition_column_type(client, table_id, "id") == "INTEGER"


@pytest.mark.stack
def test_a_parquet_manifest_loads_exactly_its_rows(
    local_stack, resources, bucket, tmp_path: Path
) -> None:
    (tmp_path / "t.sql").write_text("SELECT id, name FROM t")
    (tmp_path / "t.yaml").write_text(
        "primary_key: [id]\ncadence: daily\nformat: parquet\nbigquery: {table: io_parquet}\n"
    )
    spec = load_spec(tmp_path / "t.yaml")
    local = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "name": ["a", None]}), local)
    run_id = uuid.uuid4().hex
    name = f"tests/io/{run_id}/part-0.parquet"
    crc = upload(bucket, local, name, "application/octet-stream")
    uri = f"gs://{bucket.name}/{name}"
    manifest = Manifest(
        "t", run_id, f"gs://{bucket.name}/tests/io/{run_id}/", 2,
        [Shard(uri, 2, local.stat().st_size, crc)], schema_to_json(SCHEMA), format="parquet",
    )  # fmt: skip
    with resources["bigquery"].get_client() as client:
        client.delete_table(f"{local_stack.project}.amperity_exports.io_parquet", not_found_ok=True)
        result = run_load(client, local_stack.project, spec, manifest, LOG)
        rows = sorted(tuple(r.values()) for r in client.list_rows(result.table_id))
    assert rows == [(1, "a"), (2, None)] and result.rows == 2


@pytest.mark.stack
def test_the_manifest_is_json_and_the_marker_an_empty_text(bucket, tmp_path: Path) -> None:
    manifest = written_run(bucket, tmp_path, ["id,name\n1,a\n"])
    prefix = manifest.prefix.removeprefix(f"gs://{bucket.name}/")
    written, marker = bucket.get_blob(prefix + MANIFEST), bucket.get_blob(prefix + SUCCESS_MARKER)
    assert (written.content_type, marker.content_type) == ("application/json", "text/plain")
    assert marker.download_as_bytes() == b""
    assert bucket.get_blob(prefix + "part-0.csv").content_type == "text/csv"  # upload's


@pytest.mark.stack
def test_deleting_a_prefix_deletes_exactly_its_objects_and_counts_them(
    bucket, tmp_path: Path
) -> None:
    kept = written_run(bucket, tmp_path, ["id,name\n1,a\n"])
    gone = written_run(bucket, tmp_path, ["id,name\n1,a\n", "id,name\n2,b\n"])
    prefix = gone.prefix.removeprefix(f"gs://{bucket.name}/")
    assert (
        delete_prefix(bucket, prefix, DEFAULT_RETRY) == 4
    )  # two objects, the manifest and _SUCCESS
    assert list(bucket.list_blobs(prefix=prefix)) == []
    kept_prefix = kept.prefix.removeprefix(f"gs://{bucket.name}/")
    assert len(list(bucket.list_blobs(prefix=kept_prefix))) == 3
    assert delete_prefix(bucket, prefix, DEFAULT_RETRY) == 0
    # An object deleted by someone else between the listing and the delete is not counted.
    already_gone = bucket.blob(kept_prefix + "part-0.csv")
    already_gone.delete()
    assert delete_objects([already_gone, bucket.blob(kept_prefix + MANIFEST)], DEFAULT_RETRY) == 1


@pytest.mark.stack
def test_keeping_one_run_deletes_every_earlier_complete_run_of_this_export_only(
    bucket,
) -> None:
    export = f"io{uuid.uuid4().hex[:8]}"

    def run(name: str, run_id: str, complete: bool = True) -> ObjectLayout:
        layout = ObjectLayout(
            "exports/{export}/{run}/part-{shard}", name, run_id, dt.date(2026, 1, 31), ".csv"
        )
        bucket.blob(layout.shard(0)).upload_from_string(b"id\n1\n")
        if complete:
            bucket.blob(layout.run_prefix + SUCCESS_MARKER).upload_from_string(b"")
        return layout

    first, second = run(export, "r-first"), run(export, "r-second")
    writing = run(export, "r-writing", complete=False)
    other = run(export + "x", "r-other")  # another export whose name starts alike
    current = run(export, "r-current")
    tidied = tidy_runs(bucket, current, keep=1, run_finished=lambda run_id: False)
    where = f"gs://{bucket.name}/"
    assert sorted(tidied.old) == sorted([where + first.run_prefix, where + second.run_prefix])
    assert tidied.in_flight == [where + writing.run_prefix] and tidied.abandoned == []
    assert {b.name.split("/")[2] for b in bucket.list_blobs(prefix=current.export_prefix)} == {
        "r-writing",
        "r-current",
    }
    assert len(list(bucket.list_blobs(prefix=other.run_prefix))) == 2


def test_a_bucket_in_another_location_is_refused_with_one_whole_message(tmp_path: Path) -> None:
    (tmp_path / "t.sql").write_text("SELECT id FROM t")
    (tmp_path / "t.yaml").write_text(
        "primary_key: [id]\ncadence: daily\nbigquery: {location: EU}\n"
    )
    spec = load_spec(tmp_path / "t.yaml")
    with pytest.raises(LocationError) as refused:
        check_bucket_location("b", "US-EAST1", spec)
    assert str(refused.value) == (
        f"{tmp_path / 't.yaml'}: bigquery.location is EU, but bucket gs://b is in US-EAST1; "
        "BigQuery cannot load across locations. Use a bucket in the dataset's location or "
        "change bigquery.location."
    )


NEW_YORK_MIDNIGHT = dt.datetime(2026, 1, 5, tzinfo=ZoneInfo("America/New_York"))


@pytest.mark.parametrize(
    ("column_type", "value", "expected"),
    [
        ("DATE", NEW_YORK_MIDNIGHT, ("DATE", dt.date(2026, 1, 5))),
        ("DATE", dt.date(2026, 1, 5), ("DATE", dt.date(2026, 1, 5))),
        ("DATETIME", NEW_YORK_MIDNIGHT, ("DATETIME", dt.datetime(2026, 1, 5, 5))),
        ("TIMESTAMP", NEW_YORK_MIDNIGHT, ("TIMESTAMP", dt.datetime(2026, 1, 5, 5, tzinfo=dt.UTC))),
    ],
)
def test_a_window_bound_is_a_parameter_of_the_columns_type(
    column_type: str, value, expected: tuple
) -> None:
    """A DATE bound is the local date; a DATETIME the UTC wall time (as the query step compared
    it); a TIMESTAMP the instant."""
    parameter = _bound(value, column_type)
    assert (parameter.name, parameter.type_, parameter.value) == (None, *expected)
    if isinstance(expected[1], dt.datetime):
        assert parameter.value.tzinfo == expected[1].tzinfo


def partitioned(field: str, type_: str) -> bigquery.Table:
    table = bigquery.Table("p.d.t", schema=[bigquery.SchemaField(field, "DATE")])
    table.time_partitioning = bigquery.TimePartitioning(type_=type_, field=field)
    return table


def test_a_table_partitioned_otherwise_is_refused_saying_how(tmp_path: Path) -> None:
    (tmp_path / "s.sql").write_text(
        "SELECT id, sold_at FROM s WHERE sold_at >= $partition_start AND sold_at < $partition_end"
    )
    (tmp_path / "s.yaml").write_text(
        "primary_key: [id]\ncadence: daily\n"
        "partitioning: {by: day, start: 2026-01-01, column: sold_at}\n"
    )
    spec = load_spec(tmp_path / "s.yaml")
    config = bigquery.LoadJobConfig(
        time_partitioning=bigquery.TimePartitioning(type_="DAY", field="sold_at")
    )
    check_partitioning(partitioned("sold_at", "DAY"), config, spec)  # as the export: fine
    advice = (
        f"but {tmp_path / 's.yaml'} partitions it by DAY on sold_at: BigQuery cannot change a "
        "table's partitioning. Drop the table deliberately and load it again (backfill its "
        "partitions), or load into another table (bigquery.table)."
    )
    for table, what in [
        (partitioned("sold_at", "MONTH"), "partitioned by MONTH on sold_at"),
        (partitioned("day", "DAY"), "partitioned by DAY on day"),
        (bigquery.Table("p.d.t"), "not partitioned"),
    ]:
        with pytest.raises(BqAssetsError) as refused:
            check_partitioning(table, config, spec)
        assert str(refused.value) == f"p.d.t is {what}, {advice}"


class RecordingRetry:
    """A retry policy that retries nothing and notes each error it was asked about: a call
    that fails and notes nothing did not use the policy it was given."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def policy(self) -> Retry:
        return Retry(predicate=self._ask, initial=0.01, maximum=0.01, timeout=5)

    def _ask(self, exc: Exception) -> bool:
        self.asked.append(type(exc).__name__)
        return False


@pytest.mark.stack
def test_each_gcs_call_takes_the_retry_policy_it_is_given(resources) -> None:
    """``retry`` is how a step bounds its GCS calls (``retry_timeout_s``, which the fault suite
    relies on to fail in seconds): every engine call must hand it to the client. Each call
    below meets a missing bucket (404), which only a policy it was given can be asked about."""
    client = resources["gcs"].get_client()
    missing = client.bucket(f"no-such-bucket-{uuid.uuid4().hex[:8]}")
    layout = ObjectLayout("exports/{export}/{run}/part-{shard}", "t", "r", dt.date(2026, 1, 31), ".csv")  # fmt: skip
    # (Uploads and downloads, ``upload``, ``publish_manifest`` and ``read_manifest``, ask their
    # policy only about transient errors, 429 and 5xx, which the emulator does not give.)
    calls = {
        "bucket_location": lambda retry: bucket_location(client, missing.name, retry),
        "delete_prefix": lambda retry: delete_prefix(missing, "p/", retry),
        "delete_objects": lambda retry: delete_objects([missing.blob("x")], retry),
        "tidy_runs": lambda retry: tidy_runs(missing, layout, 1, lambda _: False, retry),
    }
    unasked = []
    for name, call in calls.items():
        recording = RecordingRetry()
        with contextlib.suppress(gexc.NotFound):
            call(recording.policy())
        if "NotFound" not in recording.asked:
            unasked.append(name)
    assert unasked == []
