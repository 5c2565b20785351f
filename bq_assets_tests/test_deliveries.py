"""Delivered exports (issue 16): files another system drops into the bucket are picked up by a
sensor, one run per complete delivery, and carried on to BigQuery and Databricks.

The stack tests run on the real local stack (GCS and BigQuery emulators); the sensor is
evaluated against a real Dagster instance and the runs it requests are executed in process.
"""

from __future__ import annotations

import datetime as dt
import textwrap
import uuid
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

import bq_assets.stages.delivery as delivery_stage
from bq_assets.engine.deliveries import (
    DELIVERY_TAG,
    DeliveryError,
    find_deliveries,
    read_delivered_file,
)
from bq_assets.exports.fields import ExportSpecError
from bq_assets.exports.spec import ExportSpec, load_spec, load_specs
from bq_assets.factory import build_definitions
from bq_assets.local.delivery import deliver, finish, generate_pgp_key, pgp_encryptor
from bq_assets.local.limits import unsupported_settings
from bq_assets.resources.pgp import PGP_KEY_VARIABLE
from bq_assets.stages.delivery import DELIVERY_HEADER_MATCHES, DELIVERY_ROWS_ADD_UP
from bq_assets.translator import bigquery_key, databricks_key, gcs_key, query_key
from bq_assets_tests.conftest import step_errors

SPEC = """\
description: Orders as Amperity sends them
primary_key: [order_id]
required: [customer]
cadence: daily
delivery:
  prefix: {prefix}
  files: "orders_{{send:%Y%m%d_%H%M%S}}_*.csv.gz"
  complete_when:
    marker: "orders_{{send:%Y%m%d_%H%M%S}}.done"
  columns:
    - {{name: order_id, type: STRING}}
    - {{name: customer, type: STRING}}
    - {{name: amount, type: NUMERIC}}
    - {{name: quantity, type: INT64}}
    - {{name: ordered_on, type: DATE}}
bigquery:
  dataset: delivered
"""


def orders(count: int, start: int = 0) -> list[list[str | None]]:
    return [
        [f"o{n:05d}", f"Smith, customer {n}", f"{n}.25", str(n % 7), "2026-01-31"]
        for n in range(start, start + count)
    ]


def write_spec(folder: Path, text: str, name: str = "amperity_orders") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def spec(tmp_path: Path) -> ExportSpec:
    """A delivered export watching a prefix of its own (so tests never see each other's files)."""
    return load_spec(write_spec(tmp_path, SPEC.format(prefix=f"amperity/{uuid.uuid4().hex}/")))


@pytest.fixture
def bucket(resources):
    return resources["gcs"].get_client().bucket(resources["gcs"].get_bucket_name())


SENT = dt.datetime(2026, 1, 31, 6, 0, 0)


# --- the spec ------------------------------------------------------------------------------


def test_a_delivered_spec_needs_no_sql_file_and_load_specs_picks_it_up(tmp_path) -> None:
    write_spec(tmp_path, SPEC.format(prefix="amperity/orders/"))
    [spec] = load_specs(tmp_path)
    assert spec.delivered and spec.sql_file is None
    assert spec.delivery.column_names == [
        "order_id",
        "customer",
        "amount",
        "quantity",
        "ordered_on",
    ]
    assert [c.type for c in spec.delivery.columns][2:] == ["NUMERIC", "INT64", "DATE"]


