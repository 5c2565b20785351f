"""No type silently changed: every DuckDB result type is carried exactly or refused at the query
step, naming the column and the cast to write.

One column per type, snapshotted through the real source resource (the query step's code
path); the snapshot's values are compared with what DuckDB itself returns, and its types with
the documented BigQuery mapping (README, "What each source type becomes"). The PostgreSQL
side of the same promise is in ``test_postgres_source.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from bq_assets.resources.source import DuckDBSourceResource, SourceQueryError
from bq_assets.schema import UnsupportedTypeError, bigquery_schema

# column → (DuckDB expression, value in the snapshot, BigQuery type)
EXACT = {
    "bool": ("true", True, "BOOL"),
    "tinyint": ("(-128)::TINYINT", -128, "INT64"),
    "smallint": ("(-32768)::SMALLINT", -32768, "INT64"),
    "integer": ("2147483647::INTEGER", 2147483647, "INT64"),
    "bigint": ("(-9223372036854775808)::BIGINT", -9223372036854775808, "INT64"),
    "utinyint": ("255::UTINYINT", 255, "INT64"),
    "usmallint": ("65535::USMALLINT", 65535, "INT64"),
    "uinteger": ("4294967295::UINTEGER", 4294967295, "INT64"),
    "ubigint": (
        "18446744073709551615::UBIGINT",
        Decimal("18446744073709551615"),
        "NUMERIC",
    ),
    "hugeint": (
        "(-99999999999999999999999999999999999999)::HUGEINT",
        Decimal("-99999999999999999999999999999999999999"),
        "BIGNUMERIC",
    ),
    "uhugeint": (
        "12345678901234567890123::UHUGEINT",
        Decimal("12345678901234567890123"),
        "BIGNUMERIC",
    ),
    "float": ("0.1::FLOAT", 0.10000000149011612, "FLOAT64"),
    "double": ("1.7976931348623157e308::DOUBLE", 1.7976931348623157e308, "FLOAT64"),
    "decimal_38_9": (
        "99999999999999999999999999999.999999999::DECIMAL(38, 9)",
        Decimal("99999999999999999999999999999.999999999"),
        "NUMERIC",
    ),
    "decimal_38_10": (
        "0.0000000001::DECIMAL(38, 10)",
        Decimal("0.0000000001"),
        "BIGNUMERIC",
    ),
    "varchar": ("'say \"hi\"' || chr(10) || '🎉'", 'say "hi"\n🎉', "STRING"),
    "date": ("DATE '9999-12-31'", dt.date(9999, 12, 31), "DATE"),
    "timestamp": (
        "TIMESTAMP '0001-01-01 00:00:00.000001'",
        dt.datetime(1, 1, 1, 0, 0, 0, 1),
        "DATETIME",
    ),
    "timestamptz": (
        "TIMESTAMPTZ '2024-03-10 02:30:00.123456+05:30'",
        dt.datetime(2024, 3, 9, 21, 0, 0, 123456, tzinfo=dt.UTC),
        "TIMESTAMP",
    ),
    "timestamp_s": (
        "TIMESTAMP_S '2024-01-01 00:00:01'",
        dt.datetime(2024, 1, 1, 0, 0, 1),
        "DATETIME",
    ),
    "timestamp_ms": (
        "TIMESTAMP_MS '2024-01-01 00:00:01.123'",
        dt.datetime(2024, 1, 1, 0, 0, 1, 123000),
        "DATETIME",
    ),
    "time": ("TIME '23:59:59.999999'", dt.time(23, 59, 59, 999999), "TIME"),
    "uuid": (
        "'0b9e8a52-7a39-4c9e-8f0f-4d0c1b8a3e2f'::UUID",
        "0b9e8a52-7a39-4c9e-8f0f-4d0c1b8a3e2f",
        "STRING",
    ),
    "json": ("'{\"a\": [1, 2.5, null]}'::JSON", '{"a": [1, 2.5, null]}', "STRING"),
    "enum": ("'happy'::mood", "happy", "STRING"),
    "list": ("[1, NULL, 3]::INTEGER[]", "[1,null,3]", "STRING"),
    "array": ("[1.5, 2.5]::DOUBLE[2]", "[1.5,2.5]", "STRING"),
    "struct": (
        "{'n': 1.50::DECIMAL(4, 2), 's': 'x\"y'}",
        '{"n":1.5,"s":"x\\"y"}',  # a JSON number keeps the value, not trailing zeros
        "STRING",
    ),
    "map": ("MAP {'k': 1}", '{"k":1}', "STRING"),
}

# column → (DuckDB expression, the cast the message must suggest)
REFUSED = {
    "interval": ("INTERVAL 1 DAY", 'epoch("interval")'),
    "blob": ("'\\xAB'::BLOB", 'base64("blob")'),
    "bit": ("'101'::BIT", 'CAST("bit" AS VARCHAR)'),
    "timestamp_ns": (
        "TIMESTAMP_NS '2024-01-01 00:00:00.000000001'",
        'CAST("timestamp_ns" AS TIMESTAMP)',
    ),
    "timetz": ("TIMETZ '12:00:00+02'", 'CAST("timetz" AS TIME)'),
    "bignum": ("5::BIGNUM", 'CAST("bignum" AS DECIMAL(38, 0))'),
    "union": ("union_value(k := 1)", 'CAST("union" AS VARCHAR)'),
}

# Values of an accepted type that BigQuery cannot hold: refused when the query runs.
OUT_OF_RANGE = {
    "huge": ("170141183460469231731687303715884105727::HUGEINT", "integer of 39 digits"),
    "far_date": ("DATE '10000-01-01'", "outside BigQuery's range"),
    "infinite": ("'infinity'::TIMESTAMP", "outside BigQuery's range"),
    "ancient": ("TIMESTAMPTZ '0000-12-31 00:00:00+00'", "outside BigQuery's range"),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> DuckDBSourceResource:
    """A DuckDB source file holding one table ``one`` (one row) and an ENUM type."""
    root = tmp_path_factory.mktemp("types")
    database = root / "types.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
        con.execute("CREATE TABLE one AS SELECT 1 AS id")
    return DuckDBSourceResource(database=str(database), staging_dir=str(root / "staging"))


def select(columns: dict[str, tuple]) -> str:
    return (
        "SELECT "
        + ", ".join(f'{expr} AS "{name}"' for name, (expr, *_) in columns.items())
        + " FROM one"
    )


def test_every_exact_type_arrives_in_the_snapshot_with_its_value_and_bigquery_type(
    source: DuckDBSourceResource, tmp_path: Path
) -> None:
    snapshot = tmp_path / "snapshot.parquet"
    footer = source.snapshot(select(EXACT), Path("types.sql"), snapshot)
    (row,) = pq.read_table(snapshot).to_pylist()
    assert {name: row[name] for name in EXACT} == {name: v for name, (_, v, _) in EXACT.items()}
    types = {f.name: f.field_type for f in bigquery_schema(footer.schema.to_arrow_schema())}
    assert types == {name: t for name, (_, _, t) in EXACT.items()}
    assert json.loads(row["json"]) == {"a": [1, 2.5, None]}
    assert uuid.UUID(row["uuid"])


def test_hugeint_no_longer_arrives_as_float(source: DuckDBSourceResource, tmp_path: Path) -> None:
    """The issue's case: 1.7e38-sized integers used to become FLOAT64 (1.7014118346046923e+38)."""
    sql = "SELECT 99999999999999999999999999999999999999::HUGEINT AS h, 1::HUGEINT AS one FROM one"
    snapshot = tmp_path / "snapshot.parquet"
    source.snapshot(sql, Path("h.sql"), snapshot)
    assert pq.read_table(snapshot).to_pylist() == [
        {"h": Decimal("99999999999999999999999999999999999999"), "one": Decimal(1)}
    ]


