"""Resources: the only seam between the assets and the outside world."""

from bq_assets.resources.databricks import DatabricksSQLResource, StatementError
from bq_assets.resources.google import (
    CredentialsError,
    StackAwareBigQueryResource,
    StackAwareGCSResource,
)
from bq_assets.resources.source import DuckDBSourceResource, SourceQueryError

__all__ = [
    "CredentialsError",
    "DatabricksSQLResource",
    "DuckDBSourceResource",
    "SourceQueryError",
    "StackAwareBigQueryResource",
    "StackAwareGCSResource",
    "StatementError",
]
