"""``gs://`` paths of a ``files`` source, read with the GCS resource's own credentials.

``gs://`` paths are read through an fsspec filesystem (``gcsfs``) registered on the connection
(``con.register_filesystem``, see DuckDB's "Using fsspec filesystems" guide), built from the
GCS resource's own endpoint, project and credentials (``GcsAccess``): a service account or ADC
in production, the fake-gcs-server of the local stack with anonymous credentials locally.
DuckDB's httpfs reaches GCS only through the S3-interoperability HMAC API, which needs keys of
its own and which fake-gcs-server does not serve. Every literal path is checked to exist before
the query runs. Delta tables are read by the delta extension's own object store, which does not
see that filesystem and wants a GCS HMAC secret ("Can not scan a gcs:// gs:// or r2:// url
without a secret providing its endpoint"): ``delta_scan('gs://…')`` is refused naming the
reason. Iceberg tables are read through DuckDB's file system and work on both. No Dagster.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import sqlglot
from sqlglot import exp

from bq_assets.sources.declarations import Source, SourceError, blank_secret

GCS_SCHEMES = ("gs://", "gcs://")


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
