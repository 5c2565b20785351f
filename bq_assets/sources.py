"""Sources: where an export's query runs, declared once and chosen per export (``source:``).

DuckDB stays the engine. A source of kind ``duckdb`` is a DuckDB database file (the default
source, and the embedded sample ``make demo`` uses); ``postgres``, ``mysql`` and ``sqlite``
databases are ATTACHed READ_ONLY through DuckDB's own scanner extensions, and the query's
unqualified table names resolve in them; ``files`` is an in-memory DuckDB whose query reads
Parquet / CSV / Delta / Iceberg paths itself (``read_parquet('gs://…')``, ``delta_scan``,
``iceberg_scan``).

``gs://`` paths are read through an fsspec filesystem (``gcsfs``) registered on the connection
(``con.register_filesystem``, see DuckDB's "Using fsspec filesystems" guide), built from the
GCS resource's own endpoint, project and credentials (``GcsAccess``): a service account or ADC
in production, the fake-gcs-server of the local stack with anonymous credentials locally.
DuckDB's httpfs reaches GCS only through the S3-interoperability HMAC API, which needs keys of
its own and which fake-gcs-server does not serve. Delta tables are read by the delta
extension's own object store, which does not see that filesystem and wants a GCS HMAC secret
("Can not scan a gcs:// gs:// or r2:// url without a secret providing its endpoint"):
``delta_scan('gs://…')`` is refused naming the reason. Iceberg tables are read through DuckDB's
file system and work on both.

Extensions are never downloaded: automatic install and load are off, and each extension is
installed from its PyPI wheel (``duckdb-extension-<name>``, pinned to the DuckDB version), then
LOADed. A password is only ever passed to DuckDB; every message that leaves this module has it
blanked out.

Pure engine code: no Dagster. Nothing here is cached between runs; ``connect`` is safe to call
again (idempotent).
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import duckdb

from bq_assets.errors import BqAssetsError

if TYPE_CHECKING:
    from bq_assets.source_files import GcsAccessLike

SourceKind = Literal["duckdb", "postgres", "mysql", "sqlite", "files"]
SOURCE_KINDS: tuple[str, ...] = ("duckdb", "postgres", "mysql", "sqlite", "files")
DEFAULT_SOURCE = "default"
SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
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
DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}
# What a server that is down (or a wrong host/port) says, as opposed to a refused login.
_UNREACHABLE = re.compile(
    r"connection refused|could not connect|can't connect|timeout expired|timed out|"
    r"no route to host|could not translate host name|unknown mysql server host|"
    r"network is unreachable|server closed the connection",
    re.IGNORECASE,
)


class SourceError(BqAssetsError):
    """A source cannot be used as declared (unknown, misconfigured, extension missing,
    login refused); retrying cannot help."""


class SourceUnreachableError(ConnectionError):
    """A source server did not answer (down, or not reachable yet); a retry may help.
    The message names host and port."""


@dataclass(frozen=True)
class Source:
    """One declared source. ``password`` is never shown (not in ``repr``, not in messages)."""

    name: str
    kind: SourceKind = "duckdb"
    path: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """Where the source is, for messages: a file, or host:port/database (never a secret)."""
        if self.kind in ("postgres", "mysql"):
            port = self.port or DEFAULT_PORTS[self.kind]
            return f"{self.kind} {self.host or 'localhost'}:{port}/{self.database or ''}"
        if self.kind == "files":
            return "files"
        return f"{self.kind} {self.path}"

    def problems(self) -> list[str]:
        """What is missing from this declaration (empty when it is usable)."""
        found = []
        if not SOURCE_NAME.fullmatch(self.name):
            found.append(f"{self.name!r} is not a valid source name ({SOURCE_NAME.pattern})")
        if self.kind not in SOURCE_KINDS:
            found.append(f"kind {self.kind!r} is not one of {', '.join(SOURCE_KINDS)}")
        if self.kind in ("duckdb", "sqlite") and not self.path:
            found.append(f"a {self.kind} source needs a path")
        if self.kind in ("postgres", "mysql") and not (self.host and self.database and self.user):
            found.append(f"a {self.kind} source needs host, database and user")
        return found


def blank_secret(text: str, source: Source) -> str:
    """``text`` with the source's password (and any ``password=…`` pair) blanked out."""
    if source.password:
        text = text.replace(source.password, "***")
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


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
    # Imported here: source_files builds on this module's Source and errors.
    from bq_assets.source_files import register_gcs

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
