"""How BigQuery jobs are started and waited for, against what BigQuery documents: a job insert
retried by the client meets 409 Already Exists and is reattached to, and a job whose status
cannot be read while it runs is never taken for a finished one.

The emulator runs every job to completion inside its insert and accepts a second insert of the
same job id, so neither behaviour can happen there: the insert is run on the emulator and the
documented answer to its retry is raised as BigQuery gives it, and the status polls come from
``FakeJobsApi``, a named fake of ``jobs.get``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from bq_assets.engine.bigquery_jobs import (
    TRANSIENT,
    refused_connection,
    start_or_reattach,
    wait_for,
)
from bq_assets.errors import BqAssetsError

log = logging.getLogger("test")


class FakeJobsApi(ThreadingHTTPServer):
    """A named fake of BigQuery's ``jobs.get`` for one job that is still RUNNING: the first poll
    answers RUNNING, every later one fails as BigQuery's API can fail a read the client does not
    retry (here 404 ``notFound``, which BigQuery can answer for a job right after its insert:
    googleapis/python-bigquery issue 2134; error body as in
    https://cloud.google.com/bigquery/docs/error-messages). ``polls`` counts the requests."""

    def __init__(self, job: dict) -> None:
        self.job = job
        self.polls = 0
        super().__init__(("127.0.0.1", 0), _JobsHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _JobsHandler(BaseHTTPRequestHandler):
    server: FakeJobsApi

    def do_GET(self) -> None:
        self.server.polls += 1
        if self.server.polls == 1:
            status, body = 200, self.server.job
        else:
            message = f"Not found: Job p:US.{self.server.job['jobReference']['jobId']}"
            status = 404
            body = {"error": {"code": 404, "message": message, "status": "NOT_FOUND",
                              "errors": [{"message": message, "domain": "global",
                                          "reason": "notFound"}]}}  # fmt: skip
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def running_load() -> Iterator[tuple[bigquery.LoadJob, FakeJobsApi]]:
    resource = {
        "jobReference": {"projectId": "p", "jobId": "bq_assets_orders_1", "location": "US"},
        "configuration": {
            "load": {
                "sourceUris": ["gs://b/exports/orders/run/part-00000.csv.gz"],
                "destinationTable": {"projectId": "p", "datasetId": "d", "tableId": "orders"},
            }
        },
        "status": {"state": "RUNNING"},
    }
    fake = FakeJobsApi(resource)
    client = bigquery.Client(
        project="p",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": fake.endpoint},
    )
    yield bigquery.LoadJob.from_api_repr(resource, client), fake
    fake.shutdown()
    fake.server_close()


def test_a_job_whose_status_cannot_be_read_while_it_runs_is_not_taken_for_finished(
    running_load,
) -> None:
    """Before: the client's error was swallowed with the job's own errors, the job (still
    RUNNING, no error) looked finished and the staging table was published while being loaded."""
    job, fake = running_load
    with pytest.raises(BqAssetsError) as error:
        wait_for(job, "p.d.orders", "US", table_existed=True)
    assert fake.polls >= 2, "the fake was polled until it failed"
    message = str(error.value)
    assert "bq_assets_orders_1 (location US) for p.d.orders was still RUNNING" in message
    assert "NotFound" in message and "nothing was published" in message
    assert "reattaches" in message
    assert error.value.retryable  # the step's retry reattaches to the job by its id
    assert error.value.metadata["job_id"] == "bq_assets_orders_1"


@pytest.mark.stack
def test_a_job_insert_retried_after_its_answer_was_lost_is_reattached_not_failed(
    local_stack, resources, caplog
) -> None:
    """The client retries a job insert whose answer was lost; when the first insert had reached
    BigQuery, the retry is answered 409 Already Exists (python-bigquery's query path handles it
    the same way, fetching the job: googleapis/python-bigquery#751). The job is ours: reattach.
    Before: the Conflict ended the step although the load was running."""
    project = local_stack.project
    name = f"tests/{uuid.uuid4().hex}/part-00000.csv"
    gcs_client = resources["gcs"].get_client()
    gcs_client.bucket(local_stack.bucket).blob(name).upload_from_string("id\n1\n2\n")
    config = bigquery.LoadJobConfig(
        schema=[bigquery.SchemaField("id", "INT64")], skip_leading_rows=1,
        write_disposition="WRITE_TRUNCATE",
    )  # fmt: skip
    inserts: list[str] = []
    base = f"bq_assets_conflict_{uuid.uuid4().hex[:12]}"

    with resources["bigquery"].get_client() as client:
        client.create_dataset(f"{project}.jobs_test", exists_ok=True)

        def start(job_id: str) -> bigquery.LoadJob:
            inserts.append(job_id)
            # The first insert reaches BigQuery (on the emulator) and its answer is lost ...
            client.load_table_from_uri(
                f"gs://{local_stack.bucket}/{name}", f"{project}.jobs_test.conflict",
                job_id=job_id, location="US", job_config=config,
            )  # fmt: skip
            # ... and the client's retry of the same insert gets BigQuery's answer to it.
            raise gexc.Conflict(f"Already Exists: Job {project}:US.{job_id}")

        with caplog.at_level(logging.INFO):
            job = start_or_reattach(client, base, project, "US", start, log)
        wait_for(job, f"{project}.jobs_test.conflict", "US", table_existed=False)
        rows = client.get_table(f"{project}.jobs_test.conflict").num_rows
    assert inserts == [f"{base}_1"], "no second job was started"
    assert job.job_id == f"{base}_1" and job.state == "DONE" and not job.error_result
    assert f"job {base}_1 already exists (its insert was retried); reattaching" in caplog.text
    assert rows == 2


def test_a_refused_connection_fails_the_call_at_once_and_a_dropped_one_is_retried() -> None:
    """The library's retry rule retries both for 300 s per call; a connection never made is
    left to the step's retry policy instead, so an unreachable BigQuery fails a step in
    seconds with one message (the fault suite's "BigQuery down" case), while a connection
    dropped mid-request, a 503 and rateLimitExceeded are still retried by the call."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = bigquery.Client(
        project="p",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": f"http://127.0.0.1:{port}"},
    )
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ConnectionError) as refused:
        client.get_dataset("p.d", retry=TRANSIENT)
    assert time.monotonic() - started < 5
    assert refused_connection(refused.value)

    dropped = requests.exceptions.ConnectionError(ConnectionResetError(104, "reset by peer"))
    rate_limited = gexc.Forbidden("quota", errors=[{"reason": "rateLimitExceeded"}])
    assert TRANSIENT._predicate(dropped)
    assert TRANSIENT._predicate(gexc.ServiceUnavailable("down for a moment"))
    assert TRANSIENT._predicate(rate_limited)
    assert not TRANSIENT._predicate(refused.value)
    assert not TRANSIENT._predicate(gexc.BadRequest("invalid"))