def test_a_delivered_export_has_three_assets_a_sensor_and_no_schedule(tmp_path, resources) -> None:
    spec = load_spec(write_spec(tmp_path, SPEC.format(prefix="amperity/orders/")))
    defs = build_definitions([spec], resources, dg.DefaultScheduleStatus.STOPPED)
    keys = set(defs.resolve_all_asset_keys())
    delivery = dg.AssetKey(["source", "delivery", "amperity", "orders"])  # its bucket prefix
    assert keys == {
        delivery,
        gcs_key(spec.name),
        bigquery_key(spec.name),
        databricks_key(spec.name),
    }
    assert query_key(spec.name) not in keys
    assert defs.resolve_sensor_def("amperity_orders_deliveries")
    assert not list(defs.schedules or [])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("  prefix: amperity/orders/", "  prefix: /etc"),
            "delivery.prefix: '/etc' is not a folder",
        ),
        (('_*.csv.gz"', '_*.csv.gz"\n  delimiter: "|"'), "delivery.delimiter: '|' is not allowed"),
        (("{send:%Y%m%d_%H%M%S}_*", "all_*"), "delivery.files: must contain exactly one {send:"),
        (
            ("type: NUMERIC", "type: DECIMAL"),
            "delivery.columns.2.type: 'DECIMAL' is not a BigQuery type",
        ),
        (
            (
                '    marker: "orders_{send:%Y%m%d_%H%M%S}.done"',
                "    marker: x_{send:%Y}\n    quiet_minutes: 5",
            ),
            "delivery.complete_when: set exactly one of marker or quiet_minutes",
        ),
        (("compression: gzip", "compression: zip"), None),
        (
            ("primary_key: [order_id]", "primary_key: [id]"),
            "primary_key: id not among the delivery's columns",
        ),
        (("  columns:", "  decrypt: zip\n  columns:"), "delivery.decrypt: 'zip' is not allowed"),
    ],
)
def test_a_broken_delivery_spec_fails_the_load_naming_file_and_field(
    tmp_path, change, message
) -> None:
    text = SPEC.format(prefix="amperity/orders/").replace(*change)
    path = write_spec(tmp_path, text)
    if message is None:
        load_spec(path)  # a replacement that does not apply: the spec stays valid
        return
    with pytest.raises(ExportSpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_quiet_minutes_completes_a_delivery_only_after_the_quiet_period(tmp_path, bucket) -> None:
    text = SPEC.format(prefix=f"amperity/{uuid.uuid4().hex}/").replace(
        '    marker: "orders_{send:%Y%m%d_%H%M%S}.done"', "    quiet_minutes: 10"
    )
    spec = load_spec(write_spec(tmp_path, text))
    deliver(bucket, spec.delivery, orders(10), SENT, parts=2)
    now = dt.datetime.now(dt.UTC)
    [early] = find_deliveries(bucket, spec.delivery, now)
    [late] = find_deliveries(bucket, spec.delivery, now + dt.timedelta(minutes=11))
    assert (early.complete, late.complete) == (False, True)
    assert len(late.files) == 2


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        ("a,b\n", 0),  # header only
        ("a,b", 0),  # header only, no final line break
        ('a,b\n1,"x, and\ny"\n2,3\n', 2),  # a quoted delimiter and line break stay in a value
        ("a,b\n1,2", 1),
    ],
)
def test_rows_are_counted_as_csv_records_not_lines(tmp_path, text, rows) -> None:
    options = load_spec(write_spec(tmp_path, SPEC.format(prefix="p/"))).delivery
    options = options.model_copy(update={"compression": "none"})
    (tmp_path / "f.csv").write_text(text)
    assert read_delivered_file(tmp_path / "f.csv", "gs://b/f.csv", options)[:2] == (
        rows,
        ["a", "b"],
    )


def test_a_row_with_another_number_of_fields_is_refused_naming_file_and_row(tmp_path) -> None:
    options = load_spec(write_spec(tmp_path, SPEC.format(prefix="p/"))).delivery
    options = options.model_copy(update={"compression": "none"})
    (tmp_path / "f.csv").write_text("a,b\n1,2\n1,2,3\n")
    with pytest.raises(DeliveryError, match=r"gs://b/f.csv: .*Row #3: Expected 2 columns, got 3"):
        read_delivered_file(tmp_path / "f.csv", "gs://b/f.csv", options)


# --- the sensor and the runs, on the local stack ---------------------------------------------


def evaluate_sensor(spec, defs, resources, instance, cursor):
    sensor = defs.resolve_sensor_def(f"{spec.name}_deliveries")
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"gcs": resources["gcs"]}, definitions=defs
    ) as context:
        result = sensor(context)
    return result.run_requests or [], result.cursor


def run_request(spec, defs, instance, request) -> dg.ExecuteInProcessResult:
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        tags=request.tags,
        raise_on_error=False,
        asset_selection=[gcs_key(spec.name), bigquery_key(spec.name), databricks_key(spec.name)],
    )


def bigquery_rows(resources, spec) -> list[tuple]:
    with resources["bigquery"].get_client() as client:
        table = (
            f"{resources['bigquery'].project_id()}.{spec.bigquery.dataset}.{spec.bigquery_table}"
        )
        rows = client.query(f"SELECT * FROM `{table}` ORDER BY order_id").result()
        return [tuple(row.values()) for row in rows]


