"""What a hop reports: its checks, declared for the factory to build, their results, and the
column schema its materialization shows.

A hop declares each check as a ``Check`` (one check, one step) or a ``CheckGroup`` (several
checks of one asset in one step, e.g. scanning one snapshot once); the factory makes them
Dagster checks and wraps every body in the one error mapping (``bq_assets.failures``), so a
body just raises ``BqAssetsError``s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
from google.cloud import bigquery

from bq_assets.exports.spec import ExportSpec


@dataclass(frozen=True)
class Check:
    """One asset check: ``spec`` says what it checks (name, asset, blocking), ``body`` takes
    the check's context and resources and returns its ``dg.AssetCheckResult``."""

    spec: dg.AssetCheckSpec
    body: Callable[..., dg.AssetCheckResult]


@dataclass(frozen=True)
class CheckGroup:
    """Several checks of one asset run as one step named ``name``; ``body`` yields the result
    of each selected check (each can still be run on its own)."""

    name: str
    specs: list[dg.AssetCheckSpec]
    body: Callable[..., Any]


def check_result(
    passed: bool, why: str, metadata: dict[str, Any], name: str | None = None
) -> dg.AssetCheckResult:
    """A check's result; a failure says why in one line (shown in the UI, the run's failure
    report and alerts), with the details in ``metadata``. ``name``: which check of a
    ``CheckGroup`` this is."""
    return dg.AssetCheckResult(
        check_name=name, passed=passed, description=None if passed else why, metadata=metadata
    )


#: The tag a column's classification shows under in the asset's column schema.
CLASSIFICATION_TAG = "classification"


def column_schema(
    fields: list[bigquery.SchemaField], spec: ExportSpec | None = None
) -> dg.TableSchema:
    """The ``dagster/column_schema`` of a table with these BigQuery fields, each column with
    the description and classification (a ``classification`` tag) its spec declares."""
    declared = spec.column_specs if spec is not None else {}

    def column(field: bigquery.SchemaField) -> dg.TableColumn:
        found = declared.get(field.name)
        return dg.TableColumn(
            name=field.name,
            type=field.field_type,
            description=(found.description or None) if found else None,
            tags={CLASSIFICATION_TAG: found.classification}
            if found and found.classification
            else None,
        )

    return dg.TableSchema(columns=[column(f) for f in fields])
