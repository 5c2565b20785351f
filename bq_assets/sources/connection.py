"""How DuckDB queries a declared source: the extension loaded from its wheel, the database
attached READ_ONLY, the engine's limits set, ``gs://`` paths readable.

DuckDB stays the engine. ``postgres``, ``mysql`` and ``sqlite`` databases are ATTACHed
READ_ONLY through DuckDB's own scanner extensions, and the query's unqualified table names
resolve in them; a ``files`` source is an in-memory DuckDB whose query reads its paths itself
(``read_parquet('gs://…')``, ``delta_scan``, ``iceberg_scan``; ``gs://`` through ``files``).

Extensions are never downloaded: automatic install and load are off, and each extension is
installed from its PyPI wheel (``duckdb-extension-<name>``, pinned to the DuckDB version), then
LOADed. Nothing here is cached between runs; ``connect`` is safe to call again (idempotent).
No Dagster.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from bq_assets.sources.declarations import (
    DEFAULT_PORTS,
    Source,
    SourceError,
    SourceUnreachableError,
    blank_secret,
    sql_string,
)
from bq_assets.sources.files import GcsAccessLike, register_gcs

#: The catalog name an attached database gets inside DuckDB.
ATTACHED_AS = "src"
SECRET_NAME = "bq_assets_source"
#: DuckDB extension (as LOADed) → the PyPI package that ships it.
EXTENSION_PACKAGES = {
    "postgres_scanner": "duckdb-extension-postgres-scanner",
    "mysql_scanner": "duckdb-extension-mysql-scanner",
    "sqlite_scanner": "duckdb-extension-sqlite-scanner",
    "httpfs": "duckdb-extension-httpfs",
    "delta": "duckdb-extension-delta",
    "avro": "duckdb-extension-avro",
    "iceberg": "duckdb-extension-iceberg",
}
#: URL schemes read through the GCS resource's credentials (gcsfs registers both).
ATTACH_TYPE = {"postgres": "postgres", "mysql": "mysql", "sqlite": "sqlite"}
KIND_EXTENSION = {
    "postgres": "postgres_scanner",
    "mysql": "mysql_scanner",
    "sqlite": "sqlite_scanner",
    "files": "httpfs",
}
# What a server that is down (or a wrong host/port) says, as opposed to a refused login.
_UNREACHABLE = re.compile(
    r"connection refused|could not connect|can't connect|timeout expired|timed out|"
    r"no route to host|could not translate host name|unknown mysql server host|"
    r"network is unreachable|server closed the connection",
    re.IGNORECASE,
)


def create_secret_sql(source: Source) -> str:
    """A TEMPORARY (in-memory, this connection only) DuckDB secret holding a postgres / mysql
    source's connection details, so the ATTACH string (which DuckDB may echo in an error)
    carries no password. Holds the password: never log it."""
    port = source.port or DEFAULT_PORTS[source.kind]
    parts = {
        "HOST": sql_string(source.host or "localhost"),
        "PORT": str(int(port)),
        "DATABASE": sql_string(source.database or ""),
        "USER": sql_string(source.user or ""),
    }
    if source.password:
        parts["PASSWORD"] = sql_string(source.password)
    options = ", ".join(f"{k} {v}" for k, v in parts.items())
    return f"CREATE OR REPLACE TEMPORARY SECRET {SECRET_NAME} (TYPE {source.kind}, {options})"


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Install ``name`` from its PyPI wheel (no download) and LOAD it; a missing wheel is a
    ``SourceError`` naming the package to install."""
    package = EXTENSION_PACKAGES[name]
    if importlib.util.find_spec(f"duckdb_extension_{name}") is None:
        raise SourceError(
            f"The DuckDB extension {name} is not installed: pip install {package}=="
            f"{duckdb.__version__} (it must match duckdb {duckdb.__version__})"
        )
    import duckdb_extensions

    duckdb_extensions.import_extension(name, con=con)
    con.execute(f"LOAD {name}")


