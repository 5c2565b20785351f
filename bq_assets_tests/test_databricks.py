"""The Databricks hop: generated SQL and statement execution.

What these tests prove, and what they do not: the statements are compared with golden strings
whose option names are cited from Databricks' documentation; sqlglot's databricks dialect fully
parses the `CREATE SCHEMA` / `CREATE OR REPLACE VIEW` statements, and only *tokenizes* the Unity
Catalog DDL it has no grammar for (`CREATE CONNECTION`, `ALTER CONNECTION`, `CREATE FOREIGN
CATALOG`, `CREATE TABLE … USING bigquery`). Statement execution, drift detection and
cancellation run against ``FakeStatementExecution``, a small named fake of the Statement
Execution API; the drift check reads ``FakeCatalogsAPI``, a named fake of Unity Catalog's
catalogs API (no Databricks emulator exists). The statements Spark can run (schema, view, checks)
run on the Spark stand-in in the stack suites (test_pipeline.py, test_checks_catch.py,
test_key_checksum.py). Only the opt-in live test (test_live.py) runs the Unity Catalog DDL on a
real SQL warehouse."""

from __future__ import annotations

import ast
import http.server
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pyarrow as pa
import pytest
import sqlglot
from dagster_databricks import DatabricksClientResource
from databricks.sdk.errors import NotFound, TemporarilyUnavailable
from databricks.sdk.service.catalog import CatalogInfo
from databricks.sdk.service.sql import (
    ColumnInfo,
    ExecuteStatementRequestOnWaitTimeout,
    ResultData,
    ResultManifest,
    ResultSchema,
    ServiceError,
    ServiceErrorCode,
    StatementResponse,
    StatementState,
    StatementStatus,
)

from bq_assets.engine.databricks_sql import (
    DriftError,
    foreign_catalog_expectation,
    publish_statements,
    table_name,
)
from bq_assets.engine.key_checksum import key_checksum_sql, same_column_names
from bq_assets.exports.fields import ExportSpecError
from bq_assets.exports.spec import load_spec
from bq_assets.factory import build_definitions, hop_asset
from bq_assets.local.federation import federation_schema
from bq_assets.local.resources import LocalBigQueryResource
from bq_assets.local.spark_warehouse import SparkDatabricksResource
from bq_assets.resources import databricks as production_databricks
from bq_assets.resources.databricks import (
    BigQueryTable,
    DatabricksSQLResource,
    StatementError,
    TableName,
)
from bq_assets.settings import databricks_client
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
        "CREATE OR REPLACE VIEW `main`.`amperity`.`customer_360` (`amperity_id`, `email`) AS "
        "SELECT `amperity_id`, `email` FROM `bigquery`.`amperity_exports`.`customer_360`",
    ]


def test_the_view_carries_the_spec_description_as_its_comment(tmp_path: Path) -> None:
    """``CREATE VIEW … COMMENT view_comment AS query`` ("CREATE VIEW",
    https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-syntax-ddl-create-view); the
    text runs on Spark in test_checks_catch.py, where ``view_matches_spec`` reads it back."""
    (tmp_path / "c.sql").write_text("SELECT amperity_id FROM customer_360")
    (tmp_path / "c.yaml").write_text(
        'description: "Amperity\'s profiles"\nprimary_key: [amperity_id]\ncadence: daily\n'
    )
    view = publish_statements(load_spec(tmp_path / "c.yaml"), SOURCE, "s", "k")[-1]
    assert view == (
        "CREATE OR REPLACE VIEW `main`.`amperity`.`c` (`amperity_id`) COMMENT "
        "'Amperity\\'s profiles' AS SELECT `amperity_id` FROM "
        "`bigquery`.`amperity_exports`.`customer_360`"
    )
    assert [text for kind, text in tokens(view) if kind == "STRING"] == ["Amperity's profiles"]


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


