"""Resources: the only seam between the assets and the outside world."""

from bq_assets.resources.databricks import DatabricksSQLResource, StatementError
from bq_assets.resources.google import (
    CredentialsError,
    ExportBigQueryResource,
    ExportGCSResource,
)
from bq_assets.resources.source import DuckDBSourceResource, SourceQueryError

__all__ = [
    "CredentialsError",
    "DatabricksSQLResource",
    "DuckDBSourceResource",
    "ExportBigQueryResource",
    "ExportGCSResource",
    "SourceQueryError",
    "StatementError",
]
