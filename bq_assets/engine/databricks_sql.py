"""The Databricks SQL that exposes a BigQuery table, generated from the export spec; how to
read back what Databricks says an existing object looks like (for drift); and running the
statements with a drift check after each that needs one. No Dagster; the warehouse is a
callable (``Execute``) the Databricks resource passes in."""

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bq_assets.engine.databricks_governance import column_list, select_list, tag_statements
from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import ExportSpec

#: Runs one statement on a SQL warehouse and returns its rows (as strings).
Execute = Callable[[str], list[list[str | None]]]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TableName:
    """A Unity Catalog three-part name. Parts are validated identifiers (see the export spec)."""

    catalog: str
    schema: str
    table: str

    def __post_init__(self) -> None:
        for part in (self.catalog, self.schema, self.table):
            if not _IDENTIFIER.fullmatch(part):
                raise ValueError(f"{part!r} is not a valid Databricks identifier")

    @property
    def quoted(self) -> str:
        return f"`{self.catalog}`.`{self.schema}`.`{self.table}`"

    def __str__(self) -> str:
        return f"{self.catalog}.{self.schema}.{self.table}"


@dataclass(frozen=True)
class BigQueryTable:
    project: str
    dataset: str
    table: str

    def __str__(self) -> str:
        return f"{self.project}.{self.dataset}.{self.table}"


# Option names, from Databricks' "Run federated queries on Google BigQuery" page
# (https://docs.databricks.com/aws/en/query-federation/bigquery,
#  https://learn.microsoft.com/en-us/azure/databricks/query-federation/bigquery):
# the connection takes the service-account key JSON as ``GoogleServiceAccountKeyJson`` (here
# always ``secret(...)``); the foreign catalog takes the BigQuery project as ``dataProjectId``
# (further documented options: ``materializationDataset``, ``bigNumericDefaultScale``).
CONNECTION_KEY_OPTION = "GoogleServiceAccountKeyJson"
DATA_PROJECT_OPTION = "dataProjectId"
# The legacy connector's table options (Databricks' archived "Google BigQuery" page,
# https://docs.databricks.com/aws/en/connect/external-systems/bigquery, and the Spark BigQuery
# connector's README: ``credentials`` is the base64-encoded service-account key).
EXTERNAL_CREDENTIALS_OPTION = "credentials"


class DriftError(BqAssetsError):
    """A Databricks object exists with settings other than the spec's, and cannot be updated."""


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _secret(scope: str, name: str) -> str:
    return f"secret({_literal(scope)}, {_literal(name)})"


def _options(generated: Mapping[str, str], extra: Mapping[str, str]) -> str:
    """``OPTIONS (…)`` text: generated options (already SQL) first, then the spec's literals."""
    parts = [f"{name} {sql}" for name, sql in generated.items()]
    parts += [f"{name} {_literal(value)}" for name, value in extra.items()]
    return "OPTIONS (" + ", ".join(parts) + ")"


def _comment(spec: ExportSpec) -> str:
    """`` COMMENT '<description>'`` for the view ("CREATE VIEW", view_comment:
    https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-syntax-ddl-create-view), or
    nothing when the spec has no description."""
    return f" COMMENT {_literal(spec.description)}" if spec.description else ""


def table_name(spec: ExportSpec) -> TableName:
    target = spec.databricks
    return TableName(target.catalog, target.schema_, spec.databricks_table)


def connection_options_sql(spec: ExportSpec, secret_scope: str, secret_name: str) -> str:
    return _options(
        {CONNECTION_KEY_OPTION: _secret(secret_scope, secret_name)},
        spec.databricks.connection_options,
    )


def foreign_catalog_options(spec: ExportSpec, source: BigQueryTable) -> dict[str, str]:
    """The options the foreign catalog must have (names as Databricks documents them)."""
    return {DATA_PROJECT_OPTION: source.project, **spec.databricks.foreign_catalog_options}


def view_statement(spec: ExportSpec, source: BigQueryTable) -> str:
    """The federation mode's view over the foreign table: every column named with its comment,
    the spec's description as the view's comment, a masked classification as Databricks'
    dynamic view (``bq_assets.engine.databricks_governance``). Its column list and select list
    come from the spec alone (what column lineage reads)."""
    target = spec.databricks
    return (
        f"CREATE OR REPLACE VIEW {table_name(spec).quoted}{column_list(spec)}{_comment(spec)} "
        f"AS SELECT {select_list(spec)} FROM "
        f"`{target.foreign_catalog}`.`{source.dataset}`.`{source.table}`"
    )


