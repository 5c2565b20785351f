"""Every check can be seen failing: each test changes the data one check guards, re-runs that
check through Dagster, and expects it to fail with metadata that says why.

One export (``catch_orders``, keyed by a column named ``order``, a reserved word in every SQL
dialect here) is materialized once for the module on the real local stack. Each test tampers
with the data itself (the source table, a GCS object, the BigQuery table, the Databricks
stand-in's table), runs the check in a checks-only Dagster run, and puts the data back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import duckdb
import pytest
from google.cloud import bigquery

from bq_assets.engine.manifest import read_manifest
from bq_assets.exports import load_specs
from bq_assets.exports.spec import ExportSpec
from bq_assets.factory import build_definitions
from bq_assets.stages import bigquery as bigquery_hop
from bq_assets.stages import databricks as databricks_hop
from bq_assets.stages import gcs as gcs_hop
from bq_assets.stages import query as query_hop
from bq_assets.stages.databricks import table_name
from bq_assets.translator import bigquery_key, databricks_key, gcs_key, query_key
from bq_assets_tests.conftest import run_exports, step_errors

pytestmark = pytest.mark.stack

EXPORT = "catch_orders"
SOURCE_TABLE = "catch_orders_source"
ROWS = 40


@dataclass
class Materialized:
    spec: ExportSpec
    resources: dict
    instance: dg.DagsterInstance

    def metadata(self, key: dg.AssetKey) -> dict:
        event = self.instance.get_latest_materialization_event(key)
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    def check(self, key: dg.AssetKey, name: str) -> dg.AssetCheckEvaluation:
        """Run one check in a checks-only run, as the UI's "Execute check" does."""
        job = dg.define_asset_job(
            "rerun_one_check", selection=dg.AssetSelection.checks(dg.AssetCheckKey(key, name))
        )
        defs = dg.Definitions.merge(
            build_definitions([self.spec], self.resources, dg.DefaultScheduleStatus.STOPPED),
            dg.Definitions(jobs=[job]),
        )
        result = defs.resolve_job_def("rerun_one_check").execute_in_process(
            instance=self.instance, raise_on_error=False
        )
        (evaluation,) = result.get_asset_check_evaluations()
        assert evaluation.check_name == name
        return evaluation

    def materialize(self, *keys: dg.AssetKey, checks_pass: bool = True) -> None:
        """Materialize ``keys`` (their checks run too); with tampered data the checks may fail,
        but the assets must still be materialized."""
        result = run_exports(
            [self.spec], self.resources, self.instance, [k.to_user_string() for k in keys]
        )
        materialized = {e.asset_key for e in result.get_asset_materialization_events()}
        assert materialized == set(keys), step_errors(result)
        if checks_pass:
            assert result.success, step_errors(result)

    def source(self, sql: str) -> None:
        with duckdb.connect(self.resources["source"].database) as con:
            con.execute(sql)

    def bigquery(self, sql: str) -> None:
        with self.resources["bigquery"].get_client() as client:
            client.query(sql).result()

    def databricks_shows(self, query: str) -> None:
        """Make the Databricks object show ``query``'s rows instead (``{source}`` stands for the
        foreign catalog's table), by replacing the view on the Spark stand-in: what Databricks
        would show if federation lost, changed or added rows."""
        _project, dataset, table = str(
            self.metadata(bigquery_key(EXPORT))["dagster/table_name"]
        ).split(".")
        source = f"`{self.spec.databricks.foreign_catalog}`.`{dataset}`.`{table}`"
        self.resources["databricks"].execute(
            f"CREATE OR REPLACE VIEW {table_name(self.spec).quoted} AS "
            + query.format(source=source)
        )


