"""Spec settings the local stack cannot honour, refused when the code location loads locally.

The emulators differ from Google's services in a few documented ways (see the README's list of
emulator differences). Where a difference would make every run of an export fail, or silently
give another result than production, the export is refused at load with the reason, instead of
failing mid-run. Production never calls this.
"""

from __future__ import annotations

import re

from bq_assets.exports.spec import ExportSpec


def unsupported_settings(spec: ExportSpec) -> list[str]:
    """What in ``spec`` the local stack cannot do, one line per setting (empty: all fine)."""
    problems = []
    if spec.format == "csv" and spec.csv.null_marker:
        problems.append(
            f"{spec.spec_file}: csv.null_marker: {spec.csv.null_marker!r} cannot run on the "
            "local stack: bqemulator ignores a load's null_marker, so every load would fail "
            "on the marker's text. Use the default (an empty field) or format: parquet "
            "locally; real BigQuery honours it."
        )
    if not spec.delivery and spec.format == "csv" and not spec.csv.header:
        problems.append(
            f"{spec.spec_file}: csv.header: false cannot run on the local stack: bqemulator "
            "reads the first line of every CSV file as a header (it ignores skipLeadingRows), "
            "so each object's first row would be lost. Keep the header (the default) or use "
            "format: parquet locally; real BigQuery honours it."
        )
    if spec.delivery and not spec.delivery.header:
        problems.append(
            f"{spec.spec_file}: delivery.header: false cannot run on the local stack: bqemulator "
            "reads the first line of every CSV file as a header (it ignores skipLeadingRows), "
            "so each file's first row would be lost. Real BigQuery honours it."
        )
    return problems


_DECIMAL = re.compile(r"^DECIMAL\((\d+),\s*(\d+)\)$")
#: NUMERIC holds 29 digits before the point and 9 after (DECIMAL(38, 9)).
NUMERIC_INTEGER_DIGITS, NUMERIC_SCALE = 29, 9


def _fitting_cast(name: str, source_type: str) -> str:
    """The cast that makes a BIGNUMERIC column NUMERIC, keeping its scale where NUMERIC can."""
    column = '"' + name.replace('"', '""') + '"'
    decimal = _DECIMAL.match(source_type.upper())
    scale = min(int(decimal[2]), NUMERIC_SCALE) if decimal else 0
    return f"CAST({column} AS DECIMAL({NUMERIC_INTEGER_DIGITS + scale}, {scale}))"


def emulator_cannot_store(columns: list[tuple[str, str, str]]) -> list[str]:
    """The columns ``(name, source type, BigQuery type)`` the local BigQuery emulator cannot
    store: BIGNUMERIC, which it maps to DuckDB's DECIMAL(76, 38), beyond DuckDB's width of 38
    ("Binder Error: DECIMAL type width must be between 1 and 38"; table creation answers 500).
    One sentence per column, with the cast that makes it NUMERIC. Production BigQuery stores
    BIGNUMERIC; this refusal is the local stack's only."""
    return [
        f"column {name!r} is {source_type}, which maps exactly to BIGNUMERIC; the local "
        "BigQuery emulator cannot store BIGNUMERIC (its DuckDB's DECIMAL width must be between "
        f"1 and 38). To run it locally, cast it to fit NUMERIC in the query: "
        f"{_fitting_cast(name, source_type)} (values up to {NUMERIC_INTEGER_DIGITS} digits "
        "before the point); real BigQuery keeps BIGNUMERIC."
        for name, source_type, bigquery_type in columns
        if bigquery_type == "BIGNUMERIC"
    ]