def expected_rows(rows) -> list[tuple]:
    return [(o, c, Decimal(a), int(q), dt.date.fromisoformat(d)) for o, c, a, q, d in rows]


def test_a_half_written_delivery_waits_until_complete_then_loads_once(
    spec, resources, instance, bucket
) -> None:
    defs = build_definitions([spec], resources, dg.DefaultScheduleStatus.STOPPED)
    rows = orders(300)
    half = deliver(bucket, spec.delivery, rows, SENT, parts=3, write_files=1)
    requests, cursor = evaluate_sensor(spec, defs, resources, instance, None)
    assert requests == [] and cursor is None

    finish(bucket, spec.delivery, half, rows, parts=3, written=1)
    [request], cursor = evaluate_sensor(spec, defs, resources, instance, cursor)
    assert request.tags[DELIVERY_TAG] == "20260131_060000"
    assert request.run_key == "amperity_orders:20260131_060000"

    result = run_request(spec, defs, instance, request)
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())
    gcs = result.asset_materializations_for_node("gcs__amperity_orders")[0].metadata
    assert gcs["dagster/row_count"].value == 300
    files = gcs["objects"].value
    assert [f["uri"].rsplit("/", 1)[1] for f in files] == [
        f"orders_20260131_060000_000{n}.csv.gz" for n in (1, 2, 3)
    ]
    assert [f["rows"] for f in files] == [100, 100, 100]
    assert all(f["crc32c"] and f["bytes"] > 0 for f in files)
    assert bigquery_rows(resources, spec) == expected_rows(rows)

    # A duplicate marker (the destination writes it again) and a daemon restart (only the
    # stored cursor survives) request nothing.
    bucket.blob(half.marker).upload_from_string(b"")
    assert evaluate_sensor(spec, defs, resources, instance, cursor) == ([], cursor)


def test_a_delivery_with_a_wrong_header_stops_before_bigquery(
    spec, resources, instance, bucket
) -> None:
    defs = build_definitions([spec], resources, dg.DefaultScheduleStatus.STOPPED)
    wrong = ["order_id", "customer", "amt", "quantity", "ordered_on"]
    deliver(bucket, spec.delivery, orders(20), SENT, parts=2, header=wrong)
    [request], _ = evaluate_sensor(spec, defs, resources, instance, None)
    result = run_request(spec, defs, instance, request)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks[DELIVERY_HEADER_MATCHES].passed
    assert "do not start with the declared header" in checks[DELIVERY_HEADER_MATCHES].description
    assert "amt" in checks[DELIVERY_HEADER_MATCHES].description
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == {gcs_key(spec.name)}
    assert bigquery_key(spec.name) not in materialized


def test_two_deliveries_in_a_row_load_each_once_in_order(spec, resources, instance, bucket) -> None:
    defs = build_definitions([spec], resources, dg.DefaultScheduleStatus.STOPPED)
    first, second = orders(40), orders(25, start=1000)
    deliver(bucket, spec.delivery, first, SENT, parts=2)
    deliver(bucket, spec.delivery, second, SENT + dt.timedelta(hours=1), parts=1)
    requests, cursor = evaluate_sensor(spec, defs, resources, instance, None)
    assert [r.tags[DELIVERY_TAG] for r in requests] == ["20260131_060000", "20260131_070000"]
    loaded = []
    for request in requests:
        result = run_request(spec, defs, instance, request)
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert {c.check_name for c in checks} >= {DELIVERY_HEADER_MATCHES, DELIVERY_ROWS_ADD_UP}
        assert all(c.passed for c in checks)
        loaded.append(bigquery_rows(resources, spec))
    assert loaded == [expected_rows(first), expected_rows(second)]
    assert evaluate_sensor(spec, defs, resources, instance, cursor) == ([], cursor)


# --- PGP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys():
    return generate_pgp_key(), generate_pgp_key("someone else <else@bq-assets.local>")


@pytest.fixture
def encrypted_spec(tmp_path: Path) -> ExportSpec:
    text = (
        SPEC.format(prefix=f"amperity/{uuid.uuid4().hex}/")
        .replace("_*.csv.gz", "_*.csv.gz.pgp")
        .replace("  columns:", "  decrypt: pgp\n  columns:")
    )
    return load_spec(write_spec(tmp_path, text))