def test_external_mode_is_refused_when_the_code_location_loads(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, "databricks: {mode: external}\n")
    warehouse = resource_with(FakeStatementExecution([StatementState.SUCCEEDED]))
    with pytest.raises(ExportSpecError) as error:
        build_definitions([spec], {"databricks": warehouse}, dg.DefaultScheduleStatus.STOPPED)
    message = str(error.value)
    assert str(spec.spec_file) in message and "databricks.mode: external" in message
    assert "legacy" in message and "mode: federation" in message
    # The Spark stand-in is a SQL warehouse too: no `USING bigquery` connector there either.
    stand_in = SparkDatabricksResource(
        local_stack_dir=str(tmp_path),
        warehouse_dir=str(tmp_path),
        bigquery=LocalBigQueryResource(local_stack_dir=str(tmp_path)),
    )
    with pytest.raises(ExportSpecError, match=r"databricks\.mode: external"):
        refuse_unrunnable_specs([spec], stand_in)


def test_the_stand_in_is_a_local_subclass_and_production_holds_none_of_it() -> None:
    """Stages and checks type-hint the production resource; the stand-in is one of it, and
    overrides only what runs a statement and how it is named. The production module imports neither the local stack
    nor Spark."""
    tree = ast.parse(Path(production_databricks.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not [m for m in imported if m.startswith(("bq_assets.local", "duckdb", "pyspark"))]
    assert issubclass(SparkDatabricksResource, DatabricksSQLResource)
    overridden = {
        name
        for name in vars(SparkDatabricksResource)
        if not name.startswith(("_", "model_")) and name in vars(DatabricksSQLResource)
    }
    assert overridden == {"engine", "endpoint", "run", "foreign_catalog"}
    assert DatabricksSQLResource().runnable_modes == ("federation",)


def test_the_stand_in_maps_bignumeric_as_federation_does_or_refuses_it() -> None:
    """Lakehouse Federation: BIGNUMERIC → DecimalType, scale from ``bigNumericDefaultScale``
    (https://docs.databricks.com/aws/en/query-federation/bigquery#data-type-mappings)."""
    schema = pa.schema(
        [("id", pa.int64()), ("big", pa.decimal256(76, 38)), ("n", pa.decimal128(38, 9))]
    )
    with pytest.raises(StatementError) as error:
        federation_schema(schema, {}, "projects/p/datasets/d/tables/t")
    assert "BIGNUMERIC columns big hold up to 76 digits" in str(error.value)
    assert "projects/p/datasets/d/tables/t" in str(error.value)
    mapped = federation_schema(schema, {"bigNumericDefaultScale": "9"}, "t")
    assert mapped.field("big").type == pa.decimal128(38, 9)
    assert mapped.field("n").type == pa.decimal128(38, 9)


def test_the_stand_in_maps_every_other_bigquery_type_as_federation_does() -> None:
    arrow = {
        "TIMESTAMP": pa.timestamp("us", tz="UTC"),
        "DATETIME": pa.timestamp("us"),
        "TIME": pa.time64("us"),
        "JSON": pa.string(),
        "ARRAY": pa.list_(pa.int64()),
        "STRUCT": pa.struct([("a", pa.int64())]),
        "BYTES": pa.binary(),
        "DATE": pa.date32(),
    }
    mapped = federation_schema(pa.schema(list(arrow.items())), {}, "t")
    assert [str(f.type) for f in mapped] == [
        "timestamp[us, tz=UTC]",
        "timestamp[us, tz=UTC]",
        "timestamp[us, tz=UTC]",
        "string",
        "string",
        "string",
        "binary",
        "date32[day]",
    ]


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
    """A named fake of ``WorkspaceClient.statement_execution`` (the Statement Execution API,
    https://docs.databricks.com/api/workspace/statementexecution): scripted states, recorded calls,
    and answers in the documented response form (``manifest.schema.columns``, the first chunk in
    ``result``, later chunks by ``next_chunk_index``). ``answers``: statement prefix → (columns,
    chunks of rows)."""

    states: list[StatementState]
    error: tuple[str, str] | None = None
    answers: dict[str, tuple[list[str], list[list[list[str]]]]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    chunk_requests: list[tuple[str, int]] = field(default_factory=list)
    fail_polls: int = 0

    def _answer(self) -> tuple[list[str], list[list[list[str]]]]:
        statement = self.executed[-1]
        for prefix, answer in self.answers.items():
            if statement.startswith(prefix):
                return answer
        return ["count(1)"], [[["42"]]]

    def _chunk(self, index: int) -> ResultData:
        chunks = self._answer()[1]
        return ResultData(
            chunk_index=index,
            data_array=chunks[index],
            next_chunk_index=index + 1 if index + 1 < len(chunks) else None,
        )

    def _response(self) -> StatementResponse:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        error = (
            ServiceError(error_code=ServiceErrorCode(self.error[0]), message=self.error[1])
            if self.error
            else None
        )
        columns, chunks = self._answer()
        succeeded = state == StatementState.SUCCEEDED
        return StatementResponse(
            statement_id=f"stmt-{len(self.executed)}",
            status=StatementStatus(state=state, error=error),
            manifest=ResultManifest(
                schema=ResultSchema(
                    column_count=len(columns),
                    columns=[ColumnInfo(name=c, position=i) for i, c in enumerate(columns)],
                ),
                total_chunk_count=len(chunks),
                truncated=False,
            )
            if succeeded
            else None,
            result=self._chunk(0) if succeeded else None,
        )

    def execute_statement(self, statement: str, warehouse_id: str, **options):
        self.executed.append(statement)
        self.requests.append({"statement": statement, "warehouse_id": warehouse_id, **options})
        return self._response()

    def get_statement(self, statement_id: str):
        if self.fail_polls:
            self.fail_polls -= 1
            raise TemporarilyUnavailable("the workspace is restarting")
        return self._response()

    def get_statement_result_chunk_n(self, statement_id: str, chunk_index: int) -> ResultData:
        self.chunk_requests.append((statement_id, chunk_index))
        return self._chunk(chunk_index)

    def cancel_execution(self, statement_id: str) -> None:
        self.canceled.append(statement_id)


@dataclass
class FakeCatalogsAPI:
    """A named fake of ``WorkspaceClient.catalogs`` (Unity Catalog's catalogs API, "Get a catalog",
    ``GET /api/2.1/unity-catalog/catalogs/{name}``,
    https://docs.databricks.com/api/workspace/catalogs/get): answers with ``CatalogInfo`` built by
    the SDK from the documented JSON form (``connection_name``, ``options`` as a map)."""

    catalogs: dict[str, dict] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def get(self, name: str) -> CatalogInfo:
        self.asked.append(name)
        if name not in self.catalogs:
            raise NotFound(f"Catalog '{name}' does not exist.")
        return CatalogInfo.from_dict(self.catalogs[name])


def foreign_catalog_json(connection: str, options: dict[str, str]) -> dict:
    """A catalog as the catalogs API documents its JSON (the fields this project reads and a
    few it does not)."""
    return {
        "name": "bigquery",
        "full_name": "bigquery",
        "catalog_type": "FOREIGN_CATALOG",
        "securable_type": "CATALOG",
        "connection_name": connection,
        "options": options,
        "owner": "data-eng",
        "metastore_id": "11111111-2222-3333-4444-555555555555",
    }


def resource_with(
    api: FakeStatementExecution, timeout_s: int = 60, catalogs: FakeCatalogsAPI | None = None
) -> DatabricksSQLResource:
    resource = DatabricksSQLResource(warehouse_id="wh-1", statement_timeout_s=timeout_s)
    workspace = SimpleNamespace(
        host="https://adb-1.azuredatabricks.net",
        get_client=lambda: SimpleNamespace(
            workspace_client=SimpleNamespace(
                statement_execution=api, catalogs=catalogs or FakeCatalogsAPI()
            )
        ),
    )
    object.__setattr__(resource, "workspace", workspace)
    return resource


def test_a_statement_is_polled_until_it_succeeds(monkeypatch) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    api = FakeStatementExecution(
        [StatementState.PENDING, StatementState.RUNNING, StatementState.SUCCEEDED]
    )
    assert resource_with(api).execute("SELECT count(*) FROM t") == [["42"]]
    (request,) = api.requests
    # Documented bounds: wait_timeout 0s or 5 to 50 s; CONTINUE keeps the statement running.
    assert request["wait_timeout"] == "30s"
    assert request["on_wait_timeout"] == ExecuteStatementRequestOnWaitTimeout.CONTINUE


def test_every_chunk_of_a_result_is_read_and_columns_come_from_the_manifest() -> None:
    api = FakeStatementExecution(
        [StatementState.SUCCEEDED],
        answers={"SELECT id": (["id", "Email"], [[["1", "a"]], [["2", None]], [["3", "c"]]])},
    )
    result = resource_with(api).run("SELECT id, Email FROM t")
    assert result.columns == ["id", "Email"]
    assert result.rows == [["1", "a"], ["2", None], ["3", "c"]]
    assert api.chunk_requests == [("stmt-1", 1), ("stmt-1", 2)]


def test_column_names_come_from_a_query_that_reads_no_row() -> None:
    """Spark has no information_schema; the result manifest names the columns on both."""
    api = FakeStatementExecution(
        [StatementState.SUCCEEDED], answers={"SELECT *": (["ID", "email"], [[]])}
    )
    name = TableName("Main", "Amperity", "Customer_360")
    assert resource_with(api).column_names(name) == ["ID", "email"]
    assert api.executed == ["SELECT * FROM `Main`.`Amperity`.`Customer_360` LIMIT 0"]
    assert same_column_names(["amperity_id", "Email"], ["Amperity_ID", "email"])
    assert not same_column_names(["email", "amperity_id"], ["amperity_id", "email"])


def test_a_truncated_result_fails_rather_than_pass_for_the_whole() -> None:
    api = FakeStatementExecution([StatementState.SUCCEEDED])
    original = api._response

    def truncated() -> StatementResponse:
        response = original()
        response.manifest.truncated = True
        return response

    api._response = truncated
    with pytest.raises(StatementError, match="truncated result"):
        resource_with(api).execute("SELECT * FROM t")


@pytest.mark.parametrize(
    "state", [StatementState.FAILED, StatementState.CANCELED, StatementState.CLOSED]
)
def test_every_failure_state_is_a_clear_error(monkeypatch, state: StatementState) -> None:
    monkeypatch.setattr("time.sleep", lambda _: None)
    api = FakeStatementExecution(
        [state], error=("BAD_REQUEST", "[INSUFFICIENT_PERMISSIONS] no USE CATALOG on main")
    )
    with pytest.raises(StatementError) as error:
        resource_with(api).execute("CREATE SCHEMA x")
    message = str(error.value)
    assert state.value in message and "wh-1" in message
    assert "BAD_REQUEST: [INSUFFICIENT_PERMISSIONS] no USE CATALOG on main" in message
    assert "ServiceErrorCode" not in message


def test_a_statement_that_runs_too_long_is_canceled_once(monkeypatch) -> None:
    clock = iter(range(0, 10_000, 50))
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    monkeypatch.setattr("time.sleep", lambda _: None)
    api = FakeStatementExecution([StatementState.RUNNING])
    with pytest.raises(StatementError, match="did not finish within 60s") as error:
        resource_with(api, timeout_s=60).execute("SELECT 1")
    assert api.canceled == ["stmt-1"]
    assert error.value.retryable


def test_a_statement_whose_status_poll_fails_is_canceled_and_the_step_may_retry(
    monkeypatch,
) -> None:
    """A status poll that fails while the statement still runs must not leave it running."""
    monkeypatch.setattr("time.sleep", lambda _: None)
    api = FakeStatementExecution([StatementState.RUNNING], fail_polls=1)
    with pytest.raises(StatementError, match="lost track of statement stmt-1") as error:
        resource_with(api).execute("SELECT 1")
    assert api.canceled == ["stmt-1"]
    assert error.value.retryable


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


def publish(
    tmp_path: Path,
    databricks_yaml: str,
    api: FakeStatementExecution,
    catalogs: FakeCatalogsAPI,
    secret=("s", "k"),
):
    spec = spec_with(tmp_path, databricks_yaml)
    statements = publish_statements(spec, SOURCE, *secret)
    return resource_with(api, catalogs=catalogs).publish(
        statements, foreign_catalog_expectation(spec, SOURCE), SOURCE, table_name(spec)
    )


def test_a_foreign_catalog_that_matches_the_spec_passes_and_the_view_is_replaced(
    tmp_path: Path,
) -> None:
    api = FakeStatementExecution([StatementState.SUCCEEDED])
    catalogs = FakeCatalogsAPI(
        {
            "bigquery": foreign_catalog_json(
                "BigQuery_Connection",
                {"dataProjectId": "acme-prod", "materializationDataset": "tmp"},
            )
        }
    )
    notes = publish(
        tmp_path,
        "databricks: {foreign_catalog_options: {materializationDataset: tmp}}\n",
        api,
        catalogs,
    )
    assert notes == ["foreign catalog bigquery: matches the spec"]
    assert catalogs.asked == ["bigquery"]
    kinds = [" ".join(s.split()[:3]) for s in api.executed]
    assert kinds == [
        "CREATE CONNECTION IF",
        "ALTER CONNECTION `bigquery_connection`",
        "CREATE FOREIGN CATALOG",
        "CREATE SCHEMA IF",
        "CREATE OR REPLACE",
    ]


@pytest.mark.parametrize(
    "options",
    [{"dataProjectId": "acme-staging"}, {"dataprojectid": "acme-staging"}],
    ids=["as-declared", "lower-cased-keys"],
)
def test_a_foreign_catalog_over_another_project_fails_with_a_diff_before_the_view(
    tmp_path: Path, options: dict
) -> None:
    api = FakeStatementExecution([StatementState.SUCCEEDED])
    catalogs = FakeCatalogsAPI({"bigquery": foreign_catalog_json("bigquery_connection", options)})
    with pytest.raises(DriftError) as error:
        publish(tmp_path, "", api, catalogs)
    message = str(error.value)
    assert "dataProjectId: spec says 'acme-prod', Databricks has 'acme-staging'" in message
    assert "DROP CATALOG `bigquery`" in message and "databricks.foreign_catalog" in message
    assert not any(s.startswith("CREATE OR REPLACE VIEW") for s in api.executed)


def test_a_foreign_catalog_on_another_connection_or_missing_an_option_is_drift(
    tmp_path: Path,
) -> None:
    api = FakeStatementExecution([StatementState.SUCCEEDED])
    catalogs = FakeCatalogsAPI(
        {"bigquery": foreign_catalog_json("old_connection", {"dataProjectId": "acme-prod"})}
    )
    with pytest.raises(DriftError) as error:
        publish(
            tmp_path,
            "databricks: {foreign_catalog_options: {materializationDataset: t}}\n",
            api,
            catalogs,
        )
    assert "connection: spec says 'bigquery_connection', Databricks has 'old_connection'" in str(
        error.value
    )
    assert "materializationDataset: spec says 't', Databricks has None" in str(error.value)


def test_a_catalog_the_api_does_not_know_is_drift_not_a_pass(tmp_path: Path) -> None:
    api = FakeStatementExecution([StatementState.SUCCEEDED])
    with pytest.raises(DriftError, match="Databricks has None"):
        publish(tmp_path, "", api, FakeCatalogsAPI())


def test_the_drift_check_reads_the_catalogs_api_over_http_as_documented(
    tmp_path: Path,
) -> None:
    """The real SDK client against a named fake HTTP endpoint of the catalogs API: the request is
    ``GET /api/2.1/unity-catalog/catalogs/{name}`` and the documented JSON answer is read as
    structured data (https://docs.databricks.com/api/workspace/catalogs/get)."""
    requests: list[tuple[str, str]] = []
    body = json.dumps(
        foreign_catalog_json("bigquery_connection", {"dataProjectId": "acme-prod"})
    ).encode()

    class FakeUnityCatalogEndpoint(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append((self.command, self.path))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), FakeUnityCatalogEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        resource = DatabricksSQLResource(
            workspace=DatabricksClientResource(
                host=f"http://127.0.0.1:{server.server_port}", token="dapi-test"
            ),
            warehouse_id="wh-1",
        )
        info = resource.foreign_catalog("bigquery")
    finally:
        server.shutdown()
    assert requests == [("GET", "/api/2.1/unity-catalog/catalogs/bigquery")]
    assert info is not None and info.connection_name == "bigquery_connection"
    assert info.options == {"dataProjectId": "acme-prod"}


def test_a_rotated_secret_or_changed_connection_option_is_reapplied_every_run(
    tmp_path: Path,
) -> None:
    catalogs = FakeCatalogsAPI(
        {"bigquery": foreign_catalog_json("bigquery_connection", {"dataProjectId": "acme-prod"})}
    )
    first = FakeStatementExecution([StatementState.SUCCEEDED])
    publish(tmp_path, "", first, catalogs, secret=("bq_assets", "key_v1"))
    second = FakeStatementExecution([StatementState.SUCCEEDED])
    publish(
        tmp_path,
        "databricks: {connection_options: {newOption: x}}\n",
        second,
        catalogs,
        ("bq_assets", "key_v2"),
    )
    (alter,) = [s for s in second.executed if s.startswith("ALTER CONNECTION")]
    assert alter == (
        "ALTER CONNECTION `bigquery_connection` OPTIONS (GoogleServiceAccountKeyJson "
        "secret('bq_assets', 'key_v2'), newOption 'x')"
    )


def test_only_databricks_host_uses_the_sdk_default_credentials(tmp_path: Path, monkeypatch) -> None:
    """Issue 23, finding 3: with only DATABRICKS_HOST set ("SDK unified authentication",
        https://docs.databricks.com/aws/en/dev-tools/auth/unified-auth), the client is made by the
        SDK's default credential chain, here a named profile in a config file
    (DATABRICKS_CONFIG_FILE, DATABRICKS_CONFIG_PROFILE);
        dagster-databricks alone raised "Must provide one of token, oauth_credentials, …"."""
    for variable in ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET"):
        monkeypatch.delenv(variable, raising=False)
    host = "https://dbc-1.cloud.databricks.com"
    config = tmp_path / "databrickscfg"
    config.write_text(f"[deploy]\nhost = {host}\ntoken = dapi-from-profile\n")
    monkeypatch.setenv("DATABRICKS_HOST", host)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(config))
    monkeypatch.setenv("DATABRICKS_CONFIG_PROFILE", "deploy")
    with dg.build_resources({"workspace": databricks_client()}) as built:
        client = built.workspace.workspace_client
    assert client.config.authenticate()["Authorization"] == "Bearer dapi-from-profile"
    assert client.config.host == host


def test_the_key_checksum_hashes_a_canonical_string_with_functions_both_engines_have() -> None:
    databricks = key_checksum_sql(
        "databricks", "`main`.`amperity`.`c`", [("amperity_id", "STRING")]
    )
    bigquery = key_checksum_sql("bigquery", "`p.d.c`", [("amperity_id", "STRING")])
    assert databricks == (
        "SELECT COUNT(*), BIT_XOR(CAST(CONV(SUBSTR(MD5(COALESCE(CONCAT('v', `amperity_id`), "
        "'n')), 1, 15), 16, 10) AS BIGINT)) FROM `main`.`amperity`.`c`"
    )
    for sql, dialect in [(databricks, "databricks"), (bigquery, "bigquery")]:
        parsed = sqlglot.parse_one(sql, read=dialect)
        functions = {type(node).__name__ for node in parsed.find_all(sqlglot.exp.Func)}
        assert {"Count", "BitwiseXorAgg", "MD5", "Substring", "Coalesce"} <= functions


@pytest.mark.parametrize("dialect", ["databricks", "bigquery"])
def test_the_key_checksum_quotes_a_key_named_like_a_reserved_word(dialect: str) -> None:
    sql = key_checksum_sql(dialect, "t", [("order", "INT64"), ("select", "TIMESTAMP")])
    parsed = sqlglot.parse_one(sql, read=dialect)
    assert {column.name for column in parsed.find_all(sqlglot.exp.Column)} == {"order", "select"}


def test_drift_fails_the_databricks_step_once_with_the_diff(tmp_path: Path) -> None:
    """Through Dagster: the step fails with the diff as its message and is not retried."""
    spec = spec_with(tmp_path, "")
    api = FakeStatementExecution([StatementState.SUCCEEDED])
    catalogs = FakeCatalogsAPI(
        {"bigquery": foreign_catalog_json("bigquery_connection", {"dataProjectId": "old"})}
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
            resources={
                "databricks": dg.ResourceDefinition.hardcoded_resource(
                    resource_with(api, catalogs=catalogs)
                )
            },
            raise_on_error=False,
        )
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "dataProjectId: spec says 'acme-prod', Databricks has 'old'" in message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert not any(s.startswith("CREATE OR REPLACE VIEW") for s in api.executed)
