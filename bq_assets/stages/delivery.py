"""Stage 2 of a delivered export: the files another system (e.g. Amperity) dropped into the
bucket, recorded and checked, plus the sensor that starts one run per complete delivery.

A delivered export has no ``query/`` asset: ``gcs/<export>`` *is* the delivery. Its
materialization records each file's URI, size, crc32c, data rows and header, and writes a
manifest (``deliveries/<export>/<run id>/manifest.json``) in the format the BigQuery stage
loads, so the BigQuery and Databricks hops are those of a queried export. Which delivery a run
takes comes from the run's tags (set by the sensor); without them (a run started by hand) it is
the latest complete delivery. Materializing again for the same run rewrites the same manifest.
"""

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import asdict

import dagster as dg
from google.cloud import bigquery as bq

from bq_assets.engine.deliveries import (
    DELIVERY_FILES_TAG,
    DELIVERY_TAG,
    Delivery,
    DeliveryError,
    decrypt_files,
    find_deliveries,
    inspect_files,
    latest_complete,
    manifest_prefix,
    write_manifest,
)
from bq_assets.engine.manifest import MANIFEST, objects_differing
from bq_assets.exports.spec import ExportSpec
from bq_assets.resources.google import ExportGCSResource
from bq_assets.resources.pgp import PgpKeyResource
from bq_assets.schema import schema_to_json
from bq_assets.stages.handoff import (
    HandOff,
    handed_manifest,
    upstream_materialization,
)
from bq_assets.stages.results import Check, check_result, column_schema
from bq_assets.translator import gcs_key

DELIVERY_HEADER_MATCHES = "header_matches_spec"
DELIVERY_ROWS_ADD_UP = "rows_add_up"


def now() -> dt.datetime:
    """The time deliveries are judged complete at (``quiet_minutes``); a seam for the tests."""
    return dt.datetime.now(dt.UTC)


def declared_schema(spec: ExportSpec) -> list[bq.SchemaField]:
    """The BigQuery schema the spec declares for the delivered columns (never guessed)."""
    assert spec.delivery
    return [bq.SchemaField(c.name, c.type, mode="NULLABLE") for c in spec.delivery.columns]


def _requested_delivery(
    context: dg.AssetExecutionContext, spec: ExportSpec, deliveries: list[Delivery]
) -> Delivery:
    """The delivery this run was started for (its tags), else the latest complete one."""
    send = context.run.tags.get(DELIVERY_TAG)
    if send is None:
        latest = latest_complete(deliveries)
        if latest is None:
            raise DeliveryError(
                f"no complete delivery under gs://…/{spec.delivery.prefix} matching "
                f"{spec.delivery.files}; nothing to load"
            )
        context.log.info(f"no delivery named in the run's tags: taking the latest, {latest.send}")
        return latest
    files = json.loads(context.run.tags.get(DELIVERY_FILES_TAG, "[]"))
    for delivery in deliveries:
        if delivery.send == send:
            if files and sorted(files) != delivery.files:
                raise DeliveryError(
                    f"delivery {send}: its files changed since the sensor saw it (then "
                    f"{len(files)}: {', '.join(files)}; now {', '.join(delivery.files)})"
                )
            return delivery
    raise DeliveryError(f"delivery {send} is no longer in gs://…/{spec.delivery.prefix}")


def _materialize(
    context: dg.AssetExecutionContext,
    spec: ExportSpec,
    gcs: ExportGCSResource,
    pgp: PgpKeyResource | None,
) -> dg.MaterializeResult:
    """Record (and, when encrypted, decrypt) the run's delivery and write its manifest."""
    options = spec.delivery
    assert options
    bucket = gcs.get_client().bucket(gcs.get_bucket_name())
    deliveries = find_deliveries(bucket, options, now(), gcs.retry())
    delivery = _requested_delivery(context, spec, deliveries)
    if pgp is None:
        files = inspect_files(bucket, delivery.files, options, gcs.retry())
    else:
        prefix = manifest_prefix(spec.name, context.run.run_id)
        context.log.info(f"decrypting {len(delivery.files)} file(s) into {prefix}")
        with pgp.keyring() as home:
            files = decrypt_files(
                bucket,
                delivery.files,
                options,
                prefix,
                lambda source, destination, what: pgp.decrypt_stream(
                    home, source, destination, what
                ),
                gcs.retry(),
            )
    fields = declared_schema(spec)
    manifest = write_manifest(
        bucket,
        spec.name,
        context.run.run_id,
        files,
        schema_to_json(fields),
        options,
        gcs.retry(),
    )
    for file in files:
        context.log.info(f"{file.uri}: {file.rows} rows, {file.bytes} bytes")
    handoff = HandOff(
        row_count=manifest.rows,
        manifest_uri=manifest.prefix + MANIFEST,
        objects=[asdict(f) for f in files],
    )
    return dg.MaterializeResult(
        metadata={
            **handoff.metadata(),
            "dagster/uri": f"gs://{bucket.name}/{options.prefix}",
            "dagster/column_schema": column_schema(fields, spec),
            "format": "csv",
            "delivery": delivery.send,
            "delivered_files": dg.MetadataValue.json(
                [f"gs://{bucket.name}/{name}" for name in delivery.files]
            ),
            "shards": len(files),
            "bytes": sum(f.bytes for f in files),
        }
    )