@dataclass(frozen=True)
class EngineSettings:
    """DuckDB's resource limits for the query step (see README, "Bounded memory")."""

    memory_limit: str = "192MB"
    threads: int = 2
    temp_directory: str | None = None
    #: Insertion order costs memory on large results; the export's rows have no order anyway.
    preserve_insertion_order: bool = False


def apply_settings(con: duckdb.DuckDBPyConnection, settings: EngineSettings) -> None:
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = {sql_string(settings.memory_limit)}")
    con.execute(f"SET threads = {int(settings.threads)}")
    if settings.temp_directory:
        Path(settings.temp_directory).mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = {sql_string(settings.temp_directory)}")
    con.execute(f"SET preserve_insertion_order = {str(settings.preserve_insertion_order).lower()}")


def _attach(con: duckdb.DuckDBPyConnection, source: Source) -> None:
    server = source.kind in ("postgres", "mysql")
    target = "" if server else str(source.path)
    if source.kind == "sqlite" and not Path(target).exists():
        raise SourceError(f"source {source.name!r}: the SQLite file {target} does not exist")
    secret = f", SECRET {SECRET_NAME}" if server else ""
    if source.kind == "mysql":
        # MySQL TIMESTAMP values are stored in UTC and shown in the session's time zone: read
        # them in UTC whatever the server's default (an offset: named zones need tz tables).
        con.execute("SET mysql_session_time_zone = '+00:00'")
    try:
        if server:
            con.execute(create_secret_sql(source))
        con.execute(
            f"ATTACH {sql_string(target)} AS {ATTACHED_AS} "
            f"(TYPE {ATTACH_TYPE[source.kind]}{secret}, READ_ONLY)"
        )
    except duckdb.Error as exc:
        message = blank_secret(str(exc).strip().splitlines()[0], source)
        if _UNREACHABLE.search(str(exc)):
            raise SourceUnreachableError(
                f"source {source.name!r} ({source.address}) is unreachable: {message}"
            ) from None
        raise SourceError(
            f"source {source.name!r} ({source.address}) refused the connection: {message}"
        ) from None
    con.execute(f"USE {ATTACHED_AS}")


def _attach_with_retries(con: duckdb.DuckDBPyConnection, source: Source, attempts: int) -> None:
    """A server that is starting or briefly away gets ``attempts`` tries, 1 s, 2 s, … apart;
    a refused login is not retried."""
    for attempt in range(1, attempts + 1):
        try:
            _attach(con, source)
            return
        except SourceUnreachableError:
            if attempt == attempts:
                raise
            time.sleep(attempt)


def prepare_connection(
    con: duckdb.DuckDBPyConnection,
    source: Source,
    sql: str = "",
    attempts: int = 3,
    gcs: GcsAccessLike = None,
) -> None:
    """Make ``con`` (an in-memory DuckDB, or the ``duckdb`` source's file) query ``source``:
    its extension loaded from the wheel, the database attached READ_ONLY and in use.
    ``sql`` decides which table-format extensions a ``files`` source needs, and whether
    ``gs://`` paths are read (through ``gcs``)."""
    extension = KIND_EXTENSION.get(source.kind)
    if extension:
        load_extension(con, extension)
    if source.kind == "files":
        lowered = sql.lower()
        if "delta_scan" in lowered:
            load_extension(con, "delta")
        if "iceberg_scan" in lowered:
            # iceberg reads its manifests with avro, which it would otherwise try to download.
            load_extension(con, "avro")
            load_extension(con, "iceberg")
    if source.kind in ATTACH_TYPE:
        _attach_with_retries(con, source, attempts)
    register_gcs(con, source, sql, gcs)


@contextmanager
def connect(
    source: Source, settings: EngineSettings, sql: str = "", gcs: GcsAccessLike = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection on which the export's SQL runs against ``source``; closed after."""
    if source.kind == "duckdb":
        assert source.path is not None
        if not Path(source.path).exists():
            raise SourceError(f"source {source.name!r}: the database {source.path} does not exist")
        con = duckdb.connect(source.path, read_only=True)
    else:
        con = duckdb.connect(":memory:")
    try:
        apply_settings(con, settings)
        prepare_connection(con, source, sql, gcs=gcs)
        yield con
    finally:
        con.close()
