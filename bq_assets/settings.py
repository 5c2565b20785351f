"""Environments: which endpoints, names and credentials the resources use.

``BQ_ASSETS_ENV=local`` (the default) wires every resource to the local cloud stack and the
generated sample source. ``prod`` wires them to Google Cloud and Databricks from environment
variables; secrets are passed as ``dg.EnvVar`` and only read when a run needs them. Which
variables are *present* is checked when the code location loads, and every missing one is
reported at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
from dagster_databricks import DatabricksClientResource
from dagster_databricks.resources import OauthCredentials
from databricks.sdk.credentials_provider import DefaultCredentials

from bq_assets.exports.source_names import DELIVERY
from bq_assets.exports.spec import ExportSpec
from bq_assets.resources import (
    DatabricksSQLResource,
    DuckDBSourceResource,
    ExportBigQueryResource,
    ExportGCSResource,
)
from bq_assets.resources.source import SourceDeclaration
from bq_assets.sources import DEFAULT_SOURCE, SOURCE_KINDS, SOURCE_NAME, Source

ENVIRONMENTS = ("local", "prod")

#: name → what it is; all must be set in ``prod``.
PROD_REQUIRED = {
    "GCP_PROJECT": "Google Cloud project that runs the BigQuery jobs (and is billed)",
    "BQ_ASSETS_GCS_BUCKET": "GCS bucket the export objects (CSV or Parquet) are written to",
    "BQ_ASSETS_SOURCE_DATABASE": "path of the DuckDB database the export queries run on",
    "DATABRICKS_HOST": "Databricks workspace URL, e.g. https://adb-123.azuredatabricks.net",
    "DATABRICKS_WAREHOUSE_ID": "SQL warehouse that runs the Databricks statements",
}
#: name → what it is; optional in ``prod``.
PROD_OPTIONAL = {
    "BQ_ASSETS_STAGING_BUCKET": "bucket for the run-scoped Parquet snapshots (default: the "
    "GCS bucket)",
    "BQ_ASSETS_STAGING_PREFIX": "object prefix of the snapshots (default `staging`)",
    "BQ_ASSETS_STAGING_KEEP_RUNS": "snapshots of this many newest runs per export are kept (3)",
    "BQ_ASSETS_STAGING_DIR": "local scratch directory for a query result before its upload "
    "(default: the system's temporary directory)",
    "GCP_CREDENTIALS_B64": "base64 service-account key for GCS and BigQuery (default: ADC)",
    "DATABRICKS_TOKEN": "Databricks personal access token (or use OAuth below / SDK auth)",
    "DATABRICKS_CLIENT_ID": "Databricks OAuth M2M client id (service principal)",
    "DATABRICKS_CLIENT_SECRET": "Databricks OAuth M2M client secret",
    "DATABRICKS_BIGQUERY_SECRET_SCOPE": "secret scope holding the BigQuery key (federation)",
    "DATABRICKS_BIGQUERY_SECRET_NAME": "secret holding the BigQuery key JSON (federation)",
    "BQ_ASSETS_POLICY_TAGS": "JSON object: classification -> Data Catalog policy tag resource "
    "name (or null); every classification a spec uses must be in it",
    "BQ_ASSETS_MAXIMUM_BYTES_BILLED": "bytes a query job may bill at most (default: no limit)",
}
#: Per declared source NAME, ``BQ_ASSETS_SOURCE_<NAME>_<FIELD>``; see README, Sources.
SOURCE_FIELDS = ("KIND", "PATH", "HOST", "PORT", "DATABASE", "USER", "PASSWORD")
#: The query step's DuckDB limits (env variable → resource field).
QUERY_ENGINE_VARIABLES = {
    "BQ_ASSETS_QUERY_MEMORY_LIMIT": "memory_limit",
    "BQ_ASSETS_QUERY_THREADS": "threads",
    "BQ_ASSETS_QUERY_TEMP_DIR": "temp_directory",
}


class ConfigurationError(ValueError):
    """The environment is misconfigured; the message names every variable at fault."""


def environment() -> str:
    env = os.environ.get("BQ_ASSETS_ENV", "local")
    if env not in ENVIRONMENTS:
        raise ConfigurationError(f"BQ_ASSETS_ENV={env!r} is not one of {', '.join(ENVIRONMENTS)}")
    return env


SCHEDULE_STATUSES = {
    "running": dg.DefaultScheduleStatus.RUNNING,
    "stopped": dg.DefaultScheduleStatus.STOPPED,
}


def schedule_status() -> dg.DefaultScheduleStatus:
    """``BQ_ASSETS_SCHEDULES``, default ``running`` in prod and ``stopped`` locally; a value
    that is neither fails the load rather than silently stopping every schedule."""
    default = "running" if environment() == "prod" else "stopped"
    status = os.environ.get("BQ_ASSETS_SCHEDULES", default)
    if status not in SCHEDULE_STATUSES:
        raise ConfigurationError(
            f"BQ_ASSETS_SCHEDULES={status!r} is not one of {', '.join(SCHEDULE_STATUSES)}"
        )
    return SCHEDULE_STATUSES[status]


def check_specs_for_environment(specs: list[ExportSpec]) -> list[ExportSpec]:
    """The specs, if the environment can run every one of them; locally, settings the
    emulators cannot honour fail the load, all named at once."""
    if environment() == "local":
        from bq_assets.local.limits import unsupported_settings

        problems = [line for spec in specs for line in unsupported_settings(spec)]
        if problems:
            raise ConfigurationError(
                "These exports cannot run on the local stack:\n  " + "\n  ".join(problems)
            )
    return specs


def staging_settings() -> dict[str, object]:
    """Where the query stage hands its snapshot to the GCS stage (both environments)."""
    keep = os.environ.get("BQ_ASSETS_STAGING_KEEP_RUNS", "3")
    if not keep.isdigit() or int(keep) < 1:
        raise ConfigurationError(f"BQ_ASSETS_STAGING_KEEP_RUNS={keep!r} must be a positive integer")
    settings: dict[str, object] = {"staging_keep_runs": int(keep)}
    if os.environ.get("BQ_ASSETS_STAGING_BUCKET"):
        settings["staging_bucket"] = os.environ["BQ_ASSETS_STAGING_BUCKET"]
    if os.environ.get("BQ_ASSETS_STAGING_PREFIX"):
        settings["staging_prefix"] = os.environ["BQ_ASSETS_STAGING_PREFIX"]
    return settings


def declared_sources() -> list[SourceDeclaration]:
    """The sources named in ``BQ_ASSETS_SOURCES`` (comma-separated), each from its
    ``BQ_ASSETS_SOURCE_<NAME>_*`` variables; the password only as ``dg.EnvVar`` (read when a
    run connects). Every problem is reported at once."""
    names = [n.strip() for n in os.environ.get("BQ_ASSETS_SOURCES", "").split(",") if n.strip()]
    declarations, problems = [], []
    for name in names:
        prefix = f"BQ_ASSETS_SOURCE_{name.upper()}_"
        value = {f.lower(): os.environ.get(prefix + f) or None for f in SOURCE_FIELDS}
        if not SOURCE_NAME.fullmatch(name) or name == DEFAULT_SOURCE:
            problems.append(f"BQ_ASSETS_SOURCES: {name!r} is not a valid source name")
            continue
        if name == DELIVERY:
            problems.append(
                f"BQ_ASSETS_SOURCES: {name!r} is reserved: it names the delivered exports' "
                "bucket prefixes in the lineage (source/delivery/...); choose another name"
            )
            continue
        if value["kind"] not in SOURCE_KINDS:
            problems.append(
                f"{prefix}KIND={value['kind']!r} is not one of {', '.join(SOURCE_KINDS)}"
            )
            continue
        if value["port"] is not None and not value["port"].isdigit():
            problems.append(f"{prefix}PORT={value['port']!r} must be a port number")
            continue
        fields = {
            "name": name,
            "kind": value["kind"],
            "path": value["path"],
            "host": value["host"],
            "port": int(value["port"]) if value["port"] else None,
            "database": value["database"],
            "user": value["user"],
        }
        problems += [f"{prefix}*: {p}" for p in Source(**fields).problems()]
        password = dg.EnvVar(prefix + "PASSWORD") if value["password"] else None
        declarations.append(SourceDeclaration(**fields, password=password))
    if problems:
        raise ConfigurationError("Sources are misconfigured:\n  " + "\n  ".join(problems))
    return declarations


def query_engine_settings() -> dict[str, str | int]:
    """The query step's DuckDB limits set in the environment (others keep their defaults)."""
    found: dict[str, str | int] = {}
    for variable, name in QUERY_ENGINE_VARIABLES.items():
        value = os.environ.get(variable)
        if value:
            if name == "threads" and not value.isdigit():
                raise ConfigurationError(f"{variable}={value!r} must be a positive integer")
            found[name] = int(value) if name == "threads" else value
    return found


