"""Delivered files: find the deliveries another system dropped into the bucket, and read them.

A *delivery* is every object in the spec's ``delivery.prefix`` whose name matches
``delivery.files`` with the same ``{send:...}`` text (the date and time of the send). It is
complete when its marker object exists, or when none of its files has changed for
``quiet_minutes``. Nothing here writes to the delivery: reading it twice gives the same result.
Imports no Dagster (the engine side of the delivery stage).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from bq_assets.engine.manifest import MANIFEST, Manifest, Shard
from bq_assets.engine.upload import upload
from bq_assets.errors import BqAssetsError
from bq_assets.exports.delivery import (
    SEND_PLACEHOLDER,
    DeliveryOptions,
    delivery_regex,
    send_format,
)

DELIVERY_TAG = "bq_assets/delivery"
DELIVERY_FILES_TAG = "bq_assets/delivery_files"
READ_BLOCK_BYTES = 4 * 1024 * 1024  # bytes of CSV text pyarrow parses at a time


class DeliveryError(BqAssetsError):
    """A delivery cannot be used as declared (missing, malformed, wrong columns)."""


@dataclass(frozen=True)
class Delivery:
    """One send: its ``send`` text, its data files (object names), whether it is complete."""

    send: str
    sent_at: dt.datetime
    files: list[str]
    complete: bool
    marker: str | None = None

    @property
    def key(self) -> str:
        """What orders deliveries and what a sensor cursor remembers (ISO time of the send)."""
        return self.sent_at.isoformat()


@dataclass(frozen=True)
class DeliveredFile:
    """One data file as found: where, how big, its crc32c, data rows and header."""

    uri: str
    bytes: int
    crc32c: str
    rows: int
    header: list[str]  # empty when the format has no header
    columns: int  # fields in the first record


def find_deliveries(
    bucket: storage.Bucket,
    options: DeliveryOptions,
    now: dt.datetime,
    retry: Retry = DEFAULT_RETRY,
) -> list[Delivery]:
    """Every delivery under the prefix, oldest send first, complete or not."""
    files_pattern = delivery_regex(options.files)
    marker = options.complete_when.marker
    marker_pattern = delivery_regex(marker) if marker else None
    fmt = send_format(options.files)
    files: dict[str, list[storage.Blob]] = {}
    markers: dict[str, str] = {}
    for blob in bucket.list_blobs(prefix=options.prefix, retry=retry):
        name = blob.name[len(options.prefix) :]
        if "/" in name:
            continue
        if marker_pattern and (found := marker_pattern.fullmatch(name)):
            markers[found["send"]] = blob.name
        elif found := files_pattern.fullmatch(name):
            files.setdefault(found["send"], []).append(blob)
    deliveries = []
    for send, blobs in files.items():
        try:
            sent_at = dt.datetime.strptime(send, fmt)
        except ValueError:
            continue  # the digits matched but are no date (e.g. month 13): not a delivery
        if marker:
            complete = send in markers
        else:
            quiet = dt.timedelta(minutes=options.complete_when.quiet_minutes or 0)
            complete = all(now - blob.updated >= quiet for blob in blobs)
        deliveries.append(
            Delivery(
                send=send,
                sent_at=sent_at,
                files=sorted(blob.name for blob in blobs),
                complete=complete,
                marker=markers.get(send),
            )
        )
    return sorted(deliveries, key=lambda d: (d.sent_at, d.send))


def latest_complete(deliveries: list[Delivery]) -> Delivery | None:
    complete = [d for d in deliveries if d.complete]
    return complete[-1] if complete else None


def marker_name(options: DeliveryOptions, send: str) -> str:
    """The marker object of the send ``send`` (when the completion rule is a marker)."""
    assert options.complete_when.marker
    return options.prefix + SEND_PLACEHOLDER.sub(send, options.complete_when.marker)


def _first_record(path: Path, options: DeliveryOptions) -> list[str]:
    with pa.input_stream(str(path), compression=_compression(options)) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        return next(csv.reader(text, delimiter=options.delimiter, quotechar=options.quote), [])


def _compression(options: DeliveryOptions) -> str | None:
    return "gzip" if options.compression == "gzip" else None


def read_delivered_file(
    path: Path, uri: str, options: DeliveryOptions
) -> tuple[int, list[str], int]:
    """Data rows, header and field count of one local copy of a delivered file, streamed
    (memory stays a few blocks, whatever the size). Every value is read as text: only the
    count matters here, BigQuery parses the types. A header-only or empty file has 0 rows; a
    malformed one (e.g. a row with another number of fields) raises ``DeliveryError``."""
    try:
        first = _first_record(path, options)
    except (UnicodeDecodeError, OSError, EOFError, csv.Error) as exc:
        raise DeliveryError(
            f"{uri}: cannot be read as the declared delivery format: {exc}"
        ) from None
    header = first if options.header else []
    if not first or (options.header and _only_one_record(path, options)):
        return 0, header, len(first)
    try:
        names = first
        rows = 0
        with pa.input_stream(str(path), compression=_compression(options)) as stream:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(
                    use_threads=False,
                    block_size=READ_BLOCK_BYTES,
                    column_names=[f"c{i}" for i in range(len(names))],
                    skip_rows=1 if options.header else 0,
                ),
                parse_options=pacsv.ParseOptions(
                    delimiter=options.delimiter,
                    quote_char=options.quote,
                    newlines_in_values=True,
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={f"c{i}": pa.string() for i in range(len(names))}
                ),
            )
            for batch in reader:
                rows += batch.num_rows
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DeliveryError(
            f"{uri}: cannot be read as the declared delivery format: {exc}"
        ) from None
    return rows, header, len(first)


def _only_one_record(path: Path, options: DeliveryOptions) -> bool:
    """True when the file holds its first record and nothing after it (a header-only file)."""
    with pa.input_stream(str(path), compression=_compression(options)) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        records = csv.reader(text, delimiter=options.delimiter, quotechar=options.quote)
        next(records, None)
        return next(records, None) is None


def inspect_files(
    bucket: storage.Bucket,
    names: list[str],
    options: DeliveryOptions,
    retry: Retry = DEFAULT_RETRY,
) -> list[DeliveredFile]:
    """Each file's size, crc32c (as GCS stores it), data rows and header. Files are copied to a
    scratch directory one at a time and read from there; nothing is held in memory."""
    found = []
    with tempfile.TemporaryDirectory(prefix="bq_assets_delivery_") as scratch:
        for name in names:
            blob = bucket.get_blob(name, retry=retry)
            uri = f"gs://{bucket.name}/{name}"
            if blob is None:
                raise DeliveryError(f"{uri}: the delivered file is gone (deleted or replaced)")
            local = Path(scratch) / "file"
            blob.download_to_filename(str(local), retry=retry, checksum="crc32c")
            rows, header, columns = read_delivered_file(local, uri, options)
            found.append(
                DeliveredFile(uri, int(blob.size or 0), str(blob.crc32c), rows, header, columns)
            )
            local.unlink()
    return found


def manifest_prefix(export: str, run_id: str) -> str:
    """The run-scoped folder that holds a delivered run's manifest (and decrypted files)."""
    return f"deliveries/{export}/{run_id}/"


