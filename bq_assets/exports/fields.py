"""What every part of an export spec shares: the patterns names must match, the strict base
model (unknown keys are errors), and ``ExportSpecError``."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

EXPORT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
# BigQuery allows more in table names when quoted; the safe subset keeps every generated statement
# free of quoting questions and of anything that could smuggle SQL through a name.
BIGQUERY_NAME = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
DATABRICKS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
LOCATION = re.compile(r"^[A-Za-z0-9-]{2,40}$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
#: Account group names reach SQL as string literals: letters, digits, space, `_ . @ -` only.
ACCOUNT_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,254}$")
OWNER = re.compile(r"^(team:[A-Za-z0-9_-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$")
SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
OPTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: Options the pipeline sets itself (compared case-insensitively, like Databricks option keys).
GENERATED_OPTIONS = {"googleserviceaccountkeyjson", "dataprojectid"}
#: Option names and values that can only mean a credential: those go through a Databricks secret.
SECRET_NAME_HINTS = ("key", "secret", "password", "token", "credential", "private")
SECRET_VALUE_HINTS = ("private key", "private_key", '"type": "service_account"', "dapi")
CADENCE_CRON = {"daily": "0 6 * * *", "weekly": "0 6 * * 1"}


class ExportSpecError(ValueError):
    """An export spec is invalid; the message names the file, the field and what is allowed."""


def matching(pattern: re.Pattern[str], what: str, value: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid {what} (allowed: {pattern.pattern})")
    return value


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
