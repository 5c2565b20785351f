"""What the stages rely on the engine for, called directly on the emulators: a manifest read
back as written, the objects that no longer match it, the retention's log lines, a partitioned
table's column type, an append's widened schema, and a Parquet load. (Written where `make
mutation` found mutants that no fast test reached.)"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bq_assets.engine.bigquery_load import _widen_for_append, run_load
from bq_assets.engine.bigquery_partitions import partition_column_type
from bq_assets.engine.manifest import (
    MANIFEST,
    Manifest,
    Shard,
    objects_differing,
    publish_manifest,
    read_manifest,
)
from bq_assets.engine.retention import Tidied
from bq_assets.engine.upload import upload
from bq_assets.exports.spec import load_spec
from bq_assets.schema import schema_to_json

LOG = logging.getLogger("test_engine_io")
SCHEMA = [bigquery.SchemaField("id", "INTEGER"), bigquery.SchemaField("name", "STRING")]


def test_the_retention_summary_says_what_was_deleted_and_what_was_left() -> None:
    assert Tidied([], [], []).summary() == []
    assert Tidied(["a/", "b/"], ["c/"], ["d/", "e/"]).summary() == [
        "deleted 2 older run prefix(es): a/, b/",
        "deleted the partial objects of 1 failed run(s): c/",
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
def test_an_append_widens_the_tables_schema_before_its_copy(local_stack, resources) -> None:
    """``tables.patch`` with the new NULLABLE column at the end (the copy that follows it is
    live only: the emulator hangs on a copy into a patched table)."""
    table_id = f"{local_stack.project}.amperity_exports.io_widened_{uuid.uuid4().hex[:8]}"
    widened = [*SCHEMA, bigquery.SchemaField("email", "STRING")]
    with resources["bigquery"].get_client() as client:
        client.create_dataset(f"{local_stack.project}.amperity_exports", exists_ok=True)
        client.create_table(bigquery.Table(table_id, schema=SCHEMA))
        _widen_for_append(client, table_id, widened, LOG)
        found = client.get_table(table_id).schema
    assert [(f.name, f.field_type, f.mode) for f in found] == [
        ("id", "INTEGER", "NULLABLE"),
        ("name", "STRING", "NULLABLE"),
        ("email", "STRING", "NULLABLE"),
    ]


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
