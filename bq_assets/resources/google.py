"""GCS and BigQuery resources: dagster-gcp's, plus what the pipeline needs of them.

They behave like dagster-gcp's own (Application Default Credentials, or a base64
service-account key), with the export bucket and bounded retries. ``emulator()`` is the one
seam for emulators: ``None`` here; the local stack's subclasses (``bq_assets.local.resources``)
answer with its endpoints, read when a client is made, so the code location loads whether or
not the stack is running.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal, Protocol

from dagster_gcp import BigQueryResource, GCSResource
from google.api_core.client_options import ClientOptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import bigquery, storage
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account
from pydantic import Field, field_validator

from bq_assets.errors import BqAssetsError
from bq_assets.exports.columns import CLASSIFICATION

#: A Data Catalog policy tag's resource name
#: (https://cloud.google.com/data-catalog/docs/reference/rest/v1/projects.locations.taxonomies.policyTags).
POLICY_TAG = re.compile(
    r"^projects/[^/\s]+/locations/[^/\s]+/taxonomies/[^/\s]+/policyTags/[^/\s]+$"
)

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


class CredentialsError(BqAssetsError):
    """The configured service-account key cannot be used."""


class MissingSettingError(BqAssetsError):
    """A setting the resource needs at run time is not configured."""


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

    #: How failures name this service (``bq_assets.failures``).
    service_name: ClassVar[str] = "GCS"

    bucket: str | None = Field(
        default=None,
        description="Bucket for the export objects, CSV or Parquet (local: the stack's bucket).",
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
            raise MissingSettingError("No GCS bucket configured: set BQ_ASSETS_GCS_BUCKET.")
        return self.bucket


class ExportBigQueryResource(BigQueryResource):
    """dagster-gcp's ``BigQueryResource``, plus how a partitioned load replaces partitions."""

    #: How failures name this service (``bq_assets.failures``).
    service_name: ClassVar[str] = "BigQuery"

    partition_overwrite: Literal["decorator", "transaction"] = Field(
        default="decorator",
        description="How a partitioned export's load replaces its partitions: a copy job to the "
        "partition decorator (`table$YYYYMMDD`, WRITE_TRUNCATE) where the partitions are "
        "BigQuery's own, or always one DELETE + INSERT transaction (what the emulator supports).",
    )

    maximum_bytes_billed: int | None = Field(
        default=None,
        ge=1,
        description="Every query job an export runs may bill at most this many bytes; BigQuery "
        "refuses one that would bill more (an export's bigquery.maximum_bytes_billed wins). "
        "Unset: no limit.",
    )
    policy_tags: dict[str, str | None] = Field(
        default_factory=dict,
        description="classification -> Data Catalog policy tag resource name "
        "(projects/P/locations/L/taxonomies/T/policyTags/ID) applied to the BigQuery columns of "
        "that class; null leaves them untagged deliberately. Keys beyond the built-in classes "
        "declare the deployment's own classes.",
    )
    require_policy_tags: bool = Field(
        default=True,
        description="every classification a spec uses must be a key of policy_tags (production); "
        "the local stack, whose emulator keeps no policy tags, does not require it",
    )

    @field_validator("policy_tags")
    @classmethod
    def _policy_tag_names(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        for classification, tag in value.items():
            if not CLASSIFICATION.fullmatch(classification):
                raise ValueError(f"{classification!r} is not a classification name")
            if tag is not None and not POLICY_TAG.fullmatch(tag):
                raise ValueError(
                    f"{classification}: {tag!r} is not a policy tag resource name "
                    "(projects/<project>/locations/<location>/taxonomies/<id>/policyTags/<id>)"
                )
        return value

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

    def project_id(self) -> str:
        emulator = self.emulator()
        if emulator is not None:
            return emulator.project
        if not self.project:
            raise MissingSettingError("No GCP project configured: set GCP_PROJECT.")
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
