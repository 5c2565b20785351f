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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import sqlglot
from sqlglot import exp

from bq_assets.errors import BqAssetsError
from bq_assets.schema import UnsupportedTypeError, snapshot_query

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
GCS_SCHEMES = ("gs://", "gcs://")
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


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def create_secret_sql(source: Source) -> str:
    """A TEMPORARY (in-memory, this connection only) DuckDB secret holding a postgres / mysql
    source's connection details, so the ATTACH string (which DuckDB may echo in an error)
    carries no password. Holds the password: never log it."""
    port = source.port or DEFAULT_PORTS[source.kind]
    parts = {
        "HOST": _sql_string(source.host or "localhost"),
        "PORT": str(int(port)),
        "DATABASE": _sql_string(source.database or ""),
        "USER": _sql_string(source.user or ""),
    }
    if source.password:
        parts["PASSWORD"] = _sql_string(source.password)
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
    con.execute(f"SET memory_limit = {_sql_string(settings.memory_limit)}")
    con.execute(f"SET threads = {int(settings.threads)}")
    if settings.temp_directory:
        Path(settings.temp_directory).mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = {_sql_string(settings.temp_directory)}")
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
            f"ATTACH {_sql_string(target)} AS {ATTACHED_AS} "
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


@dataclass(frozen=True)
class GcsAccess:
    """How ``gs://`` paths are read: the GCS resource's endpoint, project and credentials (a
    ``google.auth`` credentials object; anonymous on the local emulator). Never shown."""

    endpoint: str
    project: str | None = None
    credentials: object = field(default=None, repr=False)


def gcs_paths(sql: str) -> list[str]:
    """The ``gs://`` (or ``gcs://``) paths ``sql`` reads: string literals in its FROM / JOIN
    table functions (``read_parquet('gs://…')``) and quoted table names (``FROM 'gs://…'``),
    in order of appearance, once each. A ``gs://`` string compared in a WHERE is no path."""
    try:
        parsed = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError:
        return sorted(set(re.findall(r"'((?:gs|gcs)://[^']*)'", sql)), key=sql.find)
    found = {
        str(literal.this)
        for literal in parsed.find_all(exp.Literal)
        if literal.is_string and literal.find_ancestor(exp.Table) is not None
    }
    found |= {table.name for table in parsed.find_all(exp.Table)}
    return sorted((path for path in found if path.startswith(GCS_SCHEMES)), key=sql.find)


def gcs_filesystem(access: GcsAccess):  # -> gcsfs.core.GCSFileSystem
    """A gcsfs filesystem speaking to ``access.endpoint`` with ``access.credentials``.

    ``gcsfs.core.GCSFileSystem`` (the JSON API over HTTP), not the package's default export:
    since gcsfs 2026.x that is ``ExtendedGcsFileSystem``, which first asks the Storage Control
    gRPC API for each bucket's layout, a call an emulator does not serve (60 s timeout)."""
    try:
        from gcsfs.core import GCSFileSystem
        from google.auth.credentials import AnonymousCredentials
    except ImportError:
        raise SourceError(
            "gs:// paths need gcsfs: pip install gcsfs (the `sources` extra)"
        ) from None
    token = "anon" if isinstance(access.credentials, AnonymousCredentials) else access.credentials
    return GCSFileSystem(
        project=access.project or "",
        token=token if token is not None else "google_default",
        endpoint_url=access.endpoint,
        skip_instance_cache=True,
    )


def _has_glob(path: str) -> bool:
    return any(char in path for char in "*?[")


