"""The hand-off between hops: a step reads its input by the URI or table its upstream's
materialization recorded, never by a local path or a guess.

What one step records for the next is one typed set, ``HandOff``, written and read through it;
its keys are the metadata keys users already see (public: their history depends on them).
``upstream_materialization`` finds the materialization a step reads: its own run's, else the
latest (of exactly the run's partitions, when partitioned).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import dagster as dg
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.cloud import storage

from bq_assets.engine.manifest import Manifest, read_manifest
from bq_assets.engine.snapshot import download_snapshot
from bq_assets.errors import BqAssetsError
from bq_assets.partitioning import Window

#: HandOff fields whose metadata key is one of Dagster's standard ones.
STANDARD_KEYS = {"row_count": "dagster/row_count", "table_name": "dagster/table_name"}


#: What the query step of a merge export records of its window, handed on to the load.
CURSOR_WINDOW_FIELDS = (
    "cursor_column",
    "cursor_kind",
    "cursor_start",
    "cursor_end",
    "cursor_from",
    "cursor_max",
    "window_deleted_rows",
)


@dataclass(frozen=True)
class HandOff:
    """The metadata a step writes for the steps and checks after it; unset fields are not
    written. ``metadata()`` writes it into a materialization, ``read`` reads it back."""

    #: ``dagster/row_count``: the rows the step produced (of its partitions, when partitioned).
    row_count: int | None = None
    #: ``dagster/table_name``: the table the step wrote, fully qualified (BigQuery:
    #: ``project.dataset.table``, what the Databricks hop reads).
    table_name: str | None = None
    #: query → gcs: the run's Parquet snapshot.
    snapshot_uri: str | None = None
    #: gcs → bigquery: the manifest naming exactly the objects to load.
    manifest_uri: str | None = None
    #: bigquery → its checks: the manifest the load read.
    source_manifest: str | None = None
    #: partitioned exports: the run's window, ISO 8601 with the offset.
    partition_start: str | None = None
    partition_end: str | None = None
    #: partitioned exports: rows per partition key (the snapshot's, or the table's after a load).
    rows_by_partition: dict[str, int] | None = None
    #: WRITE_APPEND: the table's rows before this run's load.
    rows_before_load: int | None = None
    #: gcs: each object written (delivered: each file found, with its header and fields).
    objects: list[dict[str, Any]] | None = None
    #: the run whose output this step read.
    input_run_id: str | None = None
    #: merge exports, query → gcs → bigquery: the run's window of the cursor column (its kind:
    #: timestamp, datetime, date or integer; bounds as ISO 8601 or integers; where the window
    #: came from: initial, mark or tags), the largest cursor value in it, and its rows flagged
    #: deleted (``dagster/row_count``: its rows, one per key).
    cursor_column: str | None = None
    cursor_kind: str | None = None
    cursor_start: str | None = None
    cursor_end: str | None = None
    cursor_from: str | None = None
    cursor_max: str | None = None
    window_deleted_rows: int | None = None
    #: merge exports, bigquery: the high-water mark after this load (the largest cursor value
    #: ever merged) and when it last moved (ISO 8601): where the next run's window starts.
    cursor_mark: str | None = None
    cursor_mark_moved_at: str | None = None
    #: merge exports, bigquery → its checks: the rows the MERGE read (its staging table), what
    #: the plan expected it to insert, update and delete (from the staging and target tables
    #: before it ran), what it reports (BigQuery's dmlStats; the emulator reports none, then
    #: the plan's numbers are shown and ``merge_counts_from`` says so), and its total.
    staged_rows: int | None = None
    planned_inserted: int | None = None
    planned_updated: int | None = None
    planned_deleted: int | None = None
    merge_inserted: int | None = None
    merge_updated: int | None = None
    merge_deleted: int | None = None
    merge_affected_rows: int | None = None
    merge_counts_from: str | None = None

    def metadata(self) -> dict[str, Any]:
        """The set fields as materialization metadata (dicts and lists as JSON)."""
        found: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if isinstance(value, dict | list):
                value = dg.MetadataValue.json(value)
            found[STANDARD_KEYS.get(field.name, field.name)] = value
        return found

    def carrying_cursor(self, upstream: HandOff) -> HandOff:
        """This hand-off with the cursor window ``upstream`` handed on (a merge export's gcs
        step passes the query's window to the load); unchanged when there is none."""
        return replace(self, **{name: getattr(upstream, name) for name in CURSOR_WINDOW_FIELDS})

    def of_window(self, window: Window | None) -> HandOff:
        """This hand-off with a partitioned run's window (unchanged when unpartitioned)."""
        if window is None:
            return self
        return replace(
            self, partition_start=window.start.isoformat(), partition_end=window.end.isoformat()
        )

    @classmethod
    def read(cls, metadata: Mapping[str, Any]) -> HandOff:
        """The hand-off in ``metadata`` (values already unwrapped); absent keys stay unset."""
        return cls(
            **{
                field.name: metadata.get(STANDARD_KEYS.get(field.name, field.name))
                for field in fields(cls)
            }
        )


class UpstreamMissingError(BqAssetsError):
    """A step needs its upstream step to have been materialized first."""


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
    """The upstream materialization a step reads its input from."""

    key: dg.AssetKey
    run_id: str
    handoff: HandOff
    own_run: bool  # materialized by the step's own run (or the run it re-executes)

    def _required(self, name: str) -> Any:
        """The hand-off field ``name``; an ``InputMissingError`` when that materialization did
        not record it (written by an older version: re-materializing it is the fix)."""
        value = getattr(self.handoff, name)
        if value is None:
            key = STANDARD_KEYS.get(name, name)
            raise InputMissingError(self, f"Its {key}", "(not recorded by that version)")
        return value

    @property
    def row_count(self) -> int:
        return int(self._required("row_count"))

    @property
    def table_name(self) -> str:
        return str(self._required("table_name"))

    @property
    def manifest_uri(self) -> str:
        return str(self._required("manifest_uri"))

    @property
    def source_manifest(self) -> str:
        return str(self._required("source_manifest"))

    @property
    def objects(self) -> list[dict[str, Any]]:
        return list(self._required("objects"))

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
    uri = upstream.handoff.snapshot_uri
    if uri is None:  # materialized by a version that kept snapshots on local disk
        raise InputMissingError(upstream, "The snapshot", "(kept on the disk of that run)")
    with reading_input(upstream, "The snapshot", uri):
        return download_snapshot(client, uri, directory / "snapshot.parquet", retry)


def handed_manifest(
    client: storage.Client, upstream: Upstream, retry: Retry, uri: str | None = None
) -> Manifest:
    """The manifest ``upstream`` handed on (its ``manifest_uri``, or ``uri``: the one a load
    read); an ``InputMissingError`` naming the asset to re-materialize when it is gone."""
    uri = uri or upstream.manifest_uri
    with reading_input(upstream, "The manifest", uri):
        return read_manifest(client, uri, retry)


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
    return Upstream(key=key, run_id=entry.run_id, handoff=HandOff.read(metadata), own_run=own_run)
