"""The export spec: what one export is, validated when the code location loads.

An export is ``<name>.sql`` plus ``<name>.yaml`` in the exports folder. Everything but the
primary key and cadence has a default, so a minimal spec is three lines::

    description: Unified customer profiles
    primary_key: [amperity_id]
    cadence: daily

A *delivered* export (files another system, e.g. Amperity, drops into the bucket) has a
``delivery:`` block instead of the SQL file; see ``DeliveryOptions``.

Every rule here runs before any asset exists, and a broken spec fails the load with a message
that names the file, the field and what is allowed (``ExportSpecError``), never mid-run.
"""

from __future__ import annotations

import datetime as dt
import re
import string
import zoneinfo
from pathlib import Path
from typing import Any, Literal

import sqlglot
import sqlglot.errors
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlglot import exp
from sqlglot.tokens import TokenType

from bq_assets.partitioning import PARAMETERS as PARTITION_PARAMETERS

EXPORT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
# BigQuery allows more in table names when quoted; the safe subset keeps every generated statement
# free of quoting questions and of anything that could smuggle SQL through a name.
BIGQUERY_NAME = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
DATABRICKS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
LOCATION = re.compile(r"^[A-Za-z0-9-]{2,40}$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
OWNER = re.compile(r"^(team:[A-Za-z0-9_-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$")
SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
OPTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: Options the pipeline sets itself (compared case-insensitively, like Databricks option keys).
GENERATED_OPTIONS = {"googleserviceaccountkeyjson", "dataprojectid"}
#: Option names and values that can only mean a credential: those go through a Databricks secret.
SECRET_NAME_HINTS = ("key", "secret", "password", "token", "credential", "private")
SECRET_VALUE_HINTS = ("private key", "private_key", '"type": "service_account"', "dapi")
CADENCE_CRON = {"daily": "0 6 * * *", "weekly": "0 6 * * 1"}


class ExportSpecError(ValueError):
    """An export spec is invalid; the message names the file, the field and what is allowed."""


def _matching(pattern: re.Pattern[str], what: str, value: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid {what} (allowed: {pattern.pattern})")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvOptions(_Strict):
    """How the CSV objects are written. BigQuery reads exactly these settings back."""

    delimiter: Literal[",", "\t", "|"] = Field(",", description="field delimiter")
    quote: Literal["needed", "all"] = Field(
        "needed", description="quote only values that need it (RFC 4180), or every non-NULL value"
    )
    header: bool = Field(True, description="write a header row (BigQuery skips it)")
    compression: Literal["gzip", "none"] = Field("gzip", description="object compression")
    gzip_level: int = Field(
        1,
        ge=1,
        le=9,
        description="gzip level, 1 (fast; the default: about 2x less CPU than 6 for objects "
        "about 10% larger) to 9 (small)",
    )
    shard_rows: int = Field(
        1_000_000, ge=1, description="rows per CSV object; a larger result is split"
    )
    null_marker: str = Field(
        "",
        description="text written for NULL; empty (the default) means an unquoted empty field",
    )

    @field_validator("null_marker")
    @classmethod
    def _no_quotes_in_marker(cls, value: str) -> str:
        if any(ch in value for ch in '"\r\n,\t|'):
            raise ValueError("must not contain quotes, line breaks or a delimiter")
        return value


TEMPLATE_FIELDS = {"export", "run", "date", "shard", "partition"}
#: A partitioned export's default object names: one prefix per partition, then per run.
PARTITIONED_TEMPLATE = "exports/{export}/{partition}/{run}/part-{shard:05d}"


class ObjectNames(_Strict):
    """Where a run's objects go in the bucket.

    ``template`` names each shard (the extension is appended). Placeholders: ``{export}``,
    ``{run}`` (the run id), ``{date:%Y/%m/%d}`` (the run's date in the export's timezone),
    ``{shard:05d}`` and, for a partitioned export, ``{partition}`` (the partition key the run
    loads, e.g. ``2026-01-31``; ``<first>_<last>`` for a run of several). ``{run}`` must name a
    folder, so every run writes under a prefix of its own and no stale object can ever be
    loaded; ``{shard}`` must be in the file name.
    """

    template: str = Field(
        "exports/{export}/{run}/part-{shard:05d}", description="object name template"
    )
    keep_runs: int = Field(3, ge=1, description="run prefixes to keep; older ones are deleted")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        unknown = names - TEMPLATE_FIELDS
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join(sorted(unknown))}; allowed: "
                + ", ".join(f"{{{n}}}" for n in sorted(TEMPLATE_FIELDS))
            )
        if not re.match(r"^([^{}]*/)?\{export\}/", value):
            raise ValueError(
                "must start with a folder named {export} (e.g. exports/{export}/...), so each "
                "export's runs live apart and retention never touches another export"
            )
        folder, _, filename = value.rpartition("/")
        if "{run}" not in folder:
            raise ValueError(
                "must contain {run} as (part of) a folder, so each run has its own prefix"
            )
        if "{shard" not in filename:
            raise ValueError("the file name (after the last /) must contain {shard}")
        try:
            value.format(
                export="e", run="r", date=dt.date(2026, 1, 31), shard=1, partition="2026-01-31"
            )
        except (ValueError, IndexError) as exc:
            raise ValueError(f"cannot be rendered: {exc}") from None
        if value.startswith("/") or "//" in value or ".." in value:
            raise ValueError("must be a relative object path without empty or '..' segments")
        return value