def delivery_materialization(spec: ExportSpec) -> Callable[..., dg.MaterializeResult]:
    """The body of a delivered export's ``gcs/<export>``: the run's delivery recorded (and,
    when encrypted, decrypted) with its manifest. Encrypted deliveries take the ``pgp``
    resource too."""
    assert spec.delivery
    if spec.delivery.decrypt == "pgp":

        def _encrypted_delivery(
            context: dg.AssetExecutionContext, gcs: ExportGCSResource, pgp: PgpKeyResource
        ) -> dg.MaterializeResult:
            return _materialize(context, spec, gcs, pgp)

        return _encrypted_delivery

    def _delivery(
        context: dg.AssetExecutionContext, gcs: ExportGCSResource
    ) -> dg.MaterializeResult:
        return _materialize(context, spec, gcs, None)

    return _delivery


def delivery_checks(spec: ExportSpec) -> list[Check]:
    """The delivery's own checks, blocking: a bad delivery never reaches BigQuery."""
    assert spec.delivery
    key = gcs_key(spec.name)
    expected = spec.delivery.column_names

    def header_matches(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        files = upstream_materialization(context, key).objects
        if spec.delivery.header:
            wrong = {f["uri"]: ",".join(f["header"]) for f in files if f["header"] != expected}
            what = f"do not start with the declared header {','.join(expected)}"
        else:
            wrong = {
                f["uri"]: f"{f['columns']} fields" for f in files if f["columns"] != len(expected)
            }
            what = f"do not have the declared {len(expected)} fields"
        return check_result(
            not wrong,
            f"{len(wrong)} file(s) {what}: "
            + "; ".join(f"{uri} has {found}" for uri, found in list(wrong.items())[:5]),
            {
                "expected_header": expected,
                "files_differing": len(wrong),
                "wrong_files": dg.MetadataValue.json(wrong),
            },
        )

    def rows_add_up(
        context: dg.AssetCheckExecutionContext, gcs: ExportGCSResource
    ) -> dg.AssetCheckResult:
        upstream = upstream_materialization(context, key)
        client = gcs.get_client()
        manifest = handed_manifest(client, upstream, gcs.retry())
        recorded = upstream.row_count
        file_rows = sum(s.rows for s in manifest.shards)
        changed = objects_differing(client, manifest, gcs.retry())
        problems = []
        if not file_rows == manifest.rows == recorded:
            problems.append(
                f"the files hold {file_rows} rows, the manifest says {manifest.rows}, "
                f"the materialization {recorded}"
            )
        if changed:
            problems.append(f"changed or gone since counted: {'; '.join(changed[:5])}")
        return check_result(
            not problems,
            "; ".join(problems),
            {"file_rows": file_rows, "manifest_rows": manifest.rows, "changed": changed},
        )

    return [
        Check(
            dg.AssetCheckSpec(
                DELIVERY_HEADER_MATCHES,
                asset=key,
                blocking=True,
                description="Every delivered file starts with the declared header (or, without "
                "a header, has the declared number of columns).",
            ),
            header_matches,
        ),
        Check(
            dg.AssetCheckSpec(
                DELIVERY_ROWS_ADD_UP,
                asset=key,
                blocking=True,
                description="The files' rows add up to the manifest's total, and every file in "
                "GCS is still the one counted (same crc32c and size).",
            ),
            rows_add_up,
        ),
    ]


def build_delivery_sensor(
    spec: ExportSpec, default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED
) -> dg.SensorDefinition:
    """Watches the delivery prefix and requests one run per complete delivery, in send order.

    The cursor is the time of the last delivery requested (kept by Dagster with the sensor, so
    it survives a daemon restart); a delivery at or before it is never requested again (a
    duplicate marker changes nothing), and the run key ``<export>:<send>`` stops Dagster from
    launching the same delivery twice even if the cursor were lost. The sensor stops at the
    first incomplete delivery, so deliveries load in the order they were sent.
    """
    assert spec.delivery
    options = spec.delivery

    @dg.sensor(
        name=f"{spec.name}_deliveries",
        asset_selection=dg.AssetSelection.groups(spec.name),
        minimum_interval_seconds=60,
        default_status=default_status,
        description=f"One run of {spec.name} per complete delivery in {options.prefix}.",
    )
    def _sensor(context: dg.SensorEvaluationContext, gcs: ExportGCSResource) -> dg.SensorResult:
        cursor = context.cursor or ""
        bucket = gcs.get_client().bucket(gcs.get_bucket_name())
        requests = []
        for delivery in find_deliveries(bucket, options, now(), gcs.retry()):
            if delivery.key <= cursor:
                continue
            if not delivery.complete:
                context.log.info(f"delivery {delivery.send} is not complete yet; waiting")
                break
            requests.append(
                dg.RunRequest(
                    run_key=f"{spec.name}:{delivery.send}",
                    tags={
                        DELIVERY_TAG: delivery.send,
                        DELIVERY_FILES_TAG: json.dumps(delivery.files),
                    },
                )
            )
            cursor = delivery.key
        return dg.SensorResult(run_requests=requests, cursor=cursor or None)

    return _sensor
