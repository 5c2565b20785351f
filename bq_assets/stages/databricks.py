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
``secret(scope, name)`` references. Locally the Databricks resource's DuckDB stand-in copies
the table through the BigQuery Storage Read API instead (see ``bq_assets.resources.databricks``).
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass

import dagster as dg

from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import ExportSpec, ExportSpecError
from bq_assets.resources.databricks import BigQueryTable, DatabricksSQLResource, TableName
from bq_assets.stages import (
    NETWORK_RETRY,
    bigquery_key,
    databricks_key,
    reading_input,
    reported_as_failure,
    upstream_materialization,
)

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
            f"CREATE OR REPLACE VIEW {name.quoted} AS SELECT * FROM "
            f"`{target.foreign_catalog}`.`{source.dataset}`.`{source.table}`",
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


def run_publication(
    databricks: DatabricksSQLResource,
    statements: list[str],
    probes: list[DriftProbe],
    log: dg.DagsterLogManager,
) -> list[str]:
    """Run ``statements`` on the warehouse, verifying each probe right after the statement it
    follows; fail on drift before anything downstream is touched. Returns notes for metadata."""
    notes = []
    for statement in statements:
        databricks.execute(statement)
        for probe in (p for p in probes if p.after == statement):
            described = described_settings(databricks.execute(probe.probe))
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


def refuse_unrunnable_specs(specs: list[ExportSpec], databricks: object) -> None:
    """At load: refuse ``mode: external`` when statements run on a SQL warehouse.

    Databricks documents the ``USING bigquery`` connector as legacy and unsupported, set up on
    clusters with the connector and a key in their Spark configuration; a SQL warehouse, where
    this project runs its statements, does not offer it.
    """
    if not isinstance(databricks, DatabricksSQLResource) or databricks.is_local:
        return
    refused = [
        f"{spec.spec_file}: databricks.mode: external (the legacy `USING bigquery` connector) "
        "cannot run on the SQL warehouse this project uses; Databricks documents it as legacy "
        "and unsupported, for clusters with the connector only. Use `mode: federation` (the "
        "default: Lakehouse Federation, which runs on a Pro or Serverless SQL warehouse)."
        for spec in specs
        if spec.databricks.mode == "external"
    ]
    if refused:
        raise ExportSpecError("\n".join(refused))


def _description(spec: ExportSpec, name: TableName) -> str:
    if spec.databricks.mode == "federation":
        return (
            f"{name} in Databricks: a view over the Lakehouse Federation foreign catalog "
            f"{spec.databricks.foreign_catalog} (connection {spec.databricks.connection}, key from "
            "a Databricks secret); needs Unity Catalog and a Pro or Serverless SQL warehouse."
        )
    return (
        f"{name} in Databricks: a legacy `USING bigquery` table. Databricks calls this connector "
        "legacy, experimental and unsupported; it needs a cluster with the Spark BigQuery "
        "connector (not a SQL warehouse) and the base64 key in a Databricks secret. Prefer "
        "mode: federation."
    )


def build_databricks_asset(spec: ExportSpec) -> dg.AssetsDefinition:
    name = table_name(spec)

    @dg.asset(
        key=databricks_key(spec.name),
        deps=[bigquery_key(spec.name)],
        group_name=spec.name,
        kinds={"databricks"},
        owners=spec.owners,
        pool="databricks",
        description=_description(spec, name),
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
            if databricks.is_local:
                with reading_input(upstream, "The table", table_id):
                    databricks.publish(statements, source, name)
                notes = ["local stand-in: the statements are recorded, not run"]
            else:
                notes = run_publication(
                    databricks, statements, drift_probes(spec, source), context.log
                )
            rows = databricks.row_count(name)
            context.log.info(f"{name}: {rows} rows visible in Databricks")
            return dg.MaterializeResult(
                metadata={
                    "dagster/table_name": str(name),
                    "dagster/row_count": rows,
                    "mode": spec.databricks.mode,
                    "engine": "local DuckDB stand-in" if databricks.is_local else "SQL warehouse",
                    "source_table": table_id,
                    "drift": dg.MetadataValue.json(notes),
                    "input_run_id": upstream.run_id,
                    "statements": dg.MetadataValue.md(
                        "```sql\n" + ";\n".join(statements) + ";\n```"
                    ),
                }
            )

    return _databricks
