"""GCS and BigQuery resources: dagster-gcp's, plus what the pipeline needs of them.

They behave like dagster-gcp's own (Application Default Credentials, or a base64
service-account key), with the export bucket, bounded retries and the Storage Read API client.
``emulator()`` is the one seam for emulators: ``None`` here; the local stack's subclasses
(``bq_assets.local.resources``) answer with its endpoints, read when a client is made, so the
code location loads whether or not the stack is running.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Protocol

import grpc
from dagster_gcp import BigQueryResource, GCSResource
from google.api_core.client_options import ClientOptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import bigquery, bigquery_storage, storage
from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
    BigQueryReadGrpcTransport,
)
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account
from pydantic import Field

from bq_assets.errors import BqAssetsError

#: The emulator's read channel: no bandwidth-delay probing (see ``read_client``).
NO_BDP_PROBE = ("grpc.http2.bdp_probe", 0)
# What BigQueryReadGrpcTransport.create_channel sets for Google's endpoint: no message size cap.
UNLIMITED_MESSAGES = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]
CREDENTIALS_FIELD = Field(
    default=None,
    description="Base64-encoded service-account key JSON. Unset: Application Default Credentials.",
)


class Emulator(Protocol):
    """Where emulators of GCS and BigQuery listen; clients reach them without credentials."""

    project: str
    bucket: str

    @property
    def gcs_endpoint(self) -> str: ...
    @property
    def bigquery_endpoint(self) -> str: ...
    @property
    def bigquery_grpc_target(self) -> str: ...


class CredentialsError(BqAssetsError):
    """The configured service-account key cannot be used."""


def service_account_credentials(encoded_key: str) -> Credentials:
    """Credentials from a base64 service-account key; the error never echoes the key."""
    try:
        info = json.loads(base64.b64decode(encoded_key, validate=True))
        return service_account.Credentials.from_service_account_info(
            info, scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise CredentialsError(
            "GCP_CREDENTIALS_B64 is not a base64-encoded service-account key JSON "
            f"({type(exc).__name__}); re-encode it with `base64 -w0 key.json`."
        ) from None


class ExportGCSResource(GCSResource):
    """dagster-gcp's ``GCSResource`` plus the bucket exports go to and bounded retries."""

    bucket: str | None = Field(
        default=None, description="Bucket for the CSV objects (local: the stack's bucket)."
    )
    gcp_credentials: str | None = CREDENTIALS_FIELD
    retry_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long one GCS request (an upload chunk, a listing, a delete) is retried "
        "before the step fails and its retry policy takes over; 120 s is the client's default.",
    )

    def emulator(self) -> Emulator | None:
        """The emulators to talk to instead of Google (none in production)."""
        return None

    def retry(self) -> Retry:
        """The client's retry policy (transient errors, backoff), bounded by ``retry_timeout_s``."""
        return DEFAULT_RETRY.with_timeout(self.retry_timeout_s)

    def get_object_to_set_on_execution_context(self) -> ExportGCSResource:
        # dagster-gcp builds a client for every step up front; clients are made inside the
        # steps instead, where a stopped stack or bad credentials become a clear failure.
        return self

    def get_client(self) -> storage.Client:
        emulator = self.emulator()
        if emulator is not None:
            return storage.Client(
                project=emulator.project,
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": emulator.gcs_endpoint},
            )
        if self.gcp_credentials:
            return storage.Client(
                project=self.project, credentials=service_account_credentials(self.gcp_credentials)
            )
        return storage.Client(project=self.project)

    @property
    def endpoint(self) -> str:
        emulator = self.emulator()
        return emulator.gcs_endpoint if emulator else "https://storage.googleapis.com"

    def get_bucket_name(self) -> str:
        emulator = self.emulator()
        if emulator is not None:
            return self.bucket or emulator.bucket
        if not self.bucket:
            raise ValueError("No GCS bucket configured: set BQ_ASSETS_GCS_BUCKET.")
        return self.bucket


