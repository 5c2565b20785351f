"""Faults and bad input on the real local stack: the pipeline keeps working or fails clearly,
never loses or duplicates a row, and never leaks a secret. Run alone with ``make faults``."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bq_assets.engine.bigquery_load import run_load
from bq_assets.engine.manifest import Manifest, Shard
from bq_assets.exports import SHIPPED_EXPORTS_DIR, ExportSpecError, load_specs
from bq_assets.exports.columns import BUILT_IN_CLASSIFICATIONS
from bq_assets.exports.sql import cursor_parameters
from bq_assets.factory import build_definitions
from bq_assets.failures import reported_as_failure
from bq_assets.local import sample_data, stack
from bq_assets.local.delivery import simulate_deliveries
from bq_assets.local.resources import LocalBigQueryResource, LocalGCSResource, SampleSourceResource
from bq_assets.resources import DatabricksSQLResource, ExportGCSResource
from bq_assets.resources.source import DuckDBSourceResource
from bq_assets.schema import schema_to_json
from bq_assets.settings import local_resources
from bq_assets.translator import ExportTranslator, bigquery_key, gcs_key, query_key
from bq_assets_tests.bigquery_front import BigQueryFront
from bq_assets_tests.conftest import error_chain, run_exports, step_errors
from bq_assets_tests.test_pipeline import EVERY_ROW

pytestmark = [pytest.mark.faults, pytest.mark.stack]

ROOT = Path(__file__).resolve().parents[1]
FAULT_ROWS = 4000
DAGSTER = str(Path(sys.executable).parent / "dagster")


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fault-stack")


@pytest.fixture(scope="module")
def fault_stack(fault_dir: Path):
    """A stack of the suite's own: its emulators get killed."""
    state = stack.up(fault_dir)
    yield state
    stack.down(fault_dir)


@pytest.fixture(scope="module")
def fault_resources(fault_stack, fault_dir: Path) -> dict:
    resources = local_resources(fault_dir)
    resources["source"] = SampleSourceResource(
        database=str(fault_dir / "source.duckdb"),
        staging_dir=str(fault_dir / "staging"),
        sample_rows=FAULT_ROWS,
    )
    return resources


def export(folder: Path, name: str, sql: str, yaml_text: str = "") -> list:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.sql").write_text(sql)
    (folder / f"{name}.yaml").write_text("primary_key: [amperity_id]\ncadence: daily\n" + yaml_text)
    return load_specs(folder)


def source_keys(resources: dict, sql: str) -> list[str]:
    """The keys the query returns (a merge export's: over every row, as its first run)."""
    parameters = {name: EVERY_ROW[name] for name in cursor_parameters(sql)} or None
    with duckdb.connect(resources["source"].database, read_only=True) as con:
        rows = con.execute(f"SELECT amperity_id FROM ({sql})", parameters).fetchall()
        return [row[0] for row in rows]


def bigquery_keys(resources: dict, table_id: str) -> list[str]:
    with resources["bigquery"].get_client() as client:
        return [row[0] for row in client.query(f"SELECT amperity_id FROM `{table_id}`").result()]


def reconcile(fault, expected: list[str], actual: list[str]) -> None:
    """Record rows lost and duplicated between the source and BigQuery."""
    fault.rows_lost = len(set(expected) - set(actual))
    fault.rows_duplicated = len(actual) - len(set(actual)) + len(set(actual) - set(expected))


def materialization(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    """Each failed or retried step's error with its causes (retries wrap the user's failure)."""
    return [
        error_chain(event.event_specific_data.error)
        for event in result.all_events
        if event.event_type
        in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.STEP_UP_FOR_RETRY)
        and event.event_specific_data.error
    ]


# 1 ─ GCS killed in the middle of an upload ───────────────────────────────────────────────
def kill_gcs_when_a_shard_lands(fault_dir: Path, export_name: str, seen: dict) -> threading.Thread:
    """A thread that SIGKILLs fake-gcs-server as soon as the first shard of the export is stored,
    noting what was stored by then."""
    state = stack.read_state(fault_dir)
    folder = Path(state.gcs_root) / state.bucket

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stored = [p.name for p in folder.rglob("*") if export_name in str(p) and p.is_file()]
            if any(name.startswith("part-") for name in stored):
                os.killpg(state.gcs_pid, signal.SIGKILL)
                seen.update(stored=stored, endpoint=state.gcs_endpoint)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_gcs_killed_mid_upload_fails_clearly_and_a_retry_loads_exactly_the_source(
    fault, fault_stack, fault_resources, fault_dir, tmp_path
) -> None:
    fault.expected = "step fails naming GCS's endpoint; after up, a retry loads exactly the source"
    sql = (
        "SELECT c.amperity_id || '-' || r.range AS amperity_id, c.email, c.address "
        "FROM customer_360 AS c CROSS JOIN range(50) AS r"
    )  # 200,000 rows in 40 shards: the upload takes a while
    specs = export(tmp_path / "gcs_killed", "gcs_killed", sql, "csv: {shard_rows: 5000}\n")
    # A short request retry, so the three attempts fail in seconds rather than minutes.
    resources = fault_resources | {
        "gcs": LocalGCSResource(local_stack_dir=str(fault_dir), retry_timeout_s=3)
    }
    seen: dict = {}
    with dg.instance_for_test() as instance:
        watcher = kill_gcs_when_a_shard_lands(fault_dir, "gcs_killed", seen)
        try:
            killed = run_exports(specs, resources, instance)
        finally:
            watcher.join(timeout=1)
            stack.up(fault_dir)
        retried = run_exports(specs, resources, instance, ["gcs/gcs_killed", "bigquery/gcs_killed"])
    assert seen, "the watcher never saw a shard land"
    shards_before_kill = sum(name.startswith("part-") for name in seen["stored"])
    assert shards_before_kill < 40 and "manifest.json" not in seen["stored"], seen
    messages = failure_messages(killed)
    assert not killed.success
    assert len(messages) == 3, messages  # the first attempt and the step's two retries
    assert all(f"GCS at {seen['endpoint']} is unreachable" in m for m in messages), messages
    assert all("Traceback" not in m for m in messages)
    assert all("Timeout of 3.0s exceeded" in m for m in messages), "retry_timeout_s bounds it"

    assert retried.success, step_errors(retried)
    bq = materialization(retried, bigquery_key("gcs_killed"))
    prefix = materialization(retried, gcs_key("gcs_killed"))["dagster/uri"]
    with resources["bigquery"].get_client() as client:
        loaded = client.get_job(bq["job_id"], location="US").source_uris
    assert len(loaded) == 40 and all(uri.startswith(prefix) for uri in loaded)
    bucket = resources["gcs"].get_client().bucket(fault_stack.bucket)
    left = [f"gs://{bucket.name}/{b.name}" for b in bucket.list_blobs(prefix="exports/gcs_killed/")]
    assert left and all(uri.startswith(prefix) for uri in left), "the killed run's objects remain"
    reconcile(
        fault, source_keys(fault_resources, sql), bigquery_keys(resources, bq["dagster/table_name"])
    )
    fault.observed = (
        f"killed after {shards_before_kill}/40 shards: 3 attempts 'GCS at … is unreachable'; "
        f"after up: {bq['dagster/row_count']} rows, killed run's objects deleted"
    )
    assert (fault.rows_lost, fault.rows_duplicated) == (0, 0)


