"""What each BigQuery column means and who may read it: the spec's column descriptions and,
per classification, the Data Catalog policy tag the deployment maps it to, in the table's
schema (``TableFieldSchema.description`` and ``.policyTags.names``:
https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#TableFieldSchema).

They ride on every schema the load writes (the load job's, the staging table's and the
export table created on the first publish), so a copy with ``WRITE_TRUNCATE``, which gives the
table its source's schema, carries them; and after every publish the table is read back and
set again where anything differs (``apply_column_governance``; BigQuery documents that a
``WRITE_TRUNCATE`` "might not preserve" column descriptions or policy tags, and the emulator's
copy keeps the target's old schema). Applying policy tags needs
``datacatalog.taxonomies.get`` on the taxonomy and the copy needs Fine-Grained Reader on the
tags (https://cloud.google.com/bigquery/docs/column-level-security-writes): see
docs/deploying.md. No Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.cloud import bigquery

from bq_assets.engine.bigquery_jobs import TRANSIENT
from bq_assets.exports.spec import ExportSpec

PolicyTags = Mapping[str, str | None]


def policy_tags_of(client: object) -> PolicyTags:
    """The classification → policy tag map the step's client carries (``MeteredClient``);
    empty for a plain client."""
    return getattr(client, "policy_tags", None) or {}


def declared_policy_tag(spec: ExportSpec, column: str, policy_tags: PolicyTags) -> str | None:
    """The policy tag the column must carry: its classification's, if the deployment maps it."""
    classification = spec.classification_of(column)
    return policy_tags.get(classification) if classification else None


def governed_field(
    field: bigquery.SchemaField, spec: ExportSpec, policy_tags: PolicyTags
) -> bigquery.SchemaField:
    """``field`` with the description and policy tag its spec declares (others unchanged)."""
    resource = field.to_api_repr()
    declared = spec.column_specs.get(field.name)
    if declared is not None and declared.description:
        resource["description"] = declared.description
    tag = declared_policy_tag(spec, field.name, policy_tags)
    if tag is not None:
        resource["policyTags"] = {"names": [tag]}
    return bigquery.SchemaField.from_api_repr(resource)


def governed_schema(
    fields: list[bigquery.SchemaField], spec: ExportSpec, policy_tags: PolicyTags
) -> list[bigquery.SchemaField]:
    """The schema with every column's declared description and policy tag."""
    return [governed_field(f, spec, policy_tags) for f in fields]


def _tags(field: bigquery.SchemaField) -> list[str]:
    return list(field.policy_tags.names) if field.policy_tags else []


def column_differences(
    fields: list[bigquery.SchemaField], spec: ExportSpec, policy_tags: PolicyTags
) -> list[str]:
    """One line per column whose description or policy tag, as the table has it, differs from
    the spec's (a column the spec does not describe may have any description)."""
    lines = []
    for field in fields:
        declared = spec.column_specs.get(field.name)
        if (
            declared is not None
            and declared.description
            and ((field.description or "") != declared.description)
        ):
            lines.append(
                f"{field.name}: description is {field.description!r}, the spec says "
                f"{declared.description!r}"
            )
        tag = declared_policy_tag(spec, field.name, policy_tags)
        wanted = [tag] if tag else []
        if tag is not None and _tags(field) != wanted:
            lines.append(
                f"{field.name}: policy tags are {_tags(field) or 'none'}, "
                f"{spec.classification_of(field.name)} needs {tag}"
            )
    return lines


def apply_column_governance(
    client: bigquery.Client, table: bigquery.Table, spec: ExportSpec
) -> bigquery.Table:
    """The table, its columns' descriptions and policy tags set to the spec's where they differ
    (one ``tables.patch`` of the schema; nothing when they already match). Idempotent."""
    policy_tags = policy_tags_of(client)
    if not column_differences(list(table.schema), spec, policy_tags):
        return table
    table.schema = governed_schema(list(table.schema), spec, policy_tags)
    return client.update_table(table, ["schema"], retry=TRANSIENT)
