"""Stage 2: the snapshot as BigQuery-ready CSV objects in GCS, plus a manifest.

Each run writes under a prefix of its own (by default ``exports/<export>/<run id>/``; the
spec's ``objects.template`` may add the run date): shards ``part-00000.csv[.gz]``, then
``manifest.json`` (exact URIs, rows, bytes, crc32c, the BigQuery schema and CSV options), then
``_SUCCESS``. The BigQuery stage loads exactly the manifest's URIs, so objects of other runs
can never be loaded. Re-running for the same run id rewrites the same objects (idempotent);
the prefixes of older runs beyond ``objects.keep_runs`` are deleted.

Shards are formatted, compressed and uploaded in parallel threads (pyarrow's CSV writer and
zlib release the GIL); each reads only its own rows from the snapshot, so memory stays flat.
"""

import base64
import datetime as dt
import gzip
import json
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO
from zoneinfo import ZoneInfo

import dagster as dg
import google_crc32c
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from google.cloud import storage

from bq_assets.exports.spec import CsvOptions, ExportSpec
from bq_assets.resources.google import StackAwareGCSResource
from bq_assets.schema import bigquery_schema, column_schema, schema_from_json, schema_to_json
from bq_assets.stages import gcs_key, latest_metadata, query_key

UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024  # resumable uploads in 8 MiB chunks
MANIFEST = "manifest.json"
SUCCESS_MARKER = "_SUCCESS"


class UploadIntegrityError(RuntimeError):
    """An uploaded object's checksum differs from what was written."""


@dataclass(frozen=True)
class Shard:
    uri: str
    rows: int
    bytes: int
    crc32c: str


@dataclass(frozen=True)
class Manifest:
    """What one run wrote: the BigQuery stage's only input."""

    export: str
    run_id: str
    prefix: str
    rows: int
    shards: list[Shard]
    bigquery_schema: list[dict]
    csv: dict = field(default_factory=dict)

    @property
    def uris(self) -> list[str]:
        return [s.uri for s in self.shards]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        raw = json.loads(text)
        return cls(**{**raw, "shards": [Shard(**s) for s in raw["shards"]]})


def shard_ranges(total_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """``[start, end)`` row ranges of the shards; an empty result is one (header-only) shard."""
    if total_rows == 0:
        return [(0, 0)]
    return [(s, min(s + shard_rows, total_rows)) for s in range(0, total_rows, shard_rows)]


def _batches(snapshot: Path, start: int, end: int) -> Iterator[pa.RecordBatch]:
    """Yield the snapshot's rows ``[start, end)``, one row group at a time."""
    parquet = pq.ParquetFile(snapshot)
    offset = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if offset + rows > start and offset < end:
            table = parquet.read_row_group(group)
            low, high = max(start - offset, 0), min(end - offset, rows)
            yield from table.slice(low, high - low).to_batches(max_chunksize=64 * 1024)
        offset += rows
        if offset >= end:
            break


def _open_sink(path: Path, options: CsvOptions) -> IO[bytes]:
    if options.compression == "gzip":
        return gzip.open(path, "wb", compresslevel=options.gzip_level)
    return path.open("wb")


def write_csv(snapshot: Path, start: int, end: int, destination: Path, options: CsvOptions) -> int:
    """Write rows ``[start, end)`` of the snapshot as one CSV file; returns the rows written."""
    schema = pq.read_schema(snapshot)
    write_options = pacsv.WriteOptions(
        include_header=options.header,
        delimiter=options.delimiter,
        null_string=options.null_marker,
        quoting_style="all_valid" if options.quote == "all" else "needed",
    )
    rows = 0
    with (
        _open_sink(destination, options) as sink,
        pacsv.CSVWriter(sink, schema, write_options=write_options) as writer,
    ):
        for batch in _batches(snapshot, start, end):
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _crc32c(path: Path) -> str:
    checksum = google_crc32c.Checksum()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1024 * 1024), b""):
            checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode()


def upload(bucket: storage.Bucket, path: Path, name: str, content_type: str) -> str:
    """Resumable upload of ``path`` verified by crc32c; returns the object's crc32c."""
    blob = bucket.blob(name, chunk_size=UPLOAD_CHUNK_BYTES)
    expected = _crc32c(path)
    blob.upload_from_filename(str(path), content_type=content_type, checksum="crc32c")
    blob.reload()
    if blob.crc32c != expected:
        raise UploadIntegrityError(
            f"gs://{bucket.name}/{name}: stored crc32c {blob.crc32c} differs from written {expected}"
        )
    return expected


@dataclass(frozen=True)
class ObjectLayout:
    """The object names of one run, rendered from the spec's template."""

    template: str
    export: str
    run_id: str
    run_date: dt.date
    suffix: str

    def shard(self, index: int) -> str:
        return self._render(shard=index) + self.suffix

    @property
    def run_prefix(self) -> str:
        """The folder that holds this run and nothing else: up to the segment with ``{run}``."""
        segments = self.template.split("/")
        last = max(i for i, segment in enumerate(segments) if "{run}" in segment)
        return "/".join(segments[: last + 1]).format(**self._values()) + "/"

    @property
    def export_prefix(self) -> str:
        """The folder under which every run of this export lives (for retention)."""
        static = self.template.format(**{**self._values(), "run": "\0", "date": _Cut(), "shard": 0})
        return static.split("\0")[0].rpartition("/")[0] + "/"

    def _values(self, **extra: object) -> dict[str, object]:
        return {"export": self.export, "run": self.run_id, "date": self.run_date, **extra}

    def _render(self, **extra: object) -> str:
        return self.template.format(**self._values(**extra))


