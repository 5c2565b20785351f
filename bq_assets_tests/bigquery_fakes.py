"""Named fakes of BigQuery for what the emulator cannot run, each asserting the documented form
of the calls it takes. Everything else goes to the real emulator client they wrap."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery

#: The documented form of a partition copy: "copy ... partitions ... by using partition
#: decorators" from a table partitioned (and clustered) like the destination.
COPY_PARTITIONS = (
    "https://cloud.google.com/bigquery/docs/managing-partitioned-tables#copy_partitions"
)
#: "Failed to copy Non partitioned table to Column partitioned table: not supported" (BigQuery's
#: answer, quoted in apache/airflow#42130), and "incompatible clustering fields" for a source
#: clustered otherwise than the destination.
REFUSED_LAYOUT = "Failed to copy Non partitioned table to Column partitioned table: not supported"
#: A partition is deleted by deleting its decorator (same page, "Delete a partition").
DELETE_PARTITION = (
    "https://cloud.google.com/bigquery/docs/managing-partitioned-tables#delete_a_partition"
)


@dataclass(frozen=True)
class Copy:
    source: str
    destination: str
    write_disposition: str | None
    create_disposition: str | None


@dataclass(frozen=True)
class Created:
    table_id: str
    partitioning: tuple[str, str] | None
    clustering: tuple[str, ...]
    labels: dict[str, str]
    description: str | None
    expires: dt.datetime | None


def _split(table_id: str) -> tuple[str, str | None]:
    name, _, partition = table_id.partition("$")
    return name, partition or None


class FakePartitionDecorators:
    """A named fake of ``bigquery.Client`` for partition decorators, which the emulator refuses
    ("Invalid table id"). It records every ``copy_table``, ``create_table`` and partition
    delete, asserts each copy against the documented form (``COPY_PARTITIONS``): a decorator on
    both sides naming the same partition, ``WRITE_TRUNCATE``, source and destination partitioned
    and clustered alike, refusing otherwise as BigQuery does (``REFUSED_LAYOUT``); then does on
    the emulator what BigQuery documents the copy does (the destination partition's rows become
    exactly the source partition's) and answers a DONE copy job. Every other call goes to the
    emulator client it wraps."""

    def __init__(self, client: bigquery.Client) -> None:
        self.client = client
        self.copies: list[Copy] = []
        self.created: list[Created] = []
        self.deleted_partitions: list[str] = []
        self._jobs: dict[str, bigquery.CopyJob] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def create_table(self, table: bigquery.Table, *args, **kwargs) -> bigquery.Table:
        partitioning = table.time_partitioning
        self.created.append(
            Created(
                table_id=f"{table.project}.{table.dataset_id}.{table.table_id}",
                partitioning=None
                if partitioning is None
                else (str(partitioning.type_), str(partitioning.field)),
                clustering=tuple(table.clustering_fields or ()),
                labels=dict(table.labels),
                description=table.description,
                expires=table.expires,
            )
        )
        return self.client.create_table(table, *args, **kwargs)

    def get_job(self, job_id: str, *args, **kwargs):
        if job_id in self._jobs:
            return self._jobs[job_id]
        return self.client.get_job(job_id, *args, **kwargs)

    def delete_table(self, table: str, *args, **kwargs) -> None:
        name, partition = _split(str(table))
        if partition is None:
            return self.client.delete_table(table, *args, **kwargs)
        self.deleted_partitions.append(str(table))
        self._replace_partition(name, partition, None)
        return None

    def copy_table(self, source: str, destination: str, *, job_id: str, location: str,
                   job_config: bigquery.CopyJobConfig, **kwargs) -> bigquery.CopyJob:  # fmt: skip
        copy = Copy(source, destination, job_config.write_disposition,
                    job_config.create_disposition)  # fmt: skip
        self.copies.append(copy)
        source_table, source_partition = _split(source)
        target_table, target_partition = _split(destination)
        if target_partition is None:
            return self.client.copy_table(
                source, destination, job_id=job_id, location=location, job_config=job_config,
                **kwargs,
            )  # fmt: skip
        self._same_layout(source_table, target_table)
        assert source_partition == target_partition, (
            f"{COPY_PARTITIONS}: a partition is copied to the same partition, got {copy}"
        )
        assert job_config.write_disposition == "WRITE_TRUNCATE", (
            f"{COPY_PARTITIONS}: replacing a partition takes WRITE_TRUNCATE, got {copy}"
        )
        self._replace_partition(target_table, target_partition, source_table)
        job = bigquery.CopyJob.from_api_repr(
            {
                "jobReference": {"projectId": self.client.project, "jobId": job_id,
                                 "location": location},
                "configuration": {"copy": {
                    "sourceTables": [_reference(source)],
                    "destinationTable": _reference(destination),
                    "writeDisposition": job_config.write_disposition,
                    "createDisposition": job_config.create_disposition,
                }},
                "status": {"state": "DONE"},
            },
            self.client,
        )  # fmt: skip
        self._jobs[job_id] = job
        return job

    def _same_layout(self, source: str, target: str) -> None:
        src, dst = self.client.get_table(source), self.client.get_table(target)
        if dst.time_partitioning is not None and src.time_partitioning is None:
            raise gexc.BadRequest(REFUSED_LAYOUT)
        if (src.time_partitioning and src.time_partitioning.field) != (
            dst.time_partitioning and dst.time_partitioning.field
        ) or list(src.clustering_fields or []) != list(dst.clustering_fields or []):
            raise gexc.BadRequest(
                f"incompatible partitioning or clustering: {source} vs {target} ({COPY_PARTITIONS})"
            )

    def _replace_partition(self, table_id: str, partition: str, source: str | None) -> None:
        """The partition's rows become the source partition's (none: deleted)."""
        table = self.client.get_table(table_id)
        field = table.time_partitioning.field
        first = dt.datetime.strptime(partition, "%Y%m%d" if len(partition) == 8 else "%Y%m")
        start = first.date()
        end = (
            start + dt.timedelta(days=1)
            if len(partition) == 8
            else (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        )
        where = f"DATE(`{field}`) >= DATE '{start}' AND DATE(`{field}`) < DATE '{end}'"
        columns = ", ".join(f"`{f.name}`" for f in table.schema)
        script = f"DELETE FROM `{table_id}` WHERE {where};"
        if source is not None:
            script += (
                f" INSERT INTO `{table_id}` ({columns}) SELECT {columns} FROM `{source}` "
                f"WHERE {where};"
            )
        self.client.query(f"BEGIN TRANSACTION; {script} COMMIT TRANSACTION;").result()


def _reference(table_id: str) -> dict[str, str]:
    project, dataset, table = table_id.split(".")
    return {"projectId": project, "datasetId": dataset, "tableId": table}
