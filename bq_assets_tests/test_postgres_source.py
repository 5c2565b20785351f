"""PostgreSQL for real: exports whose query runs on a PostgreSQL server, compared value by value.

A real server (Debian's ``postgresql``, see ``postgres.py``) holds the Amperity-style sample and
an adversarial table. Exports naming ``source: crm`` go through the whole graph on the local
stack, and what BigQuery and the Databricks stand-in hold is compared with what PostgreSQL
returns, cell by cell. Each PostgreSQL type is carried exactly or refused at the query step
naming the column and the cast (README, "What each source type becomes"). A server that is
down fails naming host and port (retryable); a wrong password fails without echoing it, and is
not retried.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from bq_assets.exports import ExportSpec, load_specs
from bq_assets.failures import reported_as_failure
from bq_assets.local import sample_data
from bq_assets.local.resources import SampleSourceResource
from bq_assets.partitioning import Window
from bq_assets.resources.source import DuckDBSourceResource, SourceDeclaration, SourceQueryError
from bq_assets.schema import UnsupportedTypeError
from bq_assets.sources import SourceError, SourceUnreachableError, load_extension
from bq_assets.stages.partitions import latest_complete_partition
from bq_assets.translator import bigquery_key, query_key
from bq_assets_tests.conftest import run_exports, step_errors
from bq_assets_tests.postgres import PostgresServer, free_port
from bq_assets_tests.test_round_trip import (
    as_federation_shows_it,
    bigquery_rows,
    databricks_rows,
    differences,
    metadata,
)

PASSWORD_VARIABLE = "BQ_ASSETS_SOURCE_CRM_PASSWORD"

ADVERSARIAL_TABLE = r"""
CREATE TABLE adversarial (
    id integer PRIMARY KEY,
    label text NOT NULL,
    txt text,
    num numeric(38, 9),
    free numeric,
    ts timestamptz,
    naive timestamp,
    day date,
    uid uuid,
    doc jsonb,
    raw bytea,
    nums integer[],
    flag boolean,
    small smallint,
    big bigint,
    real4 real,
    dbl double precision,
    vc varchar(20)
);
INSERT INTO adversarial VALUES
 (1, 'quotes', 'say "hi", '' twice', 1.5, 1.5, '2024-01-01 00:00:00+00', '2024-01-01 00:00:00',
  '2024-01-01', '0b9e8a52-7a39-4c9e-8f0f-4d0c1b8a3e2f', '{"a": [1, 2.5, null], "b": "x\"y"}',
  '\x00ff', '{1,NULL,3}', true, -32768, -9223372036854775808, 0.1, 0.1, 'v'),
 (2, 'newlines', E'line 1\nline 2\r\n', 0.000000001, 0.000000001,
  '2024-03-10 02:30:00.123456+05:30', '2024-03-10 02:30:00.123456', '2000-02-29',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '[]', '', '{}', false, 32767, 9223372036854775807,
  3.4028235e38, 1.7976931348623157e308, ''),
 (3, 'emoji', 'Zoë Ørsted 李 — 🎉 👩‍👩‍👧', 99999999999999999999999999999.999999999,
  12345678901234567890123456789.123456789, '9999-12-31 23:59:59.999999+00',
  '9999-12-31 23:59:59.999999', '9999-12-31', NULL, 'null', NULL, '{-1}', NULL, NULL, NULL,
  -0.0, -2.2250738585072014e-308, NULL),
 (4, 'empty string', '', -99999999999999999999999999999.999999999, 0, '0001-01-01 00:00:00+00',
  '0001-01-01 00:00:00', '0001-01-01', NULL, '{}', NULL, NULL, true, 0, 0, 0, 0, ''),
 (5, 'null everywhere', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL);
