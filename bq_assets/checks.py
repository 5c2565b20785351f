"""Asset checks: every hop validated, and blocking where bad data must not reach the next hop.

Each check's name is a constant below; each failure carries metadata that explains it (the two
counts that differ, a sample of duplicate keys, the missing objects, the schema diff).
"""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from google.cloud import bigquery as bq

from bq_assets.exports.spec import ExportSpec
from bq_assets.resources.databricks import DatabricksSQLResource
from bq_assets.resources.google import StackAwareBigQueryResource, StackAwareGCSResource
from bq_assets.schema import schema_diff, schema_from_json
from bq_assets.stages import (
    bigquery_key,
    databricks_key,
    gcs_key,
    query_key,
    reported_as_failure,
    upstream_materialization,
)
from bq_assets.stages.bigquery import count_rows
from bq_assets.stages.databricks import table_name
from bq_assets.stages.gcs_csv import fetch_snapshot, read_manifest

QUERY_HAS_ROWS = "has_rows"
QUERY_PRIMARY_KEY_UNIQUE = "primary_key_unique_and_not_null"
QUERY_REQUIRED_NOT_NULL = "required_columns_not_null"
GCS_OBJECTS_MATCH_MANIFEST = "objects_match_manifest"
GCS_ROWS_MATCH_SNAPSHOT = "rows_match_snapshot"
BIGQUERY_ROWS_MATCH_MANIFEST = "rows_match_manifest"
BIGQUERY_SCHEMA_MATCHES = "schema_matches_snapshot"
DATABRICKS_ROWS_MATCH_BIGQUERY = "rows_match_bigquery"
DATABRICKS_COLUMNS_MATCH_BIGQUERY = "columns_match_bigquery"
DATABRICKS_KEY_CHECKSUM_MATCHES_BIGQUERY = "key_checksum_matches_bigquery"

SAMPLE = 5


def check_result(passed: bool, why: str, metadata: dict) -> dg.AssetCheckResult:
    """The check's result; a failure says why in one line (shown in the UI, the run's failure
    report and alerts), with the details in ``metadata``."""
    return dg.AssetCheckResult(
        passed=passed, description=None if passed else why, metadata=metadata
    )


@contextmanager
def _snapshot(
    context: dg.AssetCheckExecutionContext, spec: ExportSpec, gcs: StackAwareGCSResource
) -> Iterator[Path]:
    """A local copy of the snapshot the checked materialization wrote (from its URI), in a
    temporary directory of this check alone."""
    with (
        reported_as_failure(GCS=gcs),
        tempfile.TemporaryDirectory(prefix=f"bq_assets_{context.run.run_id}_") as scratch,
    ):
        upstream = upstream_materialization(context, query_key(spec.name))
        yield fetch_snapshot(gcs.get_client(), upstream, Path(scratch), gcs.retry())


def _scan(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql.replace("{snapshot}", f"read_parquet('{path}')")).fetchall()