@pytest.fixture(scope="module")
def exported(local_stack, resources, tmp_path_factory) -> Iterator[Materialized]:
    folder = tmp_path_factory.mktemp("catch")
    (folder / f"{EXPORT}.sql").write_text(f'SELECT "order", email, amount FROM {SOURCE_TABLE}')
    (folder / f"{EXPORT}.yaml").write_text(
        # An apostrophe: the view's COMMENT literal must round-trip through Spark exactly.
        'description: "The checks\' orders: each check is seen failing on them."\n'
        "primary_key: [order]\nrequired: [email]\ncadence: daily\n"
        "bigquery: {clustering_fields: [email], labels: {team: catch}}\n"
    )
    resources["source"]._database_path()  # the sample source exists before we add a table
    with dg.instance_for_test() as instance:
        done = Materialized(load_specs(folder)[0], resources, instance)
        done.source(
            f"CREATE OR REPLACE TABLE {SOURCE_TABLE} AS SELECT 'o-' || i AS \"order\", "
            f"'c' || i || '@example.com' AS email, i * 1.5 AS amount FROM range({ROWS}) t(i)"
        )
        result = run_exports([done.spec], resources, instance)
        assert result.success, step_errors(result)
        # The reserved-word key works on every engine: every check passed to begin with.
        evaluations = result.get_asset_check_evaluations()
        # 12, and column_governance_matches_spec on the BigQuery table and the Databricks view
        assert len(evaluations) == 14 and all(e.passed for e in evaluations)
        yield done


# -- query/<export> -------------------------------------------------------------------------


def test_has_rows_fails_when_the_query_returns_nothing(exported: Materialized) -> None:
    exported.source(f"CREATE OR REPLACE TABLE {SOURCE_TABLE}_kept AS FROM {SOURCE_TABLE}")
    exported.source(f"DELETE FROM {SOURCE_TABLE}")
    try:
        exported.materialize(query_key(EXPORT), checks_pass=False)
        check = exported.check(query_key(EXPORT), query_hop.QUERY_HAS_ROWS)
        assert not check.passed
        assert check.metadata["rows"].value == 0
    finally:
        exported.source(f"INSERT INTO {SOURCE_TABLE} FROM {SOURCE_TABLE}_kept")
        exported.materialize(query_key(EXPORT))


def test_primary_key_check_fails_on_a_duplicate_and_a_null_key(exported: Materialized) -> None:
    exported.source(
        f"INSERT INTO {SOURCE_TABLE} VALUES ('o-7', 'dup@example.com', 1), "
        "(NULL, 'nokey@example.com', 2)"
    )
    try:
        exported.materialize(query_key(EXPORT), checks_pass=False)
        check = exported.check(query_key(EXPORT), query_hop.QUERY_PRIMARY_KEY_UNIQUE)
        assert not check.passed
        assert check.metadata["null_keys"].value == 1
        assert check.metadata["duplicated_keys"].value == 1
        assert check.metadata["duplicate_sample"].value == [["o-7", "2"]]
    finally:
        exported.source(
            f"DELETE FROM {SOURCE_TABLE} WHERE email IN ('dup@example.com', 'nokey@example.com')"
        )
        exported.materialize(query_key(EXPORT))


def test_required_columns_check_fails_on_a_null_email(exported: Materialized) -> None:
    exported.source(f"UPDATE {SOURCE_TABLE} SET email = NULL WHERE \"order\" = 'o-3'")
    try:
        exported.materialize(query_key(EXPORT), checks_pass=False)
        check = exported.check(query_key(EXPORT), query_hop.QUERY_REQUIRED_NOT_NULL)
        assert not check.passed
        assert check.metadata["null_counts"].value == {"email": 1}
    finally:
        exported.source(
            f"UPDATE {SOURCE_TABLE} SET email = 'c3@example.com' WHERE \"order\" = 'o-3'"
        )
        exported.materialize(query_key(EXPORT))


# -- gcs/<export> ---------------------------------------------------------------------------


def test_objects_check_fails_when_an_object_differs_from_the_manifest(
    exported: Materialized,
) -> None:
    gcs = exported.resources["gcs"]
    client = gcs.get_client()
    manifest = read_manifest(client, exported.metadata(gcs_key(EXPORT))["manifest_uri"])
    shard = manifest.shards[0]
    bucket, _, name = shard.uri.removeprefix("gs://").partition("/")
    blob = client.bucket(bucket).blob(name)
    original = blob.download_as_bytes()
    blob.upload_from_string(original + b"\n")
    try:
        check = exported.check(gcs_key(EXPORT), gcs_hop.GCS_OBJECTS_MATCH_MANIFEST)
        assert not check.passed
        (problem,) = check.metadata["problems"].value
        assert problem.startswith(f"{shard.uri}: size {shard.bytes + 1} crc32c ")
        assert problem.endswith(f"manifest says {shard.bytes} / {shard.crc32c}")
    finally:
        blob.upload_from_string(original)
    assert exported.check(gcs_key(EXPORT), gcs_hop.GCS_OBJECTS_MATCH_MANIFEST).passed