CREATE TABLE beyond (id integer PRIMARY KEY, ts timestamp, day date);
INSERT INTO beyond VALUES (1, '2024-01-01', '2024-01-01'), (2, 'infinity', '12000-01-01');
"""

# The columns carried exactly, and the PostgreSQL expression giving each one's expected value
# (what BigQuery must hold): numbers, text and times as they are; uuid and jsonb as their text;
# an array as its JSON text.
CARRIED = {
    "id": "id",
    "label": "label",
    "txt": "txt",
    "num": "num",
    "ts": "ts",
    "naive": "naive",
    "day": "day",
    "uid": "uid::text",
    "doc": "doc::text",
    "nums": "array_to_json(nums)::text",
    "flag": "flag",
    "small": "small::integer",
    "big": "big",
    "real4": "real4::double precision",
    "dbl": "dbl",
    "vc": "vc::text",
}
CARRIED_TYPES = {
    "id": "INT64",
    "label": "STRING",
    "txt": "STRING",
    "num": "NUMERIC",
    "ts": "TIMESTAMP",
    "naive": "DATETIME",
    "day": "DATE",
    "uid": "STRING",
    "doc": "STRING",
    "nums": "STRING",
    "flag": "BOOL",
    "small": "INT64",
    "big": "INT64",
    "real4": "FLOAT64",
    "dbl": "FLOAT64",
    "vc": "STRING",
}
# What the emulator does differently in CSV mode (see test_round_trip.py): "" loads as NULL.
EMULATOR_DIFFERENCES = {
    "csv": {
        ("empty string", "txt"): ("", None),
        ("empty string", "vc"): ("", None),
        ("newlines", "vc"): ("", None),
    },
    "parquet": {},
}


def load_sample(server: PostgresServer, rows: int, scratch: Path) -> None:
    """The Amperity-style sample, copied table by table into PostgreSQL (through DuckDB)."""
    sample = sample_data.generate(scratch / "sample.duckdb", rows)
    with duckdb.connect() as con:
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET TimeZone = 'UTC'")
        load_extension(con, "postgres_scanner")
        con.execute(f"ATTACH '{sample}' AS sample (READ_ONLY)")
        con.execute(f"ATTACH '{server.dsn()}' AS pg (TYPE postgres)")
        for table in ("customer_360", "unified_transactions"):
            con.execute(f"CREATE TABLE pg.public.{table} AS FROM sample.main.{table}")


@pytest.fixture(scope="module")
def crm(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> PostgresServer:
    """The session's PostgreSQL, with the sample and the adversarial tables in database crm."""
    postgres.execute("DROP DATABASE IF EXISTS crm")
    postgres.execute("CREATE DATABASE crm")
    crm = PostgresServer(port=postgres.port, root=postgres.root, user=postgres.user, database="crm")
    crm.execute(ADVERSARIAL_TABLE)
    load_sample(crm, 300, tmp_path_factory.mktemp("pg-sample"))
    return crm


def declaration(server: PostgresServer, port: int | None = None) -> SourceDeclaration:
    return SourceDeclaration(
        name="crm",
        kind="postgres",
        host=server.host,
        port=port or server.port,
        database=server.database,
        user=server.user,
        password=dg.EnvVar(PASSWORD_VARIABLE),
    )


@pytest.fixture(scope="module")
def pg_resources(
    crm: PostgresServer, resources: dict[str, dg.ConfigurableResource]
) -> Iterator[dict[str, dg.ConfigurableResource]]:
    """The local stack's resources with the source ``crm`` declared (password from the env)."""
    os.environ[PASSWORD_VARIABLE] = crm.password
    local = resources["source"]
    assert isinstance(local, DuckDBSourceResource)
    source = SampleSourceResource(
        database=local.database,
        staging_dir=local.staging_dir,
        sample_rows=local.sample_rows,
        sources=[declaration(crm)],
    )
    yield {**resources, "source": source}
    os.environ.pop(PASSWORD_VARIABLE, None)


def write_export(folder: Path, name: str, sql: str, yaml: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.sql").write_text(sql)
    (folder / f"{name}.yaml").write_text(f"primary_key: [id]\ncadence: daily\nsource: crm\n{yaml}")


def expected(server: PostgresServer, columns: dict[str, str], table: str) -> list[tuple]:
    with_zone = "SET TIME ZONE 'UTC'; "
    server.execute(with_zone)
    _, rows = server.fetch(f"SELECT {', '.join(columns.values())} FROM {table} ORDER BY 1")
    return rows


@pytest.fixture(scope="module", params=["csv", "parquet"])
def adversarial_run(request, local_stack, pg_resources, crm, tmp_path_factory):
    """The adversarial table's carried columns through the whole graph, in one transfer format."""
    folder = tmp_path_factory.mktemp(f"pg_{request.param}")
    name = f"pg_adversarial_{request.param}"
    columns = ", ".join(CARRIED)
    write_export(folder, name, f"SELECT {columns} FROM adversarial", f"format: {request.param}\n")
    (spec,) = load_specs(folder)
    with dg.instance_for_test() as instance:
        result = run_exports([spec], pg_resources, instance)
    assert result.success, step_errors(result)
    assert all(check.passed for check in result.get_asset_check_evaluations())
    return request.param, spec, result


def pg_expected(crm: PostgresServer) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(crm.dsn(), options="-c TimeZone=UTC") as con, con.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(CARRIED.values())} FROM adversarial ORDER BY id")
        rows = cursor.fetchall()
    con.close()
    return rows


@pytest.mark.stack
def test_bigquery_holds_every_postgres_value_exactly(adversarial_run, pg_resources, crm) -> None:
    file_format, spec, result = adversarial_run
    meta = metadata(result, bigquery_key(spec.name))
    columns, loaded = bigquery_rows(pg_resources, meta["dagster/table_name"])
    assert columns == list(CARRIED)
    found = differences(columns, pg_expected(crm), loaded)
    assert found == EMULATOR_DIFFERENCES[file_format]


