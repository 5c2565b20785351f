"""The production resources, pointed at the local stack: everything that exists only because
of the emulators and the embedded sample lives here, and ``settings.py`` wires it in.

* GCS and BigQuery go to the stack's emulators (``emulator()`` answers with the endpoints the
  running stack wrote down; read per client, so the code location loads with the stack down);
* the default source is the generated Amperity-style sample, created on first use.
"""

from pathlib import Path
from typing import Literal

import grpc
from google.cloud import bigquery_storage
from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
    BigQueryReadGrpcTransport,
)
from pydantic import Field

from bq_assets.local import sample_data
from bq_assets.local.stack import StackState, read_state
from bq_assets.resources.google import ExportBigQueryResource, ExportGCSResource
from bq_assets.resources.source import DuckDBSourceResource

#: The emulator's read channel: no bandwidth-delay probing (see ``read_client``).
NO_BDP_PROBE = ("grpc.http2.bdp_probe", 0)
# What BigQueryReadGrpcTransport.create_channel sets for Google's endpoint: no message size cap.
UNLIMITED_MESSAGES = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]

LOCAL_STACK_DIR = Field(
    description="Directory of a running local stack (`python -m bq_assets.local up`); clients "
    "go to its emulators with anonymous credentials.",
)


class LocalGCSResource(ExportGCSResource):
    """GCS on the local stack's fake-gcs-server."""

    local_stack_dir: str = LOCAL_STACK_DIR

    def emulator(self) -> StackState:
        return read_state(Path(self.local_stack_dir))


class LocalBigQueryResource(ExportBigQueryResource):
    """BigQuery on the local stack's bqemulator (REST), plus the Storage Read API client (gRPC)
    the local Databricks stand-in reads tables with."""

    local_stack_dir: str = LOCAL_STACK_DIR
    # bqemulator refuses partition decorators (`table$20260131`: "Invalid table id for SQL")
    # but runs BEGIN TRANSACTION … COMMIT all or nothing: the same table, another way.
    partition_overwrite: Literal["decorator", "transaction"] = "transaction"
    read_max_streams: int = Field(
        default=4,
        ge=1,
        le=100,
        description="Storage Read API: at most this many streams of one table are read in "
        "parallel (the emulator returns a single stream for small tables).",
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

    def emulator(self) -> StackState:
        return read_state(Path(self.local_stack_dir))

    @property
    def read_endpoint(self) -> str:
        """Where the Storage Read API client connects (gRPC)."""
        return f"http://{self.emulator().bigquery_grpc_target}"

    def read_client(self) -> bigquery_storage.BigQueryReadClient:
        """A BigQuery Storage Read API client on an insecure gRPC channel to the emulator.

        The channel lifts gRPC's 4 MiB receive limit, as the client library's own channel to
        Google does (one Arrow batch of a wide table is larger than that), and turns
        bandwidth-delay probing off: on loopback it grew the receive window while the reader
        lagged, buffering hundreds of MB of the emulator's 12 MB messages (5M rows: 1,255 MB
        peak with it, 773 MB without, same speed).
        """
        channel = grpc.insecure_channel(
            self.emulator().bigquery_grpc_target, options=[*UNLIMITED_MESSAGES, NO_BDP_PROBE]
        )
        return bigquery_storage.BigQueryReadClient(
            transport=BigQueryReadGrpcTransport(channel=channel)
        )


class SampleSourceResource(DuckDBSourceResource):
    """The source with the generated sample as its default DuckDB file (``sample_rows``
    customers), made on first use and reused after (idempotent)."""

    sample_rows: int = Field(
        default=sample_data.DEFAULT_SAMPLE_ROWS,
        description="Customers in the generated sample (BQ_ASSETS_SAMPLE_ROWS).",
    )

    def _database_path(self) -> Path:
        sample_data.ensure(Path(self.database), self.sample_rows)
        return super()._database_path()
