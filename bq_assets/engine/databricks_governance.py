"""What the Databricks view says about its columns: their comments (the spec's descriptions),
the view's comment (the spec's description), a Unity Catalog tag on each classified column,
and masking of a classification for everyone outside a named account group; and how to read
all of it back. No Dagster.

- The view names every column, with its comment, in the spec's column order ("CREATE VIEW",
  ``column_list`` with ``COMMENT``:
  https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-syntax-ddl-create-view), so its
  column list is derivable from the spec alone (``view_columns``; column lineage reads it).
- A masked column is Databricks' dynamic view: ``CASE WHEN is_account_group_member('<group>')
  THEN <column> ELSE NULL END AS <column>`` ("Create a dynamic view", column-level
  permissions: https://docs.databricks.com/aws/en/views/dynamic). The documented example returns
  ``'REDACTED'``; NULL keeps every column type as it is.
- Tags: ``ALTER VIEW … ALTER COLUMN … SET TAGS ('classification' = '<class>')`` ("ALTER VIEW …
  COLUMN clause": https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-syntax-ddl-alter-view-manage-column;
  running it again changes nothing), read back from ``<catalog>.information_schema.column_tags``
  (https://docs.databricks.com/aws/en/sql/language-manual/information-schema/column_tags).
- Comments and the view's text are read back from ``DESCRIBE TABLE EXTENDED … AS JSON``
  (``columns[].comment``, ``comment``, ``view_text``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from bq_assets.exports.spec import ExportSpec
from bq_assets.exports.sql import query_columns

#: The Unity Catalog tag a classified column carries (its value: the classification).
CLASSIFICATION_TAG = "classification"


def literal(value: str) -> str:
    """A Databricks SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def view_columns(spec: ExportSpec) -> list[str]:
    """The view's columns, in order: the query's (or the delivery's) result columns."""
    return spec.delivery.column_names if spec.delivery else query_columns(spec.sql)


def masking_group(spec: ExportSpec, column: str) -> str | None:
    """The account group that may read ``column`` in clear (None: not masked)."""
    classification = spec.classification_of(column)
    return spec.databricks.masking.get(classification) if classification else None


def masked_expression(column: str, group: str) -> str:
    """The dynamic view's expression for a masked column (see the module)."""
    return f"CASE WHEN is_account_group_member({literal(group)}) THEN `{column}` ELSE NULL END"


def select_list(spec: ExportSpec) -> str:
    """The view's select list: each column as it is, or masked."""
    items = []
    for column in view_columns(spec):
        group = masking_group(spec, column)
        items.append(
            f"{masked_expression(column, group)} AS `{column}`" if group else f"`{column}`"
        )
    return ", ".join(items)


def column_list(spec: ExportSpec) -> str:
    """`` (`a` COMMENT '…', `b`, …)``: every column of the view, with the spec's description
    as its comment."""
    declared = spec.column_specs
    items = []
    for column in view_columns(spec):
        found = declared.get(column)
        comment = f" COMMENT {literal(found.description)}" if found and found.description else ""
        items.append(f"`{column}`{comment}")
    return " (" + ", ".join(items) + ")"


def tag_statements(spec: ExportSpec, view: str) -> list[str]:
    """One ``SET TAGS`` per classified column of the view (``view``: its quoted name)."""
    return [
        f"ALTER VIEW {view} ALTER COLUMN `{column}` SET TAGS "
        f"({literal(CLASSIFICATION_TAG)} = {literal(classification)})"
        for column in view_columns(spec)
        if (classification := spec.classification_of(column))
    ]


def tags_query(catalog: str, schema: str, view: str) -> str:
    """The classification tags of the view's columns, as Unity Catalog's information schema
    lists them (names are stored in lower case)."""
    return (
        f"SELECT column_name, tag_value FROM `{catalog}`.information_schema.column_tags "
        f"WHERE schema_name = {literal(schema.lower())} AND table_name = {literal(view.lower())} "
        f"AND tag_name = {literal(CLASSIFICATION_TAG)}"
    )


def governance_differences(
    spec: ExportSpec, described_json: str, tags: Iterable[tuple[str, str]]
) -> list[str]:
    """One line per column whose comment, classification tag or masking differs from the spec
    (the view's own comment is ``view_matches_spec``'s business). ``described_json``: ``DESCRIBE TABLE EXTENDED … AS JSON``; ``tags``:
    (column, classification) pairs from ``tags_query``."""
    described = json.loads(described_json)
    comments = {
        str(c.get("name")).lower(): c.get("comment") or "" for c in described.get("columns") or []
    }
    have_tags = {column.lower(): value for column, value in tags}
    view_text = " ".join(str(described.get("view_text") or "").split())
    lines = []
    for column in view_columns(spec):
        declared = spec.column_specs.get(column)
        want = declared.description if declared else ""
        if want and comments.get(column.lower(), "") != want:
            lines.append(
                f"{column}: comment is {comments.get(column.lower()) or None!r}, the spec says "
                f"{want!r}"
            )
        classification = spec.classification_of(column)
        if classification and have_tags.get(column.lower()) != classification:
            lines.append(
                f"{column}: tag {CLASSIFICATION_TAG} is {have_tags.get(column.lower())!r}, the "
                f"spec says {classification!r}"
            )
        group = masking_group(spec, column)
        if group and " ".join(masked_expression(column, group).split()) not in view_text:
            lines.append(
                f"{column}: not masked for everyone outside {group} (the view's text lacks "
                f"{masked_expression(column, group)})"
            )
    return lines
