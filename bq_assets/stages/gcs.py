"""Hop 2: the snapshot as BigQuery-ready objects in GCS (CSV or Parquet), plus a manifest.

Each run writes under a prefix of its own (by default ``exports/<export>/<run id>/``; the
spec's ``objects.template`` may add the run date): shards ``part-00000.csv.gz`` (or ``.csv``,
or ``.parquet`` with ``format: parquet``), then ``manifest.json`` (exact URIs, rows, bytes,
crc32c, the format, the BigQuery schema and CSV options), then ``_SUCCESS``. The BigQuery hop
loads exactly the manifest's URIs, so objects of other runs can never be loaded. Re-running for
the same run id rewrites the same objects, byte for byte (idempotent). After a successful
export, the prefixes of older complete runs beyond ``objects.keep_runs`` are deleted, and so
are those of finished runs that never wrote ``_SUCCESS``. The work is the engine's
(``bq_assets.engine.export``); this module wires it to the run and holds the hop's checks:
every object matches the manifest, and the manifest holds the snapshot's rows (both blocking).
"""

import datetime as dt
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg

from bq_assets.engine.export import export_snapshot
from bq_assets.engine.layout import ObjectLayout
from bq_assets.engine.manifest import MANIFEST, objects_differing
from bq_assets.engine.retention import tidy_runs
from bq_assets.engine.writers import object_suffix
from bq_assets.exports.spec import ExportSpec
from bq_assets.resources.google import ExportGCSResource
from bq_assets.schema import schema_from_json
from bq_assets.stages.handoff import (
    HandOff,
    fetch_snapshot,
    handed_manifest,
    upstream_materialization,
)
from bq_assets.stages.partitions import partition_label, run_window, same_window
from bq_assets.stages.results import Check, check_result, column_schema
from bq_assets.translator import gcs_key, query_key

GCS_OBJECTS_MATCH_MANIFEST = "objects_match_manifest"
GCS_ROWS_MATCH_SNAPSHOT = "rows_match_snapshot"
SAMPLE = 5


def run_date(context: dg.AssetExecutionContext, timezone: str) -> dt.date:
    """The run's date in the export's timezone: the scheduled tick's, else today's."""
    tick = context.run.tags.get("dagster/scheduled_execution_time")
    when = dt.datetime.fromisoformat(tick) if tick else dt.datetime.now(dt.UTC)
    return when.astimezone(ZoneInfo(timezone)).date()


def _run_finished(instance: dg.DagsterInstance, run_id: str) -> bool:
    """True when this Dagster instance knows the run and it has ended (so it writes no more)."""
    run = instance.get_run_by_id(run_id)
    return run is not None and run.is_finished


def gcs_materialization(spec: ExportSpec) -> Callable[..., dg.MaterializeResult]:
    """The body of ``gcs/<export>``: the run's snapshot as objects and a manifest in GCS."""

    def _gcs_objects(
        context: dg.AssetExecutionContext, gcs: ExportGCSResource
    ) -> dg.MaterializeResult:
        run_id = context.run.run_id
        with tempfile.TemporaryDirectory(prefix=f"bq_assets_{run_id}_") as scratch:
            upstream = upstream_materialization(context, query_key(spec.name))
            window = run_window(context, spec)
            if window is not None:
                same_window(upstream, window)
            client = gcs.get_client()
            snapshot = fetch_snapshot(client, upstream, Path(scratch), gcs.retry())
            bucket = client.bucket(gcs.get_bucket_name())
            layout = ObjectLayout(
                template=spec.objects.template,
                export=spec.name,
                run_id=run_id,
                run_date=run_date(context, spec.timezone),
                suffix=object_suffix(spec.format, spec.csv),
                partition=partition_label(window),
            )
            manifest = export_snapshot(
                snapshot,
                bucket,
                layout,
                spec.csv,
                context.log,
                file_format=spec.format,
                retry=gcs.retry(),
                # The snapshot's rows per partition: the manifest promises them to the load.
                rows_by_partition=upstream.handoff.rows_by_partition if window else None,
            )
            snapshot.unlink()
            tidied = tidy_runs(
                bucket,
                layout,
                spec.objects.keep_runs,
                run_finished=lambda run_id: _run_finished(context.instance, run_id),
                retry=gcs.retry(),
            )
            for line in tidied.summary():
                context.log.info(line)
            handoff = HandOff(
                row_count=manifest.rows,
                manifest_uri=manifest.prefix + MANIFEST,
                objects=[asdict(s) for s in manifest.shards],
                input_run_id=upstream.run_id,
            ).of_window(window)
            handoff = handoff.carrying_cursor(upstream.handoff)  # a merge export's window
            return dg.MaterializeResult(
                metadata={
                    **handoff.metadata(),
                    "dagster/uri": manifest.prefix,
                    "dagster/column_schema": column_schema(
                        schema_from_json(manifest.bigquery_schema), spec
                    ),
                    "format": manifest.format,
                    "shards": len(manifest.shards),
                    "bytes": sum(s.bytes for s in manifest.shards),
                }
            )

    return _gcs_objects


def gcs_checks(spec: ExportSpec) -> list[Check]:
    key = gcs_key(spec.name)

    def objects_match(
        context: dg.AssetCheckExecutionContext, gcs: ExportGCSResource
    ) -> dg.AssetCheckResult:
        upstream = upstream_materialization(context, key)
        client = gcs.get_client()
        manifest = handed_manifest(client, upstream, gcs.retry())
        problems = objects_differing(client, manifest, gcs.retry())
        return check_result(
            not problems,
            f"{len(problems)} of {len(manifest.shards)} object(s) differ from the manifest: "
            + "; ".join(problems[:SAMPLE]),
            {
                "objects": len(manifest.shards),
                "objects_differing": len(problems),
                "problems": dg.MetadataValue.json(problems),
            },
        )

    def rows_match(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        written = upstream_materialization(context, key).row_count
        snapshot = upstream_materialization(context, query_key(spec.name)).row_count
        return check_result(
            written == snapshot,
            f"the manifest holds {written} rows, the snapshot {snapshot}",
            {"manifest_rows": written, "snapshot_rows": snapshot},
        )

    return [
        Check(
            dg.AssetCheckSpec(
                GCS_OBJECTS_MATCH_MANIFEST,
                asset=key,
                blocking=True,
                description="Every object in the manifest exists with the size and crc32c written.",
            ),
            objects_match,
        ),
        Check(
            dg.AssetCheckSpec(
                GCS_ROWS_MATCH_SNAPSHOT,
                asset=key,
                blocking=True,
                description="Rows in the manifest equal the snapshot's rows.",
            ),
            rows_match,
        ),
    ]