def _query_checks(spec: ExportSpec) -> list[dg.AssetChecksDefinition]:
    key = query_key(spec.name)

    @dg.asset_check(
        asset=key,
        name=QUERY_HAS_ROWS,
        blocking=True,
        description="The query returned at least one row (unless the spec allows empty).",
    )
    def has_rows(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        rows = int(upstream_materialization(context, key)["dagster/row_count"])
        return check_result(
            rows > 0 or spec.allow_empty,
            "the query returned no rows (set allow_empty: true if that can be right)",
            {"rows": rows, "allow_empty": spec.allow_empty},
        )

    columns = ", ".join(f'"{c}"' for c in spec.primary_key)

    @dg.asset_check(
        asset=key,
        name=QUERY_PRIMARY_KEY_UNIQUE,
        blocking=True,
        description=f"Primary key ({', '.join(spec.primary_key)}) is unique and never NULL.",
    )
    def primary_key_unique(
        context: dg.AssetCheckExecutionContext, gcs: StackAwareGCSResource
    ) -> dg.AssetCheckResult:
        with _snapshot(context, spec, gcs) as path:
            return _primary_key_result(path)

    def _primary_key_result(path: Path) -> dg.AssetCheckResult:
        null_keys = " OR ".join(f'"{c}" IS NULL' for c in spec.primary_key)
        nulls = _scan(path, f"SELECT count(*) FROM {{snapshot}} WHERE {null_keys}")[0][0]
        duplicates = _scan(
            path,
            f"SELECT {columns}, count(*) AS n FROM {{snapshot}} GROUP BY ALL HAVING n > 1 "
            f"ORDER BY n DESC LIMIT {SAMPLE}",
        )
        duplicate_count = _scan(
            path,
            f"SELECT count(*) FROM (SELECT 1 FROM {{snapshot}} GROUP BY {columns} HAVING count(*) > 1)",
        )[0][0]
        sample = [[str(v) for v in row[:-1]] for row in duplicates]
        return check_result(
            nulls == 0 and duplicate_count == 0,
            f"{duplicate_count} duplicated key(s)"
            + (f", e.g. {', '.join('/'.join(key) for key in sample)}" if sample else "")
            + f"; {nulls} row(s) with a NULL key",
            {
                "null_keys": nulls,
                "duplicated_keys": duplicate_count,
                "duplicate_sample": dg.MetadataValue.json(
                    [[str(v) for v in row] for row in duplicates]
                ),
            },
        )

    checks = [has_rows, primary_key_unique]
    if spec.required:

        @dg.asset_check(
            asset=key,
            name=QUERY_REQUIRED_NOT_NULL,
            blocking=True,
            description=f"Required columns ({', '.join(spec.required)}) are never NULL.",
        )
        def required_not_null(
            context: dg.AssetCheckExecutionContext, gcs: StackAwareGCSResource
        ) -> dg.AssetCheckResult:
            counts = ", ".join(f'count(*) FILTER (WHERE "{c}" IS NULL)' for c in spec.required)
            with _snapshot(context, spec, gcs) as path:
                row = _scan(path, f"SELECT {counts} FROM {{snapshot}}")[0]
            nulls = dict(zip(spec.required, row, strict=True))
            return check_result(
                not any(nulls.values()),
                "NULLs in required columns: "
                + ", ".join(f"{column} ({n})" for column, n in nulls.items() if n),
                {"null_counts": dg.MetadataValue.json(nulls)},
            )

        checks.append(required_not_null)
    return checks


def _gcs_checks(spec: ExportSpec) -> list[dg.AssetChecksDefinition]:
    key = gcs_key(spec.name)

    @dg.asset_check(
        asset=key,
        name=GCS_OBJECTS_MATCH_MANIFEST,
        blocking=True,
        description="Every object in the manifest exists with the size and crc32c written.",
    )
    def objects_match(
        context: dg.AssetCheckExecutionContext, gcs: StackAwareGCSResource
    ) -> dg.AssetCheckResult:
        client = gcs.get_client()
        manifest = read_manifest(
            client, str(upstream_materialization(context, key)["manifest_uri"]), gcs.retry()
        )
        problems = []
        for shard in manifest.shards:
            bucket, _, name = shard.uri.removeprefix("gs://").partition("/")
            blob = client.bucket(bucket).get_blob(name, retry=gcs.retry())
            if blob is None:
                problems.append(f"{shard.uri}: missing")
            elif blob.size != shard.bytes or blob.crc32c != shard.crc32c:
                problems.append(
                    f"{shard.uri}: size {blob.size} crc32c {blob.crc32c}, "
                    f"manifest says {shard.bytes} / {shard.crc32c}"
                )
        return check_result(
            not problems,
            f"{len(problems)} of {len(manifest.shards)} object(s) differ from the manifest: "
            + "; ".join(problems[:SAMPLE]),
            {"objects": len(manifest.shards), "problems": dg.MetadataValue.json(problems)},
        )

    @dg.asset_check(
        asset=key,
        name=GCS_ROWS_MATCH_SNAPSHOT,
        blocking=True,
        description="Rows in the manifest equal the snapshot's rows.",
    )
    def rows_match(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        written = int(upstream_materialization(context, key)["dagster/row_count"])
        snapshot = int(upstream_materialization(context, query_key(spec.name))["dagster/row_count"])
        return check_result(
            written == snapshot,
            f"the manifest holds {written} rows, the snapshot {snapshot}",
            {"manifest_rows": written, "snapshot_rows": snapshot},
        )

    return [objects_match, rows_match]


def bigquery_checks(spec: ExportSpec) -> list[dg.AssetChecksDefinition]:
    key = bigquery_key(spec.name)

    @dg.asset_check(
        asset=key,
        name=BIGQUERY_ROWS_MATCH_MANIFEST,
        blocking=True,
        description="The table's row count equals the rows in the loaded manifest.",
    )
    def rows_match(
        context: dg.AssetCheckExecutionContext, bigquery: StackAwareBigQueryResource
    ) -> dg.AssetCheckResult:
        table_id = str(upstream_materialization(context, key)["dagster/table_name"])
        expected = int(upstream_materialization(context, gcs_key(spec.name))["dagster/row_count"])
        with bigquery.get_client() as client:
            actual = count_rows(client, table_id)
        return check_result(
            actual == expected,
            f"the table holds {actual} rows, the loaded manifest {expected}",
            {"table_rows": actual, "manifest_rows": expected},
        )

    @dg.asset_check(
        asset=key,
        name=BIGQUERY_SCHEMA_MATCHES,
        blocking=True,
        description="The table's columns and types equal the snapshot's schema.",
    )
    def schema_matches(
        context: dg.AssetCheckExecutionContext,
        bigquery: StackAwareBigQueryResource,
        gcs: StackAwareGCSResource,
    ) -> dg.AssetCheckResult:
        table_id = str(upstream_materialization(context, key)["dagster/table_name"])
        manifest = read_manifest(
            gcs.get_client(),
            str(upstream_materialization(context, key)["source_manifest"]),
            gcs.retry(),
        )
        with bigquery.get_client() as client:
            actual = client.get_table(table_id).schema
        diff = schema_diff(list(actual), schema_from_json(manifest.bigquery_schema))
        return check_result(
            not diff,
            "the table's schema differs from the snapshot's: " + "; ".join(diff),
            {"differences": dg.MetadataValue.json(diff)},
        )

    return [rows_match, schema_matches]


def databricks_checks(spec: ExportSpec) -> list[dg.AssetChecksDefinition]:
    key = databricks_key(spec.name)
    name = table_name(spec)

    def bigquery_table_id(context: dg.AssetCheckExecutionContext) -> str:
        return str(upstream_materialization(context, bigquery_key(spec.name))["dagster/table_name"])

    def _bigquery_table(
        context: dg.AssetCheckExecutionContext, bigquery: StackAwareBigQueryResource
    ) -> bq.Table:
        with bigquery.get_client() as client:
            return client.get_table(bigquery_table_id(context))

    @dg.asset_check(
        asset=key,
        name=DATABRICKS_ROWS_MATCH_BIGQUERY,
        description="Rows visible in Databricks equal the BigQuery table's rows.",
    )
    def rows_match(
        context: dg.AssetCheckExecutionContext,
        databricks: DatabricksSQLResource,
        bigquery: StackAwareBigQueryResource,
    ) -> dg.AssetCheckResult:
        table_id = bigquery_table_id(context)
        with bigquery.get_client() as client:
            expected = count_rows(client, table_id)
        actual = databricks.row_count(name)
        return check_result(
            actual == expected,
            f"Databricks shows {actual} rows, BigQuery holds {expected}",
            {"databricks_rows": actual, "bigquery_rows": expected},
        )

    @dg.asset_check(
        asset=key,
        name=DATABRICKS_COLUMNS_MATCH_BIGQUERY,
        description="Databricks shows the same columns, in order, as the BigQuery table.",
    )
    def columns_match(
        context: dg.AssetCheckExecutionContext,
        databricks: DatabricksSQLResource,
        bigquery: StackAwareBigQueryResource,
    ) -> dg.AssetCheckResult:
        expected = [f.name for f in _bigquery_table(context, bigquery).schema]
        actual = databricks.column_names(name)
        return check_result(
            same_column_names(actual, expected),
            f"Databricks shows the columns {actual}, BigQuery has {expected}",
            {"databricks_columns": actual, "bigquery_columns": expected},
        )

    @dg.asset_check(
        asset=key,
        name=DATABRICKS_KEY_CHECKSUM_MATCHES_BIGQUERY,
        description="Row count and a checksum of the primary key are equal in Databricks and "
        "BigQuery (both engines compute it).",
    )
    def key_checksum_matches(
        context: dg.AssetCheckExecutionContext,
        databricks: DatabricksSQLResource,
        bigquery: StackAwareBigQueryResource,
    ) -> dg.AssetCheckResult:
        table_id = bigquery_table_id(context)
        with bigquery.get_client() as client:
            sql = key_checksum_sql("bigquery", f"`{table_id}`", spec.primary_key)
            expected = tuple(next(iter(client.query(sql).result())).values())
        (actual,) = databricks.query(
            key_checksum_sql(databricks.dialect, "{table}", spec.primary_key), name
        )
        actual = tuple(int(v) if v is not None else None for v in actual)
        return check_result(
            actual == expected,
            f"the primary keys differ: (rows, checksum) is {actual} in Databricks, "
            f"{expected} in BigQuery",
            {
                "databricks_rows_and_checksum": str(actual),
                "bigquery_rows_and_checksum": str(expected),
            },
        )

    return [rows_match, columns_match, key_checksum_matches]


def same_column_names(databricks: list[str], bigquery: list[str]) -> bool:
    """Same columns in the same order, compared as Unity Catalog compares them: case-insensitively
    (it preserves a column's casing, but queries are case-insensitive; "Names",
    https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-names). BigQuery column
    names are case-insensitive too."""
    return [c.lower() for c in databricks] == [c.lower() for c in bigquery]


# Identifier quoting per dialect: backticks in BigQuery and Databricks SQL, double quotes in
# DuckDB. Key columns are validated identifiers, so a key named like a reserved word (`order`,
# `select`) is the only case quoting has to handle.
_QUOTE = {"bigquery": "`{}`", "databricks": "`{}`", "duckdb": '"{}"'}

# The key checksum: XOR of the first 60 bits of each key's MD5, computed with functions every
# engine has (MD5, SUBSTR, BIT_XOR, COUNT); only the hex → integer step is spelled per engine.
_HEX_TO_INT = {
    "bigquery": "CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5({key})), 1, 15)) AS INT64)",
    "databricks": "CAST(CONV(SUBSTR(MD5({key}), 1, 15), 16, 10) AS BIGINT)",
    "duckdb": "CAST('0x' || SUBSTR(MD5({key}), 1, 15) AS BIGINT)",
}


def key_checksum_sql(dialect: str, table: str, key_columns: list[str]) -> str:
    """``SELECT count, checksum`` of the key columns of ``table``, in ``dialect``."""
    text = "STRING" if dialect != "duckdb" else "VARCHAR"
    parts = [f"CAST({_QUOTE[dialect].format(column)} AS {text})" for column in key_columns]
    key = parts[0] if len(parts) == 1 else "CONCAT(" + ", '|', ".join(parts) + ")"
    return f"SELECT COUNT(*), BIT_XOR({_HEX_TO_INT[dialect].format(key=key)}) FROM {table}"


def build_checks(spec: ExportSpec) -> list[dg.AssetChecksDefinition]:
    """Every check of one export's four assets."""
    return [
        *_query_checks(spec),
        *_gcs_checks(spec),
        *bigquery_checks(spec),
        *databricks_checks(spec),
    ]