def test_objects_check_fails_when_an_object_is_missing(exported: Materialized) -> None:
    client = exported.resources["gcs"].get_client()
    manifest = read_manifest(client, exported.metadata(gcs_key(EXPORT))["manifest_uri"])
    bucket, _, name = manifest.shards[0].uri.removeprefix("gs://").partition("/")
    blob = client.bucket(bucket).blob(name)
    original = blob.download_as_bytes()
    blob.delete()
    try:
        check = exported.check(gcs_key(EXPORT), gcs_hop.GCS_OBJECTS_MATCH_MANIFEST)
        assert not check.passed
        assert check.metadata["problems"].value == [f"{manifest.shards[0].uri}: missing"]
    finally:
        blob.upload_from_string(original)


def test_rows_check_fails_when_the_snapshot_has_a_row_the_objects_lack(
    exported: Materialized,
) -> None:
    exported.source(f"INSERT INTO {SOURCE_TABLE} VALUES ('o-extra', 'x@example.com', 0)")
    try:
        exported.materialize(query_key(EXPORT), checks_pass=False)
        check = exported.check(gcs_key(EXPORT), gcs_hop.GCS_ROWS_MATCH_SNAPSHOT)
        assert not check.passed
        assert check.metadata["manifest_rows"].value == ROWS
        assert check.metadata["snapshot_rows"].value == ROWS + 1
    finally:
        exported.source(f"DELETE FROM {SOURCE_TABLE} WHERE \"order\" = 'o-extra'")
        exported.materialize(query_key(EXPORT))


# -- bigquery/<export> ----------------------------------------------------------------------


def bigquery_table(exported: Materialized) -> str:
    return str(exported.metadata(bigquery_key(EXPORT))["dagster/table_name"])


def test_rows_check_fails_when_the_table_has_a_row_too_many(exported: Materialized) -> None:
    table = bigquery_table(exported)
    exported.bigquery(f"INSERT INTO `{table}` (`order`, email, amount) VALUES ('o-x', 'x', 1)")
    try:
        check = exported.check(bigquery_key(EXPORT), bigquery_hop.BIGQUERY_ROWS_MATCH_MANIFEST)
        assert not check.passed
        assert check.metadata["table_rows"].value == ROWS + 1
        assert check.metadata["manifest_rows"].value == ROWS
    finally:
        exported.bigquery(f"DELETE FROM `{table}` WHERE `order` = 'o-x'")
    assert exported.check(bigquery_key(EXPORT), bigquery_hop.BIGQUERY_ROWS_MATCH_MANIFEST).passed


def test_schema_check_fails_when_a_column_changed_type(exported: Materialized) -> None:
    table = bigquery_table(exported)
    with exported.resources["bigquery"].get_client() as client:
        original = client.get_table(table)
        rows = [dict(row) for row in client.list_rows(table)]
        changed = [
            bigquery.SchemaField(f.name, "STRING" if f.name == "amount" else f.field_type, f.mode)
            for f in original.schema
        ]
        client.delete_table(table)
        client.create_table(bigquery.Table(table, schema=changed))
        client.insert_rows_json(table, [{**r, "amount": str(r["amount"])} for r in rows])
        try:
            check = exported.check(bigquery_key(EXPORT), bigquery_hop.BIGQUERY_SCHEMA_MATCHES)
            assert not check.passed
            (difference,) = check.metadata["differences"].value
            assert "amount" in difference and "STRING" in difference
        finally:
            client.delete_table(table)
            restored = bigquery.Table(table, schema=original.schema)
            restored.clustering_fields = original.clustering_fields
            restored.labels, restored.description = original.labels, original.description
            client.create_table(restored)
            client.insert_rows_json(table, [{**r, "amount": float(r["amount"])} for r in rows])
    assert exported.check(bigquery_key(EXPORT), bigquery_hop.BIGQUERY_SCHEMA_MATCHES).passed
    assert exported.check(bigquery_key(EXPORT), bigquery_hop.BIGQUERY_ROWS_MATCH_MANIFEST).passed


# -- databricks/<export> (the view on the Spark stand-in) ---------------------------------------


@pytest.fixture
def restore_databricks_copy(exported: Materialized) -> Iterator[None]:
    yield
    exported.materialize(databricks_key(EXPORT))