class BigQueryTarget(_Strict):
    """Where and how the export lands in BigQuery."""

    dataset: str = Field("amperity_exports", description="dataset id")
    table: str | None = Field(None, description="table id (default: the export name)")
    location: str = Field("US", description="dataset location; the bucket must be in it too")
    partition_field: str | None = Field(None, description="DATE/TIMESTAMP column to partition by")
    clustering_fields: list[str] = Field(default_factory=list, max_length=4)
    labels: dict[str, str] = Field(default_factory=dict)
    staging_dataset: str | None = Field(
        None,
        description="dataset (same location) for the load's staging tables, kept apart from the "
        "published dataset so a Databricks foreign catalog never shows them (default: "
        "`<dataset>_staging`)",
    )
    write_disposition: Literal["WRITE_TRUNCATE", "WRITE_APPEND"] = "WRITE_TRUNCATE"
    schema_update_options: list[Literal["ALLOW_FIELD_ADDITION", "ALLOW_FIELD_RELAXATION"]] = Field(
        default_factory=list,
        description="schema changes a load may make to an existing table; any other drift fails",
    )

    @field_validator("dataset", "table", "staging_dataset")
    @classmethod
    def _bigquery_name(cls, value: str | None) -> str | None:
        return None if value is None else _matching(BIGQUERY_NAME, "BigQuery id", value)

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        return _matching(LOCATION, "BigQuery location", value)

    @field_validator("partition_field")
    @classmethod
    def _partition(cls, value: str | None) -> str | None:
        return None if value is None else _matching(COLUMN, "column name", value)

    @field_validator("clustering_fields")
    @classmethod
    def _clustering(cls, value: list[str]) -> list[str]:
        return [_matching(COLUMN, "column name", v) for v in value]

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            _matching(LABEL_KEY, "BigQuery label key", key)
            _matching(LABEL_VALUE, "BigQuery label value", str(label))
        return value

    @model_validator(mode="after")
    def _staging_apart(self) -> BigQueryTarget:
        if self.staging_dataset is not None and self.staging_dataset == self.dataset:
            raise ValueError(
                "staging_dataset must differ from dataset, so the published dataset (and a "
                "Databricks foreign catalog over it) never shows staging tables"
            )
        return self