class ExportBigQueryResource(BigQueryResource):
    """dagster-gcp's ``BigQueryResource`` plus the Storage Read API client and its deadlines."""

    read_max_streams: int = Field(
        default=4,
        ge=1,
        le=100,
        description="Storage Read API: at most this many streams of one table are read in "
        "parallel (BigQuery and the emulator return a single stream for small tables).",
    )
    read_stall_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Storage Read API: a read fails when no stream has delivered a message for "
        "this long (a stalled server or network), instead of waiting forever.",
    )
    read_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="Storage Read API: deadline for reading one whole table, all streams together.",
    )
    partition_overwrite: Literal["decorator", "transaction"] = Field(
        default="decorator",
        description="How a partitioned export's load replaces its partitions: a copy job to the "
        "partition decorator (`table$YYYYMMDD`, WRITE_TRUNCATE) where the partitions are "
        "BigQuery's own, or always one DELETE + INSERT transaction (what the emulator supports).",
    )

    def emulator(self) -> Emulator | None:
        """The emulator to talk to instead of Google (none in production)."""
        return None

    def unstorable(self, columns: list[tuple[str, str, str]]) -> list[str]:
        """Which of a result's columns ``(name, source type, BigQuery type)`` this BigQuery
        cannot store, one sentence each naming the column, the reason and the cast that makes
        it fit. Asked at the query step, before anything is written. BigQuery stores every type
        the schema maps to: none here (the local stack's resource answers for its emulator)."""
        return []

    def get_object_to_set_on_execution_context(self) -> ExportBigQueryResource:
        return self  # see ExportGCSResource: no client before the step runs

    @property
    def endpoint(self) -> str:
        emulator = self.emulator()
        return emulator.bigquery_endpoint if emulator else "https://bigquery.googleapis.com"

    @property
    def read_endpoint(self) -> str:
        """Where the Storage Read API client connects (gRPC)."""
        emulator = self.emulator()
        return (
            f"http://{emulator.bigquery_grpc_target}"
            if emulator
            else "https://bigquerystorage.googleapis.com"
        )

    def project_id(self) -> str:
        emulator = self.emulator()
        if emulator is not None:
            return emulator.project
        if not self.project:
            raise ValueError("No GCP project configured: set GCP_PROJECT.")
        return self.project

    @contextmanager
    def get_client(self) -> Iterator[bigquery.Client]:
        emulator = self.emulator()
        if emulator is None and not self.gcp_credentials:
            with super().get_client() as client:
                yield client
            return
        if emulator is not None:
            client = bigquery.Client(
                project=emulator.project,
                location=self.location,
                credentials=AnonymousCredentials(),
                client_options=ClientOptions(api_endpoint=emulator.bigquery_endpoint),
            )
        else:
            assert self.gcp_credentials is not None
            client = bigquery.Client(
                project=self.project,
                location=self.location,
                credentials=service_account_credentials(self.gcp_credentials),
            )
        try:
            yield client
        finally:
            client.close()

    def read_client(self) -> bigquery_storage.BigQueryReadClient:
        """A BigQuery Storage Read API client (insecure gRPC to the emulator when local).

        The emulator's channel lifts gRPC's 4 MiB receive limit, as the client library's own
        channel to Google does (one Arrow batch of a wide table is larger than that), and turns
        bandwidth-delay probing off: on loopback it grew the receive window while the reader
        lagged, buffering hundreds of MB of the emulator's 12 MB messages (5M rows: 1,255 MB
        peak with it, 773 MB without, same speed).
        """
        emulator = self.emulator()
        if emulator is not None:
            channel = grpc.insecure_channel(
                emulator.bigquery_grpc_target, options=[*UNLIMITED_MESSAGES, NO_BDP_PROBE]
            )
            return bigquery_storage.BigQueryReadClient(
                transport=BigQueryReadGrpcTransport(channel=channel)
            )
        if self.gcp_credentials:
            return bigquery_storage.BigQueryReadClient(
                credentials=service_account_credentials(self.gcp_credentials)
            )
        return bigquery_storage.BigQueryReadClient()
