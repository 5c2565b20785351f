"""Objects up to GCS, verified end to end by crc32c, and deleted again."""

import base64
import contextlib
from collections.abc import Iterable
from pathlib import Path

import google_crc32c
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY

UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024  # resumable uploads in 8 MiB chunks


class UploadIntegrityError(RuntimeError):
    """An uploaded object's checksum differs from what was written (the step is retried)."""


def crc32c_of(path: Path) -> str:
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
    Idempotent: uploading the same file again leaves the same object.

    The size is deliberately not passed: the client then always takes the resumable path (told
    the size, it sends files up to 8 MiB in one multipart request instead). A failed chunk is
    retried on its own; the local file's crc32c travels with the upload, so GCS rejects an
    object whose bytes differ, and the stored object's crc32c is compared with it again.
    ``retry`` bounds how long a failing chunk is retried before the upload fails.
    """
    expected = crc32c_of(path)
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


def delete_objects(blobs: Iterable[storage.Blob], retry: Retry) -> int:
    """Delete ``blobs``, those already gone included; returns how many this call deleted."""
    deleted = 0
    for blob in blobs:
        with contextlib.suppress(gexc.NotFound):
            blob.delete(retry=retry)
            deleted += 1
    return deleted


def delete_prefix(bucket: storage.Bucket, prefix: str, retry: Retry) -> int:
    """Delete every object under ``prefix``; idempotent."""
    return delete_objects(bucket.list_blobs(prefix=prefix, retry=retry), retry)
