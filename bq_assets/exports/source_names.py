"""The public names of what an export reads: the asset key path, the table name and the URI of
each source table, file path and delivery prefix, as the lineage shows them upstream of the
export's first asset.

Asset keys are public (users' history and catalogs depend on them), so they are chosen to be
stable and shared: one table read by several exports is one asset.

- a table of a declared source: ``source/<source>/<schema>/<table>``. An unqualified name gets
  the schema the source resolves it in: ``main`` for a DuckDB or SQLite file, ``public`` for
  PostgreSQL, the database for MySQL (where a schema is a database); a catalog the query
  names (``src.public.t``) is the one attached database and is left out;
- a file path a query reads (``read_parquet('gs://lake/orders/*.parquet')``):
  ``source/<source>/<scheme>/<path parts>``, the scheme ``gs`` (or another URL scheme) or
  ``file`` for a local path; ``gs://lake/orders/*.parquet`` is
  ``source/<source>/gs/lake/orders/*.parquet`` (a ``/`` in a key part would break the UI's
  links, so the path is split on it);
- the bucket prefix a delivered export's files arrive in: ``source/delivery/<prefix parts>``
  (``delivery`` is a reserved source name).

Pure: no Dagster, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from bq_assets.exports.lineage import SourceTable

ROOT = "source"
#: The key part of delivered files; no declared source may be called this.
DELIVERY = "delivery"
#: The schema an unqualified table name resolves in, per source kind (MySQL: the database).
DEFAULT_SCHEMA = {"duckdb": "main", "sqlite": "main", "postgres": "public"}


@dataclass(frozen=True)
class SourcePlace:
    """What naming a source's tables needs: the source's name, kind and database (if any)."""

    name: str
    kind: str
    database: str | None = None

    def schema_of(self, table: SourceTable) -> str:
        """The schema ``table`` is in: as written, or the one the source resolves it in."""
        if table.schema:
            return table.schema
        if self.kind == "mysql":
            return self.database or ""
        return DEFAULT_SCHEMA.get(self.kind, "main")


def table_key_path(place: SourcePlace, table: SourceTable) -> list[str]:
    """The asset key path of a table or a file path that a query on ``place`` reads."""
    if table.is_path:
        return [ROOT, place.name, *path_parts(table.name)]
    return [ROOT, place.name, place.schema_of(table), table.name]


def table_name(place: SourcePlace, table: SourceTable) -> str | None:
    """The table's qualified name as its database knows it (``dagster/table_name``): with the
    database for PostgreSQL (``crm.public.customers``), ``<database>.<table>`` for MySQL,
    ``<schema>.<table>`` for a DuckDB or SQLite file (whose catalog is the file's name).
    None for a file path (it has a URI instead)."""
    if table.is_path:
        return None
    schema = place.schema_of(table)
    if place.kind == "postgres" and place.database:
        return f"{place.database}.{schema}.{table.name}"
    return f"{schema}.{table.name}"


def path_parts(path: str) -> list[str]:
    """``gs://lake/orders/*.parquet`` → ``gs, lake, orders, *.parquet``; a local path gets
    ``file``."""
    url = urlsplit(path)
    if url.scheme and url.netloc:
        return [url.scheme, url.netloc, *_parts(url.path)]
    return ["file", *_parts(path)]


def delivery_key_path(prefix: str) -> list[str]:
    """The asset key path of the bucket prefix a delivered export's files arrive in."""
    return [ROOT, DELIVERY, *_parts(prefix)]


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]