#: ``decrypt(write_encrypted_bytes_into, plaintext_path, what)``: see ``PgpKeyResource``.
Decrypt = Callable[[Callable[[BinaryIO], None], Path, str], None]
ENCRYPTED_SUFFIXES = (".pgp", ".gpg", ".asc")


def plain_name(name: str) -> str:
    """The decrypted file's name: the delivered one without its PGP suffix."""
    base = name.rsplit("/", 1)[-1]
    for suffix in ENCRYPTED_SUFFIXES:
        if base.endswith(suffix):
            return base.removesuffix(suffix)
    return base


def decrypt_files(
    bucket: storage.Bucket,
    names: list[str],
    options: DeliveryOptions,
    prefix: str,
    decrypt: Decrypt,
    retry: Retry = DEFAULT_RETRY,
) -> list[DeliveredFile]:
    """Decrypt each delivered file into the run-scoped ``prefix`` (what BigQuery then loads)
    and read it: the download streams into gpg, gpg writes a scratch file that is counted,
    uploaded (crc32c verified) and deleted before the next file. If any file fails (e.g. a
    wrong key), the decrypted objects already written are deleted again: nothing is loaded."""
    found: list[DeliveredFile] = []
    written: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bq_assets_decrypt_") as scratch:
            for name in names:
                uri = f"gs://{bucket.name}/{name}"
                blob = bucket.get_blob(name, retry=retry)
                if blob is None:
                    raise DeliveryError(f"{uri}: the delivered file is gone (deleted or replaced)")
                local = Path(scratch) / "plain"
                decrypt(
                    lambda pipe, blob=blob: blob.download_to_file(pipe, retry=retry), local, uri
                )
                target = prefix + plain_name(name)
                rows, header, columns = read_delivered_file(local, f"{uri} (decrypted)", options)
                crc = upload(bucket, local, target, "application/octet-stream", retry)
                written.append(target)
                found.append(
                    DeliveredFile(
                        f"gs://{bucket.name}/{target}",
                        local.stat().st_size,
                        crc,
                        rows,
                        header,
                        columns,
                    )
                )
                local.unlink()
    except BaseException:
        for target in written:
            # The original error is the one to report; a failed clean-up only leaves run-scoped
            # objects no manifest names.
            with contextlib.suppress(Exception):
                bucket.blob(target).delete(retry=retry)
        raise
    return found


def write_manifest(
    bucket: storage.Bucket,
    export: str,
    run_id: str,
    files: list[DeliveredFile],
    bigquery_schema: list[dict],
    options: DeliveryOptions,
    retry: Retry = DEFAULT_RETRY,
) -> Manifest:
    """The manifest the BigQuery stage loads: exactly the delivered files (idempotent: the same
    run writes the same manifest)."""
    prefix = manifest_prefix(export, run_id)
    manifest = Manifest(
        export=export,
        run_id=run_id,
        prefix=f"gs://{bucket.name}/{prefix}",
        rows=sum(f.rows for f in files),
        shards=[Shard(uri=f.uri, rows=f.rows, bytes=f.bytes, crc32c=f.crc32c) for f in files],
        bigquery_schema=bigquery_schema,
        csv={
            "delimiter": options.delimiter,
            "header": options.header,
            "quote": "needed",
            "compression": options.compression,
            "null_marker": "",
        },
        format="csv",
    )
    bucket.blob(prefix + MANIFEST).upload_from_string(
        manifest.to_json(), content_type="application/json", retry=retry
    )
    return manifest
