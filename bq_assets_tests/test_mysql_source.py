"""MySQL for real: exports whose query runs on a MariaDB server, compared value by value.

A real server (Debian's ``mariadb-server``, see ``mariadb.py``; DuckDB's mysql scanner speaks
the same protocol) holds the sample's ``customer_360`` and an adversarial table. Exports naming
``source: shop`` go through the whole graph on the local stack, and what BigQuery holds is
compared with what MySQL returns, cell by cell. Each MySQL type is carried exactly or refused
at the query step naming the column and the cast. A server that is down fails naming host and
port (retryable); a wrong password fails without echoing it, and is not retried.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from bq_assets.exports import SHIPPED_EXPORTS_DIR, load_specs
from bq_assets.failures import reported_as_failure
from bq_assets.local import sample_data
from bq_assets.local.resources import SampleSourceResource
from bq_assets.resources.source import DuckDBSourceResource, SourceDeclaration
from bq_assets.schema import UnsupportedTypeError
from bq_assets.sources import SourceError, SourceUnreachableError, load_extension
from bq_assets.translator import bigquery_key, query_key
from bq_assets_tests.conftest import run_exports, step_errors
from bq_assets_tests.mariadb import MariaDBServer
from bq_assets_tests.postgres import free_port
from bq_assets_tests.test_round_trip import bigquery_rows, differences, metadata

PASSWORD_VARIABLE = "BQ_ASSETS_SOURCE_SHOP_PASSWORD"

ADVERSARIAL_TABLE = (
    """CREATE TABLE adversarial (
    id INT PRIMARY KEY,
    label VARCHAR(40) NOT NULL,
    txt TEXT,
    num DECIMAL(38, 9),
    wide DECIMAL(65, 30),
    placed DATETIME(6),
    stamped TIMESTAMP(6) NULL,
    day DATE,
    doc JSON,
    raw BLOB,
    flag TINYINT(1),
    tiny TINYINT,
    uint INT UNSIGNED,
    ubig BIGINT UNSIGNED,
    big BIGINT,
    dbl DOUBLE,
    real4 FLOAT,
    span TIME(6),
    kind ENUM('a', 'b'),
    yr YEAR
)""",
    """INSERT INTO adversarial VALUES
 (1, 'quotes', 'say "hi", '' twice \\\\ back', 1.5, 1.5, '2024-01-01 00:00:00',
  '2024-01-01 00:00:00', '2024-01-01', '{"a": [1, 2.5, null], "b": "x\\\\"y"}', x'00ff', 1, -128,
  4294967295, 18446744073709551615, -9223372036854775808, 0.1, 0.1, '-838:59:59', 'a', 1901),
 (2, 'newlines', 'line 1\\nline 2\\r\\n', 0.000000001, 0.000000001, '2024-03-10 02:30:00.123456',
  '2024-03-10 02:30:00.123456', '2000-02-29', '[]', '', 0, 127, 0, 0, 9223372036854775807,
  1.7976931348623157e308, 3.4e38, '12:34:56.5', 'b', 2155),
 (3, 'emoji', 'Zoë Ørsted 李 — 🎉 👩‍👩‍👧', 99999999999999999999999999999.999999999,
  12345678901234567890123456789012345.123456789012345678901234567890,
  '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', '9999-12-31', 'null', NULL, NULL,
  NULL, NULL, NULL, NULL, -0.0, NULL, NULL, NULL, NULL),
 (4, 'empty string', '', -99999999999999999999999999999.999999999, 0, '1000-01-01 00:00:00',
  '1970-01-01 00:00:01', '1000-01-01', '{}', NULL, 1, 0, 0, 0, 0, 0, 0, '00:00:00', 'a', 2000),
 (5, 'null everywhere', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL)""",
)

# column → (MySQL expression for its expected value, BigQuery type). The expressions give what
# BigQuery must hold: TINYINT(1) as a boolean, BIGINT UNSIGNED as a NUMERIC, FLOAT widened to a
# double exactly, TIME and ENUM as their text, TIMESTAMP as its UTC DATETIME.
CARRIED = {
    "id": ("id", "INT64"),
    "label": ("label", "STRING"),
    "txt": ("txt", "STRING"),
    "num": ("num", "NUMERIC"),
    "placed": ("placed", "DATETIME"),
    "stamped": ("stamped", "DATETIME"),
    "day": ("day", "DATE"),
    "doc": ("doc", "STRING"),
    "flag": ("flag", "BOOL"),
    "tiny": ("tiny", "INT64"),
    "uint": ("uint", "INT64"),
    "ubig": ("CAST(ubig AS DECIMAL(20, 0))", "NUMERIC"),
    "big": ("big", "INT64"),
    "dbl": ("dbl", "FLOAT64"),
    "real4": ("real4", "FLOAT64"),
    # TIME spans -838:59:59 to 838:59:59 (BigQuery's TIME holds a time of day): its text,
    # fraction without trailing zeros.
    "span": ("TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST(span AS CHAR)))", "STRING"),
    "kind": ("kind", "STRING"),
    "yr": ("CAST(yr AS SIGNED)", "INT64"),
}


def python_value(column: str, value: object) -> object:
    """PyMySQL's value as BigQuery returns it (types included)."""
    if value is None:
        return None
    if column == "flag":
        return bool(value)
    if column == "real4":
        import struct

        # FLOAT is a float32; PyMySQL hands back its shortest decimal text as a double.
        return struct.unpack("f", struct.pack("f", value))[0]
    if column in ("ubig", "num"):
        return Decimal(value)
    return value


