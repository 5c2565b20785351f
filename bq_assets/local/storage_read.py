"""Read a whole BigQuery table through the Storage Read API: parallel streams, bounded memory,
never a hang. Only the local Databricks stand-in reads this way (production never does).

Each stream of the read session is read by its own thread; decoded Arrow batches meet in a
small bounded queue that the caller drains as one ``pyarrow.RecordBatchReader``, so at most a
few batches per stream are held in memory whatever the table's size. The caller's thread
watches two deadlines: no message from any stream for ``stall_timeout_s`` (a stalled server or
network), and ``timeout_s`` for the whole table. Either one cancels every stream and fails with
a ``StorageReadError`` naming the endpoint and what it waited for. The caller's thread never
blocks for more than half a second at a time, so a run's termination (an interrupt raised in
it) stops the read within seconds.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.cloud import bigquery_storage

from bq_assets.errors import ServiceUnreachableError

POLL_S = 0.5
BATCHES_PER_STREAM = 2


class StorageReadError(ServiceUnreachableError):
    """A Storage Read API read stalled, ran past its deadline, or one of its streams failed;
    a new attempt may get through."""


@dataclass(frozen=True)
class _End:
    stream: str


@dataclass(frozen=True)
class _Failed:
    stream: str
    error: BaseException


def create_session(
    client: bigquery_storage.BigQueryReadClient,
    endpoint: str,
    project: str,
    table_path: str,
    max_streams: int,
    timeout_s: float,
) -> bigquery_storage.types.ReadSession:
    """A read session over ``table_path`` (``projects/…/datasets/…/tables/…``) in Arrow format.

    ``timeout_s`` bounds the call, retries of transient errors included.
    """
    try:
        return client.create_read_session(
            parent=f"projects/{project}",
            read_session=bigquery_storage.types.ReadSession(
                table=table_path, data_format=bigquery_storage.types.DataFormat.ARROW
            ),
            max_stream_count=max_streams,
            retry=Retry(timeout=timeout_s),
            timeout=timeout_s,
        )
    except (api_exceptions.DeadlineExceeded, api_exceptions.RetryError) as exc:
        raise StorageReadError(
            f"BigQuery Storage Read API at {endpoint} did not create a read session for "
            f"{table_path} within {timeout_s:g} s (read_stall_timeout_s): {_describe(exc)}"
        ) from None


class TableReader:
    """All streams of ``session`` as one Arrow reader; ``error`` holds why a read stopped early.

    Use it as a context manager: leaving it cancels whatever is still being read. Not reusable.
    """

    def __init__(
        self,
        client: bigquery_storage.BigQueryReadClient,
        session: bigquery_storage.types.ReadSession,
        endpoint: str,
        stall_timeout_s: float,
        timeout_s: float,
    ) -> None:
        self._client = client
        self._session = session
        self._endpoint = endpoint
        self._stall_timeout_s = stall_timeout_s
        self._timeout_s = timeout_s
        self._streams = [stream.name for stream in session.streams]
        self._queue: queue.Queue = queue.Queue(maxsize=BATCHES_PER_STREAM * len(self._streams) + 1)
        self._stop = threading.Event()
        self._calls: list = []
        self._lock = threading.Lock()
        self.schema = pa.ipc.read_schema(pa.py_buffer(session.arrow_schema.serialized_schema))
        self.error: StorageReadError | None = None

    def __enter__(self) -> TableReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every stream thread and cancel its call. Idempotent."""
        self._stop.set()
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.cancel()

    def reader(self) -> pa.RecordBatchReader:
        """The table's rows, batch by batch, streams interleaved in arrival order."""
        return pa.RecordBatchReader.from_batches(self.schema, self.batches())

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The table's rows as an iterator of batches (what ``reader`` wraps); raises
        ``StorageReadError`` as soon as a read stalls, runs late or fails."""
        try:
            yield from self._drain()
        except StorageReadError as exc:
            self.error = exc
            raise
        finally:
            self.close()

    def _drain(self) -> Iterator[pa.RecordBatch]:
        for name in self._streams:
            threading.Thread(
                target=self._pump, args=(name,), name=f"storage-read-{name[-8:]}", daemon=True
            ).start()
        open_streams = set(self._streams)
        deadline = time.monotonic() + self._timeout_s
        last_message = time.monotonic()
        while open_streams:
            try:
                item = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                now = time.monotonic()
                if now - last_message > self._stall_timeout_s:
                    raise StorageReadError(
                        f"BigQuery Storage Read API at {self._endpoint} sent nothing for "
                        f"{self._stall_timeout_s:g} s while {len(open_streams)} of "
                        f"{len(self._streams)} read streams of {self._session.table} were "
                        "still open (read_stall_timeout_s); the read was canceled."
                    ) from None
                if now > deadline:
                    raise StorageReadError(
                        f"BigQuery Storage Read API at {self._endpoint} did not deliver all "
                        f"rows of {self._session.table} within {self._timeout_s:g} s "
                        "(read_timeout_s); the read was canceled."
                    ) from None
                continue
            last_message = time.monotonic()
            if isinstance(item, _End):
                open_streams.discard(item.stream)
            elif isinstance(item, _Failed):
                raise StorageReadError(
                    f"BigQuery Storage Read API at {self._endpoint} failed reading stream "
                    f"{item.stream} of {self._session.table}: {_describe(item.error)}"
                ) from item.error
            else:
                yield item
                last_message = time.monotonic()  # time spent by the consumer is no stall

    def _pump(self, stream: str) -> None:
        """Read one stream into the queue until it ends, fails or the reader is closed."""
        try:
            rows = self._client.read_rows(
                stream, retry=Retry(timeout=self._timeout_s), timeout=self._timeout_s
            )
            with self._lock:
                self._calls.append(rows)
            if self._stop.is_set():
                return
            for response in rows:
                payload = response.arrow_record_batch.serialized_record_batch
                if not self._offer(pa.ipc.read_record_batch(pa.py_buffer(payload), self.schema)):
                    return
            self._offer(_End(stream))
        except BaseException as exc:
            if not self._stop.is_set():
                self._offer(_Failed(stream, exc))

    def _offer(self, item: object) -> bool:
        """Put ``item`` on the queue, waiting while it is full; False once the reader is closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 300 else text[:300] + "…"