@pytest.mark.stack
def test_databricks_holds_every_postgres_value_exactly(adversarial_run, pg_resources, crm) -> None:
    file_format, spec, _ = adversarial_run
    columns, copied = databricks_rows(pg_resources, spec)
    assert columns == list(CARRIED)
    expected = [tuple(as_federation_shows_it(v) for v in row) for row in pg_expected(crm)]
    assert differences(columns, expected, copied) == EMULATOR_DIFFERENCES[file_format]


@pytest.mark.stack
def test_each_postgres_type_has_its_documented_bigquery_type(adversarial_run) -> None:
    _, spec, result = adversarial_run
    schema = metadata(result, query_key(spec.name))["dagster/column_schema"]
    assert {c.name: c.type for c in schema.columns} == CARRIED_TYPES


# column → (the query's select, what the refusal must say)
REFUSED = {
    "free": ("free", "numeric without a precision"),
    "raw": ("raw", 'base64("raw")'),
    "span": ("interval '1 day' AS span", 'epoch("span")'),
}


@pytest.mark.parametrize("column", list(REFUSED))
def test_a_type_that_cannot_travel_exactly_is_refused_naming_the_column_and_cast(
    pg_resources, column: str, tmp_path: Path
) -> None:
    select, hint = REFUSED[column]
    source = pg_resources["source"]
    with pytest.raises(UnsupportedTypeError) as refused:
        source.snapshot(
            f"SELECT id, {select} FROM adversarial", Path("r.sql"), tmp_path / "s.parquet", "crm"
        )
    assert f"column {column!r}" in str(refused.value) and hint in str(refused.value)
    assert not list(tmp_path.iterdir())


def test_a_refused_type_is_seen_through_a_select_star_in_an_inner_query(
    pg_resources, tmp_path: Path
) -> None:
    """The outer query names its columns, but the inner ``SELECT *`` reads ``free`` under
    another name (the subquery's column list renames the table's first five columns): no
    column of the query is called ``free``, so only a refusal that looks through the star
    stops DuckDB from rounding it to DOUBLE (issue 24: a survivor of the planted bugs)."""
    query = "SELECT id, amount FROM (SELECT * FROM adversarial) AS a(id, label, txt, num, amount)"
    with pytest.raises(UnsupportedTypeError) as refused:
        pg_resources["source"].snapshot(query, Path("r.sql"), tmp_path / "s.parquet", "crm")
    assert (
        "column 'free' of PostgreSQL table 'adversarial' is numeric without a precision"
    ) in str(refused.value)
    assert not list(tmp_path.iterdir())