def mysql_expected(server: MariaDBServer) -> list[tuple]:
    columns = list(CARRIED)
    select = ", ".join(f"{expr} AS {name}" for name, (expr, _) in CARRIED.items())
    _, rows = server.fetch(f"SELECT {select} FROM adversarial ORDER BY id")
    return [tuple(python_value(c, v) for c, v in zip(columns, row, strict=True)) for row in rows]


def load_sample(server: MariaDBServer, rows: int, scratch: Path) -> None:
    """The sample's customer_360, copied into MySQL through DuckDB's mysql scanner."""
    sample = sample_data.generate(scratch / "sample.duckdb", rows, transactions=False)
    with duckdb.connect() as con:
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET TimeZone = 'UTC'")
        load_extension(con, "mysql_scanner")
        con.execute(f"ATTACH '{sample}' AS sample (READ_ONLY)")
        con.execute(
            f"ATTACH 'host={server.host} port={server.port} user={server.user} "
            f"password={server.password} database={server.database}' AS my (TYPE mysql)"
        )
        con.execute("CREATE TABLE my.customer_360 AS FROM sample.main.customer_360")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """A MariaDB server for this module, holding the adversarial table and the sample."""
    server = MariaDBServer().start()
    try:
        server.execute(*ADVERSARIAL_TABLE)
        load_sample(server, 300, tmp_path_factory.mktemp("my-sample"))
        yield server
    finally:
        server.stop()


def declaration(server: MariaDBServer, port: int | None = None) -> SourceDeclaration:
    return SourceDeclaration(
        name="shop",
        kind="mysql",
        host=server.host,
        port=port or server.port,
        database=server.database,
        user=server.user,
        password=dg.EnvVar(PASSWORD_VARIABLE),
    )


@pytest.fixture(scope="module")
def my_resources(shop: MariaDBServer, resources) -> Iterator[dict[str, dg.ConfigurableResource]]:
    """The local stack's resources with the source ``shop`` declared (password from the env)."""
    os.environ[PASSWORD_VARIABLE] = shop.password
    local = resources["source"]
    source = SampleSourceResource(
        database=local.database,
        staging_dir=local.staging_dir,
        sample_rows=local.sample_rows,
        sources=[declaration(shop)],
    )
    yield {**resources, "source": source}
    os.environ.pop(PASSWORD_VARIABLE, None)


