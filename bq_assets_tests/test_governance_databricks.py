"""Governed columns in Databricks on the Spark stand-in (issue 25, points 3 and 4): the view's
production text (column comments, the dynamic view's masking with is_account_group_member)
runs on Apache Spark; the Unity Catalog tags go through the stand-in's record of Unity Catalog
(a named fake of ``ALTER VIEW … ALTER COLUMN … SET TAGS`` and ``information_schema.column_tags``
in their documented form, cited in ``bq_assets.engine.databricks_governance``); the read-back
check fails naming each column that differs."""

from pathlib import Path

import pytest

from bq_assets.engine.databricks_sql import table_name
from bq_assets.exports import load_specs
from bq_assets.local import spark
from bq_assets_tests.conftest import run_exports
from bq_assets_tests.test_governance_bigquery import run_check

pytestmark = pytest.mark.stack

SQL = "SELECT amperity_id, email, phone FROM customer_360"
SPEC = """description: Contacts of customers.
primary_key: [amperity_id]
cadence: daily
bigquery: {dataset: governed}
databricks: {schema: governed, masking: {pii_email: pii_readers}}
columns:
  amperity_id: {description: "Amperity ID."}
  email: {description: "The customer's email.", classification: pii_email}
  phone: {description: "Phone number.", classification: pii_phone}
"""


def test_the_view_masks_a_classification_outside_its_group_and_carries_comments_and_tags(
    local_stack, resources, instance, stack_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "contacts.sql").write_text(SQL)
    (tmp_path / "contacts.yaml").write_text(SPEC)
    (spec,) = load_specs(tmp_path)
    groups = spark.account_groups_file(stack_dir)
    groups.unlink(missing_ok=True)
    result = run_exports([spec], resources, instance)
    assert result.success
    governed = [
        c for c in result.get_asset_check_evaluations()
        if c.check_name == "column_governance_matches_spec"
    ]  # fmt: skip
    assert {c.asset_key.path[0] for c in governed if c.passed} == {"bigquery", "databricks"}
    databricks = resources["databricks"]
    name = table_name(spec)

    # Outside pii_readers: no email, phones as they are (phone is classified, not masked).
    shown = databricks.read_table(name).to_pylist()
    assert shown and all(row["email"] is None for row in shown)
    assert any(row["phone"] for row in shown)
    # A member of pii_readers reads the emails through the same view. (A statement of other
    # text: Spark Connect keeps the analyzed plan of a statement it has seen, membership folded.)
    groups.write_text("marketing\npii_readers\n")
    try:
        emails = databricks.execute(f"SELECT email FROM {name.quoted} WHERE email IS NOT NULL")
    finally:
        groups.unlink()
    assert len(emails) > len(shown) / 2 and all("@" in email for (email,) in emails)

    # Comments as Spark stores them for the view, tags as Unity Catalog lists them.
    ((described,),) = databricks.execute(f"DESCRIBE TABLE EXTENDED {name.quoted} AS JSON")
    assert '"comment":"The customer\'s email."' in described
    tags = databricks.execute(
        "SELECT column_name, tag_value FROM `main`.information_schema.column_tags "
        "WHERE schema_name = 'governed' AND table_name = 'contacts' AND tag_name = 'classification'"
    )
    assert sorted(map(tuple, tags)) == [("email", "pii_email"), ("phone", "pii_phone")]

    # A tag removed and the view replaced without its masking: the check names each column.
    databricks.execute(
        f"ALTER VIEW {name.quoted} ALTER COLUMN `phone` UNSET TAGS ('classification')"
    )
    databricks.execute(
        f"CREATE OR REPLACE VIEW {name.quoted} COMMENT 'Contacts of customers.' AS "
        "SELECT * FROM `bigquery`.`governed`.`contacts`"
    )
    failed = run_check(spec, resources, instance, "column_governance_matches_spec", "databricks")
    assert not failed.passed
    assert failed.description.startswith(f"{name}: 5 column propert(ies) differ from contacts.yaml")
    for fragment in (
        "amperity_id: comment is None, the spec says 'Amperity ID.'",
        "email: not masked for everyone outside pii_readers",
        "phone: tag classification is None, the spec says 'pii_phone'",
    ):
        assert fragment in failed.description
    assert failed.metadata["columns_differing"].value == 3
