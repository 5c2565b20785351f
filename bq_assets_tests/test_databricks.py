"""The Databricks hop: generated SQL and statement execution.

What these tests prove, and what they do not: the statements are compared with golden strings
whose option names are cited from Databricks' documentation; sqlglot's databricks dialect fully
parses the `CREATE SCHEMA` / `CREATE OR REPLACE VIEW` statements, and only *tokenizes* the Unity
Catalog DDL it has no grammar for (`CREATE CONNECTION`, `ALTER CONNECTION`, `CREATE FOREIGN
CATALOG`, `CREATE TABLE … USING bigquery`). Statement execution, drift detection and
cancellation run against ``FakeStatementExecution``, a small named fake of the Statement
Execution API (no Databricks emulator exists). Only the opt-in live test (test_live.py) runs the
DDL on a real SQL warehouse."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pyarrow as pa
import pytest
import sqlglot
from databricks.sdk.service.sql import StatementState

from bq_assets.engine.databricks_sql import (
    DriftError,
    drift_probes,
    publish_checking_drift,
    publish_statements,
)
from bq_assets.engine.key_checksum import key_checksum_sql, same_column_names
from bq_assets.exports.fields import ExportSpecError
from bq_assets.exports.spec import load_spec
from bq_assets.factory import build_definitions, hop_asset
from bq_assets.local.databricks import LocalDatabricksResource, refuse_what_duckdb_cannot_hold
from bq_assets.local.resources import LocalBigQueryResource
from bq_assets.resources import databricks as production_databricks
from bq_assets.resources.databricks import (
    BigQueryTable,
    DatabricksSQLResource,
    StatementError,
    TableName,
)
from bq_assets.stages.databricks import refuse_unrunnable_specs
from bq_assets.translator import ExportTranslator

SOURCE = BigQueryTable("acme-prod", "amperity_exports", "customer_360")


def spec_with(tmp_path: Path, databricks_yaml: str):
    (tmp_path / "customer_360.sql").write_text("SELECT amperity_id, email FROM customer_360")
    path = tmp_path / "customer_360.yaml"
    path.write_text(f"primary_key: [amperity_id]\ncadence: daily\n{databricks_yaml}")
    return load_spec(path)


def canonical(statement: str) -> str:
    (parsed,) = sqlglot.parse(statement, read="databricks")
    return parsed.sql(dialect="databricks")


# Option names and statement shapes, and where each comes from:
# - `CREATE CONNECTION … TYPE bigquery OPTIONS (GoogleServiceAccountKeyJson …)` and the foreign
#   catalog's `dataProjectId` (with `materializationDataset`, `bigNumericDefaultScale` as further
#   options): "Run federated queries on Google BigQuery",
#   https://docs.databricks.com/aws/en/query-federation/bigquery and
#   https://learn.microsoft.com/en-us/azure/databricks/query-federation/bigquery
# - `secret('<scope>', '<key>')` as an option value and `ALTER CONNECTION … OPTIONS (…)`
#   ("Replaces the existing list of options with a new list of options"): "ALTER CONNECTION",
#   https://docs.databricks.com/sql/language-manual/sql-ref-syntax-ddl-alter-connection.html
# - `CREATE FOREIGN CATALOG [IF NOT EXISTS] … USING CONNECTION … OPTIONS (…)`: "CREATE CATALOG",
#   https://docs.databricks.com/sql/language-manual/sql-ref-syntax-ddl-create-catalog.html
# - `USING bigquery` with `table`, `project`, `parentProject`: "Google BigQuery" (legacy),
#   https://docs.databricks.com/aws/en/connect/external-systems/bigquery; `credentials` (the
#   base64 key): the Spark BigQuery connector's README,
#   https://github.com/GoogleCloudDataproc/spark-bigquery-connector
CONNECTION_OPTIONS = "OPTIONS (GoogleServiceAccountKeyJson secret('bq_assets', 'bigquery_key'))"


def test_federation_creates_connection_foreign_catalog_and_view(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, "databricks: {catalog: main, schema: amperity}\n")
    statements = publish_statements(spec, SOURCE, "bq_assets", "bigquery_key")
    assert statements == [
        f"CREATE CONNECTION IF NOT EXISTS `bigquery_connection` TYPE bigquery {CONNECTION_OPTIONS}",
        f"ALTER CONNECTION `bigquery_connection` {CONNECTION_OPTIONS}",
        "CREATE FOREIGN CATALOG IF NOT EXISTS `bigquery` USING CONNECTION `bigquery_connection` "
        "OPTIONS (dataProjectId 'acme-prod')",
        "CREATE SCHEMA IF NOT EXISTS `main`.`amperity`",
        "CREATE OR REPLACE VIEW `main`.`amperity`.`customer_360` AS "
        "SELECT * FROM `bigquery`.`amperity_exports`.`customer_360`",
    ]


def test_a_spec_passes_further_documented_options_through(tmp_path: Path) -> None:
    spec = spec_with(
        tmp_path,
        "databricks:\n"
        "  connection_options: {someNewOption: 'on'}\n"
        "  foreign_catalog_options: {materializationDataset: bq_tmp, bigNumericDefaultScale: '9'}\n",
    )
    statements = publish_statements(spec, SOURCE, "s", "k")
    assert statements[0].endswith(
        "OPTIONS (GoogleServiceAccountKeyJson secret('s', 'k'), someNewOption 'on')"
    )
    assert statements[1].endswith("someNewOption 'on')")
    assert statements[2].endswith(
        "OPTIONS (dataProjectId 'acme-prod', materializationDataset 'bq_tmp', "
        "bigNumericDefaultScale '9')"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("{'bad name': x}", "not a valid option name"),
        ("{dataProjectId: other}", "set by the pipeline"),
        ("{GoogleServiceAccountKeyJson: x}", "set by the pipeline"),
        ("{clientSecret: abc}", "looks like a credential"),
        ("{note: '-----BEGIN PRIVATE KEY-----'}", "looks like a credential"),
        ("{bigNumericDefaultScale: 9}", "valid string"),
    ],
)
def test_pass_through_options_are_identifiers_with_string_values_and_never_secrets(
    tmp_path: Path, options: str, message: str
) -> None:
    with pytest.raises(ExportSpecError, match=message) as error:
        spec_with(tmp_path, f"databricks: {{foreign_catalog_options: {options}}}\n")
    assert "databricks.foreign_catalog_options" in str(error.value)


def test_a_pass_through_value_stays_one_string_literal(tmp_path: Path) -> None:
    crafted = "x') ; DROP CATALOG main; -- \\' \\"
    spec = spec_with(tmp_path, f"databricks: {{foreign_catalog_options: {{note: {crafted!r}}}}}\n")
    statement = publish_statements(spec, SOURCE, "s", "k")[2]
    assert [t for t in tokens(statement) if t[0] == "SEMICOLON"] == []
    literals = [text for kind, text in tokens(statement) if kind == "STRING"]
    assert literals == ["acme-prod", crafted]


def test_external_mode_creates_a_using_bigquery_table(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, "databricks: {mode: external, table: c360}\n")
    statements = publish_statements(spec, SOURCE, "s", "k")
    assert statements[-1] == (
        "CREATE TABLE IF NOT EXISTS `main`.`amperity`.`c360` USING bigquery OPTIONS ("
        "table = 'amperity_exports.customer_360', project = 'acme-prod', "
        "parentProject = 'acme-prod', credentials = secret('s', 'k_base64'))"
    )


def test_production_refuses_external_mode_when_the_code_location_loads(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, "databricks: {mode: external}\n")
    warehouse = resource_with(FakeStatementExecution([StatementState.SUCCEEDED]))
    with pytest.raises(ExportSpecError) as error:
        build_definitions([spec], {"databricks": warehouse}, dg.DefaultScheduleStatus.STOPPED)
    message = str(error.value)
    assert str(spec.spec_file) in message and "databricks.mode: external" in message
    assert "legacy" in message and "mode: federation" in message
    # The local stand-in runs no DDL, so it takes either mode.
    stand_in = LocalDatabricksResource(
        local_warehouse_dir=str(tmp_path),
        bigquery=LocalBigQueryResource(local_stack_dir=str(tmp_path)),
    )
    refuse_unrunnable_specs([spec], stand_in)


def test_the_stand_in_is_a_local_subclass_and_production_holds_none_of_it() -> None:
    """Stages and checks type-hint the production resource; the stand-in is one of it. The
    production module imports neither the local stack nor DuckDB."""
    tree = ast.parse(Path(production_databricks.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not [m for m in imported if m.startswith(("bq_assets.local", "duckdb"))]
    assert issubclass(LocalDatabricksResource, DatabricksSQLResource)
    assert DatabricksSQLResource().runnable_modes == ("federation",)


def test_the_stand_in_refuses_bignumeric_columns_rather_than_turn_them_into_doubles() -> None:
    schema = pa.schema(
        [("id", pa.int64()), ("big", pa.decimal256(76, 38)), ("n", pa.decimal128(38, 9))]
    )
    with pytest.raises(StatementError) as error:
        refuse_what_duckdb_cannot_hold(schema, "projects/p/datasets/d/tables/t")
    assert "BIGNUMERIC columns big have more digits" in str(error.value)
    assert "projects/p/datasets/d/tables/t" in str(error.value)
    refuse_what_duckdb_cannot_hold(pa.schema([("n", pa.decimal128(38, 9))]), "t")


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
    assert literals == [
        "amperity_exports.customer_360",
        "acme-prod",
        "acme-prod",
        "scope",
        "key_base64",
    ]
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
    """A fake of ``WorkspaceClient.statement_execution``: scripted states, recorded calls, and
    scripted answers (``answers``: statement prefix → result rows, e.g. for ``DESCRIBE``)."""

    states: list[StatementState]
    error: tuple[str, str] | None = None
    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)

    def _rows(self) -> list[list[str]]:
        statement = self.executed[-1]
        for prefix, rows in self.answers.items():
            if statement.startswith(prefix):
                return rows
        return [["42"]]

    def _response(self) -> SimpleNamespace:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        error = (
            SimpleNamespace(error_code=self.error[0], message=self.error[1]) if self.error else None
        )
        return SimpleNamespace(
            statement_id=f"stmt-{len(self.executed)}",
            status=SimpleNamespace(state=state, error=error),
            result=SimpleNamespace(data_array=self._rows())
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


@pytest.mark.parametrize(
    "interrupt",
    [KeyboardInterrupt, dg.DagsterExecutionInterruptedError],
    ids=["SIGINT", "terminate"],
)
def test_a_statement_is_canceled_when_the_run_is_terminated(monkeypatch, interrupt) -> None:
    """Dagster terminates a run by raising an interrupt in the step, wherever it waits."""

    def interrupted(_seconds: float) -> None:
        raise interrupt()

    monkeypatch.setattr("time.sleep", interrupted)
    api = FakeStatementExecution([StatementState.RUNNING])
    with pytest.raises(interrupt):
        resource_with(api).execute("SELECT pg_sleep(3600)")
    assert api.canceled == ["stmt-1"]


def describe_catalog(connection: str, options: str) -> list[list[str]]:
    """Rows shaped like ``DESCRIBE CATALOG EXTENDED`` (``info_name``, ``info_value``)."""
    return [
        ["Catalog Name", "bigquery"],
        ["Catalog Type", "Foreign"],
        ["Connection Name", connection],
        ["Options", options],
        ["Owner", "data-eng"],
    ]


def publish(tmp_path: Path, databricks_yaml: str, api: FakeStatementExecution, secret=("s", "k")):
    spec = spec_with(tmp_path, databricks_yaml)
    statements = publish_statements(spec, SOURCE, *secret)
    log = SimpleNamespace(warning=lambda _: None)
    return publish_checking_drift(
        resource_with(api).execute, statements, drift_probes(spec, SOURCE), log
    )


def test_a_foreign_catalog_that_matches_the_spec_passes_and_the_view_is_replaced(
    tmp_path: Path,
) -> None:
    api = FakeStatementExecution(
        [StatementState.SUCCEEDED],
        answers={
            "DESCRIBE CATALOG": describe_catalog(
                "BigQuery_Connection", "(dataProjectId 'acme-prod', materializationDataset 'tmp')"
            )
        },
    )
    notes = publish(
        tmp_path, "databricks: {foreign_catalog_options: {materializationDataset: tmp}}\n", api
    )
    assert notes == ["foreign catalog bigquery: matches the spec"]
    kinds = [" ".join(s.split()[:3]) for s in api.executed]
    assert kinds == [
        "CREATE CONNECTION IF",
        "ALTER CONNECTION `bigquery_connection`",
        "CREATE FOREIGN CATALOG",
        "DESCRIBE CATALOG EXTENDED",
        "CREATE SCHEMA IF",
        "CREATE OR REPLACE",
    ]


def test_a_foreign_catalog_over_another_project_fails_with_a_diff_before_the_view(
    tmp_path: Path,
) -> None:
    api = FakeStatementExecution(
        [StatementState.SUCCEEDED],
        answers={
            "DESCRIBE CATALOG": describe_catalog(
                "bigquery_connection", "dataProjectId=acme-staging"
            )
        },
    )
    with pytest.raises(DriftError) as error:
        publish(tmp_path, "", api)
    message = str(error.value)
    assert "dataProjectId: spec says 'acme-prod', Databricks has 'acme-staging'" in message
    assert "DROP CATALOG `bigquery`" in message and "databricks.foreign_catalog" in message
    assert not any(s.startswith("CREATE OR REPLACE VIEW") for s in api.executed)


def test_a_foreign_catalog_on_another_connection_or_missing_an_option_is_drift(
    tmp_path: Path,
) -> None:
    api = FakeStatementExecution(
        [StatementState.SUCCEEDED],
        answers={
            "DESCRIBE CATALOG": describe_catalog("old_connection", "{dataProjectId: acme-prod}")
        },
    )
    with pytest.raises(DriftError) as error:
        publish(
            tmp_path, "databricks: {foreign_catalog_options: {materializationDataset: t}}\n", api
        )
    assert "connection: spec says 'bigquery_connection', Databricks has 'old_connection'" in str(
        error.value
    )
    assert "materializationDataset: spec says 't', Databricks has None" in str(error.value)


def test_a_describe_without_options_still_verifies_the_connection(tmp_path: Path) -> None:
    rows = [["Catalog Name", "bigquery"], ["Connection Name", "bigquery_connection"]]
    api = FakeStatementExecution([StatementState.SUCCEEDED], answers={"DESCRIBE CATALOG": rows})
    notes = publish(tmp_path, "", api)
    assert notes == [
        "foreign catalog bigquery: DESCRIBE CATALOG EXTENDED `bigquery` shows no options; "
        "they are not verified",
        "foreign catalog bigquery: matches the spec",
    ]
    rows[1][1] = "elsewhere"
    with pytest.raises(DriftError, match="connection: spec says 'bigquery_connection'"):
        publish(
            tmp_path,
            "",
            FakeStatementExecution([StatementState.SUCCEEDED], answers={"DESCRIBE CATALOG": rows}),
        )


def test_a_rotated_secret_or_changed_connection_option_is_reapplied_every_run(
    tmp_path: Path,
) -> None:
    answers = {
        "DESCRIBE CATALOG": describe_catalog("bigquery_connection", "dataProjectId acme-prod")
    }
    first = FakeStatementExecution([StatementState.SUCCEEDED], answers=answers)
    publish(tmp_path, "", first, secret=("bq_assets", "key_v1"))
    second = FakeStatementExecution([StatementState.SUCCEEDED], answers=answers)
    publish(
        tmp_path,
        "databricks: {connection_options: {newOption: x}}\n",
        second,
        ("bq_assets", "key_v2"),
    )
    (alter,) = [s for s in second.executed if s.startswith("ALTER CONNECTION")]
    assert alter == (
        "ALTER CONNECTION `bigquery_connection` OPTIONS (GoogleServiceAccountKeyJson "
        "secret('bq_assets', 'key_v2'), newOption 'x')"
    )


def test_unity_catalog_names_are_compared_as_unity_catalog_stores_them() -> None:
    """UC stores object names in lower case and compares column names case-insensitively
    ("Names", https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-names)."""
    api = FakeStatementExecution(
        [StatementState.SUCCEEDED], answers={"SELECT column_name": [["ID"]]}
    )
    assert resource_with(api).column_names(TableName("Main", "Amperity", "Customer_360")) == ["ID"]
    assert "table_schema = 'amperity' AND table_name = 'customer_360'" in api.executed[-1]
    assert same_column_names(["amperity_id", "Email"], ["Amperity_ID", "email"])
    assert not same_column_names(["email", "amperity_id"], ["amperity_id", "email"])


def test_the_key_checksum_uses_functions_both_engines_have() -> None:
    databricks = key_checksum_sql("databricks", "`main`.`amperity`.`c`", ["amperity_id"])
    bigquery = key_checksum_sql("bigquery", "`p.d.c`", ["amperity_id"])
    assert databricks == (
        "SELECT COUNT(*), BIT_XOR(CAST(CONV(SUBSTR(MD5(CAST(`amperity_id` AS STRING)), 1, 15), "
        "16, 10) AS BIGINT)) FROM `main`.`amperity`.`c`"
    )
    for sql, dialect in [(databricks, "databricks"), (bigquery, "bigquery")]:
        parsed = sqlglot.parse_one(sql, read=dialect)
        functions = {type(node).__name__ for node in parsed.find_all(sqlglot.exp.Func)}
        assert {"Count", "BitwiseXorAgg", "MD5", "Substring"} <= functions


@pytest.mark.parametrize("dialect", ["databricks", "bigquery", "duckdb"])
def test_the_key_checksum_quotes_a_key_named_like_a_reserved_word(dialect: str) -> None:
    sql = key_checksum_sql(dialect, "t", ["order", "select"])
    parsed = sqlglot.parse_one(sql, read=dialect)
    assert {column.name for column in parsed.find_all(sqlglot.exp.Column)} == {"order", "select"}


def test_a_composite_key_is_joined_with_a_separator() -> None:
    sql = key_checksum_sql("duckdb", "t", ["order_id", "line"])
    assert 'CONCAT(CAST("order_id" AS VARCHAR), \'|\', CAST("line" AS VARCHAR))' in sql


def test_drift_fails_the_databricks_step_once_with_the_diff(tmp_path: Path) -> None:
    """Through Dagster: the step fails with the diff as its message and is not retried."""
    spec = spec_with(tmp_path, "")
    api = FakeStatementExecution(
        [StatementState.SUCCEEDED],
        answers={"DESCRIBE CATALOG": describe_catalog("bigquery_connection", "dataProjectId old")},
    )
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                dg.AssetKey(["bigquery", spec.name]),
                metadata={"dagster/table_name": str(SOURCE)},
            )
        )
        result = dg.materialize(
            [hop_asset(spec, "databricks", ExportTranslator())],
            instance=instance,
            resources={"databricks": dg.ResourceDefinition.hardcoded_resource(resource_with(api))},
            raise_on_error=False,
        )
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "dataProjectId: spec says 'acme-prod', Databricks has 'old'" in message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert not any(s.startswith("CREATE OR REPLACE VIEW") for s in api.executed)
