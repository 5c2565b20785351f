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
  ``file`` for a local path, the path split on ``/`` and cut before its first glob segment:
  ``gs://lake/orders/*.parquet`` is ``source/<source>/gs/lake/orders``, the folder the files
  are in (the asset's ``dagster/uri``: ``gs://lake/orders/``). Dagster turns a dependency's key
  into a Python name, so a part keeps only letters, digits, ``_``, ``.`` and ``-``; any other
  character becomes ``_`` (``my file.csv`` → ``my_file.csv``);
- the bucket prefix a delivered export's files arrive in: ``source/delivery/<prefix parts>``
  (``delivery`` is a reserved source name).

Pure: no Dagster, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bq_assets.exports.lineage import SourceTable
from bq_assets.sources.declarations import DEFAULT_SOURCE

ROOT = "source"
#: The key part of delivered files; no declared source may be called this.
DELIVERY = "delivery"
_GLOB = re.compile(r"[*?[{]")
#: What a key part may hold: Dagster makes a Python name of each dependency's key.
_NOT_IN_KEY = re.compile(r"[^A-Za-z0-9_.-]")
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


def _default_sources() -> dict[str, SourcePlace]:
    return {DEFAULT_SOURCE: SourcePlace(DEFAULT_SOURCE, "duckdb")}


@dataclass(frozen=True)
class Places:
    """Where an environment's exports read and land, as far as names go (nothing secret):
    each source's kind and database, the GCP project and the export bucket. A project or
    bucket of None is not known when the code location loads; the names that need it are
    then left out of the definition (each materialization still records them)."""

    sources: Mapping[str, SourcePlace] = field(default_factory=_default_sources)
    project: str | None = None
    bucket: str | None = None

    def source(self, name: str) -> SourcePlace:
        if name not in self.sources:
            raise KeyError(
                f"source {name!r} is not among the sources these places know "
                f"({', '.join(self.sources)}): build the translator with the environment's places"
            )
        return self.sources[name]


def table_key_path(place: SourcePlace, table: SourceTable) -> list[str]:
    """The asset key path of a table or a file path that a query on ``place`` reads."""
    if table.is_path:
        return [ROOT, place.name, *path_parts(table.name)]
    return [ROOT, place.name, _key_part(place.schema_of(table)), _key_part(table.name)]


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
    """``gs://lake/orders/*.parquet`` → ``gs, lake, orders``; a local path starts with
    ``file``. Cut before the first segment holding a glob (``*``, ``?``, ``[``, ``{``)."""
    url = urlsplit(path)
    remote = bool(url.scheme and url.netloc)
    head = [url.scheme, url.netloc] if remote else ["file"]
    return [_key_part(p) for p in head + _parts(_folder_of(url.path if remote else path))]


def path_uri(path: str) -> str:
    """What the asset of ``path`` stands for: the path, or the folder before its first glob
    segment (``gs://lake/orders/*.parquet`` → ``gs://lake/orders/``)."""
    url = urlsplit(path)
    if url.scheme and url.netloc:
        return f"{url.scheme}://{url.netloc}{_folder_of(url.path)}"
    return _folder_of(path)


def _folder_of(path: str) -> str:
    segments = path.split("/")
    globbed = next((i for i, p in enumerate(segments) if _GLOB.search(p)), None)
    return path if globbed is None else "/".join(segments[:globbed]) + "/"


def delivery_key_path(prefix: str) -> list[str]:
    """The asset key path of the bucket prefix a delivered export's files arrive in."""
    return [ROOT, DELIVERY, *(_key_part(p) for p in _parts(prefix))]


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def _key_part(text: str) -> str:
    return _NOT_IN_KEY.sub("_", text)
