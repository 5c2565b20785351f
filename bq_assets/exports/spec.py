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

import zoneinfo
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from bq_assets.engine.key_checksum import refused_key_types
from bq_assets.exports.columns import ColumnSpec, unknown_columns
from bq_assets.exports.delivery import DeliveryOptions
from bq_assets.exports.fields import (
    CADENCE_CRON,
    COLUMN,
    EXPORT_NAME,
    OWNER,
    SOURCE_NAME,
    ExportSpecError,
    StrictModel,
    matching,
)
from bq_assets.exports.load import LoadOptions
from bq_assets.exports.sql import (
    SqlError,
    cursor_parameters,
    merge_problems,
    partition_parameters,
    partition_problems,
    query_columns,
    stated_bigquery_types,
)
from bq_assets.exports.targets import (
    PARTITIONED_TEMPLATE,
    BigQueryTarget,
    CsvOptions,
    DatabricksTarget,
    ObjectNames,
    PartitionOptions,
)


class ExportSpec(StrictModel):
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
    columns: dict[str, ColumnSpec] = Field(
        default_factory=dict,
        description="per result column: its description and classification (a delivered "
        "export declares them in delivery.columns)",
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
    load: LoadOptions | None = Field(
        None,
        description="merge: each run sends only the rows whose cursor moved and upserts them by "
        "primary key (see LoadOptions); absent: every run replaces the table",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return matching(EXPORT_NAME, "export name", value)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return matching(SOURCE_NAME, "source name", value)

    @field_validator("primary_key", "required")
    @classmethod
    def _columns(cls, value: list[str]) -> list[str]:
        return [matching(COLUMN, "column name", v) for v in value]

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
        return [matching(OWNER, "owner (an email or team:<name>)", v) for v in value]

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, ColumnSpec]) -> dict[str, ColumnSpec]:
        for name in value:
            matching(COLUMN, "column name", name)
        return value

    @model_validator(mode="after")
    def _columns_exist(self) -> ExportSpec:
        columns = self.delivery.column_names if self.delivery else query_columns(self.sql)
        if self.delivery and self.columns:
            raise ValueError(
                "columns: a delivered export describes and classifies its columns in "
                "delivery.columns (description, classification), not in a columns block"
            )
        problem = unknown_columns(self.columns, columns, "query")
        if problem:
            raise ValueError(problem)
        masked = set(self.databricks.masking)
        classified = {c.classification for c in self.column_specs.values() if c.classification}
        if masked - classified:
            raise ValueError(
                f"databricks.masking: {', '.join(sorted(masked - classified))} classifies no "
                f"column of this export (classified: {', '.join(sorted(classified)) or 'none'})"
            )
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

    @model_validator(mode="after")
    def _checksummable_key(self) -> ExportSpec:
        """The Databricks hop's key checksum compares a canonical string of each key in both
        engines; a key column whose type (stated by a cast in the SQL, or by the delivery) has
        none is refused here, naming the column. Types the SQL does not state are checked when
        the check runs, from the BigQuery table."""
        if self.delivery:
            types = {c.name: c.type for c in self.delivery.columns}
        else:
            types = stated_bigquery_types(self.sql)
        problems = refused_key_types([(c, types[c]) for c in self.primary_key if c in types])
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="before")
    @classmethod
    def _merge_key(cls, data: Any) -> Any:
        """A merge matches rows on the primary key: say so when it is missing."""
        if isinstance(data, dict) and data.get("load") is not None and not data.get("primary_key"):
            raise ValueError(
                "primary_key: required by load (mode: merge): the MERGE matches the table's rows "
                "on it; give the column(s) that identify a row"
            )
        return data

    @model_validator(mode="after")
    def _merge(self) -> ExportSpec:
        used = set() if self.delivery else cursor_parameters(self.sql)
        if self.load is None:
            if used:
                raise ValueError(
                    f"load: the query uses {', '.join('$' + p for p in sorted(used))} but the "
                    "export does not merge; add a load block (mode: merge) or remove them"
                )
            return self
        if self.delivery:
            raise ValueError("load: a delivered export cannot merge (it has no query to window)")
        problems = []
        if self.partitioning is not None:
            problems.append(
                "load: a merge export cannot be partitioned (a partition replaces its rows, a "
                "merge upserts by key); remove the partitioning block or the load block"
            )
        if self.bigquery.write_disposition != "WRITE_TRUNCATE":
            problems.append(
                "bigquery.write_disposition: a merge export applies its rows with MERGE; "
                f"{self.bigquery.write_disposition} is not allowed (leave it out)"
            )
        if self.load.deleted in self.primary_key:
            problems.append(f"load.deleted: {self.load.deleted} is part of the primary key")
        if self.load.cursor in self.primary_key:
            problems.append(f"load.cursor: {self.load.cursor} is part of the primary key")
        problems += merge_problems(self.sql, self.load.cursor, self.load.deleted, used)
        if problems:
            raise ValueError("; ".join(problems))
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
    def column_specs(self) -> dict[str, ColumnSpec]:
        """Each described or classified column's spec (from ``delivery.columns`` when
        delivered), in the order of the result's columns."""
        if self.delivery is None:
            return dict(self.columns)
        found = {c.name: c.column_spec for c in self.delivery.columns}
        return {name: spec for name, spec in found.items() if spec is not None}

    @property
    def columns_key(self) -> str:
        """Where the spec declares its columns (for messages)."""
        return "delivery.columns" if self.delivery else "columns"

    def classification_of(self, column: str) -> str | None:
        declared = self.column_specs.get(column)
        return declared.classification if declared else None

    @property
    def partitioned(self) -> bool:
        return self.partitioning is not None

    @property
    def merged(self) -> bool:
        """True when each run merges a window of rows into the table (``load: {mode: merge}``)."""
        return self.load is not None

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
    from bq_assets.sources.files import DELTA_ON_GCS, reads_delta_on_gcs

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