@pytest.mark.usefixtures("restore_databricks_copy")
def test_table_matches_spec_fails_when_a_declared_property_is_dropped(
    exported: Materialized,
) -> None:
    """Issue 23 point 4: the table's clustering and a label, dropped behind the pipeline's back,
    are named; the next load puts them back."""
    table_id = exported.metadata(bigquery_key(EXPORT))["dagster/table_name"]
    with exported.resources["bigquery"].get_client() as client:
        table = client.get_table(table_id)
        table.clustering_fields = ["amount"]
        table.labels = {"owner": "someone"}  # the emulator's PATCH replaces the labels
        # (and clears every field it is not sent: the description goes along)
        client.update_table(table, ["clustering_fields", "labels", "description"])
    check = exported.check(bigquery_key(EXPORT), bigquery_hop.BIGQUERY_TABLE_MATCHES_SPEC)
    assert not check.passed
    assert check.metadata["differences"].value == [
        "clustering: the table has ['amount'], the spec ['email']",
        "label owner: the table has 'someone', the spec '(none)'",
        "label team: the table has '(none)', the spec 'catch'",
    ]
    assert "differs from catch_orders.yaml: clustering" in (check.description or "")
    # The next load gives the table the spec's clustering and labels again (the emulator's
    # PATCH replaces the labels; BigQuery's merges them and would keep `owner`, still named).
    exported.materialize(bigquery_key(EXPORT))
    assert exported.check(bigquery_key(EXPORT), bigquery_hop.BIGQUERY_TABLE_MATCHES_SPEC).passed


def test_rows_check_fails_when_the_databricks_copy_lost_a_row(exported: Materialized) -> None:
    exported.databricks_shows("SELECT * FROM {source} WHERE `order` <> 'o-5'")
    check = exported.check(databricks_key(EXPORT), databricks_hop.DATABRICKS_ROWS_MATCH_BIGQUERY)
    assert not check.passed
    assert check.metadata["databricks_rows"].value == ROWS - 1
    assert check.metadata["bigquery_rows"].value == ROWS


@pytest.mark.usefixtures("restore_databricks_copy")
def test_columns_check_follows_unity_catalog_case_rules_and_fails_on_a_renamed_column(
    exported: Materialized,
) -> None:
    exported.databricks_shows("SELECT `order`, email AS EMAIL, amount FROM {source}")
    check = exported.check(databricks_key(EXPORT), databricks_hop.DATABRICKS_COLUMNS_MATCH_BIGQUERY)
    assert check.passed  # Unity Catalog compares column names case-insensitively
    assert check.metadata["databricks_columns"].value == ["order", "EMAIL", "amount"]

    exported.databricks_shows("SELECT `order`, email AS mail, amount FROM {source}")
    check = exported.check(databricks_key(EXPORT), databricks_hop.DATABRICKS_COLUMNS_MATCH_BIGQUERY)
    assert not check.passed
    assert check.metadata["databricks_columns"].value == ["order", "mail", "amount"]
    assert check.metadata["bigquery_columns"].value == ["order", "email", "amount"]


@pytest.mark.usefixtures("restore_databricks_copy")
def test_key_checksum_check_fails_when_a_key_changed_but_the_count_did_not(
    exported: Materialized,
) -> None:
    exported.databricks_shows(
        "SELECT CASE WHEN `order` = 'o-9' THEN 'o-changed' ELSE `order` END AS `order`, email, "
        "amount FROM {source}"
    )
    rows = exported.check(databricks_key(EXPORT), databricks_hop.DATABRICKS_ROWS_MATCH_BIGQUERY)
    assert rows.passed  # the count alone cannot see it
    check = exported.check(
        databricks_key(EXPORT), databricks_hop.DATABRICKS_KEY_CHECKSUM_MATCHES_BIGQUERY
    )
    assert not check.passed
    databricks = check.metadata["databricks_rows_and_checksum"].value
    bigquery = check.metadata["bigquery_rows_and_checksum"].value
    assert databricks != bigquery
    assert databricks.startswith(f"({ROWS}, ") and bigquery.startswith(f"({ROWS}, ")


def key_checksum(exported: Materialized) -> dg.AssetCheckEvaluation:
    return exported.check(
        databricks_key(EXPORT), databricks_hop.DATABRICKS_KEY_CHECKSUM_MATCHES_BIGQUERY
    )