# 2 ─ BigQuery down when the load starts ─────────────────────────────────────────────────────
def test_bigquery_down_when_the_load_starts(
    fault, fault_stack, fault_resources, fault_dir, tmp_path
) -> None:
    fault.expected = "clear error naming the endpoint; retry succeeds once it is up"
    sql = "SELECT amperity_id, email FROM customer_360"
    specs = export(tmp_path / "x", "bq_down", sql)
    with dg.instance_for_test() as instance:
        staged = run_exports(specs, fault_resources, instance, selection="query/bq_down")
        assert staged.success
        run_exports(specs, fault_resources, instance, selection="gcs/bq_down")
        endpoint = stack.read_state(fault_dir).bigquery_endpoint
        stack.stop_component("bigquery", fault_dir)
        try:
            down = run_exports(specs, fault_resources, instance, selection="bigquery/bq_down")
        finally:
            stack.up(fault_dir)
        messages = failure_messages(down)
        assert not down.success
        assert any(f"BigQuery at {endpoint} is unreachable" in m for m in messages), messages
        back = run_exports(specs, fault_resources, instance, selection="bigquery/bq_down")
    assert back.success, step_errors(back)
    table_id = materialization(back, bigquery_key("bq_down"))["dagster/table_name"]
    reconcile(fault, source_keys(fault_resources, sql), bigquery_keys(fault_resources, table_id))
    failure = next(m for m in messages if "unreachable" in m)
    failure = failure[failure.index("BigQuery at") :].split(":")[0:3]
    rows = len(bigquery_keys(fault_resources, table_id))
    fault.observed = f"'{':'.join(failure)} …' x{len(messages)}; after up: {rows} rows loaded"
    assert (fault.rows_lost, fault.rows_duplicated) == (0, 0)


# 4 ─ the source shrank ───────────────────────────────────────────────────────────────────────
def test_a_rerun_after_the_source_shrank_loads_only_the_new_rows(
    fault, fault_stack, fault_resources, tmp_path
) -> None:
    fault.expected = "BigQuery holds exactly the new rows; no object of the earlier run is loaded"
    folder = tmp_path / "shrink"
    big = "SELECT amperity_id, email FROM customer_360 ORDER BY amperity_id LIMIT 1000"
    small = "SELECT amperity_id, email FROM customer_360 ORDER BY amperity_id DESC LIMIT 250"
    with dg.instance_for_test() as instance:
        first = run_exports(
            export(folder, "shrinking", big, "csv: {shard_rows: 100}\n"), fault_resources, instance
        )
        second = run_exports(
            export(folder, "shrinking", small, "csv: {shard_rows: 100}\n"),
            fault_resources,
            instance,
        )
    assert first.success and second.success, step_errors(second)
    old_prefix = materialization(first, gcs_key("shrinking"))["dagster/uri"]
    new = materialization(second, gcs_key("shrinking"))
    bq = materialization(second, bigquery_key("shrinking"))
    with fault_resources["bigquery"].get_client() as client:
        loaded = client.get_job(bq["job_id"], location="US").source_uris
    assert len(materialization(first, gcs_key("shrinking"))["objects"]) == 10
    assert len(loaded) == 3 and all(uri.startswith(new["dagster/uri"]) for uri in loaded)
    assert not any(uri.startswith(old_prefix) for uri in loaded)
    reconcile(
        fault,
        source_keys(fault_resources, small),
        bigquery_keys(fault_resources, bq["dagster/table_name"]),
    )
    fault.observed = f"10 → 3 shards; load used {len(loaded)} objects of the new run; {bq['dagster/row_count']} rows"
    assert bq["dagster/row_count"] == 250
    assert all(check.passed for check in second.get_asset_check_evaluations())
    assert (fault.rows_lost, fault.rows_duplicated) == (0, 0)


# 6 ─ invalid SQL ─────────────────────────────────────────────────────────────────────────────
def test_invalid_sql_names_the_file_and_the_database_message(
    fault, fault_stack, fault_resources, tmp_path
) -> None:
    fault.expected = "error names the SQL file and DuckDB's message; not retried"
    specs = export(
        tmp_path / "bad_sql", "bad_sql", "SELECT amperity_id, no_such_column AS x FROM customer_360"
    )
    with dg.instance_for_test() as instance:
        result = run_exports(specs, fault_resources, instance)
    messages = failure_messages(result)
    assert not result.success and len(messages) == 1, messages
    assert str(tmp_path / "bad_sql" / "bad_sql.sql") in messages[0]
    assert 'Referenced column "no_such_column" not found' in messages[0]
    assert "Traceback" not in messages[0]
    fault.observed = messages[0].split("rejected the query: ")[-1][:80]


