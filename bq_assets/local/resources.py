"""The production resources, pointed at the local stack: everything that exists only because
of the emulators and the embedded sample lives here, and ``settings.py`` wires it in.

* GCS and BigQuery go to the stack's emulators (``emulator()`` answers with the endpoints the
  running stack wrote down; read per client, so the code location loads with the stack down);
* the default source is the generated Amperity-style sample, created on first use.
"""

from pathlib import Path
from typing import Literal

from pydantic import Field

from bq_assets.local import sample_data
from bq_assets.local.limits import emulator_cannot_store
from bq_assets.local.stack import StackState, read_state
from bq_assets.resources.google import ExportBigQueryResource, ExportGCSResource
from bq_assets.resources.source import DuckDBSourceResource

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
    """BigQuery on the local stack's bqemulator (REST and Storage Read gRPC)."""

    local_stack_dir: str = LOCAL_STACK_DIR
    # bqemulator refuses partition decorators (`table$20260131`: "Invalid table id for SQL")
    # but runs BEGIN TRANSACTION … COMMIT all or nothing: the same table, another way.
    partition_overwrite: Literal["decorator", "transaction"] = "transaction"

    def emulator(self) -> StackState:
        return read_state(Path(self.local_stack_dir))

    def unstorable(self, columns: list[tuple[str, str, str]]) -> list[str]:
        return emulator_cannot_store(columns)


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
