"""The BigQuery hop on the emulator: retries reattach, failures keep the old data and explain
themselves, schema drift and location mismatches are caught before loading."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, storage
from google.cloud.storage.retry import DEFAULT_RETRY

from bq_assets.engine.bigquery_jobs import retryable
from bq_assets.engine.bigquery_load import (
    LocationError,
    SchemaDriftError,
    bucket_location,
    check_bucket_location,
    check_schema_drift,
    locations_compatible,
    run_load,
)
from bq_assets.engine.manifest import Manifest, Shard
from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import load_spec
from bq_assets.failures import reported_as_failure
from bq_assets.schema import schema_to_json

pytestmark = pytest.mark.stack

SCHEMA = [bigquery.SchemaField("id", "INT64"), bigquery.SchemaField("name", "STRING")]


def spec_for(tmp_path: Path, table: str, extra: str = ""):
    (tmp_path / "t.sql").write_text("SELECT id, name FROM t")
    (tmp_path / "t.yaml").write_text(
        f"primary_key: [id]\ncadence: daily\nbigquery: {{table: {table}{extra}}}\n"
    )
    return load_spec(tmp_path / "t.yaml")


def manifest_of(local_stack, resources, csv_text: str, schema=SCHEMA) -> Manifest:
    run_id = uuid.uuid4().hex
    name = f"tests/{run_id}/part-00000.csv"
    bucket = resources["gcs"].get_client().bucket(local_stack.bucket)
    bucket.blob(name).upload_from_string(csv_text)
    rows = csv_text.count("\n") - 1
    return Manifest(
        export="t",
        run_id=run_id,
        prefix=f"gs://{local_stack.bucket}/tests/{run_id}/",
        rows=rows,
        shards=[Shard(uri=f"gs://{local_stack.bucket}/{name}", rows=rows, bytes=0, crc32c="")],
        bigquery_schema=schema_to_json(schema),
        csv={"header": True, "delimiter": ","},
    )


@pytest.fixture
def log() -> logging.Logger:
    return logging.getLogger("test")


def table_rows(resources, table_id: str) -> list[tuple]:
    with resources["bigquery"].get_client() as client:
        return sorted(tuple(r.values()) for r in client.list_rows(table_id))


def test_a_retried_load_reattaches_to_the_job_it_started(
    local_stack, resources, tmp_path, log, caplog
) -> None:
    spec = spec_for(tmp_path, "reattach")
    manifest = manifest_of(local_stack, resources, "id,name\n1,a\n2,b\n")
    with resources["bigquery"].get_client() as client:
        first = run_load(client, local_stack.project, spec, manifest, log)
        with caplog.at_level(logging.INFO):
            second = run_load(client, local_stack.project, spec, manifest, log)
    assert first.job_id == second.job_id and first.job_id.endswith("_1")
    assert f"reattaching to job {first.job_id} (state DONE)" in caplog.text
    assert f"reattaching to job {first.job_id}_publish_1 (state DONE)" in caplog.text
    assert second.rows == 2


def test_a_failed_load_keeps_the_previous_data_and_names_job_location_and_line(
    local_stack, resources, tmp_path, log
) -> None:
    spec = spec_for(tmp_path, "atomic")
    good = manifest_of(local_stack, resources, "id,name\n1,a\n2,b\n")
    bad = manifest_of(local_stack, resources, "id,name\n3,c\nnot-a-number,d\n")
    table_id = f"{local_stack.project}.amperity_exports.atomic"
    with resources["bigquery"].get_client() as client:
        run_load(client, local_stack.project, spec, good, log)
        with pytest.raises(BqAssetsError) as failure:
            run_load(client, local_stack.project, spec, bad, log)
        assert table_rows(resources, table_id) == [(1, "a"), (2, "b")]
        message = str(failure.value)
        assert "_1 (location US)" in message and table_id in message
        assert "not-a-number" in message
        assert not failure.value.retryable  # bad data: a new attempt cannot fix it
        assert failure.value.metadata["job_id"].endswith("_1")
        assert failure.value.metadata["errors"]

        # The same manifest again: the failed job id is not reused, a new generation runs.
        with pytest.raises(BqAssetsError) as again:
            run_load(client, local_stack.project, spec, bad, log)
        assert again.value.metadata["job_id"].endswith("_2")


def test_schema_drift_fails_with_a_column_by_column_diff(
    local_stack, resources, tmp_path, log
) -> None:
    spec = spec_for(tmp_path, "drift")
    with resources["bigquery"].get_client() as client:
        run_load(
            client,
            local_stack.project,
            spec,
            manifest_of(local_stack, resources, "id,name\n1,a\n"),
            log,
        )
        changed = [bigquery.SchemaField("id", "STRING"), bigquery.SchemaField("name", "STRING"),
                   bigquery.SchemaField("email", "STRING")]  # fmt: skip
        manifest = manifest_of(local_stack, resources, "id,name,email\nx,a,e\n", changed)
        with pytest.raises(SchemaDriftError) as drift:
            run_load(client, local_stack.project, spec, manifest, log)
    message = str(drift.value)
    assert "~ id: INTEGER -> STRING (type change)" in message or "~ id: INT64 -> STRING" in message
    assert "+ email STRING (new column)" in message
    assert table_rows(resources, f"{local_stack.project}.amperity_exports.drift") == [(1, "a")]


def test_an_allowed_field_addition_passes_the_drift_check(tmp_path) -> None:
    # Unit level: the emulator ignores schema_update_options, real BigQuery applies them.
    spec = spec_for(
        tmp_path,
        "addition",
        ", write_disposition: WRITE_APPEND, schema_update_options: [ALLOW_FIELD_ADDITION]",
    )
    wider = [*SCHEMA, bigquery.SchemaField("email", "STRING")]
    assert check_schema_drift(SCHEMA, wider, spec, "p.d.addition") == [
        "+ email STRING (new column)"
    ]
    narrower = SCHEMA[:1]
    with pytest.raises(SchemaDriftError, match=r"- name STRING \(column would be dropped\)"):
        check_schema_drift(SCHEMA, narrower, spec, "p.d.addition")


def test_a_bucket_in_another_location_is_refused_before_loading(tmp_path) -> None:
    spec = spec_for(tmp_path, "far", ", location: asia-northeast1")
    with pytest.raises(LocationError) as error:
        check_bucket_location("exports-bucket", "US-CENTRAL1", spec)
    assert "bigquery.location is asia-northeast1" in str(error.value)
    assert "gs://exports-bucket is in US-CENTRAL1" in str(error.value)
    assert str(tmp_path / "t.yaml") in str(error.value)


@pytest.mark.parametrize(
    ("bucket", "dataset", "ok"),
    [("US-CENTRAL1", "US", True), ("US", "US", True), ("EUROPE-WEST1", "EU", True),
     ("us-east1", "US-EAST1", True), ("US-CENTRAL1", "EU", False), ("EU", "europe-west1", False)],
)  # fmt: skip
def test_location_compatibility_follows_bigquery_rules(bucket: str, dataset: str, ok: bool) -> None:
    assert locations_compatible(bucket, dataset) is ok


@pytest.mark.parametrize(
    ("reason", "retried"),
    [
        ("backendError", True),
        ("internalError", True),
        ("rateLimitExceeded", True),
        ("invalid", False),
        ("invalidQuery", False),
        ("notFound", False),
        ("accessDenied", False),
        ("quotaExceeded", False),
    ],
)
def test_only_failures_a_new_attempt_can_fix_are_retried(reason: str, retried: bool) -> None:
    job = bigquery.LoadJob.from_api_repr(
        {
            "jobReference": {"projectId": "p", "jobId": "job"},
            "configuration": {
                "load": {"destinationTable": {"projectId": "p", "datasetId": "d", "tableId": "t"}}
            },
            "status": {"state": "DONE", "errorResult": {"reason": reason, "message": "..."}},
        },
        client=bigquery.Client(project="p", credentials=AnonymousCredentials()),
    )
    assert retryable(job) is retried


class FakeGcsDenyingBuckets(ThreadingHTTPServer):
    """A fake of the GCS JSON API that answers every request as GCS does for a service account
    without ``storage.buckets.get``: 403 with Google's error body."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), self._Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    class _Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            message = (
                "exporter@acme.iam.gserviceaccount.com does not have storage.buckets.get access "
                "to the Google Cloud Storage bucket. Permission 'storage.buckets.get' denied on "
                "resource (or it may not exist)."
            )
            body = json.dumps(
                {"error": {"code": 403, "message": message,
                           "errors": [{"message": message, "reason": "forbidden"}]}}
            ).encode()  # fmt: skip
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass


@pytest.fixture
def denying_gcs() -> Iterator[storage.Client]:
    fake = FakeGcsDenyingBuckets()
    yield storage.Client(
        project="acme",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": f"http://127.0.0.1:{fake.server_address[1]}"},
    )
    fake.shutdown()
    fake.server_close()


def test_a_bucket_whose_location_cannot_be_read_names_the_permission(denying_gcs) -> None:
    with pytest.raises(LocationError) as error:
        bucket_location(denying_gcs, "exports", DEFAULT_RETRY.with_timeout(5))
    message = str(error.value)
    assert "gs://exports" in message and "lacks storage.buckets.get" in message
    assert "roles/storage.legacyBucketReader" in message


def test_any_permission_denied_ends_the_step_once_naming_the_permission(denying_gcs) -> None:
    with pytest.raises(dg.Failure) as failure, reported_as_failure():
        denying_gcs.bucket("exports").blob("x").download_as_bytes(retry=None)
    assert failure.value.allow_retries is False
    assert "permission denied: 403 GET" in failure.value.description
    assert "storage.buckets.get" in failure.value.description
