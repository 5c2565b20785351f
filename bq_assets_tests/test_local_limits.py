"""What the local stack cannot hold, said before it tries: the rule behind the BigQuery
resource's seam (``unstorable``), production answering none."""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from bq_assets.exports import load_specs
from bq_assets.local.limits import emulator_cannot_store
from bq_assets.resources import ExportBigQueryResource
from bq_assets.resources.source import DuckDBSourceResource
from bq_assets.schema import snapshot_column
from bq_assets_tests.conftest import run_exports, step_errors


@pytest.fixture(scope="module")
def tpch() -> duckdb.DuckDBPyConnection:
    """DuckDB's own TPC-H data (the tpch extension, from the duckdb-extension-tpch wheel)."""
    import duckdb_extensions

    duckdb_extensions.import_extension("tpch")
    con = duckdb.connect()
    con.execute("LOAD tpch")
    con.execute("CALL dbgen(sf=0.001)")
    return con


def q1_columns(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    """TPC-H Q1 as DuckDB ships it (``PRAGMA tpch(1)``), described: name, type, BigQuery type."""
    q1 = con.execute("FROM tpch_queries() WHERE query_nr = 1").fetchone()[1]
    described = con.execute(f"DESCRIBE {q1.rstrip().rstrip(';')}").fetchall()
    return [(name, kind, snapshot_column(name, kind)[1]) for name, kind, *_ in described]


def test_tpch_q1_sums_are_decimal_38_mapped_exactly_to_bignumeric(tpch) -> None:
    columns = {name: (kind, bq) for name, kind, bq in q1_columns(tpch)}
    assert columns["sum_base_price"] == ("DECIMAL(38,2)", "BIGNUMERIC")
    assert columns["sum_charge"] == ("DECIMAL(38,6)", "BIGNUMERIC")
    assert columns["count_order"] == ("BIGINT", "INT64")


def test_the_local_stack_names_each_column_the_emulator_cannot_store_with_its_cast(tpch) -> None:
    refusals = emulator_cannot_store(q1_columns(tpch))
    assert len(refusals) == 4  # sum_qty, sum_base_price, sum_disc_price, sum_charge
    (base,) = [r for r in refusals if "'sum_base_price'" in r]
    assert "is DECIMAL(38,2), which maps exactly to BIGNUMERIC" in base
    assert "DECIMAL width must be between 1 and 38" in base
    assert 'CAST("sum_base_price" AS DECIMAL(31, 2))' in base
    assert "real BigQuery keeps BIGNUMERIC" in base


def test_production_bigquery_refuses_no_column() -> None:
    columns = [("sum_charge", "DECIMAL(38,6)", "BIGNUMERIC")]
    assert ExportBigQueryResource(project="p").unstorable(columns) == []


@pytest.mark.stack
def test_tpch_q1_is_refused_at_the_query_step_before_anything_is_written(
    local_stack, resources, tpch, tmp_path
) -> None:
    """Issue 23 point 7. Before: the query and GCS steps ran, and the BigQuery step failed with
    the emulator's "Binder Error: DECIMAL type width must be between 1 and 38" inside a stack
    trace (tables.insert now answers 500 first)."""
    database = tmp_path / "tpch.duckdb"
    tpch.execute(f"ATTACH '{database}' AS out")
    tpch.execute("CREATE TABLE out.lineitem AS FROM lineitem")
    tpch.execute("DETACH out")
    q1 = tpch.execute("FROM tpch_queries() WHERE query_nr = 1").fetchone()[1]
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "tpch_q1.sql").write_text(q1.rstrip().rstrip(";") + "\n")
    (exports / "tpch_q1.yaml").write_text(
        "primary_key: [l_returnflag, l_linestatus]\ncadence: daily\n"
    )
    source = DuckDBSourceResource(database=str(database), staging_dir=str(tmp_path / "staging"))
    with dg.instance_for_test() as instance:
        result = run_exports(load_specs(exports), resources | {"source": source}, instance)
    errors = step_errors(result)
    assert set(errors) == {"query__tpch_q1"}, errors  # nothing after it ran
    message = errors["query__tpch_q1"]
    assert "tpch_q1.sql: column 'sum_qty' is DECIMAL(38,2)" in message
    assert 'CAST("sum_charge" AS DECIMAL(35, 6))' in message
    assert "Nothing was written" in message and "Traceback" not in message
    bucket = resources["gcs"].get_client().bucket(local_stack.bucket)
    assert not [b.name for b in bucket.list_blobs() if "tpch_q1" in b.name]
