"""The Databricks hop: generated SQL (checked with sqlglot's databricks dialect) and statement
execution against a small fake of the Statement Execution API (no Databricks emulator exists)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlglot
from databricks.sdk.service.sql import StatementState

from bq_assets.checks import key_checksum_sql
from bq_assets.exports.spec import load_spec
from bq_assets.resources.databricks import (
    BigQueryTable,
    DatabricksSQLResource,
    StatementError,
    TableName,
)
from bq_assets.stages.databricks import publish_statements

SOURCE = BigQueryTable("acme-prod", "amperity_exports", "customer_360")


def spec_with(tmp_path: Path, databricks_yaml: str):
    (tmp_path / "customer_360.sql").write_text("SELECT amperity_id, email FROM customer_360")
    path = tmp_path / "customer_360.yaml"
    path.write_text(f"primary_key: [amperity_id]\ncadence: daily\n{databricks_yaml}")
    return load_spec(path)


def canonical(statement: str) -> str:
    (parsed,) = sqlglot.parse(statement, read="databricks")
    return parsed.sql(dialect="databricks")


def test_federation_creates_connection_foreign_catalog_and_view(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, "databricks: {catalog: main, schema: amperity}\n")
    statements = publish_statements(spec, SOURCE, "bq_assets", "bigquery_key")
    assert statements == [
        "CREATE CONNECTION IF NOT EXISTS `bigquery_connection` TYPE bigquery "
        "OPTIONS (GoogleServiceAccountKeyJson secret('bq_assets', 'bigquery_key'))",
        "CREATE FOREIGN CATALOG IF NOT EXISTS `bigquery` USING CONNECTION `bigquery_connection` "
        "OPTIONS (data_project_id 'acme-prod')",
        "CREATE SCHEMA IF NOT EXISTS `main`.`amperity`",
        "CREATE OR REPLACE VIEW `main`.`amperity`.`customer_360` AS "
        "SELECT * FROM `bigquery`.`amperity_exports`.`customer_360`",
    ]


def test_external_mode_creates_a_using_bigquery_table(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, "databricks: {mode: external, table: c360}\n")
    statements = publish_statements(spec, SOURCE, "s", "k")
    assert statements[-1] == (
        "CREATE TABLE IF NOT EXISTS `main`.`amperity`.`c360` USING bigquery OPTIONS ("
        "table = 'amperity_exports.customer_360', project = 'acme-prod', "
        "parentProject = 'acme-prod')"
    )


def tokens(statement: str) -> list[tuple[str, str]]:
    """The statement as sqlglot's Databricks tokenizer reads it: (token type, text)."""
    return [
        (t.token_type.name, t.text)
        for t in sqlglot.Dialect.get_or_raise("databricks").tokenize(statement)
    ]


@pytest.mark.parametrize("mode", ["federation", "external"])
def test_every_generated_statement_is_one_well_formed_databricks_statement(
    tmp_path: Path, mode: str
) -> None:
    spec = spec_with(tmp_path, f"databricks: {{mode: {mode}}}\n")
    for statement in publish_statements(spec, SOURCE, "scope", "key"):
        parsed = sqlglot.parse(statement, read="databricks")
        assert len(parsed) == 1
        if isinstance(parsed[0], sqlglot.exp.Command):
            # Unity Catalog DDL sqlglot has no grammar for: the tokenizer still proves there is
            # one statement whose names are quoted identifiers and whose values are literals.
            kinds = tokens(statement)
            assert ("SEMICOLON", ";") not in kinds
            assert all(text.isidentifier() for kind, text in kinds if kind == "IDENTIFIER")
        else:
            assert parsed[0].sql(dialect="databricks") == statement


def test_statement_literals_are_exactly_the_configured_names(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, "databricks: {mode: external}\n")
    statement = publish_statements(spec, SOURCE, "scope", "key")[-1]
    literals = [text for kind, text in tokens(statement) if kind == "STRING"]
    identifiers = [text for kind, text in tokens(statement) if kind == "IDENTIFIER"]
    assert literals == ["amperity_exports.customer_360", "acme-prod", "acme-prod"]
    assert identifiers == ["main", "amperity", "customer_360"]


