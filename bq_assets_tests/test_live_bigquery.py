"""Opt-in live cases for the BigQuery findings of issue 23, against real BigQuery and GCS: each
proves against the real service what the local suite proves on the emulator or with a named
fake. Part of the live suite (``make live-test``); skipped, saying why, unless
``BQ_ASSETS_LIVE_GCP_PROJECT`` and ``BQ_ASSETS_LIVE_GCS_BUCKET`` are set (credentials from
Application Default Credentials or ``GCP_CREDENTIALS_B64``). Writes to dataset
``bq_assets_live_test`` (and its ``_staging``), tables named with a random suffix."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bq_assets.engine.bigquery_jobs import start_or_reattach, wait_for
from bq_assets.engine.bigquery_load import bucket_location, locations_compatible, run_load
from bq_assets.engine.bigquery_partitions import run_partition_load
from bq_assets.engine.bigquery_tables import ensure_dataset
from bq_assets.engine.manifest import Manifest, Shard
from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import load_spec
from bq_assets.partitioning import Window
from bq_assets.resources import ExportBigQueryResource, ExportGCSResource
from bq_assets.schema import schema_to_json
from bq_assets_tests.test_live import GCP_VARIABLES, require

pytestmark = pytest.mark.live
log = logging.getLogger("live")
DATASET = "bq_assets_live_test"


@pytest.fixture
def live() -> Iterator[tuple[bigquery.Client, ExportGCSResource, str]]:
    require(GCP_VARIABLES)
    credentials = os.environ.get("GCP_CREDENTIALS_B64") or None
    project = os.environ["BQ_ASSETS_LIVE_GCP_PROJECT"]
    gcs = ExportGCSResource(
        project=project, bucket=os.environ["BQ_ASSETS_LIVE_GCS_BUCKET"], gcp_credentials=credentials
    )
    bq = ExportBigQueryResource(project=project, gcp_credentials=credentials)
    with bq.get_client() as client:
        yield client, gcs, project


def write_csv(gcs: ExportGCSResource, text: str, schema) -> Manifest:
    run_id = uuid.uuid4().hex
    bucket = gcs.get_bucket_name()
    name = f"bq_assets_live/{run_id}/part-00000.csv"
    gcs.get_client().bucket(bucket).blob(name).upload_from_string(text)
    rows = text.count("\n") - 1
    return Manifest(
        export="live", run_id=run_id, prefix=f"gs://{bucket}/bq_assets_live/{run_id}/", rows=rows,
        shards=[Shard(uri=f"gs://{bucket}/{name}", rows=rows, bytes=0, crc32c="")],
        bigquery_schema=schema_to_json(schema), csv={"header": True, "delimiter": ","},
    )  # fmt: skip


def spec_in(folder: Path, yaml_text: str, sql: str):
    (folder / "live.sql").write_text(sql)
    (folder / "live.yaml").write_text(yaml_text)
    return load_spec(folder / "live.yaml")


ORDERS = [
    bigquery.SchemaField("order_id", "INT64"),
    bigquery.SchemaField("amperity_id", "STRING"),
    bigquery.SchemaField("order_date", "DATE"),
]
ORDERS_SQL = (
    "SELECT order_id, amperity_id, CAST(order_datetime AS DATE) AS order_date "
    "FROM unified_transactions WHERE CAST(order_datetime AS DATE) >= $partition_start_date "
    "AND CAST(order_datetime AS DATE) < $partition_end_date"
)


def test_live_a_backfill_copies_partition_to_partition_and_a_new_column_arrives(
    live, tmp_path
) -> None:
    """Finding 1 (decorator backfill) and the new-column finding: BigQuery accepts
    staging$YYYYMMDD -> table$YYYYMMDD copies from a staging table partitioned and clustered
    like the table, for three days, and a second load with an allowed new column."""
    client, gcs, project = live
    table = f"orders_{uuid.uuid4().hex[:8]}"
    spec = spec_in(
        tmp_path,
        "primary_key: [order_id]\ncadence: daily\n"
        "partitioning: {by: day, start: 2024-01-01, column: order_date}\n"
        f"bigquery: {{dataset: {DATASET}, table: {table}, clustering_fields: [amperity_id], "
        "schema_update_options: [ALLOW_FIELD_ADDITION]}\n",
        ORDERS_SQL,
    )
    window = Window(("2024-03-01", "2024-03-02", "2024-03-03"), "day", "UTC")
    first = write_csv(
        gcs, "order_id,amperity_id,order_date\n1,a,2024-03-01\n2,b,2024-03-02\n3,c,2024-03-03\n",
        ORDERS,
    )  # fmt: skip
    loaded = run_partition_load(client, project, spec, first, window, "decorator", log)
    assert loaded.mechanism == "decorator" and len(loaded.publish_jobs) == 3
    assert loaded.rows_by_partition == {"2024-03-01": 1, "2024-03-02": 1, "2024-03-03": 1}
    wider = [*ORDERS, bigquery.SchemaField("channel", "STRING")]
    second = write_csv(gcs, "order_id,amperity_id,order_date,channel\n4,d,2024-03-02,web\n", wider)
    day = Window(("2024-03-02",), "day", "UTC")
    again = run_partition_load(client, project, spec, second, day, "decorator", log)
    assert again.rows_by_partition == {"2024-03-02": 1}
    got = client.get_table(loaded.result.table_id)
    assert [f.name for f in got.schema][-1] == "channel"
    assert got.clustering_fields == ["amperity_id"]


def test_live_the_first_publish_gives_the_table_only_what_the_spec_declares(live, tmp_path) -> None:
    """What a table created by the first publish has: the spec's clustering, labels and
    description, and no expiration although its staging table expired after a day."""
    client, gcs, project = live
    table = f"customers_{uuid.uuid4().hex[:8]}"
    spec = spec_in(
        tmp_path,
        "description: Live customers.\nprimary_key: [amperity_id]\ncadence: daily\n"
        f"bigquery: {{dataset: {DATASET}, table: {table}, clustering_fields: [state], "
        "labels: {source: live}}\n",
        "SELECT amperity_id, state FROM customer_360",
    )
    schema = [
        bigquery.SchemaField("amperity_id", "STRING"),
        bigquery.SchemaField("state", "STRING"),
    ]
    result = run_load(
        client, project, spec, write_csv(gcs, "amperity_id,state\na,WA\n", schema), log
    )
    got = client.get_table(result.table_id)
    staging = client.get_dataset(f"{project}.{DATASET}_staging")
    assert staging.default_table_expiration_ms == 24 * 60 * 60 * 1000
    assert got.expires is None
    assert got.clustering_fields == ["state"]
    assert got.labels == {"source": "live"} and got.description == "Live customers."


def test_live_a_retried_insert_is_answered_409_and_reattached(live) -> None:
    """BigQuery answers a second insert of the same job id with 409 Already Exists; the job
    is reattached to, not failed."""
    client, gcs, project = live
    manifest = write_csv(gcs, "id\n1\n", [bigquery.SchemaField("id", "INT64")])
    target = f"{project}.{DATASET}.conflict_{uuid.uuid4().hex[:8]}"
    config = bigquery.LoadJobConfig(
        schema=[bigquery.SchemaField("id", "INT64")], skip_leading_rows=1
    )
    ensure_dataset(client, project, spec_for_location())
    base = f"bq_assets_live_conflict_{uuid.uuid4().hex[:12]}"
    answers: list[str] = []

    def start(job_id: str) -> bigquery.LoadJob:
        client.load_table_from_uri(manifest.uris, target, job_id=job_id, job_config=config)
        try:
            return client.load_table_from_uri(
                manifest.uris, target, job_id=job_id, job_config=config
            )
        except gexc.Conflict as exc:
            answers.append(exc.message)
            raise

    job = start_or_reattach(client, base, project, "US", start, log)
    wait_for(job, target, "US", table_existed=False)
    assert answers and "Already Exists" in answers[0]
    assert job.job_id == f"{base}_1"


def test_live_a_poll_that_fails_while_the_job_runs_is_not_a_finished_job(live) -> None:
    """A running job polled where BigQuery cannot find it (the wrong location: 404) raises the
    retryable "still running" error instead of being taken for finished."""
    client, gcs, project = live
    manifest = write_csv(gcs, "id\n1\n", [bigquery.SchemaField("id", "INT64")])
    job = client.load_table_from_uri(
        manifest.uris, f"{project}.{DATASET}.poll_{uuid.uuid4().hex[:8]}",
        job_config=bigquery.LoadJobConfig(schema=[bigquery.SchemaField("id", "INT64")],
                                          skip_leading_rows=1),
    )  # fmt: skip
    resource = job.to_api_repr()
    resource["jobReference"]["location"] = "asia-northeast1"
    resource["status"] = {"state": "RUNNING"}
    elsewhere = bigquery.LoadJob.from_api_repr(resource, client)
    with pytest.raises(BqAssetsError, match="still RUNNING") as error:
        wait_for(elsewhere, "t", "US", table_existed=False)
    assert error.value.retryable
    job.result()


def test_live_an_existing_dataset_needs_no_datasets_create(live) -> None:
    """The datasets are read, not inserted again, so a service account with BigQuery Data
    Editor on them alone can load."""
    client, _gcs, project = live
    ensure_dataset(client, project, spec_for_location())  # made once

    class NoInsert:
        def __init__(self, inner: bigquery.Client) -> None:
            self.inner = inner

        def __getattr__(self, name: str):
            if name == "create_dataset":
                raise AssertionError("datasets.insert sent for an existing dataset")
            return getattr(self.inner, name)

    assert ensure_dataset(NoInsert(client), project, spec_for_location()).dataset_id == DATASET


def test_live_the_bucket_location_is_one_a_us_dataset_loads_from(live) -> None:
    """The location rule: a US dataset loads from a bucket anywhere; the live pipeline test
    loads from this bucket."""
    _client, gcs, _project = live
    location = bucket_location(gcs.get_client(), gcs.get_bucket_name(), gcs.retry())
    assert locations_compatible(location, "US")


def spec_for_location(tmp_path: Path | None = None):
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"bq_assets_live_{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    return spec_in(
        folder,
        f"primary_key: [id]\ncadence: daily\nbigquery: {{dataset: {DATASET}}}\n",
        "SELECT id FROM t",
    )
