"""A delivery simulator for the local stack: writes files into the GCS emulator the way
Amperity's GCS destination does (a file name template with the date and time of the send, CSV
or TSV, optionally gzip, optionally split into several files, then a completion marker,
optionally PGP encrypted). Used by the tests and ``make demo``; never by production code.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.cloud import storage

from bq_assets.engine.deliveries import marker_name
from bq_assets.exports.delivery import SEND_PLACEHOLDER, DeliveryOptions, send_format
from bq_assets.exports.spec import ExportSpec
from bq_assets.resources.pgp import gnupg_home, gpg

SAMPLE_COLUMNS = ["order_id", "amperity_id", "order_total", "item_count", "order_date"]

Row = Sequence[object | None]


@dataclass(frozen=True)
class SimulatedDelivery:
    send: str
    files: list[str]  # object names, in the order written
    marker: str | None


def send_text(options: DeliveryOptions, sent_at: dt.datetime) -> str:
    """The ``{send:...}`` text of a send at ``sent_at``."""
    return sent_at.strftime(send_format(options.files))


def file_names(options: DeliveryOptions, sent_at: dt.datetime, parts: int) -> list[str]:
    """Object names of a send split into ``parts`` files: ``{send:..}`` rendered, the first
    ``*`` numbered ``0001``, ``0002`` … (Amperity numbers split files), any other ``*`` empty."""
    name = SEND_PLACEHOLDER.sub(send_text(options, sent_at), options.files)
    if parts > 1 and "*" not in name:
        raise ValueError(f"{options.files}: a split delivery needs a * in the file name pattern")
    return [
        options.prefix + name.replace("*", f"{index + 1:04d}", 1).replace("*", "").replace("?", "0")
        for index in range(parts)
    ]


def csv_bytes(options: DeliveryOptions, header: Sequence[str] | None, rows: Sequence[Row]) -> bytes:
    """One file's bytes: the header (when the format has one), the rows (NULL as an empty
    field), quoted where needed, gzipped without a timestamp when the format says gzip."""
    text = io.StringIO()
    writer = csv.writer(text, delimiter=options.delimiter, lineterminator="\n")
    if options.header:
        writer.writerow(header if header is not None else options.column_names)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    data = text.getvalue().encode()
    return gzip.compress(data, mtime=0) if options.compression == "gzip" else data


def deliver(
    bucket: storage.Bucket,
    options: DeliveryOptions,
    rows: Sequence[Row],
    sent_at: dt.datetime,
    parts: int = 1,
    header: Sequence[str] | None = None,
    write_files: int | None = None,
    write_marker: bool = True,
    encrypt: Callable[[bytes], bytes] | None = None,
) -> SimulatedDelivery:
    """Write one send: ``rows`` split evenly over ``parts`` files, then the marker (when the
    completion rule is a marker and ``write_marker``). ``write_files`` stops after that many
    files (a delivery still being written); ``header`` overrides the header (a wrong one);
    ``encrypt`` turns each file's bytes into what is uploaded (PGP)."""
    names = file_names(options, sent_at, parts)
    size = -(-len(rows) // parts) if rows else 0
    for index, name in enumerate(names[:write_files]):
        data = csv_bytes(options, header, rows[index * size : (index + 1) * size])
        bucket.blob(name).upload_from_string(encrypt(data) if encrypt else data)
    marker = None
    if options.complete_when.marker:
        marker = marker_name(options, send_text(options, sent_at))
        if write_marker and (write_files is None or write_files >= parts):
            bucket.blob(marker).upload_from_string(b"")
    return SimulatedDelivery(send=send_text(options, sent_at), files=names, marker=marker)


def finish(
    bucket: storage.Bucket,
    options: DeliveryOptions,
    delivery: SimulatedDelivery,
    rows: Sequence[Row],
    parts: int,
    written: int,
    encrypt: Callable[[bytes], bytes] | None = None,
) -> None:
    """Write the rest of a delivery begun with ``write_files=written``, then its marker."""
    size = -(-len(rows) // parts) if rows else 0
    for index in range(written, parts):
        data = csv_bytes(options, None, rows[index * size : (index + 1) * size])
        bucket.blob(delivery.files[index]).upload_from_string(encrypt(data) if encrypt else data)
    if delivery.marker:
        bucket.blob(delivery.marker).upload_from_string(b"")


def sample_orders(count: int) -> list[list[str]]:
    """Deterministic sample rows for the shipped ``amperity_orders`` export (text, as sent)."""
    start = dt.date(2026, 1, 1)
    return [
        [
            f"ord-{n:06d}",
            f"amp-{n % 97:04d}",
            f"{(n * 37) % 10000 / 100:.2f}",
            str(1 + n % 5),
            (start + dt.timedelta(days=n % 60)).isoformat(),
        ]
        for n in range(count)
    ]


def simulate_deliveries(
    specs: Sequence[ExportSpec], bucket: storage.Bucket, rows: int = 500, parts: int = 2
) -> list[SimulatedDelivery]:
    """One complete delivery of sample rows, sent now, for every delivered export in ``specs``
    whose columns are the shipped ``amperity_orders`` ones (``make demo`` and the tests)."""
    sent = []
    for spec in specs:
        if spec.delivery and spec.delivery.column_names == SAMPLE_COLUMNS:
            sent_at = dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)
            sent.append(deliver(bucket, spec.delivery, sample_orders(rows), sent_at, parts=parts))
    return sent


@dataclass(frozen=True)
class PgpKeyPair:
    """A test key pair, ASCII armored: the recipient's public key and its private key."""

    public: str
    private: str


def generate_pgp_key(uid: str = "bq_assets delivery <delivery@bq-assets.local>") -> PgpKeyPair:
    """A fresh key pair without passphrase (Curve25519: generated in well under a second)."""
    with gnupg_home() as home:
        made = gpg(
            home, "--passphrase", "", "--quick-gen-key", uid, "future-default", "default", "never"
        )
        if made.returncode != 0:
            raise RuntimeError(f"gpg could not generate a key: {made.stderr.decode()[-500:]}")
        public = gpg(home, "--armor", "--export", uid).stdout.decode()
        private = gpg(home, "--armor", "--export-secret-keys", uid).stdout.decode()
    return PgpKeyPair(public=public, private=private)


def pgp_encryptor(public_key: str) -> Callable[[bytes], bytes]:
    """Encrypts a file's bytes to ``public_key``, as Amperity's destination does with PGP on."""

    def encrypt(data: bytes) -> bytes:
        with gnupg_home() as home:
            key_file = home / "recipient.asc"
            key_file.write_text(public_key)
            encrypted = gpg(
                home,
                "--trust-model",
                "always",
                "--recipient-file",
                str(key_file),
                "--encrypt",
                stdin=data,
            )
            if encrypted.returncode != 0:
                raise RuntimeError(f"gpg could not encrypt: {encrypted.stderr.decode()[-500:]}")
            return encrypted.stdout

    return encrypt
