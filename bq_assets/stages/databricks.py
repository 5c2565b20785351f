"""Stage 4: make the BigQuery table queryable from Databricks.

Two modes, generated from the export spec and run as Databricks SQL on a SQL warehouse:

* ``federation`` (default): Lakehouse Federation. A connection of ``TYPE bigquery`` whose key
  comes from a Databricks secret, a foreign catalog over it, and a view
  ``<catalog>.<schema>.<table>`` over the foreign table. Option names are Databricks' own
  (see ``CONNECTION_KEY_OPTION`` and ``DATA_PROJECT_OPTION``); a spec adds further ones through
  ``databricks.connection_options`` / ``databricks.foreign_catalog_options``.
* ``external``: the legacy Spark BigQuery connector,
  ``CREATE TABLE IF NOT EXISTS … USING bigquery OPTIONS (table, project, parentProject,
  credentials)``. Databricks documents it as legacy, experimental and unsupported, for
  clusters with the connector; this project runs statements on a SQL warehouse, so production
  refuses such specs when the code location loads (``refuse_unrunnable_specs``).

Nothing changed in the spec is silently ignored: the connection's options (the secret's key
included) are re-applied by ``ALTER CONNECTION`` on every run, the view is ``CREATE OR
REPLACE``d, and a foreign catalog that exists with another connection or other options fails
the step with a diff (``DriftError``). No credential appears in any statement: only
``secret(scope, name)`` references. What runs the statements is the Databricks resource's
business (a SQL warehouse, or locally the same statements on Apache Spark:
``bq_assets.local.spark_warehouse``); this module never asks which.
"""

from collections.abc import Callable
from typing import TypeVar

import dagster as dg
from google.cloud import bigquery as bq

from bq_assets.engine.bigquery_jobs import count_rows
from bq_assets.engine.bigquery_metering import JobCosts
from bq_assets.engine.bigquery_partitions import partition_column_type
from bq_assets.engine.databricks_governance import (
    governance_differences,
    masking_group,
    tags_query,
    view_columns,
)
from bq_assets.engine.databricks_sql import (
    BigQueryTable,
    TableName,
    describe_statement,
    foreign_catalog_expectation,
    object_drift,
    publish_statements,
    table_name,
)
from bq_assets.engine.key_checksum import key_checksum_sql, same_column_names
from bq_assets.exports.fields import ExportSpecError
from bq_assets.exports.spec import ExportSpec
from bq_assets.partitioning import window_predicate
from bq_assets.resources.databricks import DatabricksSQLResource
from bq_assets.resources.google import ExportBigQueryResource
from bq_assets.stages.cost import bigquery_jobs, with_cost
from bq_assets.stages.handoff import HandOff, reading_input, upstream_materialization
from bq_assets.stages.partitions import checked_partitions
from bq_assets.stages.results import Check, check_result
from bq_assets.translator import bigquery_key, databricks_key


def refuse_unrunnable_specs(specs: list[ExportSpec], databricks: object) -> None:
    """At load: refuse a spec whose ``databricks.mode`` the configured engine cannot publish
    (``mode: external`` on a SQL warehouse: Databricks documents the ``USING bigquery``
    connector as legacy and unsupported, set up on clusters with the connector and a key in
    their Spark configuration; a SQL warehouse, where this project runs its statements, does
    not offer it)."""
    if not isinstance(databricks, DatabricksSQLResource):
        return
    refused = [
        f"{spec.spec_file}: databricks.mode: external (the legacy `USING bigquery` connector) "
        "cannot run on the SQL warehouse this project uses; Databricks documents it as legacy "
        "and unsupported, for clusters with the connector only. Use `mode: federation` (the "
        "default: Lakehouse Federation, which runs on a Pro or Serverless SQL warehouse)."
        for spec in specs
        if spec.databricks.mode not in databricks.runnable_modes
    ]
    if refused:
        raise ExportSpecError("\n".join(refused))