class _Cut:
    """Formats as a marker, so a date placeholder ends the static part of a template."""

    def __format__(self, spec: str) -> str:
        return "\0"


def export_snapshot(
    snapshot: Path,
    bucket: storage.Bucket,
    layout: ObjectLayout,
    options: CsvOptions,
    log: dg.DagsterLogManager | None = None,
    workers: int | None = None,
) -> Manifest:
    """Write the snapshot as CSV shards under the run's prefix, then manifest and ``_SUCCESS``."""
    metadata = pq.read_metadata(snapshot)
    fields = bigquery_schema(metadata.schema.to_arrow_schema())
    ranges = shard_ranges(metadata.num_rows, options.shard_rows)

    with tempfile.TemporaryDirectory(prefix=f"bq_assets_{layout.export}_") as scratch:

        def one_shard(index: int) -> Shard:
            start, end = ranges[index]
            name = layout.shard(index)
            local = Path(scratch) / f"part-{index:05d}{layout.suffix}"
            rows = write_csv(snapshot, start, end, local, options)
            crc = upload(bucket, local, name, "text/csv")
            size = local.stat().st_size
            local.unlink()
            if log:
                log.info(
                    f"shard {index + 1}/{len(ranges)}: gs://{bucket.name}/{name} "
                    f"({rows} rows, {size} bytes)"
                )
            return Shard(uri=f"gs://{bucket.name}/{name}", rows=rows, bytes=size, crc32c=crc)

        with ThreadPoolExecutor(
            max_workers=workers or min(len(ranges), os.cpu_count() or 2)
        ) as pool:
            shards = list(pool.map(one_shard, range(len(ranges))))

    manifest = Manifest(
        export=layout.export,
        run_id=layout.run_id,
        prefix=f"gs://{bucket.name}/{layout.run_prefix}",
        rows=sum(s.rows for s in shards),
        shards=shards,
        bigquery_schema=schema_to_json(fields),
        csv=options.model_dump(),
    )
    bucket.blob(layout.run_prefix + MANIFEST).upload_from_string(
        manifest.to_json(), content_type="application/json"
    )
    bucket.blob(layout.run_prefix + SUCCESS_MARKER).upload_from_string(
        b"", content_type="text/plain"
    )
    return manifest


def read_manifest(client: storage.Client, uri: str) -> Manifest:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return Manifest.from_json(client.bucket(bucket).blob(name).download_as_text())


def delete_old_runs(bucket: storage.Bucket, layout: ObjectLayout, keep: int) -> list[str]:
    """Delete every object of all but the ``keep`` newest runs (by their manifests); never the
    current run's. Runs are found through their manifests, whatever the template made of them."""
    manifests = [
        blob
        for blob in bucket.list_blobs(prefix=layout.export_prefix)
        if blob.name.endswith("/" + MANIFEST)
    ]
    manifests.sort(key=lambda blob: blob.time_created, reverse=True)
    deleted = []
    for manifest in manifests[keep:]:
        prefix = manifest.name.removesuffix(MANIFEST)
        if prefix == layout.run_prefix:
            continue
        for blob in bucket.list_blobs(prefix=prefix):
            blob.delete()
        deleted.append(f"gs://{bucket.name}/{prefix}")
    return deleted


def run_date(context: dg.AssetExecutionContext, timezone: str) -> dt.date:
    """The run's date in the export's timezone: the scheduled tick's, else today's."""
    tick = context.run.tags.get("dagster/scheduled_execution_time")
    when = dt.datetime.fromisoformat(tick) if tick else dt.datetime.now(dt.UTC)
    return when.astimezone(ZoneInfo(timezone)).date()


def build_gcs_asset(spec: ExportSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=gcs_key(spec.name),
        deps=[query_key(spec.name)],
        group_name=spec.name,
        kinds={"gcs", "csv"},
        owners=spec.owners,
        pool="gcs",
        description=f"{spec.name} as CSV objects in GCS, one prefix per run, with a manifest.",
        retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    )
    def _gcs_csv(
        context: dg.AssetExecutionContext, gcs: StackAwareGCSResource
    ) -> dg.MaterializeResult:
        snapshot = Path(str(latest_metadata(context, query_key(spec.name))["snapshot_path"]))
        bucket = gcs.get_client().bucket(gcs.get_bucket_name())
        layout = ObjectLayout(
            template=spec.objects.template,
            export=spec.name,
            run_id=context.run.run_id,
            run_date=run_date(context, spec.timezone),
            suffix=".csv.gz" if spec.csv.compression == "gzip" else ".csv",
        )
        manifest = export_snapshot(snapshot, bucket, layout, spec.csv, context.log)
        deleted = delete_old_runs(bucket, layout, spec.objects.keep_runs)
        if deleted:
            context.log.info(f"deleted {len(deleted)} older run prefix(es): {', '.join(deleted)}")
        return dg.MaterializeResult(
            metadata={
                "dagster/uri": manifest.prefix,
                "dagster/row_count": manifest.rows,
                "dagster/column_schema": column_schema(schema_from_json(manifest.bigquery_schema)),
                "manifest_uri": manifest.prefix + MANIFEST,
                "objects": dg.MetadataValue.json([asdict(s) for s in manifest.shards]),
                "shards": len(manifest.shards),
                "bytes": sum(s.bytes for s in manifest.shards),
            }
        )

    return _gcs_csv