def test_an_encrypted_delivery_is_decrypted_into_a_run_scoped_prefix_and_loaded(
    encrypted_spec, resources, instance, bucket, keys, monkeypatch
) -> None:
    spec, (ours, _) = encrypted_spec, keys
    monkeypatch.setenv(PGP_KEY_VARIABLE, ours.private)
    defs = build_definitions([spec], resources, dg.DefaultScheduleStatus.STOPPED)
    rows = orders(120)
    deliver(bucket, spec.delivery, rows, SENT, parts=2, encrypt=pgp_encryptor(ours.public))
    [request], _ = evaluate_sensor(spec, defs, resources, instance, None)
    result = run_request(spec, defs, instance, request)
    assert result.success, step_errors(result)
    assert all(c.passed for c in result.get_asset_check_evaluations())
    files = result.asset_materializations_for_node("gcs__amperity_orders")[0].metadata["objects"]
    assert [f["uri"].rsplit("/", 1)[1] for f in files.value] == [
        "orders_20260131_060000_0001.csv.gz",
        "orders_20260131_060000_0002.csv.gz",
    ]
    assert all(f"/deliveries/amperity_orders/{result.run_id}/" in f["uri"] for f in files.value)
    assert bigquery_rows(resources, spec) == expected_rows(rows)
    assert not any(ours.private in str(event) for event in instance.all_logs(result.run_id))


def test_a_wrong_key_is_a_clear_error_and_nothing_is_loaded(
    encrypted_spec, resources, instance, bucket, keys, monkeypatch
) -> None:
    spec, (ours, theirs) = encrypted_spec, keys
    monkeypatch.setenv(PGP_KEY_VARIABLE, theirs.private)
    defs = build_definitions([spec], resources, dg.DefaultScheduleStatus.STOPPED)
    deliver(bucket, spec.delivery, orders(10), SENT, parts=2, encrypt=pgp_encryptor(ours.public))
    [request], _ = evaluate_sensor(spec, defs, resources, instance, None)
    result = run_request(spec, defs, instance, request)
    assert not result.success
    [error] = step_errors(result).values()
    assert "cannot be decrypted with the key in BQ_ASSETS_PGP_PRIVATE_KEY" in error
    assert "No secret key" in error and "nothing was loaded" in error
    assert result.get_asset_materialization_events() == []
    run_prefix = f"deliveries/amperity_orders/{result.run_id}/"
    assert list(bucket.list_blobs(prefix=run_prefix)) == []
    logs = [str(event) for event in instance.all_logs(result.run_id)]
    assert not any(theirs.private in line or ours.private in line for line in logs)
    # Never retried: retrying cannot make a wrong key right.
    assert sum("STEP_START" in line for line in logs) == 1


def test_an_uncompressed_tsv_completed_by_quiet_time_loads(
    tmp_path, resources, instance, bucket, monkeypatch
) -> None:
    text = (
        SPEC.format(prefix=f"amperity/{uuid.uuid4().hex}/")
        .replace('_*.csv.gz"', '.tsv"\n  delimiter: "\\t"\n  compression: none')
        .replace('    marker: "orders_{send:%Y%m%d_%H%M%S}.done"', "    quiet_minutes: 1")
    )
    spec = load_spec(write_spec(tmp_path, text))
    assert (spec.delivery.delimiter, spec.delivery.compression) == ("\t", "none")
    rows = orders(30)
    rows[3][1] = "a value\twith a tab, a comma and a\nline break"
    deliver(bucket, spec.delivery, rows, SENT)
    defs = build_definitions([spec], resources, dg.DefaultScheduleStatus.STOPPED)
    assert evaluate_sensor(spec, defs, resources, instance, None) == ([], None)  # not quiet yet
    # Two minutes later (the clock the stage judges completeness by) it is quiet, so complete.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
    monkeypatch.setattr(delivery_stage, "now", lambda: later)
    [request], _ = evaluate_sensor(spec, defs, resources, instance, None)
    result = run_request(spec, defs, instance, request)
    assert result.success, step_errors(result)
    assert all(c.passed for c in result.get_asset_check_evaluations())
    assert bigquery_rows(resources, spec) == expected_rows(rows)


def test_a_delivery_without_header_is_refused_on_the_local_stack(tmp_path) -> None:
    text = SPEC.format(prefix="p/").replace("  columns:", "  header: false\n  columns:")
    [problem] = unsupported_settings(load_spec(write_spec(tmp_path, text)))
    assert "delivery.header: false cannot run on the local stack" in problem
    assert "ignores skipLeadingRows" in problem