def test_every_refused_type_is_named_with_the_cast_to_write(
    source: DuckDBSourceResource, tmp_path: Path
) -> None:
    snapshot = tmp_path / "snapshot.parquet"
    with pytest.raises(UnsupportedTypeError) as refused:
        source.snapshot(select(REFUSED), Path("refused.sql"), snapshot)
    message = str(refused.value)
    assert message.startswith("refused.sql: ")
    for name, (_, cast) in REFUSED.items():
        assert f"column {name!r}" in message and cast in message, name
    assert not snapshot.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", list(OUT_OF_RANGE))
def test_a_value_bigquery_cannot_hold_fails_the_query_naming_the_column(
    source: DuckDBSourceResource, tmp_path: Path, name: str
) -> None:
    expr, what = OUT_OF_RANGE[name]
    snapshot = tmp_path / "snapshot.parquet"
    with pytest.raises(SourceQueryError, match=f"column '{name}' holds an? .*{what}"):
        source.snapshot(f"SELECT 1 AS id, {expr} AS {name} FROM one", Path("r.sql"), snapshot)
    assert not list(tmp_path.iterdir())


# The emulator cannot create BIGNUMERIC columns (see README); those go only as far as the
# snapshot here, and through real BigQuery in the live round trip.
THROUGH_THE_STACK = {n: v for n, v in EXACT.items() if v[2] != "BIGNUMERIC"}


@pytest.mark.stack
@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_every_exact_type_arrives_in_bigquery_and_databricks_unchanged(
    local_stack, resources, source: DuckDBSourceResource, tmp_path: Path, file_format: str
) -> None:
    import dagster as dg

    from bq_assets.exports import load_specs
    from bq_assets.translator import bigquery_key
    from bq_assets_tests.conftest import run_exports, step_errors
    from bq_assets_tests.test_round_trip import (
        as_federation_shows_it,
        bigquery_rows,
        databricks_rows,
        metadata,
        same,
    )

    name = f"duckdb_types_{file_format}"
    (tmp_path / f"{name}.sql").write_text(select({"id": ("1", 1, "INT64"), **THROUGH_THE_STACK}))
    (tmp_path / f"{name}.yaml").write_text(
        f"primary_key: [id]\ncadence: daily\nformat: {file_format}\n"
    )
    (spec,) = load_specs(tmp_path)
    with dg.instance_for_test() as instance:
        result = run_exports([spec], {**resources, "source": source}, instance)
    assert result.success, step_errors(result)
    expected = {"id": 1, **{n: v for n, (_, v, _) in THROUGH_THE_STACK.items()}}
    columns, (row,) = bigquery_rows(
        resources, metadata(result, bigquery_key(name))["dagster/table_name"]
    )
    loaded = dict(zip(columns, row, strict=True))
    assert {n: (v, loaded[n]) for n, v in expected.items() if not same(v, loaded[n])} == {}
    columns, (row,) = databricks_rows(resources, spec)
    copied = dict(zip(columns, row, strict=True))
    shown = {n: as_federation_shows_it(v) for n, v in expected.items()}
    assert {n: (v, copied[n]) for n, v in shown.items() if not same(v, copied[n])} == {}