def databricks_materialization(spec: ExportSpec) -> Callable[..., dg.MaterializeResult]:
    """The body of ``databricks/<export>``: the BigQuery table made queryable in Databricks."""
    name = table_name(spec)

    def _databricks(
        context: dg.AssetExecutionContext,
        databricks: DatabricksSQLResource,
    ) -> dg.MaterializeResult:
        upstream = upstream_materialization(context, bigquery_key(spec.name))
        table_id = upstream.table_name
        source = BigQueryTable(*table_id.split("."))
        statements = publish_statements(
            spec,
            source,
            databricks.bigquery_key_secret_scope,
            databricks.bigquery_key_secret_name,
        )
        with reading_input(upstream, "The table", table_id):
            notes = databricks.publish(
                statements, foreign_catalog_expectation(spec, source), source, name
            )
        rows = databricks.row_count(name)
        context.log.info(f"{name}: {rows} rows visible in Databricks")
        return dg.MaterializeResult(
            metadata={
                **HandOff(row_count=rows, input_run_id=upstream.run_id).metadata(),
                "dagster/table_name": str(name),
                "mode": spec.databricks.mode,
                "engine": databricks.engine,
                "source_table": table_id,
                "drift": dg.MetadataValue.json(notes),
                "statements": dg.MetadataValue.md("```sql\n" + ";\n".join(statements) + ";\n```"),
            }
        )

    return _databricks


T = TypeVar("T")
DATABRICKS_ROWS_MATCH_BIGQUERY = "rows_match_bigquery"
DATABRICKS_COLUMNS_MATCH_BIGQUERY = "columns_match_bigquery"
DATABRICKS_KEY_CHECKSUM_MATCHES_BIGQUERY = "key_checksum_matches_bigquery"
DATABRICKS_VIEW_MATCHES_SPEC = "view_matches_spec"
DATABRICKS_COLUMN_GOVERNANCE = "column_governance_matches_spec"


def _bigquery_count(client: bq.Client, table_id: str, where: str | None) -> int:
    if where is None:
        return count_rows(client, table_id)
    (count,) = next(iter(client.query(f"SELECT COUNT(*) FROM `{table_id}` WHERE {where}").result()))
    return int(count)


def _databricks_count(databricks: DatabricksSQLResource, name: TableName, where: str | None) -> int:
    if where is None:
        return databricks.row_count(name)
    return int(databricks.query(f"SELECT count(*) FROM {{table}} WHERE {where}", name)[0][0])


def numbers_of(engine: str, rows_and_checksum: tuple) -> dict[str, int]:
    """A key checksum's (rows, checksum…) as numeric metadata, so the check's page plots them."""
    rows, *sums = rows_and_checksum
    found = {f"{engine}_rows": int(rows or 0)}
    found.update({f"{engine}_key_checksum_{i}": int(v or 0) for i, v in enumerate(sums)})
    return found


