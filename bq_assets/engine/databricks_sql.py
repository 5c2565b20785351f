"""The Databricks SQL that exposes a BigQuery table, generated from the export spec; how to
read back what Databricks says an existing object looks like (for drift); and running the
statements with a drift check after each that needs one. No Dagster; the warehouse is a
callable (``Execute``) the Databricks resource passes in."""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bq_assets.engine.log import Log
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
    """The federation mode's view over the foreign table (its select list is also what the
    Databricks asset's column lineage is read from)."""
    return (
        f"CREATE OR REPLACE VIEW {table_name(spec).quoted} AS SELECT * FROM "
        f"`{spec.databricks.foreign_catalog}`.`{source.dataset}`.`{source.table}`"
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
class DriftProbe:
    """A statement that describes an existing object, and what the spec says it must show."""

    after: str
    probe: str
    what: str
    expected: dict[str, str]
    remedy: str


def drift_probes(spec: ExportSpec, source: BigQueryTable) -> list[DriftProbe]:
    """What to verify after the ``IF NOT EXISTS`` statements (objects that cannot be replaced).

    The foreign catalog: ``DESCRIBE CATALOG EXTENDED`` must show the spec's connection and
    options. (The connection is re-applied by ``ALTER CONNECTION``; the view is replaced.)
    """
    target = spec.databricks
    if target.mode != "federation":
        return []
    catalog_statement = next(
        s
        for s in publish_statements(spec, source, "", "")
        if s.startswith("CREATE FOREIGN CATALOG")
    )
    return [
        DriftProbe(
            after=catalog_statement,
            probe=f"DESCRIBE CATALOG EXTENDED `{target.foreign_catalog}`",
            what=f"foreign catalog {target.foreign_catalog}",
            expected={
                "connection": target.connection,
                **foreign_catalog_options(spec, source),
            },
            remedy=(
                f"The foreign catalog keeps no data: drop it deliberately (DROP CATALOG "
                f"`{target.foreign_catalog}`; grants on it go too) and re-materialize, or set "
                f"databricks.foreign_catalog in {spec.spec_file} to a new name."
            ),
        )
    ]


_OPTION_PAIR = re.compile(
    r"""([A-Za-z_][A-Za-z0-9_.]*)['"]?\s*(?:=>|=|:|\s)\s*['"]?([^,'"\])}\]]*)"""
)


def described_settings(rows: list[list[str | None]]) -> dict[str, str]:
    """``DESCRIBE … EXTENDED`` rows (``info_name``, ``info_value``) as lower-cased settings:
    the connection's name, the raw ``options`` text and each option (keys lower-cased)."""
    found: dict[str, str] = {}
    for row in rows:
        if len(row) < 2 or row[0] is None:
            continue
        key, value = str(row[0]).strip().lower(), str(row[1] or "").strip()
        if key in ("connection", "connection name", "connection_name"):
            found["connection"] = value
        elif "option" in key:
            found["options"] = value
            for option, option_value in _OPTION_PAIR.findall(value):
                found[option.lower()] = option_value.strip()
    return found


def drift_diff(expected: Mapping[str, str], described: Mapping[str, str]) -> list[str]:
    """One line per setting that differs. Names compare case-insensitively (Unity Catalog
    stores object names in lower case); option values compare exactly."""
    lines = []
    for key, want in expected.items():
        have = described.get(key.lower())
        same = have is not None and (
            have.lower() == want.lower() if key == "connection" else have == want
        )
        if not same:
            lines.append(f"{key}: spec says {want!r}, Databricks has {have!r}")
    return lines


def publish_checking_drift(
    execute: Execute, statements: list[str], probes: list[DriftProbe], log: Log
) -> list[str]:
    """Run ``statements`` in order, verifying each probe right after the statement it follows;
    a ``DriftError`` before anything after it runs. Returns one note per probe (for metadata).
    Idempotent, as the statements are."""
    notes = []
    for statement in statements:
        execute(statement)
        for probe in (p for p in probes if p.after == statement):
            described = described_settings(execute(probe.probe))
            if not described:
                notes.append(f"{probe.what}: {probe.probe} showed no settings; not verified")
                log.warning(notes[-1])
                continue
            expected = probe.expected
            if "options" not in described:  # this DESCRIBE shows no options: check what it shows
                expected = {k: v for k, v in expected.items() if k in described}
                notes.append(f"{probe.what}: {probe.probe} shows no options; they are not verified")
                log.warning(notes[-1])
            diff = drift_diff(expected, described)
            if diff:
                raise DriftError(
                    f"{probe.what} exists with other settings than the spec's:\n  "
                    + "\n  ".join(diff)
                    + f"\n{probe.remedy}"
                )
            notes.append(f"{probe.what}: matches the spec")
    return notes
