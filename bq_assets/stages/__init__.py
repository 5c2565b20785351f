"""The four stages of an export, one module each: query → GCS CSV → BigQuery → Databricks."""

from __future__ import annotations

from typing import Any

import dagster as dg


def query_key(export: str) -> dg.AssetKey:
    return dg.AssetKey(["query", export])


def gcs_key(export: str) -> dg.AssetKey:
    return dg.AssetKey(["gcs", export])


def bigquery_key(export: str) -> dg.AssetKey:
    return dg.AssetKey(["bigquery", export])


def databricks_key(export: str) -> dg.AssetKey:
    return dg.AssetKey(["databricks", export])


class UpstreamMissingError(RuntimeError):
    """A stage needs its upstream stage to have been materialized first."""


def latest_metadata(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, key: dg.AssetKey
) -> dict[str, Any]:
    """The metadata values of ``key``'s latest materialization (the hand-off between stages).

    Each stage records where its output lives (snapshot path, manifest URI, table id) in its
    materialization metadata; the next stage and the checks read it from there.
    """
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise UpstreamMissingError(
            f"{key.to_user_string()} has never been materialized; materialize it first."
        )
    return {name: entry.value for name, entry in event.asset_materialization.metadata.items()}
