"""The key checksum is equal in both engines for every key type a spec may declare.

The same adversarial values are written to a BigQuery table on the emulator and read into the
Spark stand-in the way Lakehouse Federation shows them (the stand-in's Storage Read copy, with
Federation's column types); the canonical string of each value and the whole checksum are then
computed by each engine, in its own dialect, and compared. A key type that no spelling makes
equal is refused, naming the column, when the code location loads.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from google.cloud import bigquery

from bq_assets.engine.key_checksum import (
    CANONICAL,
    KeyTypeError,
    canonical_key_sql,
    key_checksum_sql,
    refused_key_types,
)
from bq_assets.exports import load_specs
from bq_assets.exports.fields import ExportSpecError
from bq_assets.exports.spec import load_spec
from bq_assets_tests.conftest import run_exports, step_errors

pytestmark = pytest.mark.stack

COLUMNS = {
    "s": "STRING",
    "i": "INT64",
    "b": "BOOL",
    "d": "DATE",
    "ts": "TIMESTAMP",
    "dt": "DATETIME",
    "n": "NUMERIC",
    "y": "BYTES",
    "f": "FLOAT64",  # refused as a key: here to show why
}
# Adversarial values, one row each: ends of the ranges, fractions and none, negative and scaled
# decimals, a separator inside a string, NULLs.
ROWS = [
    {"id": 1, "s": "a", "i": -5, "b": True, "d": "0001-01-01", "ts": "2024-01-01T00:00:00Z",
     "dt": "2024-01-01T00:00:00", "n": "1.5", "y": "AAE=", "f": 1.0},
    {"id": 2, "s": "", "i": 0, "b": False, "d": "9999-12-31", "ts": "2024-01-01T00:00:00.5Z",
     "dt": "9999-12-31T23:59:59.999999", "n": "-2", "y": "", "f": 0.1},
    {"id": 3, "s": "é|v", "i": 9223372036854775807, "b": None, "d": "1970-01-01",
     "ts": "0001-01-01T00:00:00Z", "dt": "0001-01-01T00:00:00", "n": "-0.000000001",
     "y": None, "f": 1e20},
    {"id": 4, "s": None, "i": -9223372036854775808, "b": None, "d": None,
     "ts": "9999-12-31T23:59:59.999999Z", "dt": "2024-02-29T12:34:56.000001",
     "n": "99999999999999999999999999999.999999999", "y": None, "f": -0.0},
    {"id": 5, "s": "n", "i": None, "b": None, "d": "2024-02-29", "ts": None, "dt": None,
     "n": "10", "y": None, "f": None},
    {"id": 6, "s": "NULL", "i": 1, "b": None, "d": None, "ts": "1969-12-31T23:59:59.999999Z",
     "dt": "1969-12-31T23:59:59.999999", "n": "0", "y": None, "f": None},
]  # fmt: skip
KEYED = [c for c in COLUMNS if c != "f"]


@pytest.fixture(scope="module")
def both_engines(local_stack, resources):
    """The values in BigQuery (emulator) and, as Lakehouse Federation shows them, in Spark."""
    dataset, table = "key_checksum", f"values_{uuid.uuid4().hex[:8]}"
    with resources["bigquery"].get_client() as client:
        client.create_dataset(dataset, exists_ok=True)
        schema = [bigquery.SchemaField("id", "INT64")]
        schema += [bigquery.SchemaField(n, t) for n, t in COLUMNS.items()]
        created = client.create_table(
            bigquery.Table(f"{local_stack.project}.{dataset}.{table}", schema=schema)
        )
        assert client.insert_rows_json(created, ROWS) == []
    databricks = resources["databricks"]
    assert databricks.copy_from_bigquery(local_stack.project, dataset, table, "bq", {}) == len(ROWS)
    return {
        "bigquery": (resources["bigquery"], f"`{local_stack.project}.{dataset}.{table}`"),
        "databricks": (databricks, f"`bq`.`{dataset}`.`{table}`"),
    }


def per_row(both_engines, dialect: str, expression: str) -> dict[int, str | None]:
    engine, table = both_engines[dialect]
    sql = f"SELECT id, {expression} FROM {table}"
    if dialect == "bigquery":
        with engine.get_client() as client:
            return {row[0]: row[1] for row in client.query(sql).result()}
    return {int(row[0]): row[1] for row in engine.execute(sql)}


def checksum(both_engines, dialect: str, key: list[tuple[str, str]]) -> tuple:
    engine, table = both_engines[dialect]
    sql = key_checksum_sql(dialect, table, key)
    if dialect == "bigquery":
        with engine.get_client() as client:
            return tuple(next(iter(client.query(sql).result())).values())
    (row,) = engine.execute(sql)
    return tuple(int(v) if v is not None else None for v in row)


@pytest.mark.parametrize("column", KEYED)
def test_each_key_type_has_one_canonical_string_in_both_engines(both_engines, column) -> None:
    key = [(column, COLUMNS[column])]
    bigquery_strings = per_row(both_engines, "bigquery", canonical_key_sql("bigquery", key))
    databricks_strings = per_row(both_engines, "databricks", canonical_key_sql("databricks", key))
    assert bigquery_strings == databricks_strings
    assert len(set(bigquery_strings.values())) > 1  # the values really differ from row to row
    assert checksum(both_engines, "bigquery", key) == checksum(both_engines, "databricks", key)


def test_a_null_key_part_is_hashed_apart_from_every_string(both_engines) -> None:
    strings = per_row(
        both_engines, "databricks", canonical_key_sql("databricks", [("s", "STRING")])
    )
    assert strings[4] == "n"  # NULL
    assert {strings[2], strings[5], strings[6]} == {"v", "vn", "vNULL"}


def test_a_composite_key_of_every_type_has_the_same_checksum(both_engines) -> None:
    key = [(c, COLUMNS[c]) for c in KEYED]
    (rows, value) = checksum(both_engines, "bigquery", key)
    assert (rows, value) == checksum(both_engines, "databricks", key)
    assert rows == len(ROWS) and value != 0


def test_plain_casts_differ_between_the_engines_which_is_why_they_are_not_hashed(
    both_engines,
) -> None:
    """The measured reason for the canonical strings, and for refusing FLOAT64 keys. (A NUMERIC
    1.5 is ``1.500000000`` in Spark and on the emulator, and ``1.5`` in BigQuery's documented
    CAST: that difference shows only against the real service, so the live suite checks it.)"""
    for column, row in [("ts", 1), ("f", 3)]:
        cast = f"CAST({column} AS STRING)"
        bigquery_text = per_row(both_engines, "bigquery", cast)[row]
        databricks_text = per_row(both_engines, "databricks", cast)[row]
        assert bigquery_text != databricks_text, (column, bigquery_text)


def test_a_key_type_without_a_canonical_string_is_refused_naming_the_column() -> None:
    for refused in ["FLOAT64", "FLOAT", "BIGNUMERIC", "TIME", "JSON", "GEOGRAPHY", "STRUCT"]:
        (problem,) = refused_key_types([("amount", refused)])
        assert problem.startswith("primary_key: amount is ")
        assert "cast amount to one of them" in problem
        with pytest.raises(KeyTypeError, match="amount"):
            key_checksum_sql("databricks", "t", [("id", "STRING"), ("amount", refused)])
    assert refused_key_types([(c, t) for t, c in zip(CANONICAL, "abcdefgh", strict=False)]) == []


@pytest.mark.parametrize(
    ("select", "refused"),
    [
        ("CAST(price AS DOUBLE) AS price", "FLOAT64"),
        ("price::DECIMAL(38, 12) AS price", "BIGNUMERIC"),
        ("price::TIME AS price", "TIME"),
    ],
)
def test_the_code_location_refuses_a_key_whose_stated_type_cannot_be_compared(
    tmp_path: Path, select: str, refused: str
) -> None:
    (tmp_path / "prices.sql").write_text(f"SELECT {select}, sku FROM prices")
    (tmp_path / "prices.yaml").write_text("primary_key: [price]\ncadence: daily\n")
    with pytest.raises(ExportSpecError) as error:
        load_spec(tmp_path / "prices.yaml")
    assert f"primary_key: price is {refused}" in str(error.value)
    assert "prices.yaml" in str(error.value)


def test_a_delivered_export_keyed_on_a_float_is_refused(tmp_path: Path) -> None:
    (tmp_path / "drops.yaml").write_text(
        "primary_key: [score]\ncadence: daily\ndelivery:\n  prefix: drops/\n"
        "  files: scores_{send:%Y%m%d}.csv.gz\n  complete_when: {quiet_minutes: 5}\n"
        "  columns: [{name: score, type: FLOAT64}, {name: id, type: STRING}]\n"
    )
    with pytest.raises(ExportSpecError, match="primary_key: score is FLOAT64"):
        load_spec(tmp_path / "drops.yaml")


def test_a_key_whose_type_the_sql_does_not_state_is_refused_before_the_snapshot_leaves(
    local_stack, resources, tmp_path: Path
) -> None:
    """A FLOAT64 key the SQL does not cast (the source column is DOUBLE) cannot be stated at
    load; the query step refuses it, naming the column, before anything is uploaded."""
    database = resources["source"]._database_path()
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE OR REPLACE TABLE float_keyed AS SELECT 1.5::DOUBLE AS score, 'a' AS s")
    (tmp_path / "float_keyed.sql").write_text("SELECT score, s FROM float_keyed")
    (tmp_path / "float_keyed.yaml").write_text("primary_key: [score]\ncadence: daily\n")
    specs = load_specs(tmp_path)  # loads: nothing in the SQL says score is a float
    with dg.instance_for_test() as instance:
        result = run_exports(specs, resources, instance, "query/float_keyed")
    (message,) = step_errors(result).values()
    assert "primary_key: score is FLOAT64" in message and "float_keyed.yaml" in message
    assert not result.get_asset_materialization_events()