def publish_statements(
    spec: ExportSpec, source: BigQueryTable, secret_scope: str, secret_name: str
) -> list[str]:
    """The Databricks SQL that exposes ``source`` as the spec's table, in execution order."""
    target = spec.databricks
    name = table_name(spec)
    schema = f"`{name.catalog}`.`{name.schema}`"
    if target.mode == "federation":
        connection_options = connection_options_sql(spec, secret_scope, secret_name)
        catalog_options = _options({}, foreign_catalog_options(spec, source))
        return [
            f"CREATE CONNECTION IF NOT EXISTS `{target.connection}` TYPE bigquery "
            f"{connection_options}",
            # Re-applied every run: a rotated secret or a changed option takes effect
            # (ALTER CONNECTION … OPTIONS replaces the whole option list).
            f"ALTER CONNECTION `{target.connection}` {connection_options}",
            f"CREATE FOREIGN CATALOG IF NOT EXISTS `{target.foreign_catalog}` "
            f"USING CONNECTION `{target.connection}` {catalog_options}",
            f"CREATE SCHEMA IF NOT EXISTS {schema}",
            view_statement(spec, source),
            # Unity Catalog tags on the classified columns, after the view they belong to.
            *tag_statements(spec, name.quoted),
        ]
    # The legacy connector wants the key base64-encoded: it lives in the secret
    # `<secret name>_base64` of the same scope (see the README).
    return [
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        f"CREATE TABLE IF NOT EXISTS {name.quoted} USING bigquery OPTIONS ("
        f"table = {_literal(f'{source.dataset}.{source.table}')}, "
        f"project = {_literal(source.project)}, parentProject = {_literal(source.project)}, "
        f"{EXTERNAL_CREDENTIALS_OPTION} = {_secret(secret_scope, secret_name + '_base64')})",
    ]


@dataclass(frozen=True)
class ForeignCatalogExpectation:
    """What the foreign catalog must be, verified right after the statement ``after`` (its
    ``CREATE FOREIGN CATALOG IF NOT EXISTS`` leaves an existing catalog as it is)."""

    after: str
    catalog: str
    connection: str
    options: dict[str, str]
    remedy: str

    @property
    def what(self) -> str:
        return f"foreign catalog {self.catalog}"


def foreign_catalog_expectation(
    spec: ExportSpec, source: BigQueryTable
) -> ForeignCatalogExpectation | None:
    """The foreign catalog the spec needs, for ``mode: federation`` (None otherwise). The
    connection is re-applied by ``ALTER CONNECTION`` and the view replaced, so only the catalog
    can hold settings other than the spec's."""
    target = spec.databricks
    if target.mode != "federation":
        return None
    catalog_statement = next(
        s
        for s in publish_statements(spec, source, "", "")
        if s.startswith("CREATE FOREIGN CATALOG")
    )
    return ForeignCatalogExpectation(
        after=catalog_statement,
        catalog=target.foreign_catalog,
        connection=target.connection,
        options=foreign_catalog_options(spec, source),
        remedy=(
            f"The foreign catalog keeps no data: drop it deliberately (DROP CATALOG "
            f"`{target.foreign_catalog}`; grants on it go too) and re-materialize, or set "
            f"databricks.foreign_catalog in {spec.spec_file} to a new name."
        ),
    )


def catalog_drift(
    expected: ForeignCatalogExpectation,
    connection_name: str | None,
    options: Mapping[str, str] | None,
) -> list[str]:
    """One line per setting of the catalog (as the catalogs API returns it: ``connection_name``,
    ``options``) that differs from the spec. Names compare case-insensitively (Unity Catalog
    stores object names in lower case), option names too; option values compare exactly."""
    lines = []
    if (connection_name or "").lower() != expected.connection.lower():
        lines.append(
            f"connection: spec says {expected.connection!r}, Databricks has {connection_name!r}"
        )
    have = {key.lower(): value for key, value in (options or {}).items()}
    for key, want in expected.options.items():
        if have.get(key.lower()) != want:
            lines.append(f"{key}: spec says {want!r}, Databricks has {have.get(key.lower())!r}")
    return lines


