"""The Parquet snapshot of a query result: read any range of its rows a batch at a time, and
fetch it from GCS, where the query hop leaves it."""

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from google.api_core.retry import Retry
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

READ_BATCH_ROWS = 16_384  # rows decoded from the snapshot at a time (per worker)


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


def as_snapshot(snapshot: "Path | Snapshot") -> Snapshot:
    """``snapshot`` itself, or the snapshot at that path (its footer read once, here)."""
    return snapshot if isinstance(snapshot, Snapshot) else Snapshot(Path(snapshot))


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
