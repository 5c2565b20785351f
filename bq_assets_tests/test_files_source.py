"""A ``files`` source: Parquet and CSV objects on GCS, Delta and Iceberg tables, compared value
by value with what was written.

``gs://`` paths are read with the GCS resource's own endpoint and credentials (an fsspec
filesystem, gcsfs, registered on DuckDB; see ``bq_assets.sources``): here the local stack's real
fake-gcs-server. The Delta table is written with the ``deltalake`` package and the Iceberg table
with ``pyiceberg`` (SQLite catalog), both local, as a data engineer's would be.
"""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.oauth2.credentials import Credentials

from bq_assets import sources
from bq_assets.exports import load_specs
from bq_assets.local.resources import SampleSourceResource
from bq_assets.resources.source import DuckDBSourceResource, SourceDeclaration, gcs_access
from bq_assets.sources import SourceError
from bq_assets.sources import files as source_files
from bq_assets.sources.files import GcsAccess
from bq_assets.translator import bigquery_key, query_key
from bq_assets_tests.conftest import run_exports, step_errors
from bq_assets_tests.test_round_trip import bigquery_rows, differences, metadata

UTC = dt.UTC
ORDERS = pa.table(
    {
        "id": pa.array([1, 2, 3, 4], pa.int64()),
        "label": ["quotes", "newlines", "emoji", "nulls"],
        "amount": pa.array(
            [
                Decimal("1.5"),
                Decimal("-0.000000001"),
                Decimal("99999999999999999999.999999999"),
                None,
            ],
            pa.decimal128(38, 9),
        ),
        "placed": pa.array(
            [
                dt.datetime(2024, 1, 1, tzinfo=UTC),
                dt.datetime(2024, 3, 10, 2, 30, 0, 123456, tzinfo=UTC),
                dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                None,
            ],
            pa.timestamp("us", tz="UTC"),
        ),
        "day": pa.array([dt.date(2024, 1, 1), dt.date(2000, 2, 29), dt.date(1, 1, 1), None]),
        "note": ["say \"hi\", 'twice'", "line 1\nline 2\r\n", "Zoë 李 🎉 👩‍👩‍👧", None],
        "flag": [True, False, True, None],
        "score": [0.1, 1.7976931348623157e308, -0.0, None],
    }
)
# The CSV object: one customer name per order id.
CUSTOMERS_CSV = 'id,customer\n1,"Ørsted, A/S"\n2,plain\n3,"line\nbreak"\n4,"say ""x"""\n'
CUSTOMERS = {1: "Ørsted, A/S", 2: "plain", 3: "line\nbreak", 4: 'say "x"'}
BIGQUERY_TYPES = {
    "id": "INT64",
    "label": "STRING",
    "amount": "NUMERIC",
    "placed": "TIMESTAMP",
    "day": "DATE",
    "note": "STRING",
    "flag": "BOOL",
    "score": "FLOAT64",
    "customer": "STRING",
}


def expected_rows() -> list[tuple]:
    """ORDERS joined with its customers, as BigQuery must hold it."""
    rows = ORDERS.to_pylist()
    return [(*row.values(), CUSTOMERS[row["id"]]) for row in rows]


@pytest.fixture(scope="module")
def lake(local_stack, resources) -> str:
    """``gs://<bucket>/lake/``: ORDERS as two Parquet objects, the customers as one CSV."""
    bucket = resources["gcs"].get_client().bucket(resources["gcs"].get_bucket_name())
    for part, rows in enumerate((ORDERS.slice(0, 2), ORDERS.slice(2))):
        buffer = io.BytesIO()
        pq.write_table(rows, buffer)
        bucket.blob(f"lake/orders/part-{part}.parquet").upload_from_string(buffer.getvalue())
    bucket.blob("lake/customers.csv").upload_from_string(CUSTOMERS_CSV)
    return f"gs://{bucket.name}/lake"


def lake_resources(resources: dict) -> dict:
    local = resources["source"]
    source = SampleSourceResource(
        database=local.database,
        staging_dir=local.staging_dir,
        sample_rows=local.sample_rows,
        sources=[SourceDeclaration(name="lake", kind="files")],
    )
    return {**resources, "source": source}


LAKE_SQL = """SELECT o.id, o.label, o.amount, o.placed, o.day, o.note, o.flag, o.score, c.customer
FROM read_parquet('{lake}/orders/*.parquet') AS o
JOIN read_csv('{lake}/customers.csv', header = true, columns = {{'id': 'BIGINT', 'customer': 'VARCHAR'}}) AS c
  ON c.id = o.id
"""