def test_no_credential_appears_in_the_statements(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, "")
    text = " ".join(publish_statements(spec, SOURCE, "scope", "key"))
    assert "private_key" not in text and "BEGIN PRIVATE KEY" not in text
    assert "secret('scope', 'key')" in text


def test_table_names_refuse_anything_but_identifiers() -> None:
    with pytest.raises(ValueError, match="not a valid Databricks identifier"):
        TableName("main", "amperity", "x`; DROP TABLE y")


@dataclass
class FakeStatementExecution:
    """A fake of ``WorkspaceClient.statement_execution``: scripted states, recorded calls."""

    states: list[StatementState]
    error: tuple[str, str] | None = None
    executed: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)

    def _response(self) -> SimpleNamespace:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        error = (
            SimpleNamespace(error_code=self.error[0], message=self.error[1]) if self.error else None
        )
        return SimpleNamespace(
            statement_id="stmt-1",
            status=SimpleNamespace(state=state, error=error),
            result=SimpleNamespace(data_array=[["42"]])
            if state == StatementState.SUCCEEDED
            else None,
        )

    def execute_statement(self, statement: str, warehouse_id: str, wait_timeout: str):
        self.executed.append(statement)
        return self._response()

    def get_statement(self, statement_id: str):
        return self._response()

    def cancel_execution(self, statement_id: str) -> None:
        self.canceled.append(statement_id)


def resource_with(api: FakeStatementExecution, timeout_s: int = 60) -> DatabricksSQLResource:
    resource = DatabricksSQLResource(warehouse_id="wh-1", statement_timeout_s=timeout_s)
    workspace = SimpleNamespace(
        get_client=lambda: SimpleNamespace(
            workspace_client=SimpleNamespace(statement_execution=api)
        )
    )
    object.__setattr__(resource, "workspace", workspace)
    return resource


def test_a_statement_is_polled_until_it_succeeds(monkeypatch) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    api = FakeStatementExecution(
        [StatementState.PENDING, StatementState.RUNNING, StatementState.SUCCEEDED]
    )
    assert resource_with(api).execute("SELECT count(*) FROM t") == [["42"]]


@pytest.mark.parametrize(
    "state", [StatementState.FAILED, StatementState.CANCELED, StatementState.CLOSED]
)
def test_every_failure_state_is_a_clear_error(monkeypatch, state: StatementState) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    api = FakeStatementExecution([state], error=("PERMISSION_DENIED", "no USE CATALOG on main"))
    with pytest.raises(StatementError) as error:
        resource_with(api).execute("CREATE SCHEMA x")
    message = str(error.value)
    assert state.value in message and "wh-1" in message
    assert "PERMISSION_DENIED: no USE CATALOG on main" in message


def test_a_statement_that_runs_too_long_is_canceled(monkeypatch) -> None:
    clock = iter(range(0, 10_000, 50))
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    monkeypatch.setattr("time.sleep", lambda _: None)
    api = FakeStatementExecution([StatementState.RUNNING])
    with pytest.raises(StatementError, match="did not finish within 60s"):
        resource_with(api, timeout_s=60).execute("SELECT 1")
    assert api.canceled == ["stmt-1"]


def test_the_key_checksum_uses_functions_both_engines_have() -> None:
    databricks = key_checksum_sql("databricks", "`main`.`amperity`.`c`", ["amperity_id"])
    bigquery = key_checksum_sql("bigquery", "`p.d.c`", ["amperity_id"])
    assert databricks == (
        "SELECT COUNT(*), BIT_XOR(CAST(CONV(SUBSTR(MD5(CAST(amperity_id AS STRING)), 1, 15), "
        "16, 10) AS BIGINT)) FROM `main`.`amperity`.`c`"
    )
    for sql, dialect in [(databricks, "databricks"), (bigquery, "bigquery")]:
        parsed = sqlglot.parse_one(sql, read=dialect)
        functions = {type(node).__name__ for node in parsed.find_all(sqlglot.exp.Func)}
        assert {"Count", "BitwiseXorAgg", "MD5", "Substring"} <= functions


def test_a_composite_key_is_joined_with_a_separator() -> None:
    sql = key_checksum_sql("duckdb", "t", ["order_id", "line"])
    assert "CONCAT(CAST(order_id AS VARCHAR), '|', CAST(line AS VARCHAR))" in sql