def check_gcs_paths(fs, source: Source, paths: list[str]) -> None:
    """Fail naming the path when a ``gs://`` path's bucket or objects do not exist (or the
    credentials cannot see them): clearer than the error DuckDB would give mid-query."""
    for path in paths:
        bucket = path.split("://", 1)[1].split("/", 1)[0]
        try:
            bucket_found = fs.exists(bucket)
            found = bool(fs.glob(path)) if _has_glob(path) else fs.exists(path)
        except Exception as exc:  # gcsfs raises HttpError, OSError, ValueError...
            raise SourceError(
                f"source {source.name!r}: {path} cannot be read with the GCS resource's "
                f"credentials ({type(exc).__name__}: {blank_secret(str(exc), source)[:200]})"
            ) from None
        if not bucket_found:
            raise SourceError(
                f"source {source.name!r}: {path}: the bucket {bucket} does not exist, or the GCS "
                "resource's credentials cannot see it"
            )
        if not found:
            raise SourceError(f"source {source.name!r}: {path}: no object matches this path")


DELTA_ON_GCS = (
    "delta_scan cannot read gs:// paths here: the delta extension reads through its own "
    "object store, not DuckDB's file system, and asks for a GCS secret (HMAC keys of the "
    "S3-interoperability API) instead of the GCS resource's credentials. Read the table's "
    "Parquet files with read_parquet, or keep the Delta table on a local or mounted path."
)
_DELTA_ON_GCS = re.compile(r"delta_scan\s*\(\s*'(?:gs|gcs)://", re.IGNORECASE)


def reads_delta_on_gcs(sql: str) -> bool:
    """Whether ``sql`` calls ``delta_scan`` on a ``gs://`` path (which cannot work here)."""
    return bool(_DELTA_ON_GCS.search(sql))


def _refuse_delta_on_gcs(sql: str) -> None:
    if reads_delta_on_gcs(sql):
        raise SourceError(DELTA_ON_GCS)


#: How ``gs://`` paths are read: the access itself, or what makes it (called only when a
#: query reads ``gs://``, so a query that does not never builds a GCS client).
GcsAccessLike = GcsAccess | Callable[[], GcsAccess] | None


def register_gcs(
    con: duckdb.DuckDBPyConnection, source: Source, sql: str, gcs: GcsAccessLike
) -> None:
    """When ``sql`` reads ``gs://`` paths: register a gcsfs filesystem with the GCS resource's
    credentials on ``con`` and check every literal path exists. Idempotent."""
    paths = gcs_paths(sql)
    if not paths:
        return
    _refuse_delta_on_gcs(sql)
    if callable(gcs):
        gcs = gcs()
    if gcs is None:
        raise SourceError(
            f"source {source.name!r}: the query reads {paths[0]} but no GCS access was given "
            "(the query step passes the `gcs` resource's)"
        )
    fs = gcs_filesystem(gcs)
    check_gcs_paths(fs, source, paths)
    con.register_filesystem(fs)


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


# -- Server columns DuckDB would read inexactly ---------------------------------------------

