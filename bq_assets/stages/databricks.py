"""Stage 4: make the BigQuery table queryable from Databricks.

Two modes, generated from the export spec and run as Databricks SQL on a SQL warehouse:

* ``federation`` (default): Lakehouse Federation. A connection of ``TYPE bigquery`` whose key
  comes from a Databricks secret, a foreign catalog over it, and a view
  ``<catalog>.<schema>.<table>`` over the foreign table.
* ``external``: the legacy Spark BigQuery connector,
  ``CREATE TABLE IF NOT EXISTS … USING bigquery OPTIONS (table, project, parentProject)``.

Every statement is idempotent (``IF NOT EXISTS`` / ``OR REPLACE``); no credential appears in them.
Locally the Databricks resource's DuckDB stand-in copies the table through the BigQuery
Storage Read API instead (see ``bq_assets.resources.databricks``).
"""

import dagster as dg

from bq_assets.exports.spec import ExportSpec
from bq_assets.resources.databricks import BigQueryTable, DatabricksSQLResource, TableName
from bq_assets.stages import (
    NETWORK_RETRY,
    bigquery_key,
    databricks_key,
    reported_as_failure,
    upstream_materialization,
)


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def table_name(spec: ExportSpec) -> TableName:
    target = spec.databricks
    return TableName(target.catalog, target.schema_, spec.databricks_table)


def publish_statements(
    spec: ExportSpec, source: BigQueryTable, secret_scope: str, secret_name: str
) -> list[str]:
    """The Databricks SQL that exposes ``source`` as the spec's table, in execution order."""
    target = spec.databricks
    name = table_name(spec)
    schema = f"`{name.catalog}`.`{name.schema}`"
    if target.mode == "federation":
        return [
            f"CREATE CONNECTION IF NOT EXISTS `{target.connection}` TYPE bigquery "
            f"OPTIONS (GoogleServiceAccountKeyJson secret({_literal(secret_scope)}, {_literal(secret_name)}))",
            f"CREATE FOREIGN CATALOG IF NOT EXISTS `{target.foreign_catalog}` "
            f"USING CONNECTION `{target.connection}` OPTIONS (data_project_id {_literal(source.project)})",
            f"CREATE SCHEMA IF NOT EXISTS {schema}",
            f"CREATE OR REPLACE VIEW {name.quoted} AS SELECT * FROM "
            f"`{target.foreign_catalog}`.`{source.dataset}`.`{source.table}`",
        ]
    return [
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        f"CREATE TABLE IF NOT EXISTS {name.quoted} USING bigquery OPTIONS ("
        f"table = {_literal(f'{source.dataset}.{source.table}')}, "
        f"project = {_literal(source.project)}, parentProject = {_literal(source.project)})",
    ]


def build_databricks_asset(spec: ExportSpec) -> dg.AssetsDefinition:
    name = table_name(spec)

    @dg.asset(
        key=databricks_key(spec.name),
        deps=[bigquery_key(spec.name)],
        group_name=spec.name,
        kinds={"databricks"},
        owners=spec.owners,
        pool="databricks",
        description=f"{name} in Databricks ({spec.databricks.mode} over the BigQuery table).",
        retry_policy=NETWORK_RETRY,
    )
    def _databricks(
        context: dg.AssetExecutionContext,
        databricks: DatabricksSQLResource,
    ) -> dg.MaterializeResult:
        with reported_as_failure(Databricks=databricks):
            upstream = upstream_materialization(context, bigquery_key(spec.name))
            table_id = str(upstream["dagster/table_name"])
            source = BigQueryTable(*table_id.split("."))
            statements = publish_statements(
                spec,
                source,
                databricks.bigquery_key_secret_scope,
                databricks.bigquery_key_secret_name,
            )
            databricks.publish(statements, source, name)
            rows = databricks.row_count(name)
            context.log.info(f"{name}: {rows} rows visible in Databricks")
            return dg.MaterializeResult(
                metadata={
                    "dagster/table_name": str(name),
                    "dagster/row_count": rows,
                    "mode": spec.databricks.mode,
                    "engine": "local DuckDB stand-in" if databricks.is_local else "SQL warehouse",
                    "source_table": table_id,
                    "input_run_id": upstream.run_id,
                    "statements": dg.MetadataValue.md(
                        "```sql\n" + ";\n".join(statements) + ";\n```"
                    ),
                }
            )

    return _databricks
