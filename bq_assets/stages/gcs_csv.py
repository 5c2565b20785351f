"""Stage 2: the snapshot as BigQuery-ready objects in GCS (CSV or Parquet), plus a manifest.

Each run writes under a prefix of its own (by default ``exports/<export>/<run id>/``; the
spec's ``objects.template`` may add the run date): shards ``part-00000.csv.gz`` (or ``.csv``,
or ``.parquet`` with ``format: parquet``), then ``manifest.json`` (exact URIs, rows, bytes,
crc32c, the format, the BigQuery schema and CSV options), then ``_SUCCESS``. The BigQuery stage
loads exactly the manifest's URIs, so objects of other runs can never be loaded. Re-running for
the same run id rewrites the same objects, byte for byte (idempotent): a retried step first
removes what its failed attempt left under the prefix, and a step that fails deletes its partial
objects when GCS still answers. After a successful export, the prefixes of older complete runs
beyond ``objects.keep_runs`` are deleted, and so are those of finished runs that never wrote
``_SUCCESS`` (a run that failed while GCS was down could not clean up after itself).

How it stays fast and flat in memory, whatever the size of the result:

* The snapshot's footer is read once. Each shard is a range of rows that one writer thread
  streams from the snapshot in record batches (one row group at a time), formats with
  pyarrow's CSV writer and gzips with zlib (both release the GIL, so shards are written truly
  in parallel, one per core). Each writer holds one batch, each uploader one 8 MiB chunk:
  peak memory depends on the number of cores, never on the number of rows.
* Shards are split evenly, and a result large enough to be worth it into at least two
  shards per worker (``csv.shard_rows`` is the most a shard holds): every core works, and
  finished shards upload in threads of their own while the next ones are written.
* Every object goes up as a resumable upload (in 8 MiB chunks, each retried on its own),
  and is verified end to end by crc32c: GCS checks the whole object against the checksum of
  the local file, the client checks every byte it sent, and the stored object's checksum must
  equal the local file's, else ``UploadIntegrityError``.
"""

import base64
import contextlib
import datetime as dt
import json
import math
import os
import re
import string
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import dagster as dg
import google_crc32c
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY

from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import CsvOptions, ExportSpec
from bq_assets.schema import (
    bigquery_schema,
    column_schema,
    csv_batch,
    csv_schema,
    parquet_batch,
    parquet_schema,
    schema_from_json,
    schema_to_json,
)
from bq_assets.stages import (
    NETWORK_RETRY,
    InputMissingError,
    Upstream,
    gcs_key,
    query_key,
    reading_input,
    reported_as_failure,
    upstream_materialization,
)

FileFormat = Literal["csv", "parquet"]

UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024  # resumable uploads in 8 MiB chunks
READ_BATCH_ROWS = 16_384  # rows decoded from the snapshot at a time (per worker)
CSV_BATCH_ROWS = 8_192  # rows pyarrow formats into one CSV buffer at a time
# A result is split across workers only when each shard gets at least this many rows; below
# that, another object costs more than the parallelism saves.
MIN_PARALLEL_SHARD_ROWS = 50_000
MANIFEST = "manifest.json"
SUCCESS_MARKER = "_SUCCESS"
CONTENT_TYPES = {
    ".csv": "text/csv",
    ".csv.gz": "application/gzip",
    ".parquet": "application/vnd.apache.parquet",
}


class UploadIntegrityError(RuntimeError):
    """An uploaded object's checksum differs from what was written (the step is retried)."""


class NullMarkerCollisionError(BqAssetsError):
    """A text value equals the CSV null marker, so BigQuery would load it as NULL."""


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
    format: FileFormat = "csv"

    @property
    def uris(self) -> list[str]:
        return [s.uri for s in self.shards]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        raw = json.loads(text)
        return cls(**{**raw, "shards": [Shard(**s) for s in raw["shards"]]})