def test_the_suggested_casts_work(pg_resources, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    source = pg_resources["source"]
    snapshot = tmp_path / "s.parquet"
    source.snapshot(
        "SELECT id, base64(raw) AS raw FROM adversarial ORDER BY id", Path("c.sql"), snapshot, "crm"
    )
    assert [r["raw"] for r in pq.read_table(snapshot).to_pylist()][:2] == ["AP8=", ""]
    source.snapshot(
        "SELECT id, free FROM postgres_query('src', "
        "'SELECT id, free::numeric(38, 9) AS free FROM adversarial') ORDER BY id",
        Path("c.sql"),
        snapshot,
        "crm",
    )
    rows = pq.read_table(snapshot).to_pylist()
    assert str(rows[2]["free"]) == "12345678901234567890123456789.123456789"


def test_a_value_bigquery_cannot_hold_is_refused_at_the_query_step(
    pg_resources, tmp_path: Path
) -> None:
    with pytest.raises(
        SourceQueryError, match="column 'ts' holds a value outside BigQuery's range"
    ):
        pg_resources["source"].snapshot(
            "SELECT id, ts FROM beyond", Path("b.sql"), tmp_path / "s.parquet", "crm"
        )
    with pytest.raises(SourceQueryError, match="column 'day' holds a value outside"):
        pg_resources["source"].snapshot(
            "SELECT id, day FROM beyond", Path("b.sql"), tmp_path / "s.parquet", "crm"
        )


@pytest.mark.stack
def test_the_sample_exports_from_postgres_match_postgres(
    local_stack, pg_resources, crm, tmp_path: Path
) -> None:
    """The shipped customer_360 and unified_transactions queries, run on the PostgreSQL copy."""
    from bq_assets.exports import SHIPPED_EXPORTS_DIR

    specs: list[ExportSpec] = []
    folder = tmp_path / "exports"
    folder.mkdir()
    for name in ("customer_360", "unified_transactions"):
        (folder / f"pg_{name}.sql").write_text((SHIPPED_EXPORTS_DIR / f"{name}.sql").read_text())
        yaml = (SHIPPED_EXPORTS_DIR / f"{name}.yaml").read_text()
        (folder / f"pg_{name}.yaml").write_text(yaml + "source: crm\nformat: parquet\n")
    specs = load_specs(folder)
    # pg_unified_transactions is partitioned: the run loads its latest complete day, the
    # window bound as parameters through DuckDB's PostgreSQL scanner.
    (orders,) = [spec for spec in specs if spec.partitioned]
    day = latest_complete_partition(orders, dt.datetime.now(dt.UTC))
    window = Window((day,), "day", orders.timezone)
    with dg.instance_for_test() as instance:
        result = run_exports(specs, pg_resources, instance, partition_key=day)
    assert result.success, step_errors(result)
    assert all(check.passed for check in result.get_asset_check_evaluations())
    import psycopg2

    for spec in specs:
        table = spec.name.removeprefix("pg_")
        meta = metadata(result, bigquery_key(spec.name))
        columns, loaded = bigquery_rows(pg_resources, meta["dagster/table_name"])
        with psycopg2.connect(crm.dsn(), options="-c TimeZone=UTC") as con, con.cursor() as cur:
            if spec.partitioned:
                cur.execute(
                    f"SELECT {', '.join(columns)} FROM {table} "
                    "WHERE order_datetime >= %s AND order_datetime < %s",
                    (window.start, window.end),
                )
            else:
                cur.execute(f"SELECT {', '.join(columns)} FROM {table}")
            rows = cur.fetchall()
        con.close()
        assert len(rows) == len(loaded) > 0
        assert differences(columns, rows, loaded) == {}
        _, copied = databricks_rows(pg_resources, spec)
        shown = [tuple(as_federation_shows_it(v) for v in row) for row in rows]
        assert differences(columns, shown, copied) == {}


def test_a_postgres_that_is_down_fails_naming_host_and_port_and_may_be_retried(
    crm: PostgresServer, tmp_path: Path
) -> None:
    port = free_port()
    os.environ[PASSWORD_VARIABLE] = crm.password
    source = DuckDBSourceResource(
        database=str(tmp_path / "unused.duckdb"),
        staging_dir=str(tmp_path / "staging"),
        sources=[declaration(crm, port=port)],
    )
    with pytest.raises(SourceUnreachableError) as unreachable:
        source.snapshot("SELECT id FROM adversarial", Path("d.sql"), tmp_path / "s.parquet", "crm")
    assert f"127.0.0.1:{port}" in str(unreachable.value)
    assert "unreachable" in str(unreachable.value)
    assert unreachable.value.retryable
    assert crm.password not in str(unreachable.value)


def test_a_wrong_password_fails_clearly_without_echoing_it_and_is_not_retried(
    crm: PostgresServer, local_stack, resources, tmp_path: Path
) -> None:
    wrong = "WrongPassword-123!"
    os.environ[PASSWORD_VARIABLE] = wrong
    source = SampleSourceResource(
        database=resources["source"].database,
        staging_dir=str(tmp_path / "staging"),
        sample_rows=resources["source"].sample_rows,
        sources=[declaration(crm)],
    )
    folder = tmp_path / "exports"
    write_export(folder, "pg_wrong_password", "SELECT id FROM adversarial")
    specs = load_specs(folder)
    try:
        with pytest.raises(SourceError) as refused:
            source.snapshot(
                "SELECT id FROM adversarial", Path("w.sql"), tmp_path / "s.parquet", "crm"
            )
        assert "password authentication failed" in str(refused.value)
        assert wrong not in str(refused.value)
        with dg.instance_for_test() as instance:
            result = run_exports(
                specs, {**resources, "source": source}, instance, "query/pg_wrong_password"
            )
            logs = "\n".join(str(record) for record in instance.all_logs(result.run_id))
    finally:
        os.environ[PASSWORD_VARIABLE] = crm.password
    assert not result.success
    (message,) = step_errors(result).values()
    assert "refused the connection" in message and "127.0.0.1" in message
    assert wrong not in logs
    os.environ[PASSWORD_VARIABLE] = wrong
    try:
        with pytest.raises(dg.Failure) as failure, reported_as_failure():
            source.snapshot("SELECT id FROM adversarial", Path("w.sql"), tmp_path / "s", "crm")
    finally:
        os.environ[PASSWORD_VARIABLE] = crm.password
    assert failure.value.allow_retries is False


def test_an_unknown_source_is_rejected_when_the_code_location_loads(tmp_path: Path) -> None:
    from bq_assets.exports import ExportSpecError
    from bq_assets.exports.spec import check_sources

    write_export(tmp_path, "orphan", "SELECT id FROM t")
    specs = load_specs(tmp_path)
    with pytest.raises(
        ExportSpecError,
        match=r"orphan.yaml: source: 'crm' is not a declared source \(declared: default, lake",
    ):
        check_sources(specs, ["default", "lake"])
