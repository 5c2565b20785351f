"""Sources: where an export's query runs, declared once and chosen per export (``source:``).

One room, no Dagster, no circle: ``declarations`` (what a source is, its errors) ←
``files`` (``gs://`` paths through the GCS resource's credentials) ← ``connection`` (DuckDB
made to query a source) ← ``type_rules`` (every result column exact or refused) ←
``snapshot`` (the query step's body: the result as a Parquet snapshot). The resource
``bq_assets.resources.source.DuckDBSourceResource`` holds only the configuration.
"""

from bq_assets.sources.connection import EngineSettings, connect, load_extension
from bq_assets.sources.declarations import (
    DEFAULT_SOURCE,
    SOURCE_KINDS,
    SOURCE_NAME,
    Source,
    SourceError,
    SourceUnreachableError,
)
from bq_assets.sources.files import GcsAccess
from bq_assets.sources.snapshot import SourceQueryError, write_snapshot

__all__ = [
    "DEFAULT_SOURCE",
    "SOURCE_KINDS",
    "SOURCE_NAME",
    "EngineSettings",
    "GcsAccess",
    "Source",
    "SourceError",
    "SourceQueryError",
    "SourceUnreachableError",
    "connect",
    "load_extension",
    "write_snapshot",
]
