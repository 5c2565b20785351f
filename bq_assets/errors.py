"""Errors a user can act on: their message says what is wrong and where, so a run shows the
message instead of a stack trace (see ``bq_assets.stages.reported_as_failure``)."""

from collections.abc import Mapping
from typing import Any


class BqAssetsError(RuntimeError):
    """Base of every error whose message alone tells the user what to fix.

    ``retryable`` says whether a new attempt of the step can succeed (a BigQuery backend error,
    a job that outlived its deadline); by default it cannot (bad data, bad config, a denied
    permission), and the step fails at once. ``metadata`` is shown with the failure.
    """

    def __init__(
        self, message: str, *, retryable: bool = False, metadata: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.metadata = dict(metadata or {})
