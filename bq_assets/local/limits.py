"""Spec settings the local stack cannot honour, refused when the code location loads locally.

The emulators differ from Google's services in a few documented ways (see the README's list of
emulator differences). Where a difference would make every run of an export fail, or silently
give another result than production, the export is refused at load with the reason, instead of
failing mid-run. Production never calls this.
"""

from __future__ import annotations

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