# PostgreSQL: numeric (1700) and numeric[] (1231) without a precision, or with one above
# DuckDB's 38, arrive in DuckDB as DOUBLE: silently rounded. They are found in the catalog,
# since the query's result only says DOUBLE.
_PG_INEXACT_NUMERIC = """
SELECT c.relname AS table_name, a.attname AS column_name
FROM pg_attribute a
JOIN pg_class c ON a.attrelid = c.oid
JOIN pg_namespace n ON c.relnamespace = n.oid
WHERE a.atttypid IN (1700, 1231) AND a.attnum > 0 AND NOT a.attisdropped
  AND (a.atttypmod = -1 OR ((a.atttypmod - 4) >> 16) & 65535 > 38)
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""
# MySQL / MariaDB: DECIMAL(p, s) with p > 38 (up to 65) arrives in DuckDB as DOUBLE.
_MYSQL_INEXACT_NUMERIC = """
SELECT table_name, column_name FROM information_schema.columns
WHERE table_schema = DATABASE() AND data_type = 'decimal' AND numeric_precision > 38
"""
_INEXACT_NUMERIC = {
    "postgres": ("postgres_query", _PG_INEXACT_NUMERIC, "numeric without a precision (or "),
    "mysql": ("mysql_query", _MYSQL_INEXACT_NUMERIC, "DECIMAL ("),
}


def inexact_columns(con: duckdb.DuckDBPyConnection, kind: str) -> list[tuple[str, str]]:
    """``(table, column)`` of every numeric column of the attached ``kind`` server (postgres,
    mysql) that DuckDB would read as DOUBLE."""
    function, catalog_query, _ = _INEXACT_NUMERIC[kind]
    rows = con.execute(
        f"SELECT * FROM {function}('{ATTACHED_AS}', {_sql_string(catalog_query)})"
    ).fetchall()
    return [(str(table), str(column)) for table, column in rows]


def postgres_inexact_columns(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """``(table, column)`` of every PostgreSQL numeric column DuckDB would read as DOUBLE."""
    return inexact_columns(con, "postgres")


def _inexact_message(kind: str, table: str, column: str) -> str:
    if kind == "postgres":
        return (
            f"column {column!r} of PostgreSQL table {table!r} is numeric without a precision (or "
            f"with more than 38 digits), which DuckDB reads as DOUBLE and would round: cast "
            f"it in PostgreSQL, e.g. a view with {column}::numeric(38, 9) (NUMERIC) or "
            f"{column}::text (STRING), or read it with postgres_query('{ATTACHED_AS}', "
            f"'SELECT {column}::numeric(38, 9) AS {column} FROM {table}')"
        )
    return (
        f"column {column!r} of MySQL table {table!r} is DECIMAL with more than 38 digits, which "
        f"DuckDB reads as DOUBLE and would round: read it as text with mysql_query("
        f"'{ATTACHED_AS}', 'SELECT CAST({column} AS CHAR) AS {column} FROM {table}') (STRING), "
        f"or as CAST({column} AS DECIMAL(38, 9)) if it fits"
    )


def refuse_inexact_columns(con: duckdb.DuckDBPyConnection, query: str, kind: str) -> None:
    """Refuse a query that reads a server numeric column DuckDB would round to DOUBLE
    (PostgreSQL numeric without precision or above 38 digits, MySQL DECIMAL above 38 digits),
    naming the column and the fix."""
    parsed = sqlglot.parse_one(query, read="duckdb")
    tables = {t.name for t in parsed.find_all(exp.Table)}
    columns = {c.name for c in parsed.find_all(exp.Column)}
    stars = any(True for _ in parsed.find_all(exp.Star))
    hits = [
        (t, c) for t, c in inexact_columns(con, kind) if t in tables and (c in columns or stars)
    ]
    if hits:
        raise UnsupportedTypeError("; ".join(_inexact_message(kind, t, c) for t, c in hits))


def refuse_inexact_postgres_columns(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """``refuse_inexact_columns`` for PostgreSQL."""
    refuse_inexact_columns(con, query, "postgres")


def result_types(
    con: duckdb.DuckDBPyConnection, query: str, parameters: Mapping[str, object] | None = None
) -> list[tuple[str, str]]:
    """``(column, DuckDB type)`` of each result column (``DESCRIBE``, which reads no row);
    ``parameters`` are the query's bound parameters, if it has any."""
    described = con.execute(f"DESCRIBE {query}", dict(parameters or {})).fetchall()
    return [(str(row[0]), str(row[1])) for row in described]


def check_result_types(
    con: duckdb.DuckDBPyConnection,
    query: str,
    source: Source,
    parameters: Mapping[str, object] | None = None,
) -> str:
    """The query the snapshot is written from, after checking every result column's type
    (DuckDB ``DESCRIBE``, which runs nothing): each is carried exactly or refused with one
    ``UnsupportedTypeError`` naming every refused column and the cast to write."""
    if source.kind in _INEXACT_NUMERIC:
        refuse_inexact_columns(con, query, source.kind)
    return snapshot_query(query, result_types(con, query, parameters))
