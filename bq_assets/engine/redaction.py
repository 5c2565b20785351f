"""Classified values never appear in what this project writes itself: check samples, failure
messages, alerts, logs and metadata show a classified value as ``<redacted pii_email>``.

A column is classified in its export's spec (``columns:``); where a step would show values of
such a column (e.g. the most duplicated keys), it shows this mark instead, so the sample still
says how often each value occurs without saying what it is. Text that is not ours to shape (an
error message of a Google API, which may quote a row) is scrubbed of email addresses before a
failure message carries it (``without_email_addresses``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: An email address as it could appear inside a longer text.
EMAIL_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def redaction_mark(classification: str) -> str:
    """What a value of ``classification`` shows as."""
    return f"<redacted {classification}>"


def redacted_row(values: Sequence[str], classifications: Sequence[str | None]) -> list[str]:
    """``values`` with each value of a classified column replaced by its mark (columns beyond
    ``classifications``, e.g. a count after the key, are shown as they are)."""
    return [
        redaction_mark(classifications[i]) if i < len(classifications) and classifications[i]
        else value
        for i, value in enumerate(values)
    ]  # fmt: skip


def without_email_addresses(text: str) -> str:
    """``text`` with every email address replaced by ``<redacted email address>``."""
    return EMAIL_ADDRESS.sub("<redacted email address>", text)
