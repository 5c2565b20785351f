"""Every BigQuery job an export runs goes through one client, ``MeteredClient``: it labels the
job (the export's labels plus the asset and partition that ran it), caps what a query may bill
(``maximum_bytes_billed``), and records the job, so the step can say what it cost.

The labels let a billing export or ``INFORMATION_SCHEMA.JOBS`` be grouped by export, asset and
partition (https://cloud.google.com/bigquery/docs/adding-labels#job-label); the cap makes
BigQuery refuse a query that would bill more, before it runs
(https://cloud.google.com/bigquery/docs/best-practices-costs#limit_query_costs_by_restricting_the_number_of_bytes_billed).
What a job cost is read from its statistics as BigQuery reports them (``JobStatistics``:
``totalBytesProcessed``, ``totalBytesBilled``, ``totalSlotMs``, ``startTime``/``endTime``;
https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobStatistics), never estimated.

Pure engine code (no Dagster): the hops wrap the resource's client in it (see
``bq_assets.stages.cost``); any new kind of job (a MERGE, an extract) created through
``query``, ``load_table_from_uri`` or ``copy_table`` is labelled, capped and counted the same way.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bq_assets.errors import BqAssetsError

#: Label keys this project adds to every job (values: BigQuery label values, ≤ 63 characters).
EXPORT_LABEL = "bq_assets_export"
ASSET_LABEL = "bq_assets_asset"
PARTITION_LABEL = "bq_assets_partition"
#: The reason BigQuery gives a query refused for its bytes billed
#: (https://cloud.google.com/bigquery/docs/error-messages: bytesBilledLimitExceeded).
BYTES_BILLED_LIMIT = "bytesBilledLimitExceeded"

_LABEL_VALUE_CHARACTERS = re.compile(r"[^a-z0-9_-]+")


def label_value(text: str) -> str:
    """``text`` as a BigQuery label value: lower case letters, digits, ``_`` and ``-``, at most
    63 characters (https://cloud.google.com/bigquery/docs/labels-intro#requirements)."""
    return _LABEL_VALUE_CHARACTERS.sub("-", text.lower())[:63]


def job_labels(
    export_labels: Mapping[str, str], export: str, asset: str, partition: str | None
) -> dict[str, str]:
    """The labels of every job a step of ``export`` runs: the export's own, then which export,
    asset (``bigquery/customer_360`` → ``bigquery-customer_360``) and partition (or range)."""
    labels = {**export_labels, EXPORT_LABEL: label_value(export), ASSET_LABEL: label_value(asset)}
    if partition:
        labels[PARTITION_LABEL] = label_value(partition)
    return labels


@dataclass(frozen=True)
class JobCost:
    """What one BigQuery job processed, billed and took, as BigQuery reported it (0 where it
    reports nothing: loads and copies bill no bytes)."""

    job_id: str
    kind: str
    bytes_processed: int
    bytes_billed: int
    slot_ms: int
    duration_ms: int

    @classmethod
    def of(cls, job: bigquery.job._AsyncJob) -> JobCost:
        # The job's REST resource as last read: the client keeps it whole, but exposes the
        # statistics of load and copy jobs (totalSlotMs) only there.
        resource: dict[str, Any] = job._properties
        statistics = resource.get("statistics") or {}
        query = statistics.get("query") or {}
        started, ended = statistics.get("startTime"), statistics.get("endTime")
        return cls(
            job_id=job.job_id,
            kind=job.job_type,
            bytes_processed=int(query.get("totalBytesProcessed") or 0),
            bytes_billed=int(query.get("totalBytesBilled") or 0),
            slot_ms=int(statistics.get("totalSlotMs") or 0),
            duration_ms=int(float(ended) - float(started)) if started and ended else 0,
        )


@dataclass(frozen=True)
class JobCosts:
    """The jobs a step ran and their totals."""

    jobs: list[JobCost] = field(default_factory=list)

    @property
    def bytes_processed(self) -> int:
        return sum(job.bytes_processed for job in self.jobs)

    @property
    def bytes_billed(self) -> int:
        return sum(job.bytes_billed for job in self.jobs)

    @property
    def slot_ms(self) -> int:
        return sum(job.slot_ms for job in self.jobs)

    @property
    def duration_ms(self) -> int:
        return sum(job.duration_ms for job in self.jobs)

    def describe(self) -> str:
        return (
            f"{len(self.jobs)} BigQuery job(s): {self.bytes_processed:,} bytes processed, "
            f"{self.bytes_billed:,} billed, {self.slot_ms:,} slot-ms, {self.duration_ms:,} ms"
        )


class BytesBilledLimitError(BqAssetsError):
    """A query would bill more bytes than its ``maximum_bytes_billed``; BigQuery refused it."""


def refused_for_bytes_billed(exc: BaseException) -> bool:
    """Did BigQuery refuse the job for ``maximum_bytes_billed``?"""
    errors = getattr(exc, "errors", None) or []
    return any(isinstance(e, dict) and e.get("reason") == BYTES_BILLED_LIMIT for e in errors)


def bytes_billed_limit_error(exc: gexc.GoogleAPICallError) -> BytesBilledLimitError:
    """One clear message for a query refused for its bytes billed (BigQuery's own message
    names the limit and what it would have needed); not retried: the same query would be
    refused again."""
    return BytesBilledLimitError(
        f"BigQuery refused a query that would bill more than its maximum_bytes_billed: "
        f"{exc.message.strip()} Raise bigquery.maximum_bytes_billed in the export's spec (or "
        "BQ_ASSETS_MAXIMUM_BYTES_BILLED), or make the query read less (filter on the "
        "partition column).",
        retryable=False,
    )


class MeteredClient:
    """A ``bigquery.Client`` whose jobs are labelled, capped and recorded. Everything but
    creating jobs is the wrapped client's own (``__getattr__``)."""

    def __init__(
        self,
        client: bigquery.Client,
        labels: Mapping[str, str],
        maximum_bytes_billed: int | None = None,
        policy_tags: Mapping[str, str | None] | None = None,
    ) -> None:
        self._client = client
        self.labels = dict(labels)
        self.maximum_bytes_billed = maximum_bytes_billed
        #: classification -> Data Catalog policy tag, for the schemas the step writes
        #: (``bigquery_columns``).
        self.policy_tags = dict(policy_tags or {})
        self._jobs: dict[str, bigquery.job._AsyncJob] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def __enter__(self) -> MeteredClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def _labelled(self, config: Any, kind: type) -> Any:
        """A copy of ``config`` (or a new one of ``kind``) with this step's labels added; labels
        the caller set win."""
        config = kind.from_api_repr(config.to_api_repr()) if config is not None else kind()
        config.labels = {**self.labels, **(config.labels or {})}
        return config

    def _record(self, job: Any) -> Any:
        self._jobs[job.job_id] = job
        return job

    def query(
        self, query: str, job_config: bigquery.QueryJobConfig | None = None, **kwargs: Any
    ) -> bigquery.QueryJob:
        config = self._labelled(job_config, bigquery.QueryJobConfig)
        if self.maximum_bytes_billed is not None and config.maximum_bytes_billed is None:
            config.maximum_bytes_billed = self.maximum_bytes_billed
        job = self._client.query(query, job_config=config, **kwargs)
        if config.dry_run:  # a dry run creates no job and costs nothing
            return job
        return self._record(job)

    def load_table_from_uri(
        self, source_uris: Any, destination: Any, job_config: Any = None, **kwargs: Any
    ) -> bigquery.LoadJob:
        config = self._labelled(job_config, bigquery.LoadJobConfig)
        return self._record(
            self._client.load_table_from_uri(source_uris, destination, job_config=config, **kwargs)
        )

    def copy_table(
        self, sources: Any, destination: Any, job_config: Any = None, **kwargs: Any
    ) -> bigquery.CopyJob:
        config = self._labelled(job_config, bigquery.CopyJobConfig)
        return self._record(
            self._client.copy_table(sources, destination, job_config=config, **kwargs)
        )

    def costs(self) -> JobCosts:
        """What the jobs this client created have cost so far (a job not yet done is read once
        more, so its statistics are BigQuery's latest)."""
        found = []
        for job in self._jobs.values():
            if job.state != "DONE":
                # Should the read fail, its cost stays as last read: the step's error is the story.
                with contextlib.suppress(gexc.GoogleAPICallError):
                    job.reload()
            found.append(JobCost.of(job))
        return JobCosts(found)