def databricks_checks(spec: ExportSpec) -> list[Check]:
    """The Databricks hop's checks (not blocking: nothing is downstream of Databricks)."""
    key = databricks_key(spec.name)
    name = table_name(spec)

    def bigquery_table_id(context: dg.AssetCheckExecutionContext) -> str:
        return upstream_materialization(context, bigquery_key(spec.name)).table_name

    def partition_filters(
        context: dg.AssetCheckExecutionContext,
        client: bq.Client,
        table_id: str,
        databricks_dialect: str,
    ) -> dict[str, dict[str, str | None]]:
        """What a check compares: the whole table (key ``table``), or each partition of the
        run's window (key: the partition), as a WHERE clause for BigQuery and for Databricks
        (``databricks_dialect``: the Databricks resource's, ``databricks``)."""
        partitions = checked_partitions(context, spec)
        if partitions is None or spec.partitioning is None:
            return {"table": {"bigquery": None, databricks_dialect: None}}
        column = spec.partitioning.column
        column_type = partition_column_type(client, table_id, column)
        return {
            part.keys[0]: {
                dialect: window_predicate(dialect, column, column_type, part)
                for dialect in ("bigquery", databricks_dialect)
            }
            for part in partitions
        }

    def in_both_engines(
        context: dg.AssetCheckExecutionContext,
        bigquery: ExportBigQueryResource,
        databricks: DatabricksSQLResource,
        bigquery_value: Callable[[bq.Client, str, str | None], T],
        databricks_value: Callable[[str | None], T],
    ) -> tuple[dict[str, T], dict[str, T], JobCosts]:
        """``(BigQuery's, Databricks')`` value of each scope the check compares (the whole
        table, or each partition of the run), each engine given its own WHERE clause, and what
        the BigQuery jobs cost."""
        table_id = bigquery_table_id(context)
        with bigquery_jobs(context, bigquery, spec) as client:
            filters = partition_filters(context, client, table_id, databricks.dialect)
            expected = {
                scope: bigquery_value(client, table_id, where["bigquery"])
                for scope, where in filters.items()
            }
            costs = client.costs()
        actual = {
            scope: databricks_value(where[databricks.dialect]) for scope, where in filters.items()
        }
        return expected, actual, costs

    def rows_match(
        context: dg.AssetCheckExecutionContext,
        databricks: DatabricksSQLResource,
        bigquery: ExportBigQueryResource,
    ) -> dg.AssetCheckResult:
        expected, actual, costs = in_both_engines(
            context,
            bigquery,
            databricks,
            _bigquery_count,
            lambda where: _databricks_count(databricks, name, where),
        )
        filters = list(expected)
        if filters == ["table"]:
            return with_cost(
                check_result(
                    actual["table"] == expected["table"],
                    f"Databricks shows {actual['table']} rows, BigQuery holds {expected['table']}",
                    {
                        "databricks_rows": actual["table"],
                        "bigquery_rows": expected["table"],
                        "row_difference": actual["table"] - expected["table"],
                    },
                ),
                costs,
            )
        wrong = [scope for scope in filters if actual[scope] != expected[scope]]
        return with_cost(
            check_result(
                not wrong,
                "rows per partition differ (Databricks / BigQuery): "
                + ", ".join(f"{s}: {actual[s]} / {expected[s]}" for s in wrong),
                {
                    "databricks_rows": sum(actual.values()),
                    "bigquery_rows": sum(expected.values()),
                    "row_difference": sum(actual.values()) - sum(expected.values()),
                    "databricks_rows_by_partition": dg.MetadataValue.json(actual),
                    "bigquery_rows_by_partition": dg.MetadataValue.json(expected),
                },
            ),
            costs,
        )

    def columns_match(
        context: dg.AssetCheckExecutionContext,
        databricks: DatabricksSQLResource,
        bigquery: ExportBigQueryResource,
    ) -> dg.AssetCheckResult:
        table_id = bigquery_table_id(context)
        with bigquery.get_client() as client:
            expected = [f.name for f in client.get_table(table_id).schema]
        actual = databricks.column_names(name)
        return check_result(
            same_column_names(actual, expected),
            f"Databricks shows the columns {actual}, BigQuery has {expected}",
            {
                "databricks_column_count": len(actual),
                "bigquery_column_count": len(expected),
                "databricks_columns": actual,
                "bigquery_columns": expected,
            },
        )

    def key_checksum_matches(
        context: dg.AssetCheckExecutionContext,
        databricks: DatabricksSQLResource,
        bigquery: ExportBigQueryResource,
    ) -> dg.AssetCheckResult:
        # The key columns' BigQuery types: each has a canonical string both engines compute
        # alike (engine/key_checksum.py); a type without one fails the check, naming it.
        key_columns: list[tuple[str, str]] = []

        def bigquery_checksum(client: bq.Client, table_id: str, where: str | None) -> tuple:
            if not key_columns:
                types = {f.name.lower(): f.field_type for f in client.get_table(table_id).schema}
                key_columns.extend((c, types.get(c.lower(), "?")) for c in spec.primary_key)
            sql = key_checksum_sql("bigquery", f"`{table_id}`", key_columns, where)
            return tuple(next(iter(client.query(sql).result())).values())

        def databricks_checksum(where: str | None) -> tuple:
            sql = key_checksum_sql(databricks.dialect, "{table}", key_columns, where)
            (row,) = databricks.query(sql, name)
            return tuple(int(v) if v is not None else None for v in row)

        expected, actual, costs = in_both_engines(
            context, bigquery, databricks, bigquery_checksum, databricks_checksum
        )
        filters = list(expected)
        if filters == ["table"]:
            return with_cost(
                check_result(
                    actual["table"] == expected["table"],
                    f"the primary keys differ: (rows, checksum) is {actual['table']} in "
                    f"Databricks, {expected['table']} in BigQuery",
                    {
                        "databricks_rows_and_checksum": str(actual["table"]),
                        "bigquery_rows_and_checksum": str(expected["table"]),
                        **numbers_of("databricks", actual["table"]),
                        **numbers_of("bigquery", expected["table"]),
                    },
                ),
                costs,
            )
        wrong = [scope for scope in filters if actual[scope] != expected[scope]]
        return with_cost(
            check_result(
                not wrong,
                "the primary keys differ in partition(s) "
                + ", ".join(
                    f"{s}: {actual[s]} in Databricks, {expected[s]} in BigQuery" for s in wrong
                ),
                {
                    "databricks_rows_and_checksum": dg.MetadataValue.json(
                        {s: list(v) for s, v in actual.items()}
                    ),
                    "bigquery_rows_and_checksum": dg.MetadataValue.json(
                        {s: list(v) for s, v in expected.items()}
                    ),
                    "partitions_differing": len(wrong),
                },
            ),
            costs,
        )

    def view_matches_spec(
        context: dg.AssetCheckExecutionContext,
        databricks: DatabricksSQLResource,
        bigquery: ExportBigQueryResource,
    ) -> dg.AssetCheckResult:
        table_id = bigquery_table_id(context)
        with bigquery.get_client() as client:
            columns = [(f.name, f.field_type) for f in client.get_table(table_id).schema]
        ((described,),) = databricks.execute(describe_statement(name))
        differences = object_drift(str(described), columns, spec.description)
        return check_result(
            not differences,
            f"{name} differs from the spec: " + "; ".join(differences),
            {"differences": dg.MetadataValue.json(differences), "described": str(described)},
        )

    def column_governance_matches(
        context: dg.AssetCheckExecutionContext, databricks: DatabricksSQLResource
    ) -> dg.AssetCheckResult:
        """Column comments, classification tags and masking, read back from Databricks
        (``DESCRIBE TABLE … AS JSON`` and Unity Catalog's ``information_schema.column_tags``)."""
        upstream_materialization(context, key)  # the view this check reads was published
        ((described,),) = databricks.execute(describe_statement(name))
        tags = databricks.execute(tags_query(name.catalog, name.schema, name.table))
        differences = governance_differences(
            spec, str(described), [(str(c), str(v)) for c, v in tags]
        )
        return check_result(
            not differences,
            f"{name}: {len(differences)} column propert(ies) differ from "
            f"{spec.spec_file.name}: " + "; ".join(differences),
            {
                "columns_differing": len({line.split(":")[0] for line in differences}),
                "tagged_columns": len(tags),
                "masked_columns": sum(
                    masking_group(spec, c) is not None for c in view_columns(spec)
                ),
                "differences": dg.MetadataValue.json(differences),
            },
        )

    return [
        Check(
            dg.AssetCheckSpec(
                DATABRICKS_COLUMN_GOVERNANCE,
                asset=key,
                description="Each column of the view has the comment its spec declares, a "
                "Unity Catalog tag `classification` when classified, and is masked outside the "
                "group databricks.masking names (read back from Databricks).",
            ),
            column_governance_matches,
        ),
        Check(
            dg.AssetCheckSpec(
                DATABRICKS_ROWS_MATCH_BIGQUERY,
                asset=key,
                description="Rows visible in Databricks equal the BigQuery table's rows (of each "
                "partition the run loaded, for a partitioned export).",
            ),
            rows_match,
        ),
        Check(
            dg.AssetCheckSpec(
                DATABRICKS_COLUMNS_MATCH_BIGQUERY,
                asset=key,
                description="Databricks shows the same columns, in order, as the BigQuery table.",
            ),
            columns_match,
        ),
        Check(
            dg.AssetCheckSpec(
                DATABRICKS_KEY_CHECKSUM_MATCHES_BIGQUERY,
                asset=key,
                description="Row count and a checksum of the primary key are equal in Databricks and "
                "BigQuery (both engines compute it; per partition the run loaded, for a partitioned "
                "export).",
            ),
            key_checksum_matches,
        ),
        Check(
            dg.AssetCheckSpec(
                DATABRICKS_VIEW_MATCHES_SPEC,
                asset=key,
                description="The Databricks object is what the spec declares: the BigQuery "
                "table's columns, in order, with the types Lakehouse Federation gives them, and "
                "the spec's description as its comment (read back with DESCRIBE TABLE … AS JSON).",
            ),
            view_matches_spec,
        ),
    ]
