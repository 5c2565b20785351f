"""One run's export: the snapshot as shards under the run's prefix, then manifest and _SUCCESS.

How it stays fast and flat in memory, whatever the size of the result:

* The snapshot's footer is read once. Each shard is a range of rows that one writer thread
  streams from the snapshot in record batches (one row group at a time), formats with
  pyarrow's CSV writer and gzips with zlib (both release the GIL, so shards are written truly
  in parallel, one per core). Each writer holds one batch, each uploader one 8 MiB chunk:
  peak memory depends on the number of cores, never on the number of rows.
* Shards are split evenly, and a result large enough to be worth it into at least two
  shards per worker (``csv.shard_rows`` is the most a shard holds): every core works, and
  finished shards upload in threads of their own while the next ones are written.
* Every object goes up as a resumable upload verified end to end by crc32c (``upload``).
"""

import tempfile
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from bq_assets.engine.layout import ObjectLayout
from bq_assets.engine.log import Log
from bq_assets.engine.manifest import FileFormat, Manifest, Shard, publish_manifest
from bq_assets.engine.planning import default_workers, plan_shard_rows, shard_ranges
from bq_assets.engine.snapshot import Snapshot
from bq_assets.engine.upload import delete_prefix, upload
from bq_assets.engine.writers import CONTENT_TYPES, write_csv, write_parquet
from bq_assets.exports.targets import CsvOptions
from bq_assets.schema import bigquery_schema, schema_to_json


def export_snapshot(
    snapshot: Path,
    bucket: storage.Bucket,
    layout: ObjectLayout,
    options: CsvOptions,
    log: Log | None = None,
    workers: int | None = None,
    file_format: FileFormat = "csv",
    retry: Retry = DEFAULT_RETRY,
    rows_by_partition: dict[str, int] | None = None,
) -> Manifest:
    """Write the snapshot as shards under the run's prefix, then manifest and ``_SUCCESS``.

    ``rows_by_partition`` (a partitioned export's rows per partition key, as the query step
    counted them in the snapshot) goes into the manifest: a promise the load checks before it
    publishes.

    Idempotent per run: whatever an earlier attempt of this run left under the prefix is
    deleted first, so the prefix ends up holding exactly this attempt's objects. If the export
    fails, no manifest is written and the objects already uploaded are deleted (when GCS still
    answers; otherwise the next run of the export removes them, see ``retention.tidy_runs``).
    ``retry`` bounds how long each GCS request is retried before the export fails.
    """
    earlier = delete_prefix(bucket, layout.run_prefix, retry)
    if earlier and log:
        log.info(f"deleted {earlier} object(s) an earlier attempt of this run left behind")
    try:
        return _write_run(
            snapshot, bucket, layout, options, log, workers, file_format, retry, rows_by_partition
        )
    except BaseException:
        _discard_partial_run(bucket, layout, retry, log)
        raise


def _discard_partial_run(
    bucket: storage.Bucket, layout: ObjectLayout, retry: Retry, log: Log | None
) -> None:
    where = f"gs://{bucket.name}/{layout.run_prefix}"
    try:
        # Briefly: when GCS is what failed, the step should report that, not wait on it again.
        deleted = delete_prefix(
            bucket, layout.run_prefix, retry.with_timeout(min(5.0, retry.timeout or 5.0))
        )
    except Exception as exc:
        if log:
            log.warning(
                f"could not delete the partial objects under {where} ({type(exc).__name__}); "
                "the next successful run of this export deletes them"
            )
        return
    if deleted and log:
        log.info(f"deleted the {deleted} partial object(s) of this failed export under {where}")


def _write_run(
    snapshot: Path,
    bucket: storage.Bucket,
    layout: ObjectLayout,
    options: CsvOptions,
    log: Log | None,
    workers: int | None,
    file_format: FileFormat,
    retry: Retry,
    rows_by_partition: dict[str, int] | None = None,
) -> Manifest:
    """The export itself.

    ``workers`` threads (default: one per core) format and compress shards while as many others
    upload the finished ones, so the cores never wait for the network; at most two shards per
    worker are on local disk at a time. The first failure stops the shards not yet started and
    is raised, and then no manifest is written.
    """
    source = Snapshot(snapshot)
    fields = bigquery_schema(source.schema)
    workers = workers or default_workers()
    ranges = shard_ranges(
        source.num_rows, plan_shard_rows(source.num_rows, options.shard_rows, workers)
    )
    workers = min(len(ranges), workers)
    content_type = CONTENT_TYPES[layout.suffix]
    on_disk = threading.BoundedSemaphore(2 * workers)  # shard files being written or uploaded
    errors: list[BaseException] = []  # the first failure, which stops every other shard

    with (
        tempfile.TemporaryDirectory(prefix=f"bq_assets_{layout.export}_") as scratch,
        # Leaving the block waits for the writers first, then for the uploads they handed on.
        ThreadPoolExecutor(workers, thread_name_prefix="bq_assets_upload") as uploaders,
        ThreadPoolExecutor(workers, thread_name_prefix="bq_assets_write") as writers,
    ):

        def send(index: int, local: Path, rows: int, started: float) -> Shard:
            name = layout.shard(index)
            try:
                if errors:
                    raise CancelledError
                crc = upload(bucket, local, name, content_type, retry)
                size = local.stat().st_size
            except BaseException as exc:
                errors.append(exc)
                raise
            finally:
                local.unlink(missing_ok=True)
                on_disk.release()
            if log:
                log.info(
                    f"shard {index + 1}/{len(ranges)}: gs://{bucket.name}/{name} "
                    f"({rows} rows, {size} bytes, {time.perf_counter() - started:.1f}s)"
                )
            return Shard(uri=f"gs://{bucket.name}/{name}", rows=rows, bytes=size, crc32c=crc)

        def write(index: int) -> "Future[Shard]":
            on_disk.acquire()
            started = time.perf_counter()
            start, end = ranges[index]
            local = Path(scratch) / f"part-{index:05d}{layout.suffix}"
            try:
                if errors:
                    raise CancelledError
                if file_format == "parquet":
                    rows = write_parquet(source, start, end, local)
                else:
                    rows = write_csv(source, start, end, local, options)
            except BaseException as exc:
                errors.append(exc)
                local.unlink(missing_ok=True)
                on_disk.release()
                raise
            finally:
                # Hand this thread's cached Arrow memory back before the next shard, so
                # the threads' peaks do not add up: memory stays that of the batches in flight.
                pa.default_memory_pool().release_unused()
            return uploaders.submit(send, index, local, rows, started)

        written = [writers.submit(write, index) for index in range(len(ranges))]
        try:
            shards = [future.result().result() for future in written]
        except BaseException as exc:
            errors.append(exc)
            for future in written:
                future.cancel()
            raise next(e for e in errors if not isinstance(e, CancelledError)) from None

    manifest = Manifest(
        export=layout.export,
        run_id=layout.run_id,
        prefix=f"gs://{bucket.name}/{layout.run_prefix}",
        rows=sum(s.rows for s in shards),
        shards=shards,
        bigquery_schema=schema_to_json(fields),
        csv=options.model_dump() if file_format == "csv" else {},
        format=file_format,
        rows_by_partition=dict(rows_by_partition) if rows_by_partition is not None else None,
    )
    publish_manifest(bucket, layout.run_prefix, manifest, retry)
    return manifest
