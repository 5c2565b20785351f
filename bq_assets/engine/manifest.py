"""The manifest: what one run wrote (exact URIs, rows, bytes, crc32c, format, BigQuery schema,
CSV options). The BigQuery hop loads exactly its URIs, so objects of other runs are never
loaded. ``_SUCCESS`` next to it marks the run complete."""

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

FileFormat = Literal["csv", "parquet"]

MANIFEST = "manifest.json"
SUCCESS_MARKER = "_SUCCESS"


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


def read_manifest(client: storage.Client, uri: str, retry: Retry = DEFAULT_RETRY) -> Manifest:
    """The manifest at ``uri``; ``gexc.NotFound`` when it is gone."""
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return Manifest.from_json(client.bucket(bucket).blob(name).download_as_text(retry=retry))


def publish_manifest(
    bucket: storage.Bucket, run_prefix: str, manifest: Manifest, retry: Retry = DEFAULT_RETRY
) -> None:
    """Write the manifest, then ``_SUCCESS``: a run is complete once both exist. Idempotent."""
    bucket.blob(run_prefix + MANIFEST).upload_from_string(
        manifest.to_json(), content_type="application/json", retry=retry
    )
    bucket.blob(run_prefix + SUCCESS_MARKER).upload_from_string(
        b"", content_type="text/plain", retry=retry
    )


def objects_differing(
    client: storage.Client, manifest: Manifest, retry: Retry = DEFAULT_RETRY
) -> list[str]:
    """One line per object of the manifest that is gone or no longer the one written (its
    size or crc32c differs), in the manifest's order; empty when every object is as written.
    Read-only."""
    problems = []
    for shard in manifest.shards:
        bucket, _, name = shard.uri.removeprefix("gs://").partition("/")
        blob = client.bucket(bucket).get_blob(name, retry=retry)
        if blob is None:
            problems.append(f"{shard.uri}: missing")
        elif blob.size != shard.bytes or blob.crc32c != shard.crc32c:
            problems.append(
                f"{shard.uri}: size {blob.size} crc32c {blob.crc32c}, "
                f"manifest says {shard.bytes} / {shard.crc32c}"
            )
    return problems
