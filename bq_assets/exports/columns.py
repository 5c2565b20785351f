"""The ``columns:`` block of an export spec: what each result column means (``description``)
and how sensitive it is (``classification``), declared once and carried into BigQuery (column
descriptions, Data Catalog policy tags) and Databricks (column comments, Unity Catalog tags,
masking).

A classification is a name: one of the built-in personal-data classes below, or a class the
deployment declares (``BQ_ASSETS_POLICY_TAGS`` names every class it maps to a policy tag; see
docs/configuration.md). Which classes a deployment knows is configuration, so the complete
check runs when the code location loads (``check_classifications``); the spec itself checks
the column names and the form of each class.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from pydantic import Field, field_validator, model_validator

from bq_assets.exports.fields import ExportSpecError, StrictModel, matching

if TYPE_CHECKING:
    from bq_assets.exports.spec import ExportSpec

#: The built-in classes of personal data (each a customer attribute Amperity exports carry).
BUILT_IN_CLASSIFICATIONS: dict[str, str] = {
    "pii_name": "a person's given name or surname",
    "pii_email": "an email address",
    "pii_phone": "a phone number",
    "pii_address": "a postal address (street, city or postal code)",
    "pii_birthdate": "a date of birth",
    "pii_identifier": "a government or account identifier of a person",
}
CLASSIFICATION = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
#: BigQuery's limit for a column description (https://cloud.google.com/bigquery/docs/schemas).
DESCRIPTION_MAX = 1024


class ColumnSpec(StrictModel):
    """One column's meaning and classification."""

    description: str = Field(
        "", max_length=DESCRIPTION_MAX, description="what the column means, for its readers"
    )
    classification: str | None = Field(
        None, description="a built-in class (pii_email, …) or one the deployment declares"
    )

    @staticmethod
    def plain_description(value: str) -> str:
        if any(ord(ch) < 32 and ch not in "\n\t" for ch in value):
            raise ValueError("must not contain control characters")
        return value.strip()

    @staticmethod
    def class_name(value: str | None) -> str | None:
        return None if value is None else matching(CLASSIFICATION, "classification", value)

    _description = field_validator("description")(plain_description)
    _classification = field_validator("classification")(class_name)

    @model_validator(mode="after")
    def _says_something(self) -> ColumnSpec:
        if not self.description and self.classification is None:
            raise ValueError("give a description, a classification or both")
        return self


def unknown_columns(declared: Iterable[str], columns: list[str], what: str) -> str | None:
    """The message for ``declared`` columns that are not among ``columns`` (None if none)."""
    missing = [name for name in declared if name not in columns]
    if not missing:
        return None
    return f"columns: {', '.join(missing)} not among the {what}'s columns ({', '.join(columns)})"


def known_classifications(policy_tags: Mapping[str, str | None]) -> list[str]:
    """The classes a deployment knows: the built-in ones and every class it maps to a policy
    tag (or deliberately to none)."""
    return sorted(set(BUILT_IN_CLASSIFICATIONS) | set(policy_tags))


def check_classifications(
    specs: list[ExportSpec], policy_tags: Mapping[str, str | None], require_policy_tags: bool
) -> list[ExportSpec]:
    """The specs, if every column's classification is known (and, where the deployment requires
    it, mapped to a policy tag or deliberately to none); otherwise one ``ExportSpecError`` naming
    each file and column at fault and what is allowed."""
    known = known_classifications(policy_tags)
    errors = []
    for spec in specs:
        for column, declared in spec.column_specs.items():
            where = f"{spec.spec_file}: {spec.columns_key}.{column}.classification"
            if declared.classification is None:
                continue
            if declared.classification not in known:
                errors.append(
                    f"{where}: {declared.classification!r} is not a known classification "
                    f"(known: {', '.join(known)}; a deployment declares its own in "
                    "BQ_ASSETS_POLICY_TAGS)"
                )
            elif require_policy_tags and declared.classification not in policy_tags:
                errors.append(
                    f"{where}: {declared.classification!r} has no policy tag in "
                    "BQ_ASSETS_POLICY_TAGS; map it to the policy tag that protects it in BigQuery "
                    "(or to null, to leave such columns untagged deliberately)"
                )
    if errors:
        raise ExportSpecError("\n".join(errors))
    return specs
