"""Errors a user can act on: their message says what is wrong and where, so a run shows the
message instead of a stack trace (see ``bq_assets.stages.reported_as_failure``)."""


class BqAssetsError(RuntimeError):
    """Base of every error whose message alone tells the user what to fix."""
