"""Columns are declared once, in the spec: a description and a classification per column,
validated when the code location loads (issue 25, point 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bq_assets.exports import SHIPPED_EXPORTS_DIR, ExportSpecError, load_specs
from bq_assets.exports.columns import BUILT_IN_CLASSIFICATIONS, check_classifications
from bq_assets.exports.sql import query_columns
from bq_assets_tests.test_export_spec import MINIMAL, load_error, write_export

SQL = "SELECT id, email, phone, created_at FROM customers"
DELIVERED = """primary_key: [id]
cadence: daily
delivery:
  prefix: drops/
  files: "c_{send:%Y%m%d}_*.csv"
  compression: none
  complete_when: {quiet_minutes: 5}
  columns:
    - {name: id, type: STRING, description: "Customer id."}
    - {name: email, type: STRING, description: "Email address.", classification: pii_email}
"""


def test_columns_carry_a_description_and_a_classification(tmp_path: Path) -> None:
    write_export(
        tmp_path,
        "customers",
        MINIMAL
        + "columns:\n"
        + "  id: {description: Customer id.}\n"
        + "  email: {description: Email address., classification: pii_email}\n"
        + "  phone: {classification: pii_phone}\n",
        sql=SQL,
    )
    (spec,) = load_specs(tmp_path)
    assert spec.column_specs["id"].description == "Customer id."
    assert spec.classification_of("email") == "pii_email"
    assert spec.classification_of("phone") == "pii_phone"
    assert spec.classification_of("created_at") is None


@pytest.mark.parametrize(
    ("columns", "fragment"),
    [
        (
            "  mail: {description: typo}\n",
            "columns: mail not among the query's columns (id, email, phone, created_at)",
        ),
        ("  email: {classification: PII-Email}\n", "columns.email.classification: 'PII-Email'"),
        ("  email: {}\n", "columns.email: give a description, a classification or both"),
        ("  email: {description: x, colour: red}\n", "columns.email.colour: unknown key"),
        (f"  email: {{description: '{'x' * 1025}'}}\n", "columns.email.description"),
    ],
)
def test_a_broken_columns_block_names_file_column_and_what_is_allowed(
    tmp_path: Path, columns: str, fragment: str
) -> None:
    path = write_export(tmp_path, "customers", MINIMAL + "columns:\n" + columns, sql=SQL)
    message = load_error(tmp_path)
    assert str(path) in message and fragment in message


def test_an_unknown_classification_fails_the_load_naming_file_column_and_known_classes(
    tmp_path: Path,
) -> None:
    path = write_export(
        tmp_path, "customers", MINIMAL + "columns:\n  email: {classification: pii_emial}\n", sql=SQL
    )
    specs = load_specs(tmp_path)
    with pytest.raises(ExportSpecError) as error:
        check_classifications(specs, {"loyalty_tier": None}, require_policy_tags=False)
    message = str(error.value)
    assert f"{path}: columns.email.classification: 'pii_emial' is not a known classification" in (
        message
    )
    assert (
        "pii_email" in message and "loyalty_tier" in message and "BQ_ASSETS_POLICY_TAGS" in message
    )


def test_a_deployment_declares_its_own_classes_and_must_map_each_used_class_to_a_policy_tag(
    tmp_path: Path,
) -> None:
    path = write_export(
        tmp_path,
        "customers",
        MINIMAL + "columns:\n  email: {classification: pii_email}\n"
        "  phone: {classification: loyalty_contact}\n",
        sql=SQL,
    )
    specs = load_specs(tmp_path)
    tags = {"loyalty_contact": "projects/p/locations/us/taxonomies/1/policyTags/2"}
    assert check_classifications(specs, tags, require_policy_tags=False) == specs
    with pytest.raises(ExportSpecError) as error:
        check_classifications(specs, tags, require_policy_tags=True)
    assert str(error.value) == (
        f"{path}: columns.email.classification: 'pii_email' has no policy tag in "
        "BQ_ASSETS_POLICY_TAGS; map it to the policy tag that protects it in BigQuery (or to "
        "null, to leave such columns untagged deliberately)"
    )
    untagged = {**tags, "pii_email": None}
    assert check_classifications(specs, untagged, require_policy_tags=True) == specs


def test_delivered_exports_describe_and_classify_in_delivery_columns(tmp_path: Path) -> None:
    write_export(tmp_path, "drops", DELIVERED, sql=None)
    (spec,) = load_specs(tmp_path)
    assert spec.column_specs["id"].description == "Customer id."
    assert spec.classification_of("email") == "pii_email"
    assert spec.columns_key == "delivery.columns"


def test_a_delivered_export_has_no_columns_block(tmp_path: Path) -> None:
    write_export(tmp_path, "drops", DELIVERED + "columns:\n  id: {description: x}\n", sql=None)
    assert "a delivered export describes and classifies its columns in delivery.columns" in (
        load_error(tmp_path)
    )


def test_masking_names_a_classification_the_export_uses(tmp_path: Path) -> None:
    write_export(
        tmp_path,
        "customers",
        MINIMAL + "columns:\n  email: {classification: pii_email}\n"
        "databricks: {masking: {pii_phone: pii_readers}}\n",
        sql=SQL,
    )
    expected = "databricks.masking: pii_phone classifies no column of this export (classified: "
    assert expected + "pii_email)" in load_error(tmp_path)


def test_masking_groups_are_names_not_sql(tmp_path: Path) -> None:
    write_export(
        tmp_path,
        "customers",
        MINIMAL + "columns:\n  email: {classification: pii_email}\n"
        'databricks: {masking: {pii_email: "x\') OR true --"}}\n',
        sql=SQL,
    )
    assert "databricks.masking" in load_error(tmp_path)


def test_the_shipped_exports_describe_every_column_and_classify_the_personal_ones() -> None:
    personal = {
        "given_name": "pii_name",
        "surname": "pii_name",
        "email": "pii_email",
        "phone": "pii_phone",
        "address": "pii_address",
        "city": "pii_address",
        "postal_code": "pii_address",
        "birthdate": "pii_birthdate",
    }
    for spec in load_specs(SHIPPED_EXPORTS_DIR):
        columns = spec.delivery.column_names if spec.delivery else query_columns(spec.sql)
        for column in columns:
            assert spec.column_specs[column].description, f"{spec.name}.{column}"
            assert spec.classification_of(column) == personal.get(column), f"{spec.name}.{column}"
    assert set(personal.values()) <= set(BUILT_IN_CLASSIFICATIONS)