@pytest.mark.stack
def test_parquet_and_csv_objects_on_gcs_arrive_in_bigquery_exactly(
    lake: str, resources, tmp_path: Path
) -> None:
    (tmp_path / "gcs_lake.sql").write_text(LAKE_SQL.format(lake=lake))
    (tmp_path / "gcs_lake.yaml").write_text(
        "primary_key: [id]\ncadence: daily\nsource: lake\nformat: parquet\n"
    )
    (spec,) = load_specs(tmp_path)
    wired = lake_resources(resources)
    with dg.instance_for_test() as instance:
        result = run_exports([spec], wired, instance)
    assert result.success, step_errors(result)
    assert all(check.passed for check in result.get_asset_check_evaluations())
    schema = metadata(result, query_key(spec.name))["dagster/column_schema"]
    assert {c.name: c.type for c in schema.columns} == BIGQUERY_TYPES
    columns, loaded = bigquery_rows(
        wired, metadata(result, bigquery_key(spec.name))["dagster/table_name"]
    )
    assert columns == list(BIGQUERY_TYPES)
    assert differences(columns, expected_rows(), loaded) == {}


@pytest.mark.stack
def test_a_missing_gcs_object_or_bucket_fails_naming_the_path(
    lake: str, resources, tmp_path: Path
) -> None:
    source = lake_resources(resources)["source"]
    access = gcs_access(resources["gcs"])
    cases = {
        f"{lake}/orders/missing.parquet": "no object matches this path",
        f"{lake}/nothing/*.parquet": "no object matches this path",
        "gs://no-such-bucket-bq-assets/x.parquet": "the bucket no-such-bucket-bq-assets does not exist",
    }
    for path, says in cases.items():
        with pytest.raises(SourceError) as failure:
            source.snapshot(
                f"SELECT * FROM read_parquet('{path}')",
                Path("m.sql"),
                tmp_path / "s.parquet",
                "lake",
                access,
            )
        assert path in str(failure.value) and says in str(failure.value), str(failure.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.stack
def test_gcs_credentials_never_appear_in_a_message(lake: str, resources, tmp_path: Path) -> None:
    """A bearer token stands in for a service account's (fake-gcs-server accepts any): it is
    sent with every request and shown nowhere."""
    token = "ya29.secret-token-never-shown"
    endpoint = resources["gcs"].get_client().api_endpoint
    access = GcsAccess(endpoint=endpoint, project="p", credentials=Credentials(token=token))
    source = lake_resources(resources)["source"]
    snapshot = tmp_path / "s.parquet"
    source.snapshot(
        f"SELECT id FROM read_parquet('{lake}/orders/*.parquet') ORDER BY id",
        Path("t.sql"),
        snapshot,
        "lake",
        access,
    )
    assert [row["id"] for row in pq.read_table(snapshot).to_pylist()] == [1, 2, 3, 4]
    assert token not in repr(access)
    with pytest.raises(SourceError) as failure:
        source.snapshot(
            f"SELECT * FROM read_parquet('{lake}/none.parquet')",
            Path("t.sql"),
            snapshot,
            "lake",
            access,
        )
    assert token not in str(failure.value)


def test_gs_paths_without_gcs_access_fail_clearly(tmp_path: Path) -> None:
    settings = sources.EngineSettings(temp_directory=str(tmp_path / "spill"))
    lake = sources.Source(name="lake", kind="files")
    with (
        pytest.raises(SourceError, match=r"reads gs://b/x\.parquet but no GCS access"),
        sources.connect(lake, settings, "SELECT * FROM read_parquet('gs://b/x.parquet')"),
    ):
        pass


def test_the_gcs_paths_of_a_query_are_its_string_literals() -> None:
    sql = (
        "SELECT * FROM read_parquet(['gs://a/x/*.parquet', 'gcs://b/y.parquet']) "
        "JOIN read_csv('gs://a/z.csv', header = true) USING (id) JOIN 'gs://c/t.parquet' USING (id) "
        "WHERE note <> 'gs://not/a/path/read'"
    )
    assert source_files.gcs_paths(sql) == [
        "gs://a/x/*.parquet",
        "gcs://b/y.parquet",
        "gs://a/z.csv",
        "gs://c/t.parquet",
    ]


# -- Delta and Iceberg -------------------------------------------------------------------------


def files_source(tmp_path: Path) -> DuckDBSourceResource:
    return DuckDBSourceResource(
        database=str(tmp_path / "unused.duckdb"),
        staging_dir=str(tmp_path / "staging"),
        sources=[SourceDeclaration(name="lake", kind="files")],
    )


def snapshot_rows(source: DuckDBSourceResource, sql: str, tmp_path: Path) -> list[dict]:
    snapshot = tmp_path / "snapshot.parquet"
    source.snapshot(sql, Path("t.sql"), snapshot, "lake")
    return sorted(pq.read_table(snapshot).to_pylist(), key=lambda row: row["id"])


def test_a_delta_table_is_exported_exactly(tmp_path: Path) -> None:
    deltalake = pytest.importorskip("deltalake")
    table = tmp_path / "orders_delta"
    deltalake.write_deltalake(str(table), ORDERS.slice(0, 2))
    deltalake.write_deltalake(str(table), ORDERS.slice(2), mode="append")
    rows = snapshot_rows(files_source(tmp_path), f"SELECT * FROM delta_scan('{table}')", tmp_path)
    assert rows == ORDERS.to_pylist()


def write_iceberg_table(warehouse: Path) -> str:
    """ORDERS as an Iceberg table (two appends) in a SQLite-catalogued local warehouse; the
    path of its current metadata file."""
    pytest.importorskip("pyiceberg")
    from pyiceberg.catalog.sql import SqlCatalog

    warehouse.mkdir()
    catalog = SqlCatalog(
        "lake", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}"
    )
    catalog.create_namespace("crm")
    table = catalog.create_table("crm.orders", schema=ORDERS.schema)
    table.append(ORDERS.slice(0, 2))
    table.append(ORDERS.slice(2))
    return table.metadata_location.removeprefix("file://")


