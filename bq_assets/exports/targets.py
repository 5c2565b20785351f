"""Where an export goes and how: the CSV format, object names, the BigQuery table, the
Databricks table, and partitioning: the blocks of an export spec, each validated alone."""

from __future__ import annotations

import datetime as dt
import re
import string
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from bq_assets.exports.columns import CLASSIFICATION
from bq_assets.exports.fields import (
    ACCOUNT_GROUP,
    BIGQUERY_NAME,
    COLUMN,
    DATABRICKS_NAME,
    GENERATED_OPTIONS,
    LABEL_KEY,
    LABEL_VALUE,
    LOCATION,
    OPTION_NAME,
    SECRET_NAME_HINTS,
    SECRET_VALUE_HINTS,
    StrictModel,
    matching,
)


class CsvOptions(StrictModel):
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


class ObjectNames(StrictModel):
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


class BigQueryTarget(StrictModel):
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
    maximum_bytes_billed: int | None = Field(
        None,
        ge=1,
        description="every query job of this export may bill at most this many bytes (BigQuery "
        "refuses one that would bill more); default: BQ_ASSETS_MAXIMUM_BYTES_BILLED, else none",
    )
    schema_update_options: list[Literal["ALLOW_FIELD_ADDITION", "ALLOW_FIELD_RELAXATION"]] = Field(
        default_factory=list,
        description="schema changes a load may make to an existing table; any other drift fails",
    )

    @field_validator("dataset", "table", "staging_dataset")
    @classmethod
    def _bigquery_name(cls, value: str | None) -> str | None:
        return None if value is None else matching(BIGQUERY_NAME, "BigQuery id", value)

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        return matching(LOCATION, "BigQuery location", value)

    @field_validator("partition_field")
    @classmethod
    def _partition(cls, value: str | None) -> str | None:
        return None if value is None else matching(COLUMN, "column name", value)

    @field_validator("clustering_fields")
    @classmethod
    def _clustering(cls, value: list[str]) -> list[str]:
        return [matching(COLUMN, "column name", v) for v in value]

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            matching(LABEL_KEY, "BigQuery label key", key)
            matching(LABEL_VALUE, "BigQuery label value", str(label))
        return value

    @model_validator(mode="after")
    def _staging_apart(self) -> BigQueryTarget:
        if self.staging_dataset is not None and self.staging_dataset == self.dataset:
            raise ValueError(
                "staging_dataset must differ from dataset, so the published dataset (and a "
                "Databricks foreign catalog over it) never shows staging tables"
            )
        return self


class DatabricksTarget(StrictModel):
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

    masking: dict[str, str] = Field(
        default_factory=dict,
        description="classification -> account group: the view shows such columns only to "
        "members of the group (is_account_group_member); everyone else sees NULL",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("masking")
    @classmethod
    def _masking(cls, value: dict[str, str]) -> dict[str, str]:
        for classification, group in value.items():
            matching(CLASSIFICATION, "classification", classification)
            matching(ACCOUNT_GROUP, "Databricks account group name", group)
        return value

    @field_validator("catalog", "schema_", "table", "connection", "foreign_catalog")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        return None if value is None else matching(DATABRICKS_NAME, "Databricks identifier", value)

    @field_validator("connection_options", "foreign_catalog_options")
    @classmethod
    def _options(cls, value: dict[str, str]) -> dict[str, str]:
        for name, option in value.items():
            matching(OPTION_NAME, "option name", name)
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
class PartitionOptions(StrictModel):
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
        return matching(COLUMN, "column name", value)

    @model_validator(mode="after")
    def _start_on_a_boundary(self) -> PartitionOptions:
        if self.by == "week" and self.start.weekday() != 0:
            raise ValueError(f"start: {self.start} is not a Monday (weeks run Monday to Monday)")
        if self.by == "month" and self.start.day != 1:
            raise ValueError(f"start: {self.start} is not the first day of a month")
        return self
