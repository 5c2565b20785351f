"""The four hops of an export, one module each, holding the hop's asset and its checks:
query → GCS objects → BigQuery → Databricks (and ``delivery`` for delivered files).

This package holds what every hop shares: the asset keys, the retry policy, the hand-off (a
step reads its upstream's output by the URI its materialization recorded), and how errors
become one clear failure. The work itself is done by ``bq_assets.engine`` and the resources.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import grpc
import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.cloud import bigquery, storage

from bq_assets.engine.snapshot import download_snapshot
from bq_assets.errors import BqAssetsError
from bq_assets.schema import UnsupportedTypeError


def query_key(export: str) -> dg.AssetKey:
    return dg.AssetKey(["query", export])


def gcs_key(export: str) -> dg.AssetKey:
    return dg.AssetKey(["gcs", export])


def bigquery_key(export: str) -> dg.AssetKey:
    return dg.AssetKey(["bigquery", export])


def databricks_key(export: str) -> dg.AssetKey:
    return dg.AssetKey(["databricks", export])


#: The steps that touch the network run up to three times, waiting 5 s before the second attempt
#: and 15 s before the third (Dagster's exponential backoff): enough for a blip or a restarted
#: emulator. Each attempt's requests are themselves retried by the Google clients (for GCS up to
#: the resource's ``retry_timeout_s``), so a real outage fails the run after the third attempt.
NETWORK_RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)


class UpstreamMissingError(BqAssetsError):
    """A stage needs its upstream stage to have been materialized first."""


class InputMissingError(UpstreamMissingError):
    """The upstream materialization a step uses names an input (a snapshot object, a manifest,
    a table) that no longer exists; only re-materializing the upstream asset can fix it."""

    def __init__(self, upstream: Upstream, what: str, where: str) -> None:
        asset = upstream.key.to_user_string()
        super().__init__(
            f"{what} {where}, written by run {upstream.run_id} when it materialized {asset}, "
            f"no longer exists; re-materialize {asset} (with its downstream assets)."
        )


@dataclass(frozen=True)
class Upstream:
    """The upstream materialization a step reads its input from (the hand-off between stages).

    Each stage records where its output lives (snapshot URI, manifest URI, table id) in its
    materialization metadata; the next stage and the checks read it from here.
    """

    key: dg.AssetKey
    run_id: str
    metadata: dict[str, Any]
    own_run: bool  # materialized by the step's own run (or the run it re-executes)

    def __getitem__(self, name: str) -> Any:
        return self.metadata[name]

    def describe(self) -> str:
        whose = "this run's" if self.own_run else "the latest"
        return f"{self.key.to_user_string()}: {whose} materialization, from run {self.run_id}"


@contextmanager
def reading_input(upstream: Upstream, what: str, where: str) -> Iterator[None]:
    """Reading ``where`` (``what`` the upstream step wrote): its absence is an
    ``InputMissingError`` naming the asset to re-materialize, not a retried step failure."""
    try:
        yield
    except (api_exceptions.NotFound, FileNotFoundError):
        raise InputMissingError(upstream, what, where) from None


def fetch_snapshot(
    client: storage.Client, upstream: Upstream, directory: Path, retry: Retry
) -> Path:
    """The snapshot the query hop handed on (``snapshot_uri``), copied into ``directory``; an
    ``InputMissingError`` naming the asset to re-materialize when it no longer exists."""
    uri = upstream.metadata.get("snapshot_uri")
    if uri is None:  # materialized by a version that kept snapshots on local disk
        raise InputMissingError(upstream, "The snapshot", "(kept on the disk of that run)")
    with reading_input(upstream, "The snapshot", str(uri)):
        return download_snapshot(client, str(uri), directory / "snapshot.parquet", retry)


def column_schema(fields: list[bigquery.SchemaField]) -> dg.TableSchema:
    """The ``dagster/column_schema`` of a table with these BigQuery fields."""
    return dg.TableSchema(columns=[dg.TableColumn(name=f.name, type=f.field_type) for f in fields])


def check_result(
    passed: bool, why: str, metadata: dict[str, Any], name: str | None = None
) -> dg.AssetCheckResult:
    """A check's result; a failure says why in one line (shown in the UI, the run's failure
    report and alerts), with the details in ``metadata``. ``name``: which check of a
    multi-check this is."""
    return dg.AssetCheckResult(
        check_name=name, passed=passed, description=None if passed else why, metadata=metadata
    )


def _materialization_in_run(
    instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey
) -> dg.EventLogEntry | None:
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    found = [
        e for e in events if e.asset_materialization and e.asset_materialization.asset_key == key
    ]
    return found[-1] if found else None


def _own_runs(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> Iterator[str]:
    """This run, then the runs it re-executes (a retry from failure skips steps that succeeded,
    so their outputs are in its parent runs)."""
    run: dg.DagsterRun | None = context.run
    while run is not None:
        yield run.run_id
        run = context.instance.get_run_by_id(run.parent_run_id) if run.parent_run_id else None


def upstream_materialization(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, key: dg.AssetKey
) -> Upstream:
    """``key``'s materialization of this run when the run materialized it, else the latest one
    (e.g. a run that materializes only ``gcs/<export>``). Logs which run it came from.

    Two runs of one export at once therefore each hand their own output on, whichever wrote
    last. Read-only; the same answer every time within a run.
    """
    for run_id in _own_runs(context):
        entry = _materialization_in_run(context.instance, run_id, key)
        if entry is not None:
            upstream = _upstream(key, entry, own_run=True)
            break
    else:
        if context.has_partition_key or context.has_partition_key_range:
            entry = _latest_of_partitions(context.instance, key, list(context.partition_keys))
        else:
            entry = context.instance.get_latest_materialization_event(key)
        if entry is None or entry.asset_materialization is None:
            raise UpstreamMissingError(
                f"{key.to_user_string()} has never been materialized; materialize it first."
            )
        upstream = _upstream(key, entry, own_run=False)
    context.log.info(f"input {upstream.describe()}")
    return upstream


def _latest_of_partitions(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitions: list[str]
) -> dg.EventLogEntry | None:
    """The latest materialization of a partitioned ``key`` covering exactly ``partitions``:
    each partition's latest, when one run wrote them all (a range materialized piecemeal has
    no single input to hand on: re-materialize it as one)."""
    entries = []
    for partition in partitions:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
        ).records
        if not records:
            raise UpstreamMissingError(
                f"{key.to_user_string()} has never been materialized for partition {partition}; "
                "materialize it first."
            )
        entries.append(records[0].event_log_entry)
    if len({entry.run_id for entry in entries}) > 1:
        raise UpstreamMissingError(
            f"the latest materializations of {key.to_user_string()} for partitions "
            f"{partitions[0]}…{partitions[-1]} come from different runs; re-materialize it for "
            "this range in one run (with its downstream assets)."
        )
    return entries[-1]


def _upstream(key: dg.AssetKey, entry: dg.EventLogEntry, own_run: bool) -> Upstream:
    assert entry.asset_materialization is not None
    metadata = {name: value.value for name, value in entry.asset_materialization.metadata.items()}
    return Upstream(key=key, run_id=entry.run_id, metadata=metadata, own_run=own_run)


UNREACHABLE = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    api_exceptions.RetryError,
    api_exceptions.ServiceUnavailable,
    auth_exceptions.TransportError,
    ConnectionError,
)


def _reasons(exc: api_exceptions.GoogleAPICallError) -> set[str]:
    return {str(error.get("reason")) for error in exc.errors or [] if isinstance(error, dict)}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


def _unreachable_service(exc: BaseException, endpoints: Mapping[str, str]) -> str:
    """The service whose address the error mentions, with its endpoint (else all of them)."""
    text = f"{exc!r} {exc.__cause__!r} {exc.__context__!r}"
    for service, endpoint in endpoints.items():
        addresses = re.findall(r"[\w.-]+:\d+|[\w-]+(?:\.[\w-]+)+", endpoint.split("://")[-1])
        ports = [f"port={a.rpartition(':')[2]}" for a in addresses if ":" in a]
        if any(needle in text for needle in addresses + ports):
            return f"{service} at {endpoint}"
    return " or ".join(f"{service} at {endpoint}" for service, endpoint in endpoints.items())


def _endpoints(services: Mapping[str, Any]) -> dict[str, str]:
    found = {}
    for name, resource in services.items():
        try:
            found[name] = str(resource.endpoint)
        except Exception:  # the endpoint itself cannot be told (e.g. the stack is gone)
            found[name] = "(endpoint unknown)"
    return found


@contextmanager
def reported_as_failure(**services: Any) -> Iterator[None]:
    """Turn the errors a user can act on into a ``dg.Failure`` whose message is the whole story.

    Our own errors (bad SQL, schema drift, a location mismatch, a stopped local stack, …) fail
    without a retry, since retrying cannot help. An unreachable service fails naming it and its
    endpoint (``services`` maps a service name to the resource that knows its ``endpoint``), so
    the step's retry policy can try again.
    """
    try:
        yield
    except dg.Failure:
        raise
    except BqAssetsError as exc:
        raise dg.Failure(
            description=str(exc), metadata=exc.metadata, allow_retries=exc.retryable
        ) from None
    except UnsupportedTypeError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    except api_exceptions.Forbidden as exc:
        if _reasons(exc) & {"rateLimitExceeded"}:  # BigQuery answers rate limits with a 403
            raise
        raise dg.Failure(
            description=f"permission denied: {_short(exc)} Grant the permission it names to the "
            "service account (the README lists every permission the pipeline needs).",
            allow_retries=False,
        ) from None
    except UNREACHABLE as exc:
        where = _unreachable_service(exc, _endpoints(services))
        raise dg.Failure(
            description=f"{where} is unreachable: {_short(exc)}", allow_retries=True
        ) from None
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        where = _unreachable_service(exc, _endpoints(services))
        raise dg.Failure(
            description=f"{where} is unreachable: {exc.details()}", allow_retries=True
        ) from None