def test_an_iceberg_table_is_exported_exactly(tmp_path: Path) -> None:
    metadata_file = write_iceberg_table(tmp_path / "warehouse")
    rows = snapshot_rows(
        files_source(tmp_path), f"SELECT * FROM iceberg_scan('{metadata_file}')", tmp_path
    )
    assert rows == ORDERS.to_pylist()


@pytest.mark.stack
def test_an_iceberg_table_on_gcs_is_exported_exactly(resources, tmp_path: Path) -> None:
    """An Iceberg table copied up to the bucket (so its manifests still name the local paths:
    ``allow_moved_paths``), read through the GCS resource's credentials."""
    metadata_file = write_iceberg_table(tmp_path / "warehouse")
    table_dir = Path(metadata_file).parents[1]
    bucket = resources["gcs"].get_client().bucket(resources["gcs"].get_bucket_name())
    for file in sorted(p for p in table_dir.rglob("*") if p.is_file()):
        name = f"iceberg/orders/{file.relative_to(table_dir)}"
        bucket.blob(name).upload_from_filename(str(file))
    version = Path(metadata_file).name.removesuffix(".metadata.json")
    sql = (
        f"SELECT * FROM iceberg_scan('gs://{bucket.name}/iceberg/orders', "
        f"allow_moved_paths = true, version = '{version}')"
    )
    snapshot = tmp_path / "snapshot.parquet"
    lake_resources(resources)["source"].snapshot(
        sql, Path("i.sql"), snapshot, "lake", gcs_access(resources["gcs"])
    )
    rows = sorted(pq.read_table(snapshot).to_pylist(), key=lambda row: row["id"])
    assert rows == ORDERS.to_pylist()


def test_delta_on_gcs_is_refused_when_the_code_location_loads_naming_why(tmp_path: Path) -> None:
    from bq_assets.exports import ExportSpecError
    from bq_assets.exports.spec import check_sources

    (tmp_path / "orders.sql").write_text("SELECT id FROM delta_scan( 'gs://b/orders')")
    (tmp_path / "orders.yaml").write_text("primary_key: [id]\ncadence: daily\nsource: lake\n")
    with pytest.raises(ExportSpecError) as refused:
        check_sources(load_specs(tmp_path), ["default", "lake"])
    assert "orders.sql: delta_scan cannot read gs:// paths" in str(refused.value)
    assert "GCS secret" in str(refused.value)
    with pytest.raises(SourceError, match="delta_scan cannot read gs:// paths"):
        files_source(tmp_path).snapshot(
            "SELECT * FROM delta_scan('gs://b/orders')", Path("d.sql"), tmp_path / "s", "lake"
        )
