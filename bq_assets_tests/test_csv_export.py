"""CSV that BigQuery reads back exactly: types, quoting, shards (unit level, no emulator)."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bq_assets.exports.spec import CsvOptions
from bq_assets.schema import UnsupportedTypeError, bigquery_schema, bigquery_type
from bq_assets.stages.gcs_csv import shard_ranges, write_csv


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