@pytest.mark.usefixtures("restore_databricks_copy")
def test_key_checksum_check_fails_when_databricks_lacks_a_row(exported: Materialized) -> None:
    """Issue 24: the key checksum seen failing on the real engines (Spark, the BigQuery
    emulator), not only as text."""
    exported.databricks_shows("SELECT * FROM {source} WHERE `order` <> 'o-3'")
    check = key_checksum(exported)
    assert not check.passed
    assert check.metadata["databricks_rows_and_checksum"].value.startswith(f"({ROWS - 1}, ")
    assert check.metadata["bigquery_rows_and_checksum"].value.startswith(f"({ROWS}, ")


@pytest.mark.usefixtures("restore_databricks_copy")
def test_key_checksum_check_fails_when_only_databricks_holds_a_null_key_row(
    exported: Materialized,
) -> None:
    exported.databricks_shows(
        "SELECT * FROM {source} UNION ALL SELECT NULL, 'nokey@example.com', 1.5"
    )
    assert not key_checksum(exported).passed
    # A NULL key in place of a key: same count, and still the checksum sees it.
    exported.databricks_shows(
        "SELECT CASE WHEN `order` = 'o-4' THEN NULL ELSE `order` END AS `order`, email, amount "
        "FROM {source}"
    )
    assert exported.check(
        databricks_key(EXPORT), databricks_hop.DATABRICKS_ROWS_MATCH_BIGQUERY
    ).passed
    assert not key_checksum(exported).passed


def test_key_checksum_check_fails_when_only_bigquery_holds_a_null_key_row_and_passes_when_both_do(
    exported: Materialized,
) -> None:
    table_id = exported.metadata(bigquery_key(EXPORT))["dagster/table_name"]
    exported.bigquery(
        f"INSERT INTO `{table_id}` (`order`, email, amount) VALUES (NULL, 'nokey@example.com', 1.5)"
    )
    try:
        check = key_checksum(exported)
        assert not check.passed  # Databricks still shows the table as it was published
        assert check.metadata["bigquery_rows_and_checksum"].value.startswith(f"({ROWS + 1}, ")
        exported.materialize(databricks_key(EXPORT))  # both engines now hold the NULL-key row
        check = key_checksum(exported)
        assert check.passed
        assert check.metadata["databricks_rows_and_checksum"].value.startswith(f"({ROWS + 1}, ")
    finally:
        exported.bigquery(f"DELETE FROM `{table_id}` WHERE `order` IS NULL")
        exported.materialize(databricks_key(EXPORT))


@pytest.mark.usefixtures("restore_databricks_copy")
def test_matches_spec_fails_naming_a_dropped_comment_or_a_changed_column_type(
    exported: Materialized,
) -> None:
    """Issue 23: what the spec declares is what the Databricks object has (read back with
    ``DESCRIBE TABLE … AS JSON`` on Spark, the same text a SQL warehouse answers)."""
    assert exported.check(
        databricks_key(EXPORT), databricks_hop.DATABRICKS_VIEW_MATCHES_SPEC
    ).passed
    exported.databricks_shows("SELECT * FROM {source}")  # the view without its COMMENT
    check = exported.check(databricks_key(EXPORT), databricks_hop.DATABRICKS_VIEW_MATCHES_SPEC)
    assert not check.passed
    assert check.metadata["differences"].value == [
        'comment: spec says "The checks\' orders: each check is seen failing on them.", '
        "Databricks has None"
    ]
    exported.databricks_shows(
        "SELECT `order`, email, CAST(amount AS STRING) AS amount FROM {source}"
    )
    check = exported.check(databricks_key(EXPORT), databricks_hop.DATABRICKS_VIEW_MATCHES_SPEC)
    assert not check.passed
    assert any(
        d.startswith("column amount: BigQuery NUMERIC shows as decimal") and d.endswith("string")
        for d in check.metadata["differences"].value
    )


def test_the_module_leaves_every_check_passing(exported: Materialized) -> None:
    for key, name in [
        (query_key(EXPORT), query_hop.QUERY_PRIMARY_KEY_UNIQUE),
        (gcs_key(EXPORT), gcs_hop.GCS_ROWS_MATCH_SNAPSHOT),
        (bigquery_key(EXPORT), bigquery_hop.BIGQUERY_ROWS_MATCH_MANIFEST),
        (databricks_key(EXPORT), databricks_hop.DATABRICKS_KEY_CHECKSUM_MATCHES_BIGQUERY),
        (databricks_key(EXPORT), databricks_hop.DATABRICKS_VIEW_MATCHES_SPEC),
    ]:
        assert exported.check(key, name).passed, name
