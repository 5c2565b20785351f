"""The ``delivery:`` block of a delivered export: files another system drops into the bucket,
their columns, how a complete delivery is recognised, and the names they are sent under."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bq_assets.exports.columns import DESCRIPTION_MAX, ColumnSpec
from bq_assets.exports.fields import (
    COLUMN,
    StrictModel,
    matching,
)

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


class DeliveryColumn(StrictModel):
    """One delivered column: its name in the header, the BigQuery type it loads as, and (as in
    an export's ``columns:`` block) what it means and how it is classified."""

    name: str
    type: str
    description: str = Field("", max_length=DESCRIPTION_MAX)
    classification: str | None = None

    _description = field_validator("description")(ColumnSpec.plain_description)
    _classification = field_validator("classification")(ColumnSpec.class_name)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return matching(COLUMN, "column name", value)

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value.upper() not in DELIVERY_TYPES:
            raise ValueError(
                f"{value!r} is not a BigQuery type; allowed: {', '.join(DELIVERY_TYPES)}"
            )
        return value.upper()

    @property
    def column_spec(self) -> ColumnSpec | None:
        """The column's description and classification, as a ``columns:`` entry (None when it
        declares neither)."""
        if not self.description and self.classification is None:
            return None
        return ColumnSpec(description=self.description, classification=self.classification)


class DeliveryCompletion(StrictModel):
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


class DeliveryOptions(StrictModel):
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
