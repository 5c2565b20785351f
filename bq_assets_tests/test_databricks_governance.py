"""The Databricks view's governance, as generated from the spec (issue 25, point 3): column
comments, the view's comment, a dynamic view masking a classification outside a group, and
Unity Catalog tags; and the read-back that names each column that differs."""

from __future__ import annotations

import json
from pathlib import Path

import sqlglot
from sqlglot import exp

from bq_assets.engine.databricks_governance import (
    column_list,
    governance_differences,
    masked_expression,
    select_list,
    tag_statements,
    tags_query,
    view_columns,
)
from bq_assets.exports import load_specs

SQL = "SELECT amperity_id, email, phone FROM customer_360"
SPEC = """description: "Customers' contacts."
primary_key: [amperity_id]
cadence: daily
columns:
  amperity_id: {description: "Amperity ID."}
  email: {description: "The customer's email.", classification: pii_email}
  phone: {description: "Phone.", classification: pii_phone}
databricks: {masking: {pii_email: pii_readers}}
"""


def spec_of(tmp_path: Path, text: str = SPEC):
    (tmp_path / "contacts.sql").write_text(SQL)
    (tmp_path / "contacts.yaml").write_text(text)
    (spec,) = load_specs(tmp_path)
    return spec


def test_the_view_names_every_column_with_its_comment_and_masks_a_classified_one(
    tmp_path: Path,
) -> None:
    spec = spec_of(tmp_path)
    assert view_columns(spec) == ["amperity_id", "email", "phone"]
    assert column_list(spec) == (
        " (`amperity_id` COMMENT 'Amperity ID.', `email` COMMENT 'The customer\\'s email.', "
        "`phone` COMMENT 'Phone.')"
    )
    assert select_list(spec) == (
        "`amperity_id`, CASE WHEN is_account_group_member('pii_readers') THEN `email` ELSE NULL "
        "END AS `email`, `phone`"
    )
    # Databricks' dialect reads the select list as the documented dynamic view's CASE.
    parsed = sqlglot.parse_one(f"SELECT {select_list(spec)} FROM t", read="databricks")
    (case,) = parsed.find_all(exp.Case)
    assert case.find(exp.Anonymous).name.lower() == "is_account_group_member"


def test_each_classified_column_gets_its_tag_and_tags_are_read_from_the_information_schema(
    tmp_path: Path,
) -> None:
    spec = spec_of(tmp_path)
    assert tag_statements(spec, "`main`.`amperity`.`contacts`") == [
        "ALTER VIEW `main`.`amperity`.`contacts` ALTER COLUMN `email` SET TAGS "
        "('classification' = 'pii_email')",
        "ALTER VIEW `main`.`amperity`.`contacts` ALTER COLUMN `phone` SET TAGS "
        "('classification' = 'pii_phone')",
    ]
    assert tags_query("main", "Amperity", "Contacts") == (
        "SELECT column_name, tag_value FROM `main`.information_schema.column_tags WHERE "
        "schema_name = 'amperity' AND table_name = 'contacts' AND tag_name = 'classification'"
    )


def described(comments: dict[str, str | None], comment: str, view_text: str) -> str:
    """A ``DESCRIBE TABLE EXTENDED … AS JSON`` answer in its documented form (the fields the
    check reads: ``columns[].name``/``.comment``, ``comment``, ``view_text``; "DESCRIBE TABLE",
    JSON formatted output: https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-syntax-aux-describe-table)."""
    return json.dumps(
        {
            "table_name": "contacts",
            "type": "VIEW",
            "comment": comment,
            "view_text": view_text,
            "columns": [
                {"name": n, "type": {"name": "string"}, "comment": c} for n, c in comments.items()
            ],
        }
    )


def test_the_read_back_names_each_column_whose_comment_tag_or_masking_differs(
    tmp_path: Path,
) -> None:
    spec = spec_of(tmp_path)
    good_text = f"SELECT {select_list(spec)} FROM `bigquery`.`d`.`contacts`"
    comments = {"amperity_id": "Amperity ID.", "email": "The customer's email.", "phone": "Phone."}
    tags = [("email", "pii_email"), ("phone", "pii_phone")]
    assert (
        governance_differences(spec, described(comments, spec.description, good_text), tags) == []
    )

    unmasked = good_text.replace(masked_expression("email", "pii_readers") + " AS ", "")
    differences = governance_differences(
        spec,
        described({**comments, "phone": None}, "", unmasked),
        [("email", "pii_email")],
    )
    assert differences == [
        "email: not masked for everyone outside pii_readers (the view's text lacks CASE WHEN "
        "is_account_group_member('pii_readers') THEN `email` ELSE NULL END)",
        "phone: comment is None, the spec says 'Phone.'",
        "phone: tag classification is None, the spec says 'pii_phone'",
    ]