def object_suffix(file_format: FileFormat, options: CsvOptions) -> str:
    """The shards' file extension: ``.parquet``, ``.csv.gz`` or ``.csv``."""
    if file_format == "parquet":
        return ".parquet"
    return ".csv.gz" if options.compression == "gzip" else ".csv"


def shard_ranges(total_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """``[start, end)`` row ranges of the shards; an empty result is one (header-only) shard."""
    if total_rows == 0:
        return [(0, 0)]
    return [(s, min(s + shard_rows, total_rows)) for s in range(0, total_rows, shard_rows)]


def plan_shard_rows(total_rows: int, max_shard_rows: int, workers: int) -> int:
    """Rows per shard: at most ``max_shard_rows``, split evenly. While each shard still gets
    ``MIN_PARALLEL_SHARD_ROWS`` rows, there are at least two shards per worker, and a multiple
    of ``workers`` of them: every worker has the same work, and the first shards' uploads
    overlap with writing the last ones. Smaller results keep ``ceil(rows / max_shard_rows)``."""
    if total_rows == 0:
        return max_shard_rows
    shards = max(
        math.ceil(total_rows / max_shard_rows),
        min(2 * workers, total_rows // MIN_PARALLEL_SHARD_ROWS),
    )
    rounded = math.ceil(shards / workers) * workers
    if total_rows // rounded >= MIN_PARALLEL_SHARD_ROWS:
        shards = rounded
    return math.ceil(total_rows / shards)


def default_workers() -> int:
    """The cores this process may use (a container's CPU set, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 2


class Snapshot:
    """A Parquet snapshot whose footer is read once; yields any range of rows as batches."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metadata = pq.read_metadata(path)
        self.schema = self.metadata.schema.to_arrow_schema()
        starts = [0]
        for group in range(self.metadata.num_row_groups):
            starts.append(starts[-1] + self.metadata.row_group(group).num_rows)
        self._group_starts = starts

    @property
    def num_rows(self) -> int:
        return self.metadata.num_rows

    def batches(self, start: int, end: int) -> Iterator[pa.RecordBatch]:
        """Rows ``[start, end)``, decoding only the row groups that hold them, a batch at a time.

        Each call opens its own reader (safe to use from several threads at once). Row groups
        are read one by one: pyarrow's reader, given several at once, holds memory for each.
        """
        groups = [
            g
            for g in range(self.metadata.num_row_groups)
            if self._group_starts[g] < end and self._group_starts[g + 1] > start
        ]
        with pq.ParquetFile(self.path, metadata=self.metadata) as parquet:
            for group in groups:
                offset = self._group_starts[group]
                for batch in parquet.iter_batches(
                    batch_size=READ_BATCH_ROWS, row_groups=[group], use_threads=False
                ):
                    low, high = max(start - offset, 0), min(end - offset, batch.num_rows)
                    offset += batch.num_rows
                    if high > low:
                        yield batch.slice(low, high - low)
                    if offset >= end:
                        break


def _snapshot(snapshot: "Path | Snapshot") -> Snapshot:
    return snapshot if isinstance(snapshot, Snapshot) else Snapshot(Path(snapshot))


class _GzipSink:
    """A file-like sink that gzips everything pyarrow writes into it.

    zlib releases the GIL while it compresses, so shards compress in parallel threads. The
    gzip header carries no timestamp: the same rows always give the same bytes (and crc32c).
    """

    def __init__(self, raw, level: int) -> None:
        self._raw = raw
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip container
        self.closed = False

    def write(self, data) -> int:
        self._raw.write(self._deflate.compress(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self._raw.write(self._deflate.flush())
            self.closed = True


def _check_null_marker(batch: pa.RecordBatch, marker: str) -> None:
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        is_text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        if is_text and pc.any(pc.equal(column, marker)).as_py():
            raise NullMarkerCollisionError(
                f"column {name!r} holds the text {marker!r}, which is csv.null_marker: "
                "BigQuery would load it as NULL. Choose a null_marker that never occurs "
                "in the data, or use format: parquet."
            )


def write_csv(
    snapshot: "Path | Snapshot", start: int, end: int, destination: Path, options: CsvOptions
) -> int:
    """Write rows ``[start, end)`` of the snapshot as one CSV file; returns the rows written.

    Values are written the way BigQuery parses them back exactly (see ``schema.csv_schema``);
    text is always quoted, so an empty string (``""``) and NULL (an empty field, or the
    ``null_marker``) stay apart in the file. A text equal to a non-empty ``null_marker`` fails
    the export (``NullMarkerCollisionError``) rather than turning into NULL silently.
    """
    source = _snapshot(snapshot)
    schema = csv_schema(source.schema)
    write_options = pacsv.WriteOptions(
        include_header=options.header,
        batch_size=CSV_BATCH_ROWS,
        delimiter=options.delimiter,
        null_string=options.null_marker,
        quoting_style="all_valid" if options.quote == "all" else "needed",
    )
    rows = 0
    with destination.open("wb") as raw:
        sink = _GzipSink(raw, options.gzip_level) if options.compression == "gzip" else raw
        with pacsv.CSVWriter(sink, schema, write_options=write_options) as writer:
            for batch in source.batches(start, end):
                batch = csv_batch(batch, schema)
                if options.null_marker:
                    _check_null_marker(batch, options.null_marker)
                writer.write_batch(batch)
                rows += batch.num_rows
        sink.close()
    return rows


def write_parquet(snapshot: "Path | Snapshot", start: int, end: int, destination: Path) -> int:
    """Write rows ``[start, end)`` of the snapshot as one Parquet file; returns the rows written.

    Types are those BigQuery loads into the manifest's schema (see ``schema.parquet_schema``);
    Parquet keeps NULL and empty strings apart, and decimals, timestamps and dates exact.
    """
    source = _snapshot(snapshot)
    schema = parquet_schema(source.schema)
    rows = 0
    with pq.ParquetWriter(
        destination,
        schema,
        compression="snappy",
        coerce_timestamps="us",
        allow_truncated_timestamps=False,
    ) as writer:
        for batch in source.batches(start, end):
            writer.write_batch(parquet_batch(batch, schema))
            rows += batch.num_rows
    return rows


def _crc32c(path: Path) -> str:
    """The file's crc32c as GCS reports it (base64 of the big-endian 32 bits)."""
    checksum = google_crc32c.Checksum()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1024 * 1024), b""):
            checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode()


def upload(
    bucket: storage.Bucket,
    path: Path,
    name: str,
    content_type: str,
    retry: Retry = DEFAULT_RETRY,
) -> str:
    """Upload ``path`` as ``name`` with a resumable upload verified by crc32c; returns the crc32c.

    The size is deliberately not passed: the client then always takes the resumable path (told
    the size, it sends files up to 8 MiB in one multipart request instead). A failed chunk is
    retried on its own; the local file's crc32c travels with the upload, so GCS rejects an
    object whose bytes differ, and the stored object's crc32c is compared with it again.
    ``retry`` bounds how long a failing chunk is retried before the upload fails.
    """
    expected = _crc32c(path)
    blob = bucket.blob(name, chunk_size=UPLOAD_CHUNK_BYTES)
    try:
        with path.open("rb") as file:
            blob.upload_from_file(
                file,
                content_type=content_type,
                checksum="crc32c",
                crc32c_checksum_value=expected,
                retry=retry,
            )
    except DataCorruption as exc:  # the client already deleted the corrupt object
        raise UploadIntegrityError(
            f"gs://{bucket.name}/{name}: the uploaded bytes do not match what was sent ({exc})"
        ) from exc
    if blob.crc32c != expected:
        with contextlib.suppress(gexc.NotFound):
            blob.delete()
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
    def _run_folder_template(self) -> str:
        """The template up to (and with) its last segment holding ``{run}``."""
        segments = self.template.split("/")
        last = max(i for i, segment in enumerate(segments) if "{run}" in segment)
        return "/".join(segments[: last + 1])

    @property
    def run_prefix(self) -> str:
        """The folder that holds this run and nothing else: up to the segment with ``{run}``."""
        return self._run_folder_template.format(**self._values()) + "/"

    def run_prefix_pattern(self) -> "re.Pattern[str]":
        """Matches the run prefix of any run of this export, capturing its run id as ``run``."""
        pattern = ""
        for literal, name, spec, _ in string.Formatter().parse(self._run_folder_template):
            pattern += re.escape(literal)
            if name == "export":
                pattern += re.escape(self.export)
            elif name == "run":
                pattern += "(?P=run)" if "(?P<run>" in pattern else "(?P<run>[^/]+)"
            elif name == "date":
                pattern += _strftime_pattern(spec or "%Y-%m-%d")
            elif name is not None:
                pattern += r"\d+"
        return re.compile(pattern + "/")

    @property
    def export_prefix(self) -> str:
        """The folder under which every run of this export lives (for retention)."""
        static = self.template.format(**{**self._values(), "run": "\0", "date": _Cut(), "shard": 0})
        return static.split("\0")[0].rpartition("/")[0] + "/"

    def _values(self, **extra: object) -> dict[str, object]:
        return {"export": self.export, "run": self.run_id, "date": self.run_date, **extra}

    def _render(self, **extra: object) -> str:
        return self.template.format(**self._values(**extra))


_STRFTIME_FIELDS = {"Y": r"\d{4}", "j": r"\d{3}", "%": "%"}


def _strftime_pattern(spec: str) -> str:
    """A regex for the dates ``spec`` formats (``%Y/%m/%d`` → ``\\d{4}/\\d{2}/\\d{2}``)."""
    parts = re.split(r"(%.)", spec)
    return "".join(
        _STRFTIME_FIELDS.get(part[1], r"\d{2}" if part[1] in "mdHMSy" else r"[^/]+?")
        if part.startswith("%") and len(part) == 2
        else re.escape(part)
        for part in parts
    )


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
    file_format: FileFormat = "csv",
    retry: Retry = DEFAULT_RETRY,
) -> Manifest:
    """Write the snapshot as shards under the run's prefix, then manifest and ``_SUCCESS``.

    Idempotent per run: whatever an earlier attempt of this run left under the prefix is
    deleted first, so the prefix ends up holding exactly this attempt's objects. If the export
    fails, no manifest is written and the objects already uploaded are deleted (when GCS still
    answers; otherwise the next run of the export removes them, see ``tidy_runs``).
    ``retry`` bounds how long each GCS request is retried before the export fails.
    """
    earlier = _delete_prefix(bucket, layout.run_prefix, retry)
    if earlier and log:
        log.info(f"deleted {earlier} object(s) an earlier attempt of this run left behind")
    try:
        return _write_run(snapshot, bucket, layout, options, log, workers, file_format, retry)
    except BaseException:
        _discard_partial_run(bucket, layout, retry, log)
        raise


def _delete(blobs: Iterable[storage.Blob], retry: Retry) -> int:
    deleted = 0
    for blob in blobs:
        with contextlib.suppress(gexc.NotFound):
            blob.delete(retry=retry)
            deleted += 1
    return deleted


def _delete_prefix(bucket: storage.Bucket, prefix: str, retry: Retry) -> int:
    return _delete(bucket.list_blobs(prefix=prefix, retry=retry), retry)


def _discard_partial_run(
    bucket: storage.Bucket, layout: ObjectLayout, retry: Retry, log: dg.DagsterLogManager | None
) -> None:
    where = f"gs://{bucket.name}/{layout.run_prefix}"
    try:
        # Briefly: when GCS is what failed, the step should report that, not wait on it again.
        deleted = _delete_prefix(
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
    log: dg.DagsterLogManager | None,
    workers: int | None,
    file_format: FileFormat,
    retry: Retry,
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
    )
    bucket.blob(layout.run_prefix + MANIFEST).upload_from_string(
        manifest.to_json(), content_type="application/json", retry=retry
    )
    bucket.blob(layout.run_prefix + SUCCESS_MARKER).upload_from_string(
        b"", content_type="text/plain", retry=retry
    )
    return manifest


def download_snapshot(
    client: storage.Client, uri: str, destination: Path, retry: Retry = DEFAULT_RETRY
) -> Path:
    """Copy the snapshot at ``uri`` to the local file ``destination``, streamed in chunks (memory
    stays flat whatever its size) and verified by crc32c; ``gexc.NotFound`` when it is gone.

    The export then reads it row group by row group from local disk, as fast as a snapshot that
    never left the machine; the copy lives in the step's own temporary directory.
    """
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    blob = client.bucket(bucket).blob(name)
    blob.download_to_filename(str(destination), checksum="crc32c", retry=retry)
    return destination


def read_manifest(client: storage.Client, uri: str, retry: Retry = DEFAULT_RETRY) -> Manifest:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return Manifest.from_json(client.bucket(bucket).blob(name).download_as_text(retry=retry))


@dataclass
class RunObjects:
    """The objects of one earlier run of an export, found under its run prefix."""

    prefix: str
    run_id: str
    blobs: list[storage.Blob] = field(default_factory=list)
    completed: dt.datetime | None = None  # when its _SUCCESS was written, if ever


@dataclass(frozen=True)
class Tidied:
    old: list[str]  # prefixes of complete runs beyond keep_runs, deleted
    abandoned: list[str]  # prefixes of finished runs that never completed, deleted
    in_flight: list[str]  # prefixes without _SUCCESS of runs not known to be finished, kept


def tidy_runs(
    bucket: storage.Bucket,
    layout: ObjectLayout,
    keep: int,
    run_finished: Callable[[str], bool],
    retry: Retry = DEFAULT_RETRY,
) -> Tidied:
    """Delete the objects of all but the newest ``keep`` complete runs (this one included), and
    those of runs that finished without completing (``run_finished(run_id)``); never the current
    run's, nor those of a run that may still be writing. Runs are told apart by the template's
    ``{run}`` folder and are complete when they hold ``_SUCCESS``."""
    pattern = layout.run_prefix_pattern()
    runs: dict[str, RunObjects] = {}
    for blob in bucket.list_blobs(prefix=layout.export_prefix, retry=retry):
        match = pattern.match(blob.name)
        if match is None or match.group(0) == layout.run_prefix:
            continue
        run = runs.setdefault(match.group(0), RunObjects(match.group(0), match["run"]))
        run.blobs.append(blob)
        if blob.name == run.prefix + SUCCESS_MARKER:
            run.completed = blob.time_created
    complete = sorted(
        (run for run in runs.values() if run.completed), key=lambda run: run.completed, reverse=True
    )
    old = complete[max(keep - 1, 0) :]
    unfinished = [run for run in runs.values() if not run.completed]
    abandoned = [run for run in unfinished if run_finished(run.run_id)]
    _delete((blob for run in old + abandoned for blob in run.blobs), retry)
    where = f"gs://{bucket.name}/"
    return Tidied(
        old=[where + run.prefix for run in old],
        abandoned=[where + run.prefix for run in abandoned],
        in_flight=[where + run.prefix for run in unfinished if run not in abandoned],
    )


def run_date(context: dg.AssetExecutionContext, timezone: str) -> dt.date:
    """The run's date in the export's timezone: the scheduled tick's, else today's."""
    tick = context.run.tags.get("dagster/scheduled_execution_time")
    when = dt.datetime.fromisoformat(tick) if tick else dt.datetime.now(dt.UTC)
    return when.astimezone(ZoneInfo(timezone)).date()


def _run_finished(instance: dg.DagsterInstance, run_id: str) -> bool:
    """True when this Dagster instance knows the run and it has ended (so it writes no more)."""
    run = instance.get_run_by_id(run_id)
    return run is not None and run.is_finished


def _log_tidied(log: dg.DagsterLogManager, tidied: Tidied) -> None:
    if tidied.old:
        log.info(f"deleted {len(tidied.old)} older run prefix(es): {', '.join(tidied.old)}")
    if tidied.abandoned:
        log.info(
            f"deleted the partial objects of {len(tidied.abandoned)} failed run(s): "
            + ", ".join(tidied.abandoned)
        )
    if tidied.in_flight:
        log.info("left alone, as their runs may still be writing: " + ", ".join(tidied.in_flight))


def fetch_snapshot(
    client: storage.Client, upstream: Upstream, directory: Path, retry: Retry = DEFAULT_RETRY
) -> Path:
    """The snapshot the query stage handed on (``snapshot_uri``), copied into ``directory``; an
    ``InputMissingError`` naming the asset to re-materialize when it no longer exists."""
    uri = upstream.metadata.get("snapshot_uri")
    if uri is None:  # materialized by a version that kept snapshots on local disk
        raise InputMissingError(upstream, "The snapshot", "(kept on the disk of that run)")
    with reading_input(upstream, "The snapshot", str(uri)):
        return download_snapshot(client, str(uri), directory / "snapshot.parquet", retry)


def build_gcs_asset(spec: ExportSpec) -> dg.AssetsDefinition:
    # Imported here, not at the top: the export engine above stays importable (by tools and
    # the benchmark) without loading every Google client that dagster-gcp pulls in.
    from bq_assets.resources.google import StackAwareGCSResource

    what = "Parquet" if spec.format == "parquet" else "CSV"

    @dg.asset(
        key=gcs_key(spec.name),
        deps=[query_key(spec.name)],
        group_name=spec.name,
        kinds={"gcs", spec.format},
        owners=spec.owners,
        pool="gcs",
        description=f"{spec.name} as {what} objects in GCS, one prefix per run, with a manifest.",
        retry_policy=NETWORK_RETRY,
    )
    def _gcs_csv(
        context: dg.AssetExecutionContext, gcs: StackAwareGCSResource
    ) -> dg.MaterializeResult:
        run_id = context.run.run_id
        with (
            reported_as_failure(GCS=gcs),
            tempfile.TemporaryDirectory(prefix=f"bq_assets_{run_id}_") as scratch,
        ):
            upstream = upstream_materialization(context, query_key(spec.name))
            client = gcs.get_client()
            snapshot = fetch_snapshot(client, upstream, Path(scratch), gcs.retry())
            bucket = client.bucket(gcs.get_bucket_name())
            layout = ObjectLayout(
                template=spec.objects.template,
                export=spec.name,
                run_id=run_id,
                run_date=run_date(context, spec.timezone),
                suffix=object_suffix(spec.format, spec.csv),
            )
            manifest = export_snapshot(
                snapshot,
                bucket,
                layout,
                spec.csv,
                context.log,
                file_format=spec.format,
                retry=gcs.retry(),
            )
            snapshot.unlink()
            tidied = tidy_runs(
                bucket,
                layout,
                spec.objects.keep_runs,
                run_finished=lambda run_id: _run_finished(context.instance, run_id),
                retry=gcs.retry(),
            )
            _log_tidied(context.log, tidied)
            return dg.MaterializeResult(
                metadata={
                    "dagster/uri": manifest.prefix,
                    "dagster/row_count": manifest.rows,
                    "dagster/column_schema": column_schema(
                        schema_from_json(manifest.bigquery_schema)
                    ),
                    "manifest_uri": manifest.prefix + MANIFEST,
                    "format": manifest.format,
                    "objects": dg.MetadataValue.json([asdict(s) for s in manifest.shards]),
                    "shards": len(manifest.shards),
                    "bytes": sum(s.bytes for s in manifest.shards),
                    "input_run_id": upstream.run_id,
                }
            )

    return _gcs_csv