def bigquery_governance_settings() -> dict[str, object]:
    """The BigQuery resource's policy tags (``BQ_ASSETS_POLICY_TAGS``, a JSON object) and
    query cost cap (``BQ_ASSETS_MAXIMUM_BYTES_BILLED``), both environments; a malformed value
    fails the load naming the variable."""
    found: dict[str, object] = {}
    tags = os.environ.get("BQ_ASSETS_POLICY_TAGS")
    if tags:
        try:
            parsed = json.loads(tags)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"BQ_ASSETS_POLICY_TAGS is not JSON: {exc}") from None
        if not isinstance(parsed, dict) or not all(
            isinstance(v, str | None) for v in parsed.values()
        ):
            raise ConfigurationError(
                "BQ_ASSETS_POLICY_TAGS must be a JSON object of classification -> policy tag "
                'resource name or null, e.g. {"pii_email": "projects/p/locations/us/taxonomies/'
                '1/policyTags/2"}'
            )
        found["policy_tags"] = parsed
    limit = os.environ.get("BQ_ASSETS_MAXIMUM_BYTES_BILLED")
    if limit:
        if not limit.isdigit() or int(limit) < 1:
            raise ConfigurationError(
                f"BQ_ASSETS_MAXIMUM_BYTES_BILLED={limit!r} must be a positive number of bytes"
            )
        found["maximum_bytes_billed"] = int(limit)
    return found


