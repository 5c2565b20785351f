"""The BigQuery hop of a merge export (issue 26): the window merged into the table by primary
key, the high-water mark moved, and the checks that the MERGE did what the window says.

The load is the engine's (``bq_assets.engine.bigquery_merge``). The new mark is the largest
cursor value ever merged: the stored mark and the window's largest, whichever is later, so it
never moves back (an explicit window re-sending an old range leaves it where it was). It is
recorded only with a successful materialization: a failed MERGE records nothing, and the next
run starts from the mark as it was.

Checks (blocking): ``merge_matches_window`` (the plan and BigQuery's report agree with the
window's rows and with the table's change in rows), ``primary_key_unique_in_table`` (the key
is unique and never NULL in the whole table after the merge); ``rows_match_manifest``
compares the rows the MERGE read with the manifest's.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
from google.cloud import bigquery as bigquery_client

from bq_assets.engine.bigquery_jobs import TRANSIENT
from bq_assets.engine.bigquery_merge import MergeCounts, MergeLoad, run_merge_load
from bq_assets.engine.manifest import Manifest
from bq_assets.exports.spec import ExportSpec
from bq_assets.incremental import CursorKind, advanced_mark, cursor_text, parse_cursor
from bq_assets.resources.google import ExportBigQueryResource
from bq_assets.stages.cursor import initial_value, stored_mark, stored_state
from bq_assets.stages.handoff import (
    HandOff,
    InputMissingError,
    Upstream,
    upstream_materialization,
)
from bq_assets.stages.results import Check, check_result, column_schema
from bq_assets.translator import bigquery_key, gcs_key

MERGE_MATCHES_WINDOW = "merge_matches_window"
PRIMARY_KEY_UNIQUE_IN_TABLE = "primary_key_unique_in_table"
SAMPLE = 5


def merged_materialization(
    context: dg.AssetExecutionContext,
    spec: ExportSpec,
    client: bigquery_client.Client,
    project: str,
    manifest: Manifest,
    upstream: Upstream,
) -> tuple[MergeLoad, dict[str, object]]:
    """Merge the window ``upstream`` (``gcs/<export>``) handed on; the load and the metadata of
    the materialization that records it (with the new high-water mark)."""
    handed = upstream.handoff
    if handed.cursor_column is None or handed.cursor_kind is None:
        raise _not_a_window(upstream)
    from_start = handed.cursor_from == "initial" or _reaches_back(spec, handed)
    loaded = run_merge_load(client, project, spec, manifest, from_start, context.log)
    mark, moved_at = _new_mark(context, spec, handed)
    reported = loaded.reported
    counts = reported or loaded.planned
    statement = loaded.statement
    handoff = HandOff(
        row_count=loaded.result.rows,
        table_name=loaded.result.table_id,
        source_manifest=upstream.manifest_uri,
        rows_before_load=loaded.rows_before,
        input_run_id=upstream.run_id,
        cursor_mark=mark,
        cursor_mark_moved_at=moved_at,
        staged_rows=loaded.staged_rows,
        planned_inserted=loaded.planned.inserted,
        planned_updated=loaded.planned.updated,
        planned_deleted=loaded.planned.deleted,
        merge_inserted=counts.inserted,
        merge_updated=counts.updated,
        merge_deleted=counts.deleted,
        merge_affected_rows=statement.affected_rows,
        merge_counts_from="dmlStats" if reported else "plan",
    ).carrying_cursor(handed)
    context.log.info(
        f"{loaded.result.table_id}: merged {loaded.staged_rows} row(s): {counts.inserted} "
        f"inserted, {counts.updated} updated, {counts.deleted} deleted (job {statement.job_id}); "
        f"high-water mark {mark}"
    )
    return loaded, {
        **handoff.metadata(),
        "dagster/column_schema": column_schema(loaded.result.schema, spec),
        "job_id": loaded.result.job_id,
        "merge_job_id": statement.job_id,
        "merge_bytes_processed": loaded.bytes_processed,
        "merge_bytes_billed": loaded.bytes_billed,
        "merge_slot_ms": statement.slot_ms or 0,
        "location": loaded.result.location,
        "bytes": loaded.result.bytes,
    }


def _not_a_window(upstream: Upstream) -> Exception:
    return InputMissingError(upstream, "Its cursor window", "(not recorded: not a merge run)")


def _reaches_back(spec: ExportSpec, handed: HandOff) -> bool:
    """Does the handed window start at the beginning (``load.initial``, or no lower bound)?"""
    assert handed.cursor_kind is not None and handed.cursor_start is not None
    kind: CursorKind = handed.cursor_kind  # type: ignore[assignment]
    start = parse_cursor(handed.cursor_start, kind, spec.timezone, "the window's start")
    return not initial_value(spec, kind) < start  # type: ignore[operator]


def _new_mark(
    context: dg.AssetExecutionContext, spec: ExportSpec, handed: HandOff
) -> tuple[str | None, str | None]:
    """The high-water mark after this window lands, and when it last moved."""
    kind: CursorKind = handed.cursor_kind  # type: ignore[assignment]
    state = stored_state(context.instance, spec)
    before = stored_mark(spec, state, kind, context.log)
    window_max = (
        parse_cursor(handed.cursor_max, kind, spec.timezone, "the window's largest cursor")
        if handed.cursor_max is not None
        else None
    )
    after = advanced_mark(before, window_max)
    if after is None:
        return None, None
    if before is not None and after == before and state is not None and state.moved_at:
        return cursor_text(after), state.moved_at
    return cursor_text(after), dt.datetime.now(dt.UTC).isoformat()


def merge_checks(spec: ExportSpec) -> list[Check]:
    """The BigQuery hop's checks of a merge export, besides the rows and schema checks."""
    key = bigquery_key(spec.name)

    def merge_matches_window(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        merged = upstream_materialization(context, key).handoff
        window_rows = upstream_materialization(context, gcs_key(spec.name)).row_count
        problems, metadata = merge_problems(merged, window_rows)
        return check_result(not problems, "; ".join(problems), metadata)

    def primary_key_unique_in_table(
        context: dg.AssetCheckExecutionContext, bigquery: ExportBigQueryResource
    ) -> dg.AssetCheckResult:
        table_id = upstream_materialization(context, key).table_name
        with bigquery.get_client() as client:
            nulls, duplicated, sample = key_report(client, table_id, spec.primary_key)
        shown = ", ".join(
            "/".join(str(v) for v in row[:-1]) + f" ({row[-1]} rows)" for row in sample
        )
        return check_result(
            nulls == 0 and duplicated == 0,
            f"{duplicated} key(s) of {', '.join(spec.primary_key)} occur more than once in "
            f"{table_id}" + (f", e.g. {shown}" if shown else "") + f"; {nulls} row(s) with a "
            "NULL key",
            {
                "null_keys": nulls,
                "duplicated_keys": duplicated,
                "duplicate_sample": dg.MetadataValue.json([[str(v) for v in r] for r in sample]),
            },
        )

    return [
        Check(
            dg.AssetCheckSpec(
                MERGE_MATCHES_WINDOW,
                asset=key,
                blocking=True,
                description="The MERGE did what the window says: every row of the window not "
                "flagged deleted was inserted or updated, at most the flagged rows were deleted, "
                "BigQuery's report agrees with the plan, and the table changed by exactly "
                "inserted - deleted rows.",
            ),
            merge_matches_window,
        ),
        Check(
            dg.AssetCheckSpec(
                PRIMARY_KEY_UNIQUE_IN_TABLE,
                asset=key,
                blocking=True,
                description=f"Primary key ({', '.join(spec.primary_key)}) is unique and never "
                "NULL in the whole table after the merge.",
            ),
            primary_key_unique_in_table,
        ),
    ]


def merge_problems(merged: HandOff, window_rows: int) -> tuple[list[str], dict[str, object]]:
    """How the MERGE recorded in ``merged`` disagrees with its window of ``window_rows`` rows
    (one line each; empty when it agrees), and the numbers compared."""
    flagged = int(merged.window_deleted_rows or 0)
    planned = MergeCounts(
        int(merged.planned_inserted or 0),
        int(merged.planned_updated or 0),
        int(merged.planned_deleted or 0),
    )
    done = MergeCounts(
        int(merged.merge_inserted or 0),
        int(merged.merge_updated or 0),
        int(merged.merge_deleted or 0),
    )
    before, after = int(merged.rows_before_load or 0), int(merged.row_count or 0)
    problems = []
    if done.inserted + done.updated != window_rows - flagged:
        problems.append(
            f"{done.inserted} inserted + {done.updated} updated, but the window holds "
            f"{window_rows - flagged} row(s) not flagged deleted"
        )
    if done.deleted > flagged:
        problems.append(f"{done.deleted} deleted, but only {flagged} row(s) are flagged deleted")
    if done != planned:
        problems.append(
            f"the MERGE reports {done.inserted}/{done.updated}/{done.deleted} "
            f"(inserted/updated/deleted), the plan expected "
            f"{planned.inserted}/{planned.updated}/{planned.deleted}"
        )
    affected = merged.merge_affected_rows
    if affected is not None and affected != planned.total:
        problems.append(
            f"the MERGE changed {affected} row(s) in all, the plan expected {planned.total}"
        )
    if after != before + done.inserted - done.deleted:
        problems.append(
            f"the table went from {before} to {after} rows, not by {done.inserted} inserted - "
            f"{done.deleted} deleted"
        )
    return problems, {
        "window_rows": window_rows,
        "flagged_rows": flagged,
        "inserted": done.inserted,
        "updated": done.updated,
        "deleted": done.deleted,
        "affected_rows": -1 if affected is None else affected,
        "planned_total": planned.total,
        "table_rows_before": before,
        "table_rows_after": after,
        "counts_from": merged.merge_counts_from or "",
    }


def key_report(
    client: bigquery_client.Client, table_id: str, key: list[str]
) -> tuple[int, int, list[list[object]]]:
    """Rows with a NULL key column, keys occurring more than once, and a sample of the most
    repeated ones (key values, then how often) in the whole table. Read-only."""
    keys = ", ".join(f"`{k}`" for k in key)
    null_key = " OR ".join(f"`{k}` IS NULL" for k in key)
    repeated = f"SELECT {keys}, COUNT(*) AS n FROM `{table_id}` GROUP BY {keys} HAVING COUNT(*) > 1"
    counts = (
        f"SELECT (SELECT COUNT(*) FROM `{table_id}` WHERE {null_key}) AS null_keys, "
        f"(SELECT COUNT(*) FROM ({repeated})) AS duplicated_keys"
    )
    (row,) = list(client.query(counts, retry=TRANSIENT).result(retry=TRANSIENT))
    nulls, duplicated = int(row["null_keys"]), int(row["duplicated_keys"])
    sample: list[list[object]] = []
    if duplicated:
        sql = f"{repeated} ORDER BY n DESC LIMIT {SAMPLE}"
        sample = [list(r.values()) for r in client.query(sql, retry=TRANSIENT).result()]
    return nulls, duplicated, sample
