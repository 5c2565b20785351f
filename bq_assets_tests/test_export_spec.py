"""Export specs are validated when the code location loads, naming file, field and what's allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bq_assets.exports import SHIPPED_EXPORTS_DIR, ExportSpecError, load_specs
from bq_assets.exports.sql import executable_query, query_columns

SQL = "SELECT id, name, created_at FROM t"


def write_export(folder: Path, name: str, yaml_text: str, sql: str | None = SQL) -> Path:
    if sql is not None:
        (folder / f"{name}.sql").write_text(sql)
    path = folder / f"{name}.yaml"
    path.write_text(yaml_text)
    return path


def load_error(folder: Path) -> str:
    with pytest.raises(ExportSpecError) as error:
        load_specs(folder)
    return str(error.value)


MINIMAL = "primary_key: [id]\ncadence: daily\ndescription: orders\n"


def test_a_minimal_spec_is_three_lines_and_gets_sensible_defaults(tmp_path: Path) -> None:
    write_export(tmp_path, "orders", MINIMAL)
    (spec,) = load_specs(tmp_path)
    assert spec.name == "orders"
    assert spec.cron_schedule == "0 6 * * *"
    assert spec.timezone == "UTC"
    assert spec.csv.delimiter == "," and spec.csv.compression == "gzip" and spec.csv.header
    assert spec.bigquery.write_disposition == "WRITE_TRUNCATE"
    assert spec.bigquery_table == "orders"
    assert (spec.databricks.catalog, spec.databricks.schema_, spec.databricks.mode) == (
        "main",
        "amperity",
        "federation",
    )


def test_the_shipped_exports_load() -> None:
    names = {spec.name for spec in load_specs(SHIPPED_EXPORTS_DIR)}
    assert names == {"customer_360", "unified_transactions", "customer_segments", "amperity_orders"}


@pytest.mark.parametrize(
    ("extra", "field", "fragment"),
    [
        ("colour: blue\n", "colour", "unknown key"),
        ("csv: {delimiter: ';'}\n", "csv.delimiter", "';' is not allowed"),
        ("csv: {compression: zip}\n", "csv.compression", "'zip' is not allowed"),
        ("timezone: Mars/Olympus\n", "timezone", "is not an IANA timezone"),
        ("databricks: {mode: copy}\n", "databricks.mode", "'copy' is not allowed"),
        ("bigquery: {dataset: 'a-b'}\n", "bigquery.dataset", "not a valid BigQuery id"),
        (
            "bigquery: {table: 'x`; DROP TABLE y; --'}\n",
            "bigquery.table",
            "not a valid BigQuery id",
        ),
        ("bigquery: {labels: {Env: prod}}\n", "bigquery.labels", "not a valid BigQuery label key"),
        ("databricks: {catalog: 'main`.`x'}\n", "databricks.catalog", "Databricks identifier"),
        ('databricks: {schema: "a\'b"}\n', "databricks.schema", "Databricks identifier"),
        ("databricks: {table: 'a /* c */'}\n", "databricks.table", "Databricks identifier"),
        ("databricks: {connection: 'c;x'}\n", "databricks.connection", "Databricks identifier"),
        ("owners: [nobody]\n", "owners", "not a valid owner"),
        ("required: ['id; --']\n", "required", "not a valid column name"),
    ],
)
def test_bad_fields_are_reported_with_file_field_and_allowed_values(
    tmp_path: Path, extra: str, field: str, fragment: str
) -> None:
    path = write_export(tmp_path, "orders", MINIMAL + extra)
    message = load_error(tmp_path)
    assert str(path) in message
    assert f"{field}" in message
    assert fragment in message


@pytest.mark.parametrize("cadence", ["hourly", "0 25 * * *", "every day"])
def test_a_bad_cadence_is_rejected(tmp_path: Path, cadence: str) -> None:
    write_export(tmp_path, "orders", f"primary_key: [id]\ncadence: '{cadence}'\n")
    message = load_error(tmp_path)
    assert "cadence" in message and "not `daily`, `weekly` or a valid cron string" in message


def test_a_cron_cadence_is_accepted(tmp_path: Path) -> None:
    write_export(tmp_path, "orders", "primary_key: [id]\ncadence: '30 2 * * 1-5'\n")
    assert load_specs(tmp_path)[0].cron_schedule == "30 2 * * 1-5"


def test_a_missing_sql_file_is_named(tmp_path: Path) -> None:
    write_export(tmp_path, "orders", MINIMAL, sql=None)
    message = load_error(tmp_path)
    assert "sql_file" in message and str(tmp_path / "orders.sql") in message


def test_duplicate_export_names_are_rejected(tmp_path: Path) -> None:
    write_export(tmp_path, "orders", MINIMAL)
    write_export(tmp_path, "orders_copy", "name: orders\n" + MINIMAL)
    assert "duplicate export name 'orders'" in load_error(tmp_path)


def test_the_primary_key_must_be_a_column_of_the_query(tmp_path: Path) -> None:
    write_export(tmp_path, "orders", "primary_key: [order_id]\ncadence: daily\n")
    message = load_error(tmp_path)
    assert "primary_key: order_id not among the query's columns (id, name, created_at)" in message


def test_partition_and_clustering_fields_must_be_columns(tmp_path: Path) -> None:
    write_export(tmp_path, "orders", MINIMAL + "bigquery: {partition_field: day}\n")
    assert "bigquery.partition_field: day not among the query's columns" in load_error(tmp_path)


def test_sql_that_does_not_parse_names_the_sql_file_line_and_column(tmp_path: Path) -> None:
    write_export(tmp_path, "orders", MINIMAL, sql="SELECT id,\n  name = \nFROM t")
    message = load_error(tmp_path)
    assert f"{tmp_path / 'orders.sql'}: line 3, column 4: syntax error at or near 'FROM'" in message
    assert "sqlglot" not in message and "Required keyword" not in message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM t",
        "SELECT t.* FROM t",
        "SELECT id, t.* FROM t",
        "SELECT * EXCLUDE (name) FROM t",
        "SELECT COLUMNS('a.*') FROM t",
    ],
)
def test_every_form_of_star_is_rejected_so_the_schema_is_reviewable(sql: str) -> None:
    with pytest.raises(ValueError, match=r"must name its columns \(no SELECT \*"):
        query_columns(sql)


def test_an_expression_without_a_name_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"add AS <name> to id \+ 1"):
        query_columns("SELECT id + 1, name FROM t")


@pytest.mark.parametrize(
    "sql",
    ["SELECT id FROM t -- the end", "SELECT id FROM t; -- done\n", "SELECT id FROM t\n;\n-- x"],
)
def test_the_source_runs_the_query_without_its_trailing_semicolon_and_comment(sql: str) -> None:
    assert executable_query(sql) == sql[: sql.index("t") + 1]


def test_more_than_one_statement_is_rejected() -> None:
    with pytest.raises(ValueError, match="exactly one SELECT"):
        query_columns("SELECT 1 AS a; DROP TABLE t")


def test_every_broken_spec_is_reported_at_once(tmp_path: Path) -> None:
    write_export(tmp_path, "a", MINIMAL + "colour: blue\n")
    write_export(tmp_path, "b", MINIMAL + "timezone: Nowhere\n")
    message = load_error(tmp_path)
    assert "a.yaml" in message and "b.yaml" in message


def test_yaml_that_is_not_a_mapping_is_reported(tmp_path: Path) -> None:
    write_export(tmp_path, "orders", "- just\n- a list\n")
    assert "must be a mapping of settings" in load_error(tmp_path)


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("exports/{export}/part-{shard:05d}", "must contain {run} as (part of) a folder"),
        ("exports/{export}/{run}/part.csv", "must contain {shard}"),
        ("exports/{export}/{run}/{when}-{shard}", "unknown placeholder(s) when"),
        ("{date:%Y}/{export}/{run}/p-{shard}", "must start with a folder named {export}"),
        ("exports/{export}-{run}/p-{shard}", "must start with a folder named {export}"),
        ("exports/{export}/../{run}/p-{shard}", "without empty or '..' segments"),
    ],
)
def test_object_templates_keep_one_prefix_per_run(
    tmp_path: Path, template: str, fragment: str
) -> None:
    write_export(tmp_path, "orders", MINIMAL + f"objects: {{template: '{template}'}}\n")
    message = load_error(tmp_path)
    assert "objects.template" in message and fragment in message


def test_a_dated_object_template_is_accepted(tmp_path: Path) -> None:
    template = "amperity/{export}/{date:%Y/%m/%d}/{run}/orders-{shard:05d}"
    write_export(
        tmp_path, "orders", MINIMAL + f"objects: {{template: '{template}', keep_runs: 5}}\n"
    )
    (spec,) = load_specs(tmp_path)
    assert (spec.objects.template, spec.objects.keep_runs) == (template, 5)
