"""The export engine: CSV (and Parquet) that BigQuery reads back exactly, shards planned for
every core, memory bounded by the batch size, uploads that are resumable and verified.

Unit level; the tests marked ``stack`` upload to the local fake-gcs-server.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import gzip
import random
import re
import threading
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.cloud import storage
from google.cloud.storage._media.requests import upload as resumable_media
from google.cloud.storage.exceptions import DataCorruption

from bq_assets.engine import export as export_engine
from bq_assets.engine import upload as upload_engine
from bq_assets.engine.export import export_snapshot
from bq_assets.engine.layout import ObjectLayout
from bq_assets.engine.manifest import MANIFEST, SUCCESS_MARKER
from bq_assets.engine.planning import plan_shard_rows, shard_ranges
from bq_assets.engine.retention import tidy_runs
from bq_assets.engine.snapshot import READ_BATCH_ROWS, Snapshot
from bq_assets.engine.upload import UploadIntegrityError, upload
from bq_assets.engine.writers import NullMarkerCollisionError, write_csv, write_parquet
from bq_assets.exports.targets import CsvOptions
from bq_assets.schema import (
    UnsupportedTypeError,
    bigquery_schema,
    bigquery_type,
    plain_decimal_text,
)


@pytest.mark.parametrize(
    ("arrow_type", "expected"),
    [
        (pa.int32(), "INT64"),
        (pa.int64(), "INT64"),
        (pa.float64(), "FLOAT64"),
        (pa.bool_(), "BOOL"),
        (pa.string(), "STRING"),
        (pa.date32(), "DATE"),
        (pa.timestamp("us", tz="UTC"), "TIMESTAMP"),
        (pa.timestamp("us"), "DATETIME"),
        (pa.decimal128(18, 2), "NUMERIC"),
        (pa.decimal128(38, 9), "NUMERIC"),
        (pa.decimal128(38, 10), "BIGNUMERIC"),
        (pa.time64("us"), "TIME"),
    ],
)
def test_snapshot_types_map_to_bigquery_types(arrow_type: pa.DataType, expected: str) -> None:
    assert bigquery_type(arrow_type) == expected


def test_a_type_csv_cannot_carry_is_named() -> None:
    schema = pa.schema([("tags", pa.list_(pa.string()))])
    with pytest.raises(UnsupportedTypeError, match="column 'tags'"):
        bigquery_schema(schema)


def test_shards_cover_every_row_once() -> None:
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(8, 4) == [(0, 4), (4, 8)]
    assert shard_ranges(0, 4) == [(0, 0)]


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    table = pa.table(
        {
            "id": pa.array([1, 2, 3, 4], pa.int64()),
            "text": pa.array(["a,b", 'say "hi"', "line\nbreak", None]),
            "amount": pa.array(
                [Decimal("1.50"), None, Decimal("-0.01"), Decimal("0")], pa.decimal128(18, 2)
            ),
            "at": pa.array(
                [dt.datetime(2024, 1, 1, tzinfo=dt.UTC), None, None, None],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    path = tmp_path / "snapshot.parquet"
    pq.write_table(table, path, row_group_size=2)
    return path


def read_csv(path: Path, options: CsvOptions) -> list[list[str]]:
    opener = gzip.open if options.compression == "gzip" else open
    with opener(path, "rt", newline="") as file:
        return list(csv.reader(file, delimiter=options.delimiter))


def test_values_are_quoted_per_rfc_4180_and_round_trip(snapshot: Path, tmp_path: Path) -> None:
    options = CsvOptions(compression="none")
    out = tmp_path / "part.csv"
    assert write_csv(snapshot, 0, 4, out, options) == 4
    rows = read_csv(out, options)
    assert rows[0] == ["id", "text", "amount", "at"]
    assert rows[1] == ["1", "a,b", "1.50", "2024-01-01 00:00:00.000000Z"]
    assert rows[2][1] == 'say "hi"'
    assert rows[3][1] == "line\nbreak"
    assert rows[4] == ["4", "", "0.00", ""]


def test_a_shard_holds_only_its_rows_across_row_groups(snapshot: Path, tmp_path: Path) -> None:
    options = CsvOptions(compression="gzip", header=False, delimiter="|")
    out = tmp_path / "part.csv.gz"
    assert write_csv(snapshot, 1, 3, out, options) == 2
    assert [row[0] for row in read_csv(out, options)] == ["2", "3"]


def test_an_empty_result_is_a_header_only_file(snapshot: Path, tmp_path: Path) -> None:
    options = CsvOptions(compression="none")
    out = tmp_path / "empty.csv"
    assert write_csv(snapshot, 0, 0, out, options) == 0
    assert read_csv(out, options) == [["id", "text", "amount", "at"]]


def test_a_null_marker_is_written_for_nulls_only(snapshot: Path, tmp_path: Path) -> None:
    options = CsvOptions(compression="none", null_marker=r"\N")
    out = tmp_path / "part.csv"
    write_csv(snapshot, 3, 4, out, options)
    assert read_csv(out, options)[1] == ["4", r"\N", "0.00", r"\N"]


def test_shards_are_even_and_at_least_two_per_worker_when_the_result_allows() -> None:
    # Two shards per worker once each gets enough rows, however large shard_rows is: every
    # worker has work, and uploads overlap with writing.
    assert plan_shard_rows(1_000_000, 1_000_000, workers=2) == 250_000
    assert plan_shard_rows(1_000_000, 1_000_000, workers=4) == 125_000
    assert plan_shard_rows(120_000, 1_000_000, workers=2) == 60_000
    # A multiple of the worker count, so no worker idles at the end...
    assert plan_shard_rows(10_000_000, 1_000_000, workers=2) == 1_000_000
    assert plan_shard_rows(10_500_000, 1_000_000, workers=2) == 875_000
    # ...and never more rows per shard than asked.
    assert plan_shard_rows(2_500_000, 1_000_000, workers=2) == 625_000
    # Small results keep shard_rows as it is.
    assert plan_shard_rows(60_000, 1_000_000, workers=8) == 60_000
    assert plan_shard_rows(0, 1_000_000, workers=2) == 1_000_000
    assert plan_shard_rows(250, 100, workers=2) == 84  # three objects
    assert shard_ranges(10, plan_shard_rows(10, 4, workers=2)) == [(0, 4), (4, 8), (8, 10)]


BIG_ROWS = 132_072  # three row groups of 50,000 rows, the last one short


@pytest.fixture
def big_snapshot(tmp_path: Path) -> Path:
    table = pa.table({"id": pa.array(range(BIG_ROWS), pa.int64())})
    path = tmp_path / "big.parquet"
    pq.write_table(table, path, row_group_size=50_000)
    return path


@pytest.mark.parametrize(("start", "end"), [(0, 0), (0, 10), (49_990, 50_010), (1_000, 131_000)])
def test_a_range_is_read_in_bounded_batches_from_its_row_groups_only(
    big_snapshot: Path, start: int, end: int
) -> None:
    snapshot = Snapshot(big_snapshot)
    batches = list(snapshot.batches(start, end))
    assert all(b.num_rows <= READ_BATCH_ROWS for b in batches)  # memory: one batch per worker
    ids = [i for b in batches for i in b.column("id").to_pylist()]
    assert ids == list(range(start, end))


def test_plain_decimal_text_matches_python_for_every_scale() -> None:
    rng = random.Random(42)
    for scale in [0, 2, 6, 7, 9, 10, 20, 38]:
        values = [Decimal(0), Decimal(1).scaleb(-scale), -Decimal(1).scaleb(-scale)]
        for _ in range(300):
            digits = rng.randint(1, 38)
            unscaled = rng.randrange(10 ** (digits - 1), 10**digits) * rng.choice([1, -1])
            values.append(Decimal(unscaled).scaleb(-scale))
        array = pa.array([*values, None], pa.decimal128(38, scale))
        with decimal.localcontext(prec=80):
            expected = [*(f"{v.quantize(Decimal(1).scaleb(-scale)):f}" for v in values), None]
        assert plain_decimal_text(array).to_pylist() == expected, scale


def test_small_decimals_are_written_as_plain_decimal_strings(tmp_path: Path) -> None:
    table = pa.table(
        {
            "numeric": pa.array(
                [Decimal("0.000000001"), Decimal("-0.00000001")], pa.decimal128(38, 9)
            ),
            "big": pa.array([Decimal("0E-10"), Decimal("1E-10")], pa.decimal128(38, 10)),
            "at": pa.array([0, 1_000_001_000], pa.timestamp("ns", tz="UTC")),
        }
    )
    pq.write_table(table, tmp_path / "s.parquet")
    options = CsvOptions(compression="none")
    write_csv(tmp_path / "s.parquet", 0, 2, tmp_path / "out.csv", options)
    rows = read_csv(tmp_path / "out.csv", options)
    assert rows[1:] == [
        ["0.000000001", "0.0000000000", "1970-01-01 00:00:00.000000Z"],
        ["-0.000000010", "0.0000000001", "1970-01-01 00:00:01.000001Z"],
    ]


def test_nanoseconds_that_bigquery_cannot_hold_fail_instead_of_being_cut(tmp_path: Path) -> None:
    table = pa.table({"at": pa.array([1], pa.timestamp("ns", tz="UTC"))})
    pq.write_table(table, tmp_path / "s.parquet", coerce_timestamps=None)
    if pq.read_schema(tmp_path / "s.parquet").field("at").type.unit != "ns":
        pytest.skip("this pyarrow stores nanoseconds coarser")
    with pytest.raises(pa.ArrowInvalid, match="would lose data"):
        write_csv(tmp_path / "s.parquet", 0, 1, tmp_path / "o.csv", CsvOptions())


def test_empty_strings_are_quoted_and_nulls_are_not(snapshot: Path, tmp_path: Path) -> None:
    table = pa.table({"text": pa.array(["", None, "x"])})
    pq.write_table(table, tmp_path / "s.parquet")
    write_csv(tmp_path / "s.parquet", 0, 3, tmp_path / "o.csv", CsvOptions(compression="none"))
    assert (tmp_path / "o.csv").read_text() == '"text"\n""\n\n"x"\n'


def test_a_text_equal_to_the_null_marker_fails_the_export(tmp_path: Path) -> None:
    marker = r"\N"
    table = pa.table({"id": [1, 2], "text": ["fine", marker]})
    pq.write_table(table, tmp_path / "s.parquet")
    message = re.escape(f"column 'text' holds the text {marker!r}, which is csv.null_marker")
    with pytest.raises(NullMarkerCollisionError, match=message):
        write_csv(tmp_path / "s.parquet", 0, 2, tmp_path / "o.csv", CsvOptions(null_marker=marker))
    # With the default (empty) marker the same text is just text.
    options = CsvOptions(compression="none")
    write_csv(tmp_path / "s.parquet", 0, 2, tmp_path / "o.csv", options)
    assert read_csv(tmp_path / "o.csv", options)[2] == ["2", marker]


def test_gzip_output_is_deterministic_and_honours_the_level(snapshot: Path, tmp_path: Path) -> None:
    outputs = []
    for name, level in [("a", 1), ("b", 1), ("c", 9)]:
        out = tmp_path / f"{name}.csv.gz"
        write_csv(snapshot, 0, 4, out, CsvOptions(gzip_level=level))
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]  # no timestamp in the gzip header: same rows, same bytes
    assert outputs[0][4:8] == b"\0\0\0\0"
    assert gzip.decompress(outputs[0]) == gzip.decompress(outputs[2])
    assert outputs[0] != outputs[2]


def test_parquet_shards_keep_types_nulls_and_empty_strings(snapshot: Path, tmp_path: Path) -> None:
    out = tmp_path / "part.parquet"
    assert write_parquet(snapshot, 1, 4, out) == 3
    written = pq.read_table(out)
    original = pq.read_table(snapshot).slice(1, 3)
    assert written.schema == original.schema
    assert written.to_pylist() == original.to_pylist()
    table = pa.table({"text": pa.array(["", None])})
    pq.write_table(table, tmp_path / "s.parquet")
    write_parquet(tmp_path / "s.parquet", 0, 2, out)
    assert pq.read_table(out).column("text").to_pylist() == ["", None]


# -- uploads ---------------------------------------------------------------------------------


class FakeBlob:
    """Stands in for a GCS blob whose stored checksum is ``stored_crc32c`` after the upload."""

    def __init__(self, name: str, stored_crc32c: str | None, error: Exception | None) -> None:
        self.name, self.crc32c, self.deleted = name, None, False
        self._stored, self._error = stored_crc32c, error

    def upload_from_file(self, file, **kwargs) -> None:
        file.read()
        if self._error:
            raise self._error
        self.crc32c = self._stored

    def delete(self) -> None:
        self.deleted = True


def fake_bucket(stored_crc32c: str | None, error: Exception | None = None) -> SimpleNamespace:
    blobs: list[FakeBlob] = []

    def blob(name: str, chunk_size: int | None = None) -> FakeBlob:
        blobs.append(FakeBlob(name, stored_crc32c, error))
        return blobs[-1]

    return SimpleNamespace(name="bucket", blob=blob, blobs=blobs)


def crc32c_of(data: bytes) -> str:
    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def test_a_stored_checksum_that_differs_raises_and_removes_the_object(tmp_path: Path) -> None:
    path = tmp_path / "part.csv"
    path.write_bytes(b"id\n1\n")
    bucket = fake_bucket(stored_crc32c="AAAAAA==")
    with pytest.raises(UploadIntegrityError, match="stored crc32c AAAAAA== differs from written"):
        upload(bucket, path, "x/part.csv", "text/csv")  # type: ignore[arg-type]
    assert bucket.blobs[0].deleted

    good = fake_bucket(stored_crc32c=crc32c_of(b"id\n1\n"))
    assert upload(good, path, "x/part.csv", "text/csv") == crc32c_of(b"id\n1\n")  # type: ignore[arg-type]


def test_corruption_detected_by_the_client_is_an_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "part.csv"
    path.write_bytes(b"id\n1\n")
    bucket = fake_bucket(None, error=DataCorruption(None, "Checksum mismatch"))
    with pytest.raises(UploadIntegrityError, match="do not match what was sent"):
        upload(bucket, path, "x/part.csv", "text/csv")  # type: ignore[arg-type]


@pytest.fixture
def gcs_bucket(local_stack, resources) -> storage.Bucket:
    return resources["gcs"].get_client().bucket(local_stack.bucket)


@pytest.mark.stack
@pytest.mark.parametrize("size", [1_000, 512 * 1024, 700 * 1024])
def test_uploads_are_resumable_in_chunks_whatever_the_size(
    gcs_bucket: storage.Bucket, tmp_path: Path, monkeypatch, size: int
) -> None:
    calls: list[str] = []
    chunks: list[int] = []
    resumable, transmit = (
        storage.Blob._do_resumable_upload,
        resumable_media.ResumableUpload.transmit_next_chunk,
    )

    def spy_resumable(self, *args, **kwargs):
        calls.append("resumable")
        return resumable(self, *args, **kwargs)

    def spy_transmit(self, *args, **kwargs):
        response = transmit(self, *args, **kwargs)
        chunks.append(response.status_code)
        return response

    monkeypatch.setattr(storage.Blob, "_do_resumable_upload", spy_resumable)
    monkeypatch.setattr(
        storage.Blob, "_do_multipart_upload", lambda *a, **k: calls.append("multipart")
    )
    monkeypatch.setattr(resumable_media.ResumableUpload, "transmit_next_chunk", spy_transmit)
    monkeypatch.setattr(upload_engine, "UPLOAD_CHUNK_BYTES", 256 * 1024)
    data = random.Random(size).randbytes(size)
    (tmp_path / "f").write_bytes(data)
    name = f"tests/resumable/{size}"

    assert upload(gcs_bucket, tmp_path / "f", name, "application/octet-stream") == crc32c_of(data)
    assert calls == ["resumable"]
    # 308 "resume incomplete" for every full chunk, then 200 for the last (possibly empty) one.
    assert chunks == [308] * (size // (256 * 1024)) + [200]
    stored = gcs_bucket.get_blob(name)
    assert stored.download_as_bytes() == data and stored.crc32c == crc32c_of(data)


@pytest.mark.stack
def test_an_export_uploads_every_shard_then_manifest_and_marker(
    gcs_bucket: storage.Bucket, big_snapshot: Path, tmp_path: Path
) -> None:
    layout = ObjectLayout(
        template="tests/{export}/{run}/part-{shard:05d}",
        export="shards",
        run_id=f"run-{random.Random().randrange(10**9)}",
        run_date=dt.date(2026, 1, 31),
        suffix=".csv.gz",
    )
    options = CsvOptions(shard_rows=40_000)
    manifest = export_snapshot(big_snapshot, gcs_bucket, layout, options, workers=2)
    assert len(manifest.shards) == 4  # 132,072 rows, at most 40,000 each, a multiple of 2
    assert [s.rows for s in manifest.shards] == [33_018, 33_018, 33_018, 33_018]
    assert manifest.rows == BIG_ROWS and manifest.format == "csv"
    ids = []
    for shard in manifest.shards:
        blob = gcs_bucket.get_blob(shard.uri.removeprefix(f"gs://{gcs_bucket.name}/"))
        assert (blob.size, blob.crc32c) == (shard.bytes, shard.crc32c)
        lines = gzip.decompress(blob.download_as_bytes()).decode().splitlines()
        assert lines[0] == '"id"'
        ids += [int(line) for line in lines[1:]]
    assert ids == list(range(manifest.rows))
    names = {b.name for b in gcs_bucket.list_blobs(prefix=layout.run_prefix)}
    assert {layout.run_prefix + MANIFEST, layout.run_prefix + SUCCESS_MARKER} <= names


def scratch_layout(export: str, template: str = "tests/{export}/{run}/part-{shard:05d}"):
    return ObjectLayout(
        template=template,
        export=export,
        run_id=f"run-{random.Random().randrange(10**9)}",
        run_date=dt.date(2026, 1, 31),
        suffix=".csv.gz",
    )


def names_under(bucket: storage.Bucket, prefix: str) -> set[str]:
    return {blob.name for blob in bucket.list_blobs(prefix=prefix)}


@pytest.mark.stack
def test_a_failed_shard_stops_the_export_and_leaves_no_object_behind(
    gcs_bucket: storage.Bucket, big_snapshot: Path, monkeypatch
) -> None:
    layout = scratch_layout("failing")
    real_upload = export_engine.upload
    uploaded = []
    first_uploaded = threading.Event()

    def flaky(bucket, path, name, content_type, retry):
        if name.endswith("part-00001.csv.gz"):
            first_uploaded.wait(timeout=60)
            raise UploadIntegrityError("simulated")
        crc = real_upload(bucket, path, name, content_type, retry)
        uploaded.append(name)
        first_uploaded.set()
        return crc

    monkeypatch.setattr(export_engine, "upload", flaky)
    with pytest.raises(UploadIntegrityError, match="simulated"):
        export_snapshot(big_snapshot, gcs_bucket, layout, CsvOptions(shard_rows=40_000), workers=2)
    assert uploaded, "another shard was uploaded before the failure stopped the export"
    assert names_under(gcs_bucket, layout.run_prefix) == set()


@pytest.mark.stack
def test_a_retried_attempt_replaces_whatever_the_failed_one_left(
    gcs_bucket: storage.Bucket, big_snapshot: Path
) -> None:
    layout = scratch_layout("retried")
    leftover = layout.shard(99)  # e.g. from an attempt that read a larger snapshot
    gcs_bucket.blob(leftover).upload_from_string(b"stale")
    manifest = export_snapshot(
        big_snapshot, gcs_bucket, layout, CsvOptions(shard_rows=40_000), workers=2
    )
    expected = {uri.removeprefix(f"gs://{gcs_bucket.name}/") for uri in manifest.uris}
    expected |= {layout.run_prefix + MANIFEST, layout.run_prefix + SUCCESS_MARKER}
    assert names_under(gcs_bucket, layout.run_prefix) == expected


@pytest.mark.stack
@pytest.mark.parametrize(
    "template",
    ["exports/{export}/{run}/part-{shard:05d}", "x/{export}/{date:%Y/%m/%d}/{run}/p{shard}"],
)
def test_tidying_keeps_the_newest_runs_and_in_flight_ones_and_drops_failed_ones(
    gcs_bucket: storage.Bucket, template: str
) -> None:
    export = f"tidy{random.Random().randrange(10**9)}"

    def run(run_id: str, complete: bool) -> ObjectLayout:
        layout = ObjectLayout(template, export, run_id, dt.date(2026, 1, 31), ".csv")
        gcs_bucket.blob(layout.shard(0)).upload_from_string(b"id\n1\n")
        if complete:
            gcs_bucket.blob(layout.run_prefix + SUCCESS_MARKER).upload_from_string(b"")
        return layout

    oldest, _ = run("r-oldest", True), run("r-older", True)
    failed, writing = run("r-failed", False), run("r-writing", False)
    current = run("r-current", True)
    tidied = tidy_runs(gcs_bucket, current, keep=2, run_finished=lambda r: r == "r-failed")

    bucket = f"gs://{gcs_bucket.name}/"
    assert tidied.old == [bucket + oldest.run_prefix]
    assert tidied.abandoned == [bucket + failed.run_prefix]
    assert tidied.in_flight == [bucket + writing.run_prefix]
    left = names_under(gcs_bucket, current.export_prefix)
    assert {name.split("/")[-2] for name in left} == {"r-older", "r-writing", "r-current"}