class DatabricksTarget(_Strict):
    """How the BigQuery table is exposed in Databricks (Unity Catalog names)."""

    catalog: str = Field("main", description="Unity Catalog catalog of the table or view")
    schema_: str = Field("amperity", alias="schema", description="schema of the table or view")
    table: str | None = Field(None, description="table or view name (default: the export name)")
    mode: Literal["federation", "external"] = Field(
        "federation",
        description="Lakehouse Federation view over a foreign catalog, or a legacy "
        "`USING bigquery` external table",
    )
    connection: str = Field("bigquery_connection", description="federation: connection name")
    foreign_catalog: str = Field("bigquery", description="federation: foreign catalog name")
    connection_options: dict[str, str] = Field(
        default_factory=dict,
        description="federation: further `CREATE CONNECTION` options, passed through as written "
        "(never a credential: the key comes from the Databricks secret)",
    )
    foreign_catalog_options: dict[str, str] = Field(
        default_factory=dict,
        description="federation: further `CREATE FOREIGN CATALOG` options, e.g. "
        "`materializationDataset` or `bigNumericDefaultScale`, passed through as written",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("catalog", "schema_", "table", "connection", "foreign_catalog")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        return None if value is None else _matching(DATABRICKS_NAME, "Databricks identifier", value)

    @field_validator("connection_options", "foreign_catalog_options")
    @classmethod
    def _options(cls, value: dict[str, str]) -> dict[str, str]:
        for name, option in value.items():
            _matching(OPTION_NAME, "option name", name)
            if name.lower() in GENERATED_OPTIONS:
                raise ValueError(
                    f"{name}: set by the pipeline (the key from the Databricks secret, the project "
                    "from the BigQuery table); remove it here"
                )
            lowered = f"{name} {option}".lower()
            if any(h in name.lower() for h in SECRET_NAME_HINTS) or any(
                h in lowered for h in SECRET_VALUE_HINTS
            ):
                raise ValueError(
                    f"{name}: looks like a credential; credentials never go in a spec. Store it as "
                    "a Databricks secret (see DATABRICKS_BIGQUERY_SECRET_SCOPE / _NAME)"
                )
            if len(option) > 1000 or any(ord(ch) < 32 for ch in option):
                raise ValueError(f"{name}: the value must be one line of at most 1000 characters")
        return value


# --- Delivered exports (issue 16) -------------------------------------------------------------
#: BigQuery types a delivered column may declare (the schema is declared, never guessed).
DELIVERY_TYPES = (
    "STRING",
    "INT64",
    "FLOAT64",
    "NUMERIC",
    "BIGNUMERIC",
    "BOOL",
    "DATE",
    "DATETIME",
    "TIMESTAMP",
    "TIME",
    "BYTES",
    "JSON",
)
#: strftime directives a ``{send:...}`` placeholder may use, with the text each one matches.
SEND_DIRECTIVES = {
    "%Y": r"\d{4}",
    "%m": r"\d{2}",
    "%d": r"\d{2}",
    "%H": r"\d{2}",
    "%M": r"\d{2}",
    "%S": r"\d{2}",
    "%j": r"\d{3}",
    "%s": r"\d+",
}
SEND_PLACEHOLDER = re.compile(r"\{send:([^{}]+)\}")
OBJECT_PREFIX = re.compile(r"^([A-Za-z0-9._=-]+/)+$")


def send_format(template: str) -> str:
    """The strftime format of the one ``{send:<format>}`` placeholder in ``template``."""
    found = SEND_PLACEHOLDER.findall(template)
    if len(found) != 1:
        raise ValueError(
            "must contain exactly one {send:<strftime>} placeholder (the date and time of the "
            "send, e.g. {send:%Y%m%d_%H%M%S}), which tells one delivery from the next"
        )
    unknown = set(re.findall(r"%.", found[0])) - set(SEND_DIRECTIVES)
    if unknown or not re.search(r"%.", found[0]):
        raise ValueError(
            f"{{send:{found[0]}}}: allowed directives are {', '.join(SEND_DIRECTIVES)}"
        )
    return found[0]


def delivery_regex(template: str) -> re.Pattern[str]:
    """A regex for object names rendered from ``template``: ``{send:..}`` is captured as
    ``send``, ``*`` matches any text without a slash, ``?`` one such character."""
    out = []
    position = 0
    for match in SEND_PLACEHOLDER.finditer(template):
        out.append(_glob_to_regex(template[position : match.start()]))
        fmt = re.escape(match.group(1))
        for directive, pattern in SEND_DIRECTIVES.items():
            fmt = fmt.replace(re.escape(directive), pattern)
        out.append(f"(?P<send>{fmt})")
        position = match.end()
    out.append(_glob_to_regex(template[position:]))
    return re.compile("".join(out))


def _glob_to_regex(text: str) -> str:
    return "".join("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch) for ch in text)


class DeliveryColumn(_Strict):
    """One delivered column: its name in the header and the BigQuery type it loads as."""

    name: str
    type: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _matching(COLUMN, "column name", value)

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value.upper() not in DELIVERY_TYPES:
            raise ValueError(
                f"{value!r} is not a BigQuery type; allowed: {', '.join(DELIVERY_TYPES)}"
            )
        return value.upper()


class DeliveryCompletion(_Strict):
    """When a delivery is complete: its ``marker`` object exists, or no file of it has
    changed for ``quiet_minutes``. Exactly one of the two."""

    marker: str | None = Field(
        None, description="object name (in the prefix) written after the last file, with {send:..}"
    )
    quiet_minutes: int | None = Field(None, ge=1, le=1440)

    @field_validator("marker")
    @classmethod
    def _marker(cls, value: str | None) -> str | None:
        if value is not None:
            send_format(value)
            if "/" in value:
                raise ValueError("a file name in the delivery prefix, without /")
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> DeliveryCompletion:
        if (self.marker is None) == (self.quiet_minutes is None):
            raise ValueError("set exactly one of marker or quiet_minutes")
        return self


class DeliveryOptions(_Strict):
    """Files another system (e.g. Amperity's GCS destination) drops into the bucket: the
    export starts from such a delivery instead of a query."""

    prefix: str = Field(description="folder in the bucket the files arrive in, ending in /")
    files: str = Field(
        description="file name pattern: a glob (* and ?) with one {send:<strftime>} placeholder "
        "for the date and time of the send, e.g. orders_{send:%Y%m%d_%H%M%S}_*.csv.gz"
    )
    delimiter: Literal[",", "\t"] = ","
    header: bool = True
    quote: Literal['"'] = Field('"', description="quote character (RFC 4180 quoting)")
    compression: Literal["gzip", "none"] = "gzip"
    complete_when: DeliveryCompletion
    columns: list[DeliveryColumn] = Field(min_length=1, description="columns, in file order")
    decrypt: Literal["pgp"] | None = Field(None, description="the files are PGP encrypted")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not OBJECT_PREFIX.fullmatch(value) or "/../" in f"/{value}":
            raise ValueError(
                f"{value!r} is not a folder in the bucket (e.g. amperity/orders/; allowed: "
                f"{OBJECT_PREFIX.pattern})"
            )
        return value

    @field_validator("files")
    @classmethod
    def _files(cls, value: str) -> str:
        send_format(value)
        if "/" in value:
            raise ValueError("a file name pattern in the delivery prefix, without /")
        return value

    @field_validator("columns")
    @classmethod
    def _unique(cls, value: list[DeliveryColumn]) -> list[DeliveryColumn]:
        names = [c.name for c in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate column names: {', '.join(duplicates)}")
        return value

    @model_validator(mode="after")
    def _marker_apart(self) -> DeliveryOptions:
        marker = self.complete_when.marker
        if marker is None:
            return self
        if send_format(marker) != send_format(self.files):
            raise ValueError(
                "complete_when.marker: its {send:..} format must equal the one in files, so a "
                "marker names its delivery"
            )
        example = SEND_PLACEHOLDER.sub("20260131_060000", marker)
        if delivery_regex(self.files).fullmatch(example) or example == self.files:
            raise ValueError("complete_when.marker: must not match the files pattern")
        return self

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


# --- end of delivered exports ------------------------------------------------------------------


class PartitionOptions(_Strict):
    """A partitioned export (issue 14): each run exports and loads one partition (or a range
    of them, in a backfill), and its load replaces exactly that partition of the table.

    Partitions are days, weeks (Monday to Monday) or months in the export's ``timezone``. The
    query reads its window from bound parameters (see ``bq_assets.partitioning``).
    """

    by: Literal["day", "week", "month"] = Field(description="partition size")
    start: dt.date = Field(
        description="the first partition's date (a Monday for weeks, the 1st for months)"
    )
    column: str = Field(description="the query's DATE / TIMESTAMP column the partitions cut")
    max_partitions_per_run: int = Field(
        10, ge=1, le=1000, description="a backfill runs this many partitions per run"
    )

    @field_validator("column")
    @classmethod
    def _column(cls, value: str) -> str:
        return _matching(COLUMN, "column name", value)

    @model_validator(mode="after")
    def _start_on_a_boundary(self) -> PartitionOptions:
        if self.by == "week" and self.start.weekday() != 0:
            raise ValueError(f"start: {self.start} is not a Monday (weeks run Monday to Monday)")
        if self.by == "month" and self.start.day != 1:
            raise ValueError(f"start: {self.start} is not the first day of a month")
        return self


class ExportSpec(_Strict):
    """One export: a SQL query (or a delivery) and where its result goes. Loaded from
    ``<name>.yaml``."""

    name: str = Field(description="export name: asset keys, group and object prefix use it")
    sql: str = Field("", description="the query's text (from the SQL file); empty when delivered")
    sql_file: Path | None = Field(None, description="where the query came from (None: delivered)")
    spec_file: Path = Field(description="the YAML file this spec was read from")
    description: str = ""
    primary_key: list[str] = Field(min_length=1, description="column(s) that identify a row")
    required: list[str] = Field(default_factory=list, description="columns that must not be NULL")
    allow_empty: bool = Field(False, description="an empty result passes the checks")
    cadence: str = Field(description="`daily`, `weekly` or a cron string")
    timezone: str = Field("UTC", description="IANA timezone of the schedule")
    owners: list[str] = Field(default_factory=list)
    source: str = Field(
        "default",
        description="the declared source the query runs on (`default`: the DuckDB file; see "
        "README, Sources)",
    )
    format: Literal["csv", "parquet"] = Field(
        "csv",
        description="transfer format of the GCS objects BigQuery loads: `csv` (gzip or plain, "
        "per the `csv` options) or `parquet` (typed, keeps NULL and empty strings apart "
        "everywhere; of the `csv` options only `shard_rows` then applies)",
    )
    csv: CsvOptions = Field(default_factory=CsvOptions)
    objects: ObjectNames = Field(default_factory=ObjectNames)
    bigquery: BigQueryTarget = Field(default_factory=BigQueryTarget)
    databricks: DatabricksTarget = Field(default_factory=DatabricksTarget)
    delivery: DeliveryOptions | None = Field(
        None, description="the export starts from files delivered into the bucket, not a query"
    )
    partitioning: PartitionOptions | None = Field(
        None, description="export and load one time partition per run (see PartitionOptions)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _matching(EXPORT_NAME, "export name", value)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return _matching(SOURCE_NAME, "source name", value)

    @field_validator("primary_key", "required")
    @classmethod
    def _columns(cls, value: list[str]) -> list[str]:
        return [_matching(COLUMN, "column name", v) for v in value]

    @field_validator("cadence")
    @classmethod
    def _cadence(cls, value: str) -> str:
        # Dagster's own rule for schedules' cron strings, imported here: the export engine
        # imports this module and stays free of Dagster.
        from dagster._utils.schedules import is_valid_cron_string

        if value in CADENCE_CRON or is_valid_cron_string(value):
            return value
        raise ValueError(f"{value!r} is not `daily`, `weekly` or a valid cron string")

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA timezone (e.g. America/New_York)") from None
        return value

    @field_validator("owners")
    @classmethod
    def _owners(cls, value: list[str]) -> list[str]:
        return [_matching(OWNER, "owner (an email or team:<name>)", v) for v in value]

    @model_validator(mode="after")
    def _columns_exist(self) -> ExportSpec:
        columns = self.delivery.column_names if self.delivery else query_columns(self.sql)
        for field, names in [
            ("primary_key", self.primary_key),
            ("required", self.required),
            (
                "bigquery.partition_field",
                [self.bigquery.partition_field] if self.bigquery.partition_field else [],
            ),
            ("bigquery.clustering_fields", self.bigquery.clustering_fields),
        ]:
            missing = [n for n in names if n not in columns]
            if missing:
                raise ValueError(
                    f"{field}: {', '.join(missing)} not among the "
                    f"{'delivery' if self.delivery else 'query'}'s columns ({', '.join(columns)})"
                )
        return self

    @model_validator(mode="before")
    @classmethod
    def _partitioned_object_names(cls, data: Any) -> Any:
        """A partitioned export's objects go under a prefix per partition by default."""
        if isinstance(data, dict) and data.get("partitioning") is not None:
            objects = data.get("objects")
            if objects is None:
                return {**data, "objects": {"template": PARTITIONED_TEMPLATE}}
            if isinstance(objects, dict) and "template" not in objects:
                return {**data, "objects": {**objects, "template": PARTITIONED_TEMPLATE}}
        return data

    @model_validator(mode="after")
    def _partitioning(self) -> ExportSpec:
        used = set() if self.delivery else partition_parameters(self.sql)
        if self.partitioning is None and "{partition}" in self.objects.template:
            raise ValueError(
                "objects.template: {partition} needs a partitioned export (a partitioning block)"
            )
        if self.partitioning is None:
            if used:
                raise ValueError(
                    f"partitioning: the query uses {', '.join('$' + p for p in sorted(used))} "
                    "but the export is not partitioned; add a partitioning block or remove them"
                )
            return self
        partitioning = self.partitioning
        if self.delivery:
            raise ValueError("partitioning: a delivered export cannot be partitioned")
        problems = partition_problems(self.sql, partitioning.column, used)
        if self.bigquery.partition_field not in (None, partitioning.column):
            problems.append(
                f"bigquery.partition_field: {self.bigquery.partition_field} differs from "
                f"partitioning.column {partitioning.column}; leave it out (it follows "
                "partitioning.column)"
            )
        if self.bigquery.write_disposition != "WRITE_TRUNCATE":
            problems.append(
                "bigquery.write_disposition: a partitioned export replaces each partition it "
                "loads; only WRITE_TRUNCATE (the default) is allowed"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def partitioned(self) -> bool:
        return self.partitioning is not None

    @property
    def bigquery_partition_field(self) -> str | None:
        """The column the BigQuery table is partitioned on (``partitioning.column`` when the
        export is partitioned)."""
        if self.partitioning is not None:
            return self.partitioning.column
        return self.bigquery.partition_field

    @property
    def delivered(self) -> bool:
        """True when the export starts from delivered files (no query, no ``query/`` asset)."""
        return self.delivery is not None

    @property
    def cron_schedule(self) -> str:
        """The cron string the cadence means (``daily`` = 06:00, ``weekly`` = Monday 06:00)."""
        return CADENCE_CRON.get(self.cadence, self.cadence)

    @property
    def bigquery_table(self) -> str:
        return self.bigquery.table or self.name

    @property
    def bigquery_staging_dataset(self) -> str:
        """Where the load's staging tables live: never the published dataset."""
        return self.bigquery.staging_dataset or f"{self.bigquery.dataset}_staging"

    @property
    def databricks_table(self) -> str:
        return self.databricks.table or self.name


class SqlError(ValueError):
    """The SQL file cannot be used; the message says where (line, column) and why."""


def _syntax_error(exc: sqlglot.errors.ParseError) -> SqlError:
    """A parse error in words a SQL author knows: line, column and the text it stopped at."""
    error = exc.errors[0] if exc.errors else {}
    line, column = error.get("line"), error.get("col")
    near = str(error.get("highlight") or "").strip()
    where = f"line {line}, column {column}: " if line else ""
    what = f"syntax error at or near {near!r}" if near else "syntax error"
    return SqlError(f"{where}{what}")


def _is_star(select: exp.Expression) -> bool:
    """``*``, ``t.*`` or DuckDB's ``COLUMNS(...)``: columns the spec cannot name statically."""
    select = select.unalias()
    return isinstance(select, exp.Star | exp.Columns) or (
        isinstance(select, exp.Column) and isinstance(select.this, exp.Star)
    )


def parse_query(sql: str) -> exp.Query:
    """The one SELECT of an export's SQL file, parsed as DuckDB SQL; ``SqlError`` otherwise."""
    try:
        parsed = sqlglot.parse(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise _syntax_error(exc) from None
    # A comment after the last ``;`` parses as an empty statement holding the comment.
    statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        raise SqlError("the SQL file must hold exactly one SELECT query")
    return statements[0]


def query_columns(sql: str) -> list[str]:
    """The output column names of a SELECT, read statically (no database needed)."""
    query = parse_query(sql)
    stars = [s.sql(dialect="duckdb") for s in query.selects if _is_star(s)]
    if stars:
        raise SqlError(
            f"the query must name its columns (no SELECT *, t.* or COLUMNS(...); found "
            f"{', '.join(stars)}), so the schema is reviewable"
        )
    unnamed = [s.sql(dialect="duckdb") for s in query.selects if not s.alias_or_name]
    if unnamed:
        raise SqlError(f"every column needs a name: add AS <name> to {', '.join(unnamed)}")
    columns = query.named_selects
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise SqlError(f"the query returns duplicate column names: {', '.join(duplicates)}")
    return columns


def partition_parameters(sql: str) -> set[str]:
    """The ``$partition_*`` parameters the query uses (empty for an unpartitioned query)."""
    query = parse_query(sql)
    names = {p.name for p in query.find_all(exp.Placeholder, exp.Parameter) if p.name}
    return {n for n in names if n.startswith("partition_")}


def _static_type(select: exp.Expression) -> str | None:
    """The column's type when the SQL alone tells it (a cast or a literal), else None."""
    select = select.unalias()
    if isinstance(select, exp.Cast):
        return select.to.sql(dialect="duckdb").upper()
    if isinstance(select, exp.Literal):
        return "VARCHAR" if select.is_string else "NUMBER"
    if isinstance(select, exp.Boolean):
        return "BOOLEAN"
    return None


PARTITION_CAST_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE")


def partition_problems(sql: str, column: str, used: set[str]) -> list[str]:
    """What makes ``sql`` unusable for an export partitioned on ``column`` (empty: usable).

    The query must bound its rows by the partition's window (a start and an end parameter)
    and return ``column``; when the SQL states the column's type (a cast, a literal), it must
    be DATE or TIMESTAMP. A column whose type the SQL does not state is checked when the query
    runs (``DESCRIBE``, before any row is read)."""
    allowed = ", ".join("$" + p for p in PARTITION_PARAMETERS)
    problems = []
    unknown = sorted(used - set(PARTITION_PARAMETERS))
    if unknown:
        problems.append(
            f"partitioning: the query uses unknown parameter(s) "
            f"{', '.join('$' + u for u in unknown)}; allowed: {allowed}"
        )
    if not used & {"partition_start", "partition_start_date"} or not used & {
        "partition_end",
        "partition_end_date",
    }:
        problems.append(
            "partitioning: the query must select the partition's rows with bound parameters, "
            "a start and an end (e.g. WHERE order_datetime >= $partition_start AND "
            f"order_datetime < $partition_end); allowed: {allowed}"
        )
    query = parse_query(sql)
    selects = {s.alias_or_name: s for s in query.selects}
    if column not in selects:
        problems.append(
            f"partitioning.column: {column} not among the query's columns ({', '.join(selects)})"
        )
    else:
        stated = _static_type(selects[column])
        if stated is not None and stated not in PARTITION_CAST_TYPES:
            problems.append(
                f"partitioning.column: {column} is {stated} in the query; it must be a DATE or "
                "TIMESTAMP column"
            )
    return problems


def executable_query(sql: str) -> str:
    """The query's text as the source runs it inside ``COPY (...)``: without the trailing
    semicolon and the comments after the last token (a trailing ``--`` comment would swallow
    the closing parenthesis)."""
    tokens = [
        t for t in sqlglot.tokenize(sql, read="duckdb") if t.token_type != TokenType.SEMICOLON
    ]
    return sql[: tokens[-1].end + 1] if tokens else sql


def _describe(error: dict[str, Any]) -> str:
    where = ".".join("schema" if p == "schema_" else str(p) for p in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "literal_error":
        message = f"{error['input']!r} is not allowed; {message.lower()}"
    return f"{where}: {message}"


def load_spec(path: Path) -> ExportSpec:
    """Read and validate one ``<name>.yaml`` (and its SQL file)."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ExportSpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ExportSpecError(f"{path}: must be a mapping of settings, got {type(raw).__name__}")
    name = raw.pop("name", path.stem)
    if "delivery" in raw:
        return _validated(path, name=name, spec_file=path, **raw)
    sql_file = path.parent / str(raw.pop("sql_file", f"{path.stem}.sql"))
    if not sql_file.is_file():
        raise ExportSpecError(f"{path}: sql_file: {sql_file} does not exist")
    sql = sql_file.read_text()
    try:
        query_columns(sql)
    except SqlError as exc:
        raise ExportSpecError(f"{sql_file}: {exc} (the query of {path.name})") from None
    return _validated(path, name=name, sql=sql, sql_file=sql_file, spec_file=path, **raw)


def _validated(path: Path, **fields: Any) -> ExportSpec:
    """The spec built from ``fields``, or one ``ExportSpecError`` naming the file and fields."""
    try:
        return ExportSpec(**fields)
    except ValidationError as exc:
        details = "\n  ".join(_describe(e) for e in exc.errors())
        raise ExportSpecError(f"{path}: invalid export spec:\n  {details}") from None
    except TypeError as exc:
        raise ExportSpecError(f"{path}: {exc}") from None


def check_sources(specs: list[ExportSpec], declared: list[str]) -> list[ExportSpec]:
    """The specs, if each names a declared source and reads nothing it cannot (a Delta table
    on ``gs://``); otherwise one error naming every spec file at fault and the sources that
    are declared."""
    from bq_assets.sources import DELTA_ON_GCS, reads_delta_on_gcs

    errors = [
        f"{spec.spec_file}: source: {spec.source!r} is not a declared source "
        f"(declared: {', '.join(declared)}; see BQ_ASSETS_SOURCES)"
        for spec in specs
        if spec.source not in declared
    ]
    errors += [f"{spec.sql_file}: {DELTA_ON_GCS}" for spec in specs if reads_delta_on_gcs(spec.sql)]
    if errors:
        raise ExportSpecError("\n".join(errors))
    return specs


def load_specs(folder: Path) -> list[ExportSpec]:
    """Every export in ``folder``, validated; all broken specs are reported in one error."""
    if not folder.is_dir():
        raise ExportSpecError(f"{folder}: the exports folder does not exist")
    specs: list[ExportSpec] = []
    errors: list[str] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            specs.append(load_spec(path))
        except ExportSpecError as exc:
            errors.append(str(exc))
    seen: dict[str, ExportSpec] = {}
    for spec in specs:
        if spec.name in seen:
            errors.append(
                f"{spec.spec_file}: name: duplicate export name {spec.name!r} "
                f"(also in {seen[spec.name].spec_file})"
            )
        seen[spec.name] = spec
    if errors:
        raise ExportSpecError("\n".join(errors))
    if not specs:
        raise ExportSpecError(f"{folder}: no export specs (*.yaml) found")
    return specs
