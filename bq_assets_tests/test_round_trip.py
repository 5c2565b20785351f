"""Exact round trip of adversarial values: source → GCS → BigQuery → Databricks, value by value.

One export spec (a ``.sql`` + ``.yaml`` pair in a temp folder) builds one row per hazard with
DuckDB literals: delimiters, quotes and line breaks inside values, non-ASCII and emoji, leading
zeros, NULL next to the empty string, texts that look like NULL markers, decimals at full
NUMERIC precision, timestamps with and without a zone, DATE extremes, 100k-character strings.
A second export is the same query returning no rows. Both go through the whole graph on the
local stack in three variants: CSV with the defaults (comma, quoting as needed, gzip), CSV with
``|``, every value quoted and no compression, and Parquet.

What the emulator does differently from BigQuery is pinned here, exactly, so a change in either
shows up: in CSV mode an empty string loads as NULL (it ignores the quotes of ``""``), and a
BIGNUMERIC column cannot be loaded at all. The opt-in live test runs the same round trip,
BIGNUMERIC column included, against real GCS and BigQuery, where every value must match.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import os
import uuid
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest
from google.api_core.exceptions import GoogleAPICallError, InternalServerError
from google.cloud import bigquery

from bq_assets.engine.bigquery_load import load_job_config
from bq_assets.engine.manifest import Manifest, read_manifest
from bq_assets.engine.writers import object_suffix
from bq_assets.exports import ExportSpec, ExportSpecError, load_specs
from bq_assets.exports.spec import load_spec
from bq_assets.factory import build_definitions
from bq_assets.schema import schema_to_json
from bq_assets.stages.databricks import table_name
from bq_assets.translator import bigquery_key, gcs_key, query_key
from bq_assets_tests.conftest import run_exports, step_errors

COLUMNS = "id, label, text, num, big, ts, naive, day, flag, n, f"
# One row per hazard; every value a DuckDB literal, cast to its type in the SELECT below.
VALUES = r"""
    (1, 'comma', 'a,b,c', '1.5', '1.5', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1.5'),
    (2, 'quotes', 'say "hi", "" twice', '1', '1', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1'),
    (3, 'newline', 'line 1' || chr(10) || 'line 2' || chr(10), '1', '1', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1'),
    (4, 'crlf', 'line 1' || chr(13) || chr(10) || 'line 2', '1', '1', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1'),
    (5, 'tab and pipe', 'a' || chr(9) || 'b|c', '1', '1', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1'),
    (6, 'non-ascii', 'Zoë Ørsted 李 Ωμέγα — 🎉 👩‍👩‍👧', '1', '1', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1'),
    (7, 'leading zeros', '007', '1', '1', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1'),
    (8, 'null everywhere', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (9, 'empty string', '', '0', '0', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', false, '0', '0'),
    (10, 'backslash N', '\N', '1', '1', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1'),
    (11, 'NULL as text', 'NULL', '1', '1', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1'),
    (12, 'null as text', 'null', '1', '1', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1'),
    (13, 'spaces', '  padded  ', '1', '1', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1'),
    (14, 'lone quote', '"', '1', '1', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1'),
    (15, 'very long', repeat('0123,"xy' || chr(10) || 'é', 10000), '1', '1', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00', '2024-01-01', true, '1', '1'),
    (16, 'maxima', 'max', '99999999999999999999999999999.999999999', '9999999999999999999999999999.9999999999', '9999-12-31 23:59:59.999999+00', '9999-12-31 23:59:59.999999', '9999-12-31', true, '9223372036854775807', '1.7976931348623157e308'),
    (17, 'minima', 'min', '-99999999999999999999999999999.999999999', '-9999999999999999999999999999.9999999999', '0001-01-01 00:00:00+00', '0001-01-01 00:00:00', '0001-01-01', false, '-9223372036854775808', '-2.2250738585072014e-308'),
    (18, 'smallest steps', 'tiny', '0.000000001', '-0.0000000001', '2024-03-10 02:30:00.123456+05:30', '2024-03-10 02:30:00.123456', '2000-02-29', true, '-1', '0.1')
"""


def fixture_sql(bignumeric: bool, rows: bool = True) -> str:
    """The adversarial query; ``bignumeric`` adds a DECIMAL(38,10) column (→ BIGNUMERIC)."""
    big = "    big::DECIMAL(38, 10) AS big,\n" if bignumeric else ""
    return (
        "SELECT\n    id::INTEGER AS id,\n    label,\n    text,\n"
        "    num::DECIMAL(38, 9) AS num,\n"
        f"{big}"
        "    ts::TIMESTAMPTZ AS ts,\n    naive::TIMESTAMP AS naive,\n    day::DATE AS day,\n"
        "    flag::BOOLEAN AS flag,\n    n::BIGINT AS n,\n    f::DOUBLE AS f\n"
        f"FROM (VALUES {VALUES}) AS t({COLUMNS})\n" + ("" if rows else "WHERE false\n")
    )


# Transfer variants: name → (format, extra spec YAML).
VARIANTS = {
    "csv": ("csv", ""),  # the defaults: comma, quote as needed, gzip
    "csv_pipe": ("csv", "csv: {delimiter: '|', quote: all, compression: none}\n"),
    "parquet": ("parquet", ""),
}


def adversarial_specs(
    folder: Path, variant: str, bignumeric: bool = False, extra_yaml: str = ""
) -> tuple[ExportSpec, ExportSpec]:
    """Exports ``adversarial_<variant>`` (18 rows) and ``adversarial_<variant>_empty`` (none)."""
    file_format, variant_yaml = VARIANTS[variant]
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"adversarial_{variant}", f"adversarial_{variant}_empty"]
    for name, rows in zip(names, [True, False], strict=True):
        (folder / f"{name}.sql").write_text(fixture_sql(bignumeric, rows))
        (folder / f"{name}.yaml").write_text(
            f"primary_key: [id]\ncadence: daily\nallow_empty: true\nformat: {file_format}\n"
            + variant_yaml
            + extra_yaml
        )
    specs = {spec.name: spec for spec in load_specs(folder)}
    return specs[names[0]], specs[names[1]]


def source_rows(spec: ExportSpec) -> tuple[list[str], list[tuple]]:
    """What the source returns for the spec's query (the fixture needs no tables)."""
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        cursor = con.execute(spec.sql)
        return [d[0] for d in cursor.description], cursor.fetchall()


def same(expected: object, actual: object) -> bool:
    """Equal value *and* type; timestamps must agree on having a zone, and TIMESTAMPs come
    back in UTC."""
    if type(expected) is not type(actual) or expected != actual:
        return False
    if isinstance(expected, dt.datetime):
        assert isinstance(actual, dt.datetime)
        if (expected.tzinfo is None) != (actual.tzinfo is None):
            return False
        return actual.tzinfo is None or actual.utcoffset() == dt.timedelta(0)
    return True


def differences(
    columns: list[str], expected: list[tuple], actual: list[tuple]
) -> dict[tuple[str, str], tuple[object, object]]:
    """``(row label, column) → (expected, actual)`` for every cell that differs."""
    by_id = {row[0]: row for row in actual}
    assert sorted(by_id) == sorted(row[0] for row in expected), "rows lost or added"
    found = {}
    for row in expected:
        for column, want, got in zip(columns, row, by_id[row[0]], strict=True):
            if not same(want, got):
                found[(row[1], column)] = (want, got)
    return found


def bigquery_rows(resources, table_id: str) -> tuple[list[str], list[tuple]]:
    with resources["bigquery"].get_client() as client:
        table = client.get_table(table_id)
        rows = [tuple(row.values()) for row in client.list_rows(table)]
    return [f.name for f in table.schema], rows


def databricks_rows(resources, spec: ExportSpec) -> tuple[list[str], list[tuple]]:
    table = resources["databricks"].read_table(table_name(spec))
    return table.column_names, [tuple(row.values()) for row in table.to_pylist()]


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_the_fixture_holds_what_it_claims() -> None:
    spec = ExportSpec(
        name="adversarial",
        sql=fixture_sql(bignumeric=True),
        sql_file=Path("adversarial.sql"),
        spec_file=Path("adversarial.yaml"),
        primary_key=["id"],
        cadence="daily",
    )
    columns, rows = source_rows(spec)
    cell = {(row[1], c): v for row in rows for c, v in zip(columns, row, strict=True)}
    assert len(rows) == 18
    assert cell[("crlf", "text")] == "line 1\r\nline 2"
    assert cell[("backslash N", "text")] == "\\N"
    assert len(cell[("very long", "text")]) == 100_000
    assert cell[("maxima", "num")] == Decimal("99999999999999999999999999999.999999999")
    assert cell[("maxima", "big")] == Decimal("9999999999999999999999999999.9999999999")
    assert cell[("smallest steps", "ts")] == dt.datetime(2024, 3, 9, 21, 0, 0, 123456, dt.UTC)
    assert cell[("smallest steps", "naive")] == dt.datetime(2024, 3, 10, 2, 30, 0, 123456)
    assert cell[("minima", "day")] == dt.date(1, 1, 1)
    assert cell[("null everywhere", "num")] is None and cell[("empty string", "text")] == ""


# What the emulator does differently, exactly: it loads a quoted "" as NULL (BigQuery keeps
# it an empty string; see the live test). Parquet keeps them apart there too.
EMULATOR_DIFFERENCES = {
    "csv": {("empty string", "text"): ("", None)},
    "parquet": {},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def round_trip(request, local_stack, resources, tmp_path_factory):
    """The adversarial exports through the whole graph on the local stack, in one variant:
    ``(format, full spec, empty spec, run result)``."""
    full, empty = adversarial_specs(tmp_path_factory.mktemp(f"rt_{request.param}"), request.param)
    with dg.instance_for_test() as instance:
        result = run_exports([full, empty], resources, instance)
    assert result.success, step_errors(result)
    assert all(check.passed for check in result.get_asset_check_evaluations())
    return full.format, full, empty, result


@pytest.mark.stack
def test_bigquery_holds_every_value_exactly(round_trip, resources) -> None:
    file_format, spec, _, result = round_trip
    columns, expected = source_rows(spec)
    table_id = metadata(result, bigquery_key(spec.name))["dagster/table_name"]
    loaded_columns, loaded = bigquery_rows(resources, table_id)
    assert loaded_columns == columns
    assert differences(columns, expected, loaded) == EMULATOR_DIFFERENCES[file_format]


@pytest.mark.stack
def as_federation_shows_it(value: object) -> object:
    """A value as Lakehouse Federation shows it in Databricks: a DATETIME (naive) or a TIME
    becomes a TimestampType, its wall-clock time read as UTC ("Data type mappings",
    https://docs.databricks.com/aws/en/query-federation/bigquery#data-type-mappings)."""
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.time):  # a TIME is a TimestampType too: its time of day on 1970-01-01
        return dt.datetime.combine(dt.date(1970, 1, 1), value, tzinfo=dt.UTC)
    return value


def test_databricks_holds_every_value_exactly(round_trip, resources) -> None:
    file_format, spec, _, _ = round_trip
    columns, rows = source_rows(spec)
    expected = [tuple(as_federation_shows_it(v) for v in row) for row in rows]
    copied_columns, copied = databricks_rows(resources, spec)
    assert copied_columns == columns
    assert differences(columns, expected, copied) == EMULATOR_DIFFERENCES[file_format]


@pytest.mark.stack
def test_the_manifest_records_the_format_and_bigquery_loads_it(round_trip, resources) -> None:
    file_format, spec, _, result = round_trip
    meta = metadata(result, gcs_key(spec.name))
    manifest = read_manifest(resources["gcs"].get_client(), meta["manifest_uri"])
    assert manifest.format == file_format == meta["format"]
    suffix = object_suffix(spec.format, spec.csv)
    assert manifest.uris and all(uri.endswith(suffix) for uri in manifest.uris)
    assert manifest.csv == (spec.csv.model_dump() if file_format == "csv" else {})
    job_id = metadata(result, bigquery_key(spec.name))["job_id"]
    with resources["bigquery"].get_client() as client:
        job = client.get_job(job_id, location="US")
    assert job.source_format == file_format.upper()
    assert job.source_uris == manifest.uris
    if file_format == "csv":
        assert job.field_delimiter == spec.csv.delimiter and job.allow_quoted_newlines


@pytest.mark.stack
def test_an_empty_result_is_one_header_only_object_and_an_empty_table(
    round_trip, resources
) -> None:
    file_format, _, spec, result = round_trip
    columns, _ = source_rows(spec)
    meta = metadata(result, gcs_key(spec.name))
    manifest = read_manifest(resources["gcs"].get_client(), meta["manifest_uri"])
    (shard,) = manifest.shards
    bucket, _, name = shard.uri.removeprefix("gs://").partition("/")
    data = resources["gcs"].get_client().bucket(bucket).blob(name).download_as_bytes()
    if file_format == "csv":
        text = gzip.decompress(data) if name.endswith(".gz") else data
        header = spec.csv.delimiter.join(f'"{c}"' for c in columns) + "\n"
        assert text.decode() == header
    else:
        parquet = pq.read_table(io.BytesIO(data))
        assert parquet.num_rows == 0 and parquet.column_names == columns
    table_id = metadata(result, bigquery_key(spec.name))["dagster/table_name"]
    assert shard.rows == 0
    assert bigquery_rows(resources, table_id) == (columns, [])
    assert databricks_rows(resources, spec) == (columns, [])


def test_the_transfer_format_is_validated_and_chooses_the_load_format(tmp_path: Path) -> None:
    (tmp_path / "t.sql").write_text("SELECT id FROM t")
    (tmp_path / "t.yaml").write_text("primary_key: [id]\ncadence: daily\nformat: json\n")
    with pytest.raises(ExportSpecError, match=r"format: 'json' is not allowed.*'csv' or 'parquet'"):
        load_spec(tmp_path / "t.yaml")
    (tmp_path / "t.yaml").write_text("primary_key: [id]\ncadence: daily\nformat: parquet\n")
    spec = load_spec(tmp_path / "t.yaml")
    schema = schema_to_json([bigquery.SchemaField("id", "INT64")])
    parquet = Manifest("t", "r", "gs://b/r/", 0, [], schema, format="parquet")
    config = load_job_config(spec, parquet)
    assert config.source_format == "PARQUET"
    assert config.decimal_target_types == {"NUMERIC", "BIGNUMERIC"}
    assert config.skip_leading_rows is None and config.null_marker is None
    csv = load_job_config(spec, Manifest("t", "r", "gs://b/r/", 0, [], schema, csv={"x": 1}))
    assert csv.source_format == "CSV" and csv.allow_quoted_newlines


@pytest.mark.stack
def test_the_emulator_cannot_load_a_bignumeric_column(local_stack, resources, tmp_path) -> None:
    """An emulator difference: it maps BIGNUMERIC to DuckDB's DECIMAL(76, 38), beyond DuckDB's
    precision of 38, so no BIGNUMERIC table can exist there: ``tables.insert`` answers 500 and a
    load job that creates its table fails with DuckDB's binder error. The local stack therefore
    refuses such a column at the query step (``LocalBigQueryResource.unstorable``). Real
    BigQuery is covered by the live test. If this starts failing, the emulator learnt
    BIGNUMERIC: move the column into the local round trip and drop the local refusal."""
    run_id = uuid.uuid4().hex
    name = f"tests/{run_id}/part-00000.csv"
    bucket = resources["gcs"].get_client().bucket(local_stack.bucket)
    bucket.blob(name).upload_from_string("id,big\n1,0.0000000001\n")
    schema = [bigquery.SchemaField("id", "INT64"), bigquery.SchemaField("big", "BIGNUMERIC")]
    dataset = f"{local_stack.project}.amperity_exports"
    with resources["bigquery"].get_client() as client:
        client.create_dataset(dataset, exists_ok=True)
        with pytest.raises(InternalServerError):
            client.create_table(
                bigquery.Table(f"{dataset}.big_{run_id}", schema=schema), retry=None
            )
        job = client.load_table_from_uri(
            f"gs://{local_stack.bucket}/{name}", f"{dataset}.big_load_{run_id}",
            job_config=bigquery.LoadJobConfig(schema=schema, skip_leading_rows=1),
        )  # fmt: skip
        with pytest.raises(GoogleAPICallError, match="DECIMAL type width must be between 1 and 38"):
            job.result(timeout=60)


# -- the same round trip against real GCS and BigQuery (opt in) ------------------------------

LIVE_VARIABLES = ["BQ_ASSETS_LIVE_GCP_PROJECT", "BQ_ASSETS_LIVE_GCS_BUCKET"]


def through_bigquery(
    specs: list[ExportSpec], resources: dict, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """Materialize query → GCS → BigQuery of the specs (and their checks), not Databricks."""
    defs = build_definitions(specs, resources, dg.DefaultScheduleStatus.STOPPED)
    keys = [key(s.name) for s in specs for key in (query_key, gcs_key, bigquery_key)]
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=keys
    )


@pytest.mark.live
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_real_bigquery_holds_every_value_exactly(tmp_path: Path, variant: str) -> None:
    """Real GCS and BigQuery, BIGNUMERIC included, and no differences at all: with the default
    (empty) null marker BigQuery loads an unquoted empty field as NULL and a quoted "" as an
    empty string. It stops at BigQuery: the local Databricks stand-in (DuckDB) cannot read
    BIGNUMERIC, which the Storage Read API sends as Arrow decimal256; a real workspace is
    exercised by ``test_live.py``. Everything it creates (a dataset of its own, the runs'
    objects) is deleted afterwards."""
    missing = [n for n in LIVE_VARIABLES if not os.environ.get(n)]
    if missing:
        pytest.skip(f"live test: set {', '.join(missing)} to run it against real GCP")
    from bq_assets_tests.test_live import live_resources

    dataset = f"bq_assets_round_trip_{uuid.uuid4().hex[:8]}"
    location = os.environ.get("BQ_ASSETS_LIVE_BQ_LOCATION", "US")
    specs = list(
        adversarial_specs(
            tmp_path / "exports",
            variant,
            bignumeric=True,
            extra_yaml=(
                f"bigquery: {{dataset: {dataset}, location: {location}}}\n"
                "objects: {template: 'bq_assets_round_trip/{export}/{run}/part-{shard:05d}'}\n"
            ),
        )
    )
    resources = live_resources(tmp_path)
    try:
        with dg.instance_for_test() as instance:
            result = through_bigquery(specs, resources, instance)
        assert result.success, step_errors(result)
        assert all(check.passed for check in result.get_asset_check_evaluations())
        for spec in specs:
            columns, expected = source_rows(spec)
            table_id = metadata(result, bigquery_key(spec.name))["dagster/table_name"]
            loaded_columns, loaded = bigquery_rows(resources, table_id)
            assert loaded_columns == columns
            assert differences(columns, expected, loaded) == {}
    finally:
        with resources["bigquery"].get_client() as client:
            client.delete_dataset(
                f"{client.project}.{dataset}", delete_contents=True, not_found_ok=True
            )
        gcs = resources["gcs"].get_client()
        for spec in specs:
            prefix = f"bq_assets_round_trip/{spec.name}/"
            for blob in gcs.list_blobs(resources["gcs"].get_bucket_name(), prefix=prefix):
                blob.delete()
