"""Errors a user can act on: their message says what is wrong and where, so a run shows the
message instead of a stack trace (``bq_assets.failures`` turns each into the step's failure)."""

from collections.abc import Mapping
from typing import Any


class BqAssetsError(RuntimeError):
    """Base of every error whose message alone tells the user what to fix.

    ``retryable`` says whether a new attempt of the step can succeed (a BigQuery backend error,
    an unreachable service, a job that outlived its deadline); by default it cannot (bad data,
    bad config, a denied permission), and the step fails at once. ``metadata`` is shown with
    the failure.
    """

    #: Whether an error of this class can go away on a new attempt, unless the raiser says.
    retryable_by_default = False

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = self.retryable_by_default if retryable is None else retryable
        self.metadata = dict(metadata or {})


class ServiceUnreachableError(BqAssetsError):
    """A service (GCS, BigQuery, Databricks, a source server) did not answer; the message names
    it and its endpoint. A new attempt may find it back."""

    retryable_by_default = True
