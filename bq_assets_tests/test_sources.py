"""Sources declared once, chosen per export: kinds, declarations from the environment, the
extension rule (from the wheel, never downloaded) and what a misdeclared source says.
PostgreSQL itself is exercised against a real server in ``test_postgres_source.py``."""

from __future__ import annotations

import importlib.util
import sqlite3
import tempfile
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from bq_assets import sources
from bq_assets.resources.source import DuckDBSourceResource, SourceDeclaration, SourceQueryError
from bq_assets.settings import ConfigurationError, declared_sources, query_engine_settings
from bq_assets.sources.declarations import blank_secret


def resource(tmp_path: Path, *declarations: SourceDeclaration) -> DuckDBSourceResource:
    default = tmp_path / "default.duckdb"
    with duckdb.connect(str(default)) as con:
        con.execute("CREATE OR REPLACE TABLE t AS SELECT 1 AS id")
    return DuckDBSourceResource(
        database=str(default), staging_dir=str(tmp_path / "staging"), sources=list(declarations)
    )


def test_a_sqlite_source_is_attached_read_only_and_queried_by_table_name(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE users (id INTEGER, name TEXT)")
        con.execute("INSERT INTO users VALUES (1, 'Zoë'), (2, '')")
    source = resource(tmp_path, SourceDeclaration(name="app", kind="sqlite", path=str(path)))
    snapshot = tmp_path / "s.parquet"
    source.snapshot("SELECT id, name FROM users ORDER BY id", Path("u.sql"), snapshot, "app")
    assert pq.read_table(snapshot).to_pylist() == [
        {"id": 1, "name": "Zoë"},
        {"id": 2, "name": ""},
    ]
    declared = source.source("app")
    with (
        sources.connect(declared, source.engine_settings()) as con,
        pytest.raises(duckdb.Error, match=r"read-only|read only"),
    ):
        con.execute("INSERT INTO users VALUES (3, 'x')")


def test_a_files_source_reads_parquet_and_csv_paths(tmp_path: Path) -> None:
    with duckdb.connect() as con:
        con.execute(
            f"COPY (SELECT 1 AS id, 2.50::DECIMAL(10, 2) AS amount) TO '{tmp_path}/o.parquet'"
        )
        con.execute(f"COPY (SELECT 1 AS id, 'a,b' AS note) TO '{tmp_path}/n.csv'")
    source = resource(tmp_path, SourceDeclaration(name="lake", kind="files"))
    snapshot = tmp_path / "s.parquet"
    sql = (
        f"SELECT o.id, o.amount, n.note FROM read_parquet('{tmp_path}/o.parquet') AS o "
        f"JOIN read_csv('{tmp_path}/n.csv') AS n ON n.id = o.id"
    )
    source.snapshot(sql, Path("f.sql"), snapshot, "lake")
    (row,) = pq.read_table(snapshot).to_pylist()
    assert (row["id"], str(row["amount"]), row["note"]) == (1, "2.50", "a,b")


def test_the_default_source_is_the_duckdb_file(tmp_path: Path) -> None:
    source = resource(tmp_path)
    snapshot = tmp_path / "s.parquet"
    source.snapshot("SELECT id FROM t", Path("t.sql"), snapshot)
    assert pq.read_table(snapshot).to_pylist() == [{"id": 1}]
    assert source.source_names() == ["default"]


def test_an_undeclared_source_names_the_declared_ones(tmp_path: Path) -> None:
    source = resource(tmp_path, SourceDeclaration(name="lake", kind="files"))
    with pytest.raises(SourceQueryError, match=r"'crm' is not declared; declared: default, lake"):
        source.snapshot("SELECT id FROM t", Path("t.sql"), tmp_path / "s.parquet", "crm")


def test_a_missing_extension_names_the_package_to_install(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "duckdb_extension_mysql_scanner" else real(name, *a),
    )
    with (
        duckdb.connect() as con,
        pytest.raises(
            sources.SourceError, match=r"pip install duckdb-extension-mysql-scanner==1\.5\.5"
        ),
    ):
        sources.load_extension(con, "mysql_scanner")


def test_extensions_are_never_downloaded(tmp_path: Path) -> None:
    settings = sources.EngineSettings(temp_directory=str(tmp_path / "spill"))
    with sources.connect(sources.Source(name="lake", kind="files"), settings) as con:
        values = dict(
            con.execute(
                "SELECT name, value FROM duckdb_settings() WHERE name IN ("
                "'autoinstall_known_extensions', 'autoload_known_extensions', 'memory_limit', "
                "'threads', 'temp_directory')"
            ).fetchall()
        )
    assert values["autoinstall_known_extensions"] == "false"
    assert values["autoload_known_extensions"] == "false"
    assert values["threads"] == "2"
    assert values["temp_directory"] == str(tmp_path / "spill")
    assert values["memory_limit"] == "183.1 MiB"  # 192MB (decimal) as DuckDB shows it


def test_sources_are_declared_in_the_environment_with_the_password_as_env_var(
    monkeypatch,
) -> None:
    monkeypatch.setenv("BQ_ASSETS_SOURCES", "crm, lake")
    monkeypatch.setenv("BQ_ASSETS_SOURCE_CRM_KIND", "postgres")
    monkeypatch.setenv("BQ_ASSETS_SOURCE_CRM_HOST", "db.internal")
    monkeypatch.setenv("BQ_ASSETS_SOURCE_CRM_PORT", "6543")
    monkeypatch.setenv("BQ_ASSETS_SOURCE_CRM_DATABASE", "crm")
    monkeypatch.setenv("BQ_ASSETS_SOURCE_CRM_USER", "exporter")
    monkeypatch.setenv("BQ_ASSETS_SOURCE_CRM_PASSWORD", "s3cret-value")
    monkeypatch.setenv("BQ_ASSETS_SOURCE_LAKE_KIND", "files")
    crm, lake = declared_sources()
    assert (crm.name, crm.kind, crm.host, crm.port, crm.user) == (
        "crm",
        "postgres",
        "db.internal",
        6543,
        "exporter",
    )
    assert isinstance(crm.password, dg.EnvVar) and crm.password == "BQ_ASSETS_SOURCE_CRM_PASSWORD"
    assert "s3cret-value" not in repr(crm) and "s3cret-value" not in repr(crm.to_source())
    assert (lake.name, lake.kind) == ("lake", "files")


def test_a_misdeclared_source_fails_the_load_naming_each_variable(monkeypatch) -> None:
    monkeypatch.setenv("BQ_ASSETS_SOURCES", "crm,app,Bad")
    monkeypatch.setenv("BQ_ASSETS_SOURCE_CRM_KIND", "postgres")
    monkeypatch.setenv("BQ_ASSETS_SOURCE_APP_KIND", "oracle")
    with pytest.raises(ConfigurationError) as error:
        declared_sources()
    message = str(error.value)
    assert "BQ_ASSETS_SOURCE_CRM_*: a postgres source needs host, database and user" in message
    assert "BQ_ASSETS_SOURCE_APP_KIND='oracle' is not one of duckdb" in message
    assert "'Bad' is not a valid source name" in message


def test_the_query_engine_limits_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("BQ_ASSETS_QUERY_MEMORY_LIMIT", "512MB")
    monkeypatch.setenv("BQ_ASSETS_QUERY_THREADS", "1")
    assert query_engine_settings() == {"memory_limit": "512MB", "threads": 1}
    monkeypatch.setenv("BQ_ASSETS_QUERY_THREADS", "many")
    with pytest.raises(ConfigurationError, match="BQ_ASSETS_QUERY_THREADS"):
        query_engine_settings()


def test_a_password_is_blanked_from_messages() -> None:
    source = sources.Source(
        name="crm", kind="postgres", host="h", database="d", user="u", password="pw-123"
    )
    text = "Unable to connect: host='h' password='pw-123' and pw-123 again"
    assert "pw-123" not in blank_secret(text, source)
    assert "pw-123" not in repr(source)


def test_without_a_staging_dir_the_query_step_spills_to_the_system_temp_dir(tmp_path) -> None:
    # Production may leave BQ_ASSETS_STAGING_DIR unset: the spill directory must still exist.
    resource = DuckDBSourceResource(database=str(tmp_path / "source.duckdb"))
    spill = Path(resource.engine_settings().temp_directory)
    assert spill == Path(tempfile.gettempdir()) / "bq_assets" / ".spill"


def test_delivery_is_a_reserved_source_name(monkeypatch) -> None:
    """``source/delivery/...`` keys the delivered exports' bucket prefixes in the lineage."""
    monkeypatch.setenv("BQ_ASSETS_SOURCES", "delivery")
    monkeypatch.setenv("BQ_ASSETS_SOURCE_DELIVERY_KIND", "files")
    with pytest.raises(ConfigurationError, match="'delivery' is reserved"):
        declared_sources()