# -- what the Databricks object must look like -------------------------------------------------

#: BigQuery type → the family of Databricks types Lakehouse Federation shows it as ("Data type
#: mappings", https://docs.databricks.com/aws/en/query-federation/bigquery#data-type-mappings),
#: as ``DESCRIBE TABLE … AS JSON`` names them (``type.name``). A timestamp is
#: ``timestamp_ltz`` or ``timestamp_ntz`` depending on the catalog's ``preferTimestampNTZ``.
FEDERATION_TYPE_FAMILIES: dict[str, set[str]] = {
    "INT64": {"bigint", "long"},
    "FLOAT64": {"double"},
    "NUMERIC": {"decimal"},
    "BIGNUMERIC": {"decimal"},
    "BOOL": {"boolean"},
    "DATE": {"date"},
    "BYTES": {"binary"},
    **{
        t: {"timestamp", "timestamp_ltz", "timestamp_ntz"}
        for t in ("TIMESTAMP", "DATETIME", "TIME")
    },
    **{
        t: {"string", "varchar", "char"}
        for t in ("STRING", "JSON", "GEOGRAPHY", "INTERVAL", "ARRAY", "STRUCT", "RANGE")
    },
}
_LEGACY_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "RECORD": "STRUCT"}


def describe_statement(name: TableName) -> str:
    """The statement that describes an object as structured JSON ("DESCRIBE TABLE", JSON
    formatted output: https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-syntax-aux-describe-table);
    Spark 4 answers the same text with the same fields."""
    return f"DESCRIBE TABLE EXTENDED {name.quoted} AS JSON"


def object_drift(
    described_json: str, bigquery_columns: list[tuple[str, str]], description: str
) -> list[str]:
    """One line per difference between the Databricks object (``described_json``: the answer of
    ``describe_statement``) and what the spec makes of it: the BigQuery table's columns, in order,
    with the types Lakehouse Federation gives them, and the spec's description as its comment."""
    described = json.loads(described_json)
    have = [
        (str(c.get("name")), str((c.get("type") or {}).get("name", "")).lower())
        for c in described.get("columns") or []
    ]
    lines = []
    have_names = [n.lower() for n, _ in have]
    want_names = [n.lower() for n, _ in bigquery_columns]
    if have_names != want_names:
        lines.append(f"columns: spec says {want_names}, Databricks has {have_names}")
    else:
        for (column, kind), (_, shown) in zip(bigquery_columns, have, strict=True):
            standard = _LEGACY_TYPES.get(kind.upper(), kind.upper())
            family = FEDERATION_TYPE_FAMILIES.get(standard)
            if family is not None and shown not in family:
                lines.append(
                    f"column {column}: BigQuery {standard} shows as {'/'.join(sorted(family))} "
                    f"through Lakehouse Federation, Databricks has {shown}"
                )
    comment = described.get("comment") or ""
    if comment != description:
        lines.append(f"comment: spec says {description!r}, Databricks has {comment or None!r}")
    return lines


#: What the catalogs API says of a catalog: ``(connection_name, options)``, or None if there is
#: no such catalog.
ReadCatalog = Callable[[str], tuple[str | None, Mapping[str, str] | None] | None]


def publish_checking_catalog(
    execute: Execute,
    statements: list[str],
    expected_catalog: ForeignCatalogExpectation | None,
    read_catalog: ReadCatalog,
) -> list[str]:
    """Run ``statements`` in order; right after the foreign catalog's statement, read the catalog
    back (``read_catalog``: the catalogs API, structured data) and raise ``DriftError``, naming
    each difference, before anything after it runs. Returns notes for metadata. Idempotent, as
    the statements are."""
    notes = []
    for statement in statements:
        execute(statement)
        if expected_catalog is None or statement != expected_catalog.after:
            continue
        found = read_catalog(expected_catalog.catalog)
        connection, options = found if found is not None else (None, None)
        diff = catalog_drift(expected_catalog, connection, options)
        if diff:
            raise DriftError(
                f"{expected_catalog.what} exists with other settings than the spec's:\n  "
                + "\n  ".join(diff)
                + f"\n{expected_catalog.remedy}"
            )
        notes.append(f"{expected_catalog.what}: matches the spec")
    return notes