def local_resources(root: Path | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources wired to the local stack under ``root`` (default ``BQ_ASSETS_LOCAL_DIR``)."""
    # The local stack's modules are imported here only: production never loads them.
    from bq_assets.local.resources import (
        LocalBigQueryResource,
        LocalGCSResource,
        SampleSourceResource,
    )
    from bq_assets.local.sample_data import DEFAULT_SAMPLE_ROWS
    from bq_assets.local.spark_warehouse import SparkDatabricksResource
    from bq_assets.local.stack import LOCAL_BUCKET, LOCAL_PROJECT, local_dir

    root = root or local_dir()
    rows = os.environ.get("BQ_ASSETS_SAMPLE_ROWS", str(DEFAULT_SAMPLE_ROWS))
    if not rows.isdigit() or int(rows) < 1:
        raise ConfigurationError(f"BQ_ASSETS_SAMPLE_ROWS={rows!r} must be a positive integer")
    # The stack's project and bucket are fixed: named here, they name the tables and objects
    # in the assets' definitions (the clients still ask the running stack).
    bigquery = LocalBigQueryResource(
        local_stack_dir=str(root),
        project=LOCAL_PROJECT,
        require_policy_tags=False,
        **bigquery_governance_settings(),
    )
    # The default source: a DuckDB file of the user's own when BQ_ASSETS_SOURCE_DATABASE names
    # one, else the generated sample (which never replaces a file it did not make).
    own_database = os.environ.get("BQ_ASSETS_SOURCE_DATABASE")
    settings = {
        "staging_dir": str(root / "staging"),
        **staging_settings(),
        "sources": declared_sources(),
        **query_engine_settings(),
    }
    return {
        "source": DuckDBSourceResource(database=own_database, **settings)
        if own_database
        else SampleSourceResource(
            database=str(root / "source.duckdb"), sample_rows=int(rows), **settings
        ),
        # The emulator is on this machine: if it has not answered in 10 s it is down.
        "gcs": LocalGCSResource(local_stack_dir=str(root), bucket=LOCAL_BUCKET, retry_timeout_s=10),
        "bigquery": bigquery,
        "databricks": SparkDatabricksResource(
            local_stack_dir=str(root), warehouse_dir=str(root / "databricks"), bigquery=bigquery
        ),
    }


def databricks_client() -> DatabricksClientResource:
    if os.environ.get("DATABRICKS_TOKEN"):
        return DatabricksClientResource(
            host=dg.EnvVar("DATABRICKS_HOST"), token=dg.EnvVar("DATABRICKS_TOKEN")
        )
    if os.environ.get("DATABRICKS_CLIENT_ID"):
        return DatabricksClientResource(
            host=dg.EnvVar("DATABRICKS_HOST"),
            oauth_credentials=OauthCredentials(
                client_id=dg.EnvVar("DATABRICKS_CLIENT_ID"),
                client_secret=dg.EnvVar("DATABRICKS_CLIENT_SECRET"),
            ),
        )
    # Only the host: the Databricks SDK's default credential chain ("unified authentication":
    # DATABRICKS_* variables, a .databrickscfg profile, Azure/Google identities, …;
    # https://docs.databricks.com/aws/en/dev-tools/auth/unified-auth). dagster-databricks
    # takes it as a credentials strategy; without one its get_client() refuses to start.
    return DatabricksClientResource(
        host=dg.EnvVar("DATABRICKS_HOST"), credentials_strategy=DefaultCredentials()
    )


def prod_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources wired to Google Cloud and Databricks; fails listing every missing variable."""
    missing = [name for name in PROD_REQUIRED if not os.environ.get(name)]
    if os.environ.get("DATABRICKS_CLIENT_ID") and not os.environ.get("DATABRICKS_CLIENT_SECRET"):
        missing.append("DATABRICKS_CLIENT_SECRET")
    if missing:
        raise ConfigurationError(
            "BQ_ASSETS_ENV=prod but these environment variables are not set: "
            + ", ".join(missing)
            + " (see .env.example)"
        )
    credentials = (
        dg.EnvVar("GCP_CREDENTIALS_B64") if os.environ.get("GCP_CREDENTIALS_B64") else None
    )
    bigquery = ExportBigQueryResource(
        project=dg.EnvVar("GCP_PROJECT"),
        gcp_credentials=credentials,
        **bigquery_governance_settings(),
    )
    return {
        "source": DuckDBSourceResource(
            database=dg.EnvVar("BQ_ASSETS_SOURCE_DATABASE"),
            staging_dir=os.environ.get("BQ_ASSETS_STAGING_DIR") or None,
            **staging_settings(),
            sources=declared_sources(),
            **query_engine_settings(),
        ),
        "gcs": ExportGCSResource(
            project=dg.EnvVar("GCP_PROJECT"),
            bucket=dg.EnvVar("BQ_ASSETS_GCS_BUCKET"),
            gcp_credentials=credentials,
        ),
        "bigquery": bigquery,
        "databricks": DatabricksSQLResource(
            workspace=databricks_client(),
            warehouse_id=dg.EnvVar("DATABRICKS_WAREHOUSE_ID"),
            bigquery_key_secret_scope=os.environ.get(
                "DATABRICKS_BIGQUERY_SECRET_SCOPE", "bq_assets"
            ),
            bigquery_key_secret_name=os.environ.get(
                "DATABRICKS_BIGQUERY_SECRET_NAME", "bigquery_service_account_key"
            ),
        ),
    }


def build_resources() -> dict[str, dg.ConfigurableResource]:
    return prod_resources() if environment() == "prod" else local_resources()