# 7 ─ missing variables, wrong credentials, unreachable endpoints ──────────────────────────
def test_missing_production_variables_fail_the_load_naming_each(fault, tmp_path) -> None:
    fault.expected = "code location fails to load, naming every missing variable"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GCP_", "DATABRICKS_", "BQ_ASSETS_"))
    }
    env |= {"BQ_ASSETS_ENV": "prod", "GCP_PROJECT": "acme", "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(
        [DAGSTER, "definitions", "validate", "-m", "bq_assets.definitions"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    missing = ["BQ_ASSETS_GCS_BUCKET", "BQ_ASSETS_SOURCE_DATABASE",
               "DATABRICKS_HOST", "DATABRICKS_WAREHOUSE_ID"]  # fmt: skip
    assert f"these environment variables are not set: {', '.join(missing)}" in output
    fault.observed = "load failed: not set: " + ", ".join(missing)


def test_a_stopped_local_stack_is_named_with_the_command_that_starts_it(
    fault, fault_resources, tmp_path
) -> None:
    fault.expected = "run fails saying the stack is not running and how to start it"
    resources = local_resources(tmp_path / "no-stack")
    resources["source"] = fault_resources["source"]
    specs = export(tmp_path / "nostack", "nostack", "SELECT amperity_id FROM customer_360")
    with dg.instance_for_test() as instance:
        result = run_exports(specs, resources, instance)
    messages = failure_messages(result)
    assert not result.success
    assert any(
        "The local cloud stack is not running" in m and "python -m bq_assets.local up" in m
        for m in messages
    )
    fault.observed = messages[0][:80]


def test_a_wrong_service_account_key_is_a_clear_error(fault) -> None:
    fault.expected = "clear error naming the variable, key not echoed"
    bad_key = base64.b64encode(b'{"type": "service_account"}').decode()
    gcs = ExportGCSResource(project="acme", bucket="b", gcp_credentials=bad_key)
    with pytest.raises(Exception) as error:
        gcs.get_client()
    assert "GCP_CREDENTIALS_B64 is not a base64-encoded service-account key JSON" in str(
        error.value
    )
    assert bad_key not in str(error.value)
    fault.observed = str(error.value)[:80]


# 8 ─ identifiers crafted to inject SQL ─────────────────────────────────────────────────────
PAYLOADS = [
    "x`; DROP TABLE t; --",
    "x' OR '1'='1",
    'x"; DELETE FROM t',
    "x /* c */",
    "x;y",
    "x -- c",
]
NAME_FIELDS = {
    "name": "name: {p}",
    "primary_key": "primary_key: [{p}]",
    "required": "required: [{p}]",
    "bigquery.dataset": "bigquery: {{dataset: {p}}}",
    "bigquery.table": "bigquery: {{table: {p}}}",
    "bigquery.location": "bigquery: {{location: {p}}}",
    "bigquery.partition_field": "bigquery: {{partition_field: {p}}}",
    "bigquery.clustering_fields": "bigquery: {{clustering_fields: [{p}]}}",
    "bigquery.labels": "bigquery: {{labels: {{{p}: v}}}}",
    "databricks.catalog": "databricks: {{catalog: {p}}}",
    "databricks.schema": "databricks: {{schema: {p}}}",
    "databricks.table": "databricks: {{table: {p}}}",
    "databricks.connection": "databricks: {{connection: {p}}}",
    "databricks.foreign_catalog": "databricks: {{foreign_catalog: {p}}}",
    "bigquery.staging_dataset": "bigquery: {{staging_dataset: {p}}}",
    "databricks.connection_options": "databricks: {{connection_options: {{{p}: v}}}}",
    "databricks.foreign_catalog_options": "databricks: {{foreign_catalog_options: {{{p}: v}}}}",
}


def test_identifiers_crafted_to_inject_sql_are_rejected_at_load(fault, tmp_path) -> None:
    fault.expected = "every crafted name in every configurable field rejected at load"
    rejected = 0
    for field, line in NAME_FIELDS.items():
        for index, payload in enumerate(PAYLOADS):
            folder = tmp_path / f"{field}-{index}"
            folder.mkdir()
            (folder / "e.sql").write_text("SELECT amperity_id, email FROM customer_360")
            head = "" if field == "primary_key" else "primary_key: [amperity_id]\n"
            (folder / "e.yaml").write_text(
                head + "cadence: daily\n" + line.format(p=json.dumps(payload)) + "\n"
            )
            with pytest.raises(ExportSpecError) as error:
                load_specs(folder)
            assert field.split(".")[-1] in str(error.value), (field, payload, str(error.value))
            rejected += 1
    assert rejected == len(NAME_FIELDS) * len(PAYLOADS)
    fault.observed = f"{rejected}/{rejected} crafted names rejected with the field named"


# 9 ─ secrets never leak ─────────────────────────────────────────────────────────────────────
def fake_service_account_key(token_uri: str) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {"type": "service_account", "project_id": "acme", "private_key_id": "feedface0123",
            "private_key": pem, "client_email": "leak-test@acme.iam.gserviceaccount.com",
            "client_id": "42", "token_uri": token_uri}  # fmt: skip
    return base64.b64encode(json.dumps(info).encode()).decode(), pem


GOOGLE_REJECTS = 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
DATABRICKS_REJECTS = 403, {"error_code": "PERMISSION_DENIED", "message": "Invalid access token."}


class FakeEndpoint(ThreadingHTTPServer):
    """A fake HTTP service on 127.0.0.1 that records what each request presented (its
    Authorization header and body) and answers with ``answer(path, body)``."""

    def __init__(self) -> None:
        self.presented: list[str] = []
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, path: str, body: str) -> tuple[int, dict]:
        raise NotImplementedError


class _RecordingHandler(BaseHTTPRequestHandler):
    server: FakeEndpoint

    def _handle(self, body: str) -> None:
        self.server.presented.append(f"{self.headers.get('Authorization', '')} {body}")
        status, answer = self.server.answer(self.path, body)
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        self._handle(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())

    def do_GET(self) -> None:
        self._handle("")

    def log_message(self, *args) -> None:
        pass


class FakeRejectingEndpoint(FakeEndpoint):
    """A fake of the two services that check credentials, answering as they do when rejecting
    them: Google's token endpoint (400 invalid_grant for the signed JWT) and the Databricks
    statement API (403 for the token)."""

    def answer(self, path: str, body: str) -> tuple[int, dict]:
        return GOOGLE_REJECTS if path == "/token" else DATABRICKS_REJECTS


class FakeAcceptingEndpoint(FakeEndpoint):
    """A fake of the same two services answering as they do when they accept the credentials:
    Google's token endpoint grants an access token for the signed JWT, and the Databricks
    Statement Execution API runs every statement (a ``count(*)`` answers ``rows``)."""

    def __init__(self, rows: int, project: str = stack.LOCAL_PROJECT) -> None:
        self.rows = rows
        self.project = project
        super().__init__()

    def answer(self, path: str, body: str) -> tuple[int, dict]:
        if path == "/token":
            return 200, {"access_token": "ya29.fake-access-token", "expires_in": 3600,
                         "token_type": "Bearer"}  # fmt: skip
        if path.startswith("/api/2.1/unity-catalog/catalogs/"):
            # Unity Catalog's "Get a catalog" (https://docs.databricks.com/api/workspace/catalogs/get):
            # the foreign catalog as the spec declares it.
            return 200, {"name": path.rsplit("/", 1)[1], "catalog_type": "FOREIGN_CATALOG",
                         "connection_name": "bigquery_connection",
                         "options": {"dataProjectId": self.project}}  # fmt: skip
        counted = "count(*)" in json.loads(body or "{}").get("statement", "").lower()
        rows = [[str(self.rows)]] if counted else []
        return 200, {"statement_id": "fake-statement", "status": {"state": "SUCCEEDED"},
                     "result": {"data_array": rows}}  # fmt: skip


def production_wired_env(
    fault_stack, fault_dir: Path, home: Path, fake: FakeAcceptingEndpoint, token: str, key: str
) -> dict[str, str]:
    """``BQ_ASSETS_ENV=prod``: the production resources, credentials read from the environment,
    the Google clients pointed at the emulators through their own emulator variables, and
    Databricks at the fake."""
    return os.environ | {
        "BQ_ASSETS_ENV": "prod", "DAGSTER_HOME": str(home), "BQ_ASSETS_SCHEDULES": "stopped",
        "GCP_PROJECT": fault_stack.project, "BQ_ASSETS_GCS_BUCKET": fault_stack.bucket,
        "BQ_ASSETS_SOURCE_DATABASE": str(fault_dir / "source.duckdb"),
        "BQ_ASSETS_STAGING_DIR": str(home / "staging"),
        "STORAGE_EMULATOR_HOST": fault_stack.gcs_endpoint,
        "BIGQUERY_EMULATOR_HOST": fault_stack.bigquery_endpoint,
        "GCP_CREDENTIALS_B64": key, "DATABRICKS_HOST": fake.url,
        "DATABRICKS_WAREHOUSE_ID": "fake-warehouse", "DATABRICKS_TOKEN": token,
        # The shipped exports classify columns: production wants each class's policy tag (here
        # deliberately none: the emulator keeps no policy tags).
        "BQ_ASSETS_POLICY_TAGS": json.dumps(dict.fromkeys(BUILT_IN_CLASSIFICATIONS)),
    }  # fmt: skip


def test_secrets_never_reach_logs_metadata_output_or_errors(
    fault, fault_stack, fault_resources, fault_dir, tmp_path, capfd, caplog
) -> None:
    fault.expected = "a production-wired run and rejected calls leak neither token nor key"
    token = "dapi" + "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    sample_data.ensure(Path(fault_resources["source"].database), FAULT_ROWS)
    source_rows = len(source_keys(fault_resources, "SELECT amperity_id FROM customer_360"))
    accepting = FakeAcceptingEndpoint(source_rows, fault_stack.project)
    rejecting = FakeRejectingEndpoint()
    encoded_key, pem = fake_service_account_key(f"{accepting.url}/token")
    rejected_key, _ = fake_service_account_key(f"{rejecting.url}/token")
    secrets = [token, encoded_key, pem.splitlines()[1], "feedface0123", rejected_key]

    # A whole run in its own process with the production wiring: the key signs the token
    # grant, the access token goes to GCS and BigQuery, the Databricks token to the fake.
    home = tmp_path / "home"
    home.mkdir()
    # The stack as it runs now: an earlier case may have restarted it on new ports.
    running = stack.read_state(fault_dir)
    env = production_wired_env(running, fault_dir, home, accepting, token, encoded_key)
    run = subprocess.run(
        [DAGSTER, "asset", "materialize", "-m", "bq_assets.definitions", "--select", ",".join(f"{stage}/customer_360" for stage in ("query", "gcs", "bigquery", "databricks"))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=480,
    )  # fmt: skip
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (record,) = instance.get_run_records()
        logs = instance.all_logs(record.dagster_run.run_id)
    materialized = {
        e.dagster_event.asset_key.to_user_string()
        for e in logs
        if e.is_dagster_event and e.dagster_event.is_step_materialization
    }
    assert materialized == {
        f"{s}/customer_360" for s in ("query", "gcs", "bigquery", "databricks")
    }, run.stderr[-3000:]
    accepting.shutdown()
    accepting.server_close()
    assert any("grant_type" in r for r in accepting.presented), "the key never signed a grant"
    assert any(token in r for r in accepting.presented), "the Databricks token was not presented"
    texts = [run.stdout, run.stderr, "\n".join(repr(e) for e in logs)]

    # Calls that present the secrets and are rejected: a token grant signed with a key, and
    # a Databricks statement with the token.
    from dagster_databricks import DatabricksClientResource

    gcs = ExportGCSResource(project="acme", bucket="b", gcp_credentials=rejected_key)
    with pytest.raises(Exception) as gcs_error:
        gcs.get_client().lookup_bucket("bucket-that-needs-a-token")
    databricks = DatabricksSQLResource(
        workspace=DatabricksClientResource(host=rejecting.url, token=token),
        warehouse_id="wh", statement_timeout_s=5,
    )  # fmt: skip
    with pytest.raises(Exception) as dbx_error:
        databricks.execute("SELECT 1")
    rejecting.shutdown()
    rejecting.server_close()
    assert any("grant_type" in r for r in rejecting.presented), "no token grant was attempted"
    assert any(token in r for r in rejecting.presented), "the token was never presented"
    assert "invalid_grant" in str(gcs_error.value) and "Invalid access token" in str(
        dbx_error.value
    )
    captured = capfd.readouterr()
    texts += [repr(gcs_error.value), str(gcs_error.value), repr(dbx_error.value), str(dbx_error.value),
              captured.out, captured.err, caplog.text]  # fmt: skip

    fault.secrets_leaked = sum(secret in text for secret in secrets for text in texts)
    fault.observed = f"prod-wired run: 4 assets, credentials presented; 2 calls rejected; scanned {sum(map(len, texts))} chars; {fault.secrets_leaked} leaks"
    assert fault.secrets_leaked == 0


# 3 ─ a bad row in the CSV ───────────────────────────────────────────────────────────────────
def test_a_bad_row_fails_the_load_and_keeps_the_previous_data(
    fault, fault_stack, fault_resources, tmp_path
) -> None:
    fault.expected = "load fails showing the offending line; table keeps the previous rows"
    sql = "SELECT amperity_id, email, order_count FROM customer_360"
    specs = export(tmp_path / "bad_row", "bad_row", sql)
    with dg.instance_for_test() as instance:
        good = run_exports(specs, fault_resources, instance)
        assert good.success, step_errors(good)
        table_id = materialization(good, bigquery_key("bad_row"))["dagster/table_name"]
        # Text in an INT64 column can only come from a tampered object: write one, load it.
        manifest = tampered_manifest(fault_stack, fault_resources, table_id)
        with (
            fault_resources["bigquery"].get_client() as client,
            pytest.raises(dg.Failure) as failure,
            reported_as_failure(),  # as the step reports it
        ):
            run_load(client, fault_stack.project, specs[0], manifest, logging.getLogger("faults"))
    message = failure.value.description
    assert "not-a-number" in message and "(location US)" in message
    assert "the table keeps its previous data" in message
    assert failure.value.allow_retries is False  # bad data: a retry cannot fix it
    reconcile(fault, source_keys(fault_resources, sql), bigquery_keys(fault_resources, table_id))
    fault.observed = "load failed: " + message[message.index("Original Line") :][:60].replace(
        "\n", " "
    )
    assert (fault.rows_lost, fault.rows_duplicated) == (0, 0)


def test_a_bad_row_into_a_new_table_fails_once_and_creates_no_table(
    fault, fault_stack, fault_resources, tmp_path
) -> None:
    fault.expected = "one attempt, no retry; says the table was not created; no table"
    sql = "SELECT amperity_id, email, order_count FROM customer_360"
    specs = export(tmp_path / "bad_new", "bad_new", sql)
    with dg.instance_for_test() as instance:
        exported = run_exports(specs, fault_resources, instance, ["query/bad_new", "gcs/bad_new"])
        assert exported.success, step_errors(exported)
        (uri,) = [s["uri"] for s in materialization(exported, gcs_key("bad_new"))["objects"]]
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        bad = "amperity_id,email,order_count\nabc,a@example.com,not-a-number\n"
        blob = fault_resources["gcs"].get_client().bucket(bucket).blob(name)
        blob.upload_from_string(gzip.compress(bad.encode()))
        loaded = run_exports(specs, fault_resources, instance, "bigquery/bad_new")
    messages = failure_messages(loaded)
    assert len(messages) == 1, messages  # failed once: no STEP_UP_FOR_RETRY before it
    assert "the table was not created" in messages[0] and "not-a-number" in messages[0]
    with fault_resources["bigquery"].get_client() as client:
        tables = [
            t.table_id
            for dataset in ("amperity_exports", "amperity_exports_staging")
            for t in client.list_tables(dataset)
        ]
    assert not [t for t in tables if t.startswith("bad_new")], tables  # nor a staging table
    fault.rows_lost = fault.rows_duplicated = 0
    fault.observed = f"{len(messages)} attempt; " + messages[0].split("Failure: ")[-1][:70]


def tampered_manifest(fault_stack, resources: dict, table_id: str) -> Manifest:
    """A manifest whose one object has a row with text where the schema says INT64."""
    with resources["bigquery"].get_client() as client:
        schema = client.get_table(table_id).schema
    run = uuid.uuid4().hex
    name = f"tampered/{run}/part-00000.csv"
    resources["gcs"].get_client().bucket(fault_stack.bucket).blob(name).upload_from_string(
        "amperity_id,email,order_count\nabc,a@example.com,1\ndef,d@example.com,not-a-number\n"
    )
    return Manifest(
        export="bad_row", run_id=run, prefix=f"gs://{fault_stack.bucket}/tampered/{run}/", rows=2,
        shards=[Shard(uri=f"gs://{fault_stack.bucket}/{name}", rows=2, bytes=0, crc32c="")],
        bigquery_schema=schema_to_json(schema), csv={"header": True, "delimiter": ","},
    )  # fmt: skip


# 5 ─ concurrency ────────────────────────────────────────────────────────────────────────────
def materialize_in_process(fault_dir: Path, home: Path, export_name: str) -> subprocess.Popen:
    env = os.environ | {
        "BQ_ASSETS_LOCAL_DIR": str(fault_dir), "DAGSTER_HOME": str(home),
        "BQ_ASSETS_SAMPLE_ROWS": str(FAULT_ROWS),
    }  # fmt: skip
    selection = ",".join(
        f"{stage}/{export_name}" for stage in ("query", "gcs", "bigquery", "databricks")
    )
    return subprocess.Popen(
        [DAGSTER, "asset", "materialize", "-m", "bq_assets.definitions", "--select", selection],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_concurrent_exports_and_back_to_back_reruns_agree(
    fault, fault_stack, fault_resources, fault_dir, tmp_path
) -> None:
    fault.expected = "no lock errors, same results"
    home = tmp_path / "home"
    home.mkdir()
    # Create the instance's storage first, as any deployment has it: two processes creating a
    # fresh SQLite instance at once race on its tables ("table runs already exists").
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
        instance.all_instigator_state()
    together = [
        materialize_in_process(fault_dir, home, e) for e in ("customer_360", "customer_segments")
    ]
    outputs = [process.communicate(timeout=600)[0] for process in together]
    assert [p.returncode for p in together] == [0, 0], [o[-2000:] for o in outputs]
    for _ in range(2):
        again = materialize_in_process(fault_dir, home, "customer_360")
        output = again.communicate(timeout=600)[0]
        assert again.returncode == 0, output[-2000:]
        outputs.append(output)
    assert not any("lock" in output.lower() and "error" in output.lower() for output in outputs)
    lost = duplicated = 0
    for name, sql_table in [
        ("customer_360", "customer_360"),
        ("customer_segments", "customer_segments"),
    ]:
        spec = next(s for s in load_specs(SHIPPED_EXPORTS_DIR) if s.name == sql_table)
        expected = source_keys(fault_resources, spec.sql)
        actual = bigquery_keys(fault_resources, f"{fault_stack.project}.amperity_exports.{name}")
        lost += len(set(expected) - set(actual))
        duplicated += len(actual) - len(set(expected) & set(actual))
    fault.rows_lost, fault.rows_duplicated = lost, duplicated
    fault.observed = (
        "2 exports at once + 2 back-to-back re-runs: all exit 0, tables equal the source"
    )
    assert (lost, duplicated) == (0, 0)


# 10 ─ BigQuery's answers the emulator never gives: a lost insert answer, a failing poll ─────────
class FrontedBigQueryResource(LocalBigQueryResource):
    """The local BigQuery resource, its REST calls going through a ``BigQueryFront``."""

    front_port: int

    def emulator(self) -> stack.StackState:
        return dataclasses.replace(super().emulator(), bigquery_rest_port=self.front_port)


def through_front(fault_stack, fault_resources: dict, fault_dir: Path) -> tuple:
    # The stack as it runs now: earlier cases restart the emulators on new ports.
    front = BigQueryFront(stack.read_state(fault_dir).bigquery_endpoint)
    fronted = FrontedBigQueryResource(local_stack_dir=str(fault_dir), front_port=front.port)
    return front, fault_resources | {"bigquery": fronted}


def test_a_job_whose_status_poll_fails_while_it_runs_is_never_published_early(
    fault, fault_stack, fault_resources, fault_dir, tmp_path
) -> None:
    fault.expected = (
        "attempt fails 'still RUNNING' (retryable); the retry reattaches; nothing copied early"
    )
    sql = "SELECT amperity_id, email FROM customer_360"
    specs = export(tmp_path / "poll", "poll_fails", sql)
    front, resources = through_front(fault_stack, fault_resources, fault_dir)
    front.fail_polls_while_running("bq_assets_poll_fails_")
    try:
        with dg.instance_for_test() as instance:
            exported = run_exports(
                specs, fault_resources, instance, ["query/poll_fails", "gcs/poll_fails"]
            )
            assert exported.success, step_errors(exported)
            loaded = run_exports(specs, resources, instance, "bigquery/poll_fails")
    finally:
        front.stop()
    messages = failure_messages(loaded)
    assert loaded.success, step_errors(loaded)
    assert len(messages) == 1 and "was still RUNNING" in messages[0], messages
    assert "nothing was published" in messages[0] and "Traceback" not in messages[0]
    released = next(i for i, e in enumerate(front.events) if "reaches the emulator" in e)
    assert not any("_publish" in e for e in front.events[:released]), front.events
    assert all(check.passed for check in loaded.get_asset_check_evaluations())
    table_id = materialization(loaded, bigquery_key("poll_fails"))["dagster/table_name"]
    reconcile(fault, source_keys(fault_resources, sql), bigquery_keys(fault_resources, table_id))
    fault.observed = f"1 failed attempt 'still RUNNING', retry reattached; {len(front.events)} front events; rows exact"
    assert (fault.rows_lost, fault.rows_duplicated) == (0, 0)


def test_a_job_insert_answered_409_after_a_retry_is_reattached_in_the_same_attempt(
    fault, fault_stack, fault_resources, fault_dir, tmp_path
) -> None:
    fault.expected = "409 on the retried insert reattaches: one attempt, one load job, rows exact"
    sql = "SELECT amperity_id, email FROM customer_360"
    specs = export(tmp_path / "conflict", "insert_409", sql)
    front, resources = through_front(fault_stack, fault_resources, fault_dir)
    front.lose_insert_answer("bq_assets_insert_409_")
    try:
        with dg.instance_for_test() as instance:
            exported = run_exports(
                specs, fault_resources, instance, ["query/insert_409", "gcs/insert_409"]
            )
            assert exported.success, step_errors(exported)
            loaded = run_exports(specs, resources, instance, "bigquery/insert_409")
    finally:
        front.stop()
    assert loaded.success, step_errors(loaded)
    assert failure_messages(loaded) == [], "no failed attempt"
    assert sum("answered 409" in e for e in front.events) == 1, front.events
    assert sum("reaches the emulator" in e for e in front.events) == 1, "one load job"
    assert all(check.passed for check in loaded.get_asset_check_evaluations())
    table_id = materialization(loaded, bigquery_key("insert_409"))["dagster/table_name"]
    reconcile(fault, source_keys(fault_resources, sql), bigquery_keys(fault_resources, table_id))
    fault.observed = "insert's answer lost, retry answered 409, reattached: 1 attempt, 1 job"
    assert (fault.rows_lost, fault.rows_duplicated) == (0, 0)


# 13 ─ every step, one way to fail ────────────────────────────────────────────────────────────
#: A queried and a delivered shipped export.
DELIVERED_AND_QUERIED = ("customer_360", "amperity_orders")


class NoRetries(ExportTranslator):
    """The shipped translator without step retries: each failure is seen once, at once."""

    def get_retry_policy(self, spec, hop):  # type: ignore[override]
        return None


def run_each_step_alone(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, list]:
    """Run every check, then every asset from the last hop back to the first, each in a run of
    its own (as "Execute check" and "Materialize" in the UI do), so that no step finds an
    upstream this walk made; step key → its failure events."""
    graph = defs.resolve_asset_graph()
    checks = [key for check in defs.asset_checks for key in check.check_keys]
    jobs = [
        dg.define_asset_job(f"check_{n}", selection=dg.AssetSelection.checks(key))
        for n, key in enumerate(checks)
    ] + [
        dg.define_asset_job(f"one_{n}", selection=dg.AssetSelection.assets(key).without_checks())
        for n, key in enumerate(reversed(graph.toposorted_asset_keys))
        # The sources the exports read are external assets: Dagster runs no step for them.
        if key in graph.materializable_asset_keys
    ]
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=jobs))
    failures: dict[str, list] = {}
    for job in jobs:
        result = merged.resolve_job_def(job.name).execute_in_process(
            instance=instance, raise_on_error=False
        )
        for event in result.all_events:
            if event.is_step_failure:
                failures.setdefault(event.step_key, []).append(event)
    return failures


def one_clear_message(event: dg.DagsterEvent) -> str:
    """The failure's message, asserted to be the one mapping's: a ``dg.Failure`` whose
    description is the user's message, no traceback in it, no cause chained behind it."""
    data = event.step_failure_data
    assert data.user_failure_data is not None, f"{event.step_key}: {data.error.to_string()}"
    description = data.user_failure_data.description or ""
    assert description and "Traceback" not in description, description
    assert data.error.cause is None, data.error.to_string()
    return description


@pytest.mark.timeout(900)
def test_every_asset_and_check_fails_with_one_message_upstream_missing_or_gcs_stopped(
    fault, fault_stack, fault_resources, fault_dir
) -> None:
    fault.expected = "every step alone: one message, no traceback, upstream missing or GCS down"
    specs = [s for s in load_specs(SHIPPED_EXPORTS_DIR) if s.name in DELIVERED_AND_QUERIED]
    # GCS requests give up after 2 s (instead of 10) so the stopped emulator is met quickly.
    gcs = LocalGCSResource(local_stack_dir=str(fault_dir), retry_timeout_s=2)
    resources = {**fault_resources, "gcs": gcs}
    defs = build_definitions(specs, resources, dg.DefaultScheduleStatus.STOPPED, NoRetries())
    # One step per asset and per check definition (the query's three checks share one).
    steps = len(defs.resolve_asset_graph().materializable_asset_keys) + len(list(defs.asset_checks))
    simulate_deliveries(specs, gcs.get_client().bucket(gcs.get_bucket_name()))
    with dg.instance_for_test() as instance:
        missing = run_each_step_alone(defs, instance)
        missing_messages = {step: one_clear_message(e) for step, es in missing.items() for e in es}
        # Everything but the two roots (the query, the delivery) reads an upstream first; the
        # freshness of customer_360's mark reads only the instance, and warns that nothing was
        # merged yet.
        assert len(missing_messages) == steps - 3, sorted(missing_messages)
        assert "bigquery__customer_360_latest_cursor_fresh" not in missing_messages
        assert all("materialize it first" in m for m in missing_messages.values())

        everything = run_exports(specs, resources, instance)
        assert everything.success, step_errors(everything)
        endpoint = stack.read_state(fault_dir).gcs_endpoint
        stack.stop_component("gcs", fault_dir)
        try:
            down = run_each_step_alone(defs, instance)
        finally:
            stack.up(fault_dir)
    down_messages = {step: one_clear_message(e) for step, es in down.items() for e in es}
    unreachable = {s for s, m in down_messages.items() if f"GCS at {endpoint} is unreachable" in m}
    # Exactly the steps that read GCS fail, each naming it: the query (its upload), both kinds
    # of gcs hop, the BigQuery load (the manifest), and the checks that read objects or
    # manifests; the rest read only BigQuery or the instance, and pass.
    assert unreachable == set(down_messages) == {
        "query__customer_360", "query__customer_360_checks",
        "gcs__customer_360", "gcs__customer_360_objects_match_manifest",
        "gcs__amperity_orders", "gcs__amperity_orders_rows_add_up",
        "bigquery__customer_360", "bigquery__customer_360_schema_matches_snapshot",
        "bigquery__amperity_orders", "bigquery__amperity_orders_schema_matches_snapshot",
    }  # fmt: skip
    fault.observed = (
        f"{steps} steps alone: upstream missing {len(missing_messages)} failed, each one "
        f"message; GCS down {len(down_messages)} failed, {len(unreachable)} naming GCS"
    )


# 13 ─ a manifest that does not add up: nothing published (issue 24) ─────────────────────────
def rewrite_manifest(resources: dict, manifest_uri: str, change) -> dict:
    """Apply ``change`` to the manifest's JSON in GCS (its objects untouched), as a bug between
    writing and loading might; returns the manifest as it was."""
    bucket, _, name = manifest_uri.removeprefix("gs://").partition("/")
    blob = resources["gcs"].get_client().bucket(bucket).blob(name)
    manifest = json.loads(blob.download_as_text())
    blob.upload_from_string(json.dumps(change(dict(manifest))), content_type="application/json")
    return manifest


def one_more_row(manifest: dict) -> dict:
    first, *others = manifest["shards"]
    return {**manifest, "rows": manifest["rows"] + 1, "shards": [{**first, "rows": first["rows"] + 1}, *others]}  # fmt: skip


def test_a_manifest_promising_a_row_more_than_its_objects_publishes_nothing(
    fault, fault_stack, fault_resources, tmp_path
) -> None:
    fault.expected = "the load fails once naming both counts; the table keeps its previous rows"
    folder = tmp_path / "tampered"
    previous = "SELECT amperity_id, email FROM customer_360 ORDER BY amperity_id LIMIT 300"
    newer = "SELECT amperity_id, email FROM customer_360 ORDER BY amperity_id DESC LIMIT 200"
    with dg.instance_for_test() as instance:
        first = run_exports(export(folder, "tampered", previous), fault_resources, instance)
        assert first.success, step_errors(first)
        specs = export(folder, "tampered", newer)
        staged = run_exports(specs, fault_resources, instance, ["query/tampered", "gcs/tampered"])
        assert staged.success, step_errors(staged)
        uri = materialization(staged, gcs_key("tampered"))["manifest_uri"]
        rewrite_manifest(fault_resources, uri, one_more_row)
        load = run_exports(specs, fault_resources, instance, "bigquery/tampered")
    messages = failure_messages(load)
    assert not load.success and len(messages) == 1, messages  # failed once: not retried
    table_id = materialization(first, bigquery_key("tampered"))["dagster/table_name"]
    assert "the staging table holds 200 rows, the manifest promises 201" in messages[0]
    assert f"Nothing was published: {table_id} keeps its previous data" in messages[0]
    reconcile(
        fault, source_keys(fault_resources, previous), bigquery_keys(fault_resources, table_id)
    )
    fault.observed = "1 attempt: 'the staging table holds 200 rows, the manifest promises 201'; table: the previous 300 rows"  # fmt: skip
    assert (fault.rows_lost, fault.rows_duplicated) == (0, 0)


def test_a_manifest_promising_other_rows_per_partition_replaces_no_partition(
    fault, fault_stack, fault_resources, tmp_path
) -> None:
    from bq_assets_tests.test_partitioned_pipeline import (
        ORDERS,
        bigquery_rows,
        materialize,
        spec_in,
    )

    fault.expected = "the partitioned load fails once naming the partition; no partition replaced"
    database = tmp_path / "orders.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute(ORDERS)
    resources = fault_resources | {
        "source": DuckDBSourceResource(database=str(database), staging_dir=str(tmp_path / "s"))
    }
    spec = spec_in(tmp_path, name="pt_tampered")
    days = ("2026-01-05", "2026-01-06")
    table_id = f"{resources['bigquery'].project_id()}.partition_tests.pt_tampered"
    with dg.instance_for_test() as instance:
        first = materialize(spec, resources, instance, *days)
        assert first.success, step_errors(first)
        before = sorted(bigquery_rows(resources, table_id))
        with duckdb.connect(str(database)) as con:  # a correction: one order of the 6th less
            con.execute("DELETE FROM orders WHERE order_id = 'ORD-20260106-2'")
        staged = materialize(spec, resources, instance, *days, [query_key(spec.name), gcs_key(spec.name)])  # fmt: skip
        assert staged.success, step_errors(staged)
        # One manifest for the run's partitions (each partition's materialization names it).
        uris = {
            event.materialization.metadata["manifest_uri"].value
            for event in staged.get_asset_materialization_events()
            if event.asset_key == gcs_key(spec.name)
        }
        (uri,) = uris
        # The same total, one row moved from the 6th to the 5th.
        written = rewrite_manifest(
            resources, uri, lambda m: {**m, "rows_by_partition": {days[0]: 5, days[1]: 2}}
        )
        load = materialize(spec, resources, instance, *days, [bigquery_key(spec.name)])
    assert written["rows_by_partition"] == {days[0]: 4, days[1]: 3}  # the GCS step's promise
    messages = failure_messages(load)
    assert not load.success and len(messages) == 1, messages
    assert f"partition {days[0]}: the staging table holds 4 rows, the manifest promises 5" in messages[0]  # fmt: skip
    after = sorted(bigquery_rows(resources, table_id))
    reconcile(fault, [row[0] for row in before], [row[0] for row in after])
    assert after == before
    fault.observed = f"1 attempt: 'partition {days[0]}: … holds 4 rows, the manifest promises 5'; both days as before"  # fmt: skip
    assert (fault.rows_lost, fault.rows_duplicated) == (0, 0)


# 14 ─ a database of one's own where the sample belongs ──────────────────────────────────────
def test_a_database_of_ones_own_at_the_samples_path_is_never_replaced(
    fault, fault_stack, fault_dir, tmp_path
) -> None:
    fault.expected = "the query step fails once saying whose file it is; the file is untouched"
    own = tmp_path / "local" / "source.duckdb"
    own.parent.mkdir()
    with duckdb.connect(str(own)) as con:
        con.execute("CREATE TABLE customer_360 AS SELECT 'mine-' || range AS amperity_id, 'x' AS email FROM range(5)")  # fmt: skip
    before = own.read_bytes()
    resources = local_resources(fault_dir) | {
        "source": SampleSourceResource(database=str(own), staging_dir=str(tmp_path / "s"))
    }
    specs = export(tmp_path / "own", "own_file", "SELECT amperity_id, email FROM customer_360")
    with dg.instance_for_test() as instance:
        result = run_exports(specs, resources, instance, "query/own_file")
    messages = failure_messages(result)
    assert not result.success and len(messages) == 1, messages
    assert f"{own} is not the generated sample" in messages[0]
    assert "BQ_ASSETS_SOURCE_DATABASE=" in messages[0] and "Traceback" not in messages[0]
    fault.rows_lost = 0 if own.read_bytes() == before else 5
    fault.observed = "1 attempt: '… is not the generated sample … (owner …)'; the file byte for byte as it was"  # fmt: skip
    assert fault.rows_lost == 0