def write_export(folder: Path, name: str, sql: str, yaml: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.sql").write_text(sql)
    (folder / f"{name}.yaml").write_text(f"primary_key: [id]\ncadence: daily\nsource: shop\n{yaml}")


@pytest.mark.stack
def test_bigquery_holds_every_mysql_value_exactly(
    local_stack, my_resources, shop, tmp_path: Path
) -> None:
    write_export(
        tmp_path,
        "my_adversarial",
        f"SELECT {', '.join(CARRIED)} FROM adversarial",
        "format: parquet\n",
    )
    (spec,) = load_specs(tmp_path)
    with dg.instance_for_test() as instance:
        result = run_exports([spec], my_resources, instance)
    assert result.success, step_errors(result)
    assert all(check.passed for check in result.get_asset_check_evaluations())
    schema = metadata(result, query_key(spec.name))["dagster/column_schema"]
    assert {c.name: c.type for c in schema.columns} == {n: t for n, (_, t) in CARRIED.items()}
    meta = metadata(result, bigquery_key(spec.name))
    columns, loaded = bigquery_rows(my_resources, meta["dagster/table_name"])
    assert columns == list(CARRIED)
    assert differences(columns, mysql_expected(shop), loaded) == {}


@pytest.mark.stack
def test_the_sample_export_from_mysql_matches_mysql(
    local_stack, my_resources, shop, tmp_path: Path
) -> None:
    """The shipped customer_360 query, run on the MySQL copy of the sample."""
    (tmp_path / "my_customer_360.sql").write_text(
        (SHIPPED_EXPORTS_DIR / "customer_360.sql").read_text()
    )
    yaml = (SHIPPED_EXPORTS_DIR / "customer_360.yaml").read_text()
    (tmp_path / "my_customer_360.yaml").write_text(yaml + "source: shop\nformat: parquet\n")
    (spec,) = load_specs(tmp_path)
    with dg.instance_for_test() as instance:
        result = run_exports([spec], my_resources, instance)
    assert result.success, step_errors(result)
    assert all(check.passed for check in result.get_asset_check_evaluations())
    meta = metadata(result, bigquery_key(spec.name))
    columns, loaded = bigquery_rows(my_resources, meta["dagster/table_name"])
    _, rows = shop.fetch(f"SELECT {', '.join(columns)} FROM customer_360")
    assert len(rows) == len(loaded) == 300
    # The sample's BOOLEAN is a TINYINT(1) in MySQL (PyMySQL says 0 / 1; BigQuery BOOL), its
    # TIMESTAMPTZ a DATETIME in UTC (BigQuery DATETIME).
    booleans = [
        i for i, field in enumerate(meta["dagster/column_schema"].columns) if field.type == "BOOL"
    ]
    rows = [
        tuple(bool(v) if i in booleans and v is not None else v for i, v in enumerate(row))
        for row in rows
    ]
    assert differences(columns, rows, loaded) == {}


# column → (the query's select, what the refusal must say)
REFUSED = {
    "wide": ("wide", "DECIMAL with more than 38 digits"),
    "raw": ("raw", 'base64("raw")'),
}


@pytest.mark.parametrize("column", list(REFUSED))
def test_a_mysql_type_that_cannot_travel_exactly_is_refused_naming_the_column_and_cast(
    my_resources, column: str, tmp_path: Path
) -> None:
    select, hint = REFUSED[column]
    with pytest.raises(UnsupportedTypeError) as refused:
        my_resources["source"].snapshot(
            f"SELECT id, {select} FROM adversarial", Path("r.sql"), tmp_path / "s.parquet", "shop"
        )
    assert f"column {column!r}" in str(refused.value) and hint in str(refused.value)
    assert not list(tmp_path.iterdir())


def test_the_suggested_mysql_cast_is_exact(my_resources, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    snapshot = tmp_path / "s.parquet"
    my_resources["source"].snapshot(
        "SELECT id, wide FROM mysql_query('src', "
        "'SELECT id, CAST(wide AS CHAR) AS wide FROM adversarial') ORDER BY id",
        Path("c.sql"),
        snapshot,
        "shop",
    )
    rows = pq.read_table(snapshot).to_pylist()
    assert rows[2]["wide"] == "12345678901234567890123456789012345.123456789012345678901234567890"


def test_a_mysql_that_is_down_fails_naming_host_and_port_and_may_be_retried(
    shop: MariaDBServer, tmp_path: Path
) -> None:
    port = free_port()
    os.environ[PASSWORD_VARIABLE] = shop.password
    source = DuckDBSourceResource(
        database=str(tmp_path / "unused.duckdb"),
        staging_dir=str(tmp_path / "staging"),
        sources=[declaration(shop, port=port)],
    )
    with pytest.raises(SourceUnreachableError) as unreachable:
        source.snapshot("SELECT id FROM adversarial", Path("d.sql"), tmp_path / "s.parquet", "shop")
    assert f"127.0.0.1:{port}" in str(unreachable.value)
    assert "unreachable" in str(unreachable.value)
    assert unreachable.value.retryable
    assert shop.password not in str(unreachable.value)


def test_a_wrong_mysql_password_fails_clearly_without_echoing_it_and_is_not_retried(
    shop: MariaDBServer, tmp_path: Path
) -> None:
    wrong = "WrongPassword-456!"
    os.environ[PASSWORD_VARIABLE] = wrong
    source = DuckDBSourceResource(
        database=str(tmp_path / "unused.duckdb"),
        staging_dir=str(tmp_path / "staging"),
        sources=[declaration(shop)],
    )
    try:
        with pytest.raises(SourceError) as refused:
            source.snapshot(
                "SELECT id FROM adversarial", Path("w.sql"), tmp_path / "s.parquet", "shop"
            )
        with pytest.raises(dg.Failure) as failure, reported_as_failure():
            source.snapshot("SELECT id FROM adversarial", Path("w.sql"), tmp_path / "s", "shop")
    finally:
        os.environ[PASSWORD_VARIABLE] = shop.password
    message = str(refused.value)
    assert "Access denied" in message and "refused the connection" in message
    assert f"127.0.0.1:{shop.port}" in message
    assert wrong not in message and wrong not in failure.value.description
    assert failure.value.allow_retries is False


def test_a_mysql_source_is_attached_read_only(my_resources) -> None:
    from bq_assets import sources

    resource = my_resources["source"]
    with (
        sources.connect(resource.source("shop"), resource.engine_settings()) as con,
        pytest.raises(duckdb.Error, match=r"read-only|read only"),
    ):
        con.execute("INSERT INTO adversarial (id, label) VALUES (99, 'x')")


def test_mysql_timestamps_are_read_in_utc_whatever_the_server_zone(
    shop: MariaDBServer, my_resources, tmp_path: Path
) -> None:
    """A TIMESTAMP is stored in UTC and shown in the session's zone: the source reads it in
    UTC even when the server's default zone is another."""
    import pyarrow.parquet as pq

    shop.execute_as_root("SET GLOBAL time_zone = '+05:30'")
    try:
        snapshot = tmp_path / "s.parquet"
        my_resources["source"].snapshot(
            "SELECT id, stamped FROM adversarial WHERE id = 1", Path("z.sql"), snapshot, "shop"
        )
    finally:
        shop.execute_as_root("SET GLOBAL time_zone = '+00:00'")
    (row,) = pq.read_table(snapshot).to_pylist()
    assert row["stamped"] == dt.datetime(2024, 1, 1, 0, 0)
