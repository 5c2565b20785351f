"""One shard of the snapshot as a file: CSV (optionally gzipped) or Parquet, written exactly the
way BigQuery reads it back."""

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bq_assets.engine.compression import GzipSink
from bq_assets.engine.manifest import FileFormat
from bq_assets.engine.snapshot import Snapshot, as_snapshot
from bq_assets.errors import BqAssetsError
from bq_assets.exports.targets import CsvOptions
from bq_assets.schema import csv_batch, csv_schema, parquet_batch, parquet_schema

CSV_BATCH_ROWS = 8_192  # rows pyarrow formats into one CSV buffer at a time
CONTENT_TYPES = {
    ".csv": "text/csv",
    ".csv.gz": "application/gzip",
    ".parquet": "application/vnd.apache.parquet",
}


class NullMarkerCollisionError(BqAssetsError):
    """A text value equals the CSV null marker, so BigQuery would load it as NULL."""


def object_suffix(file_format: FileFormat, options: CsvOptions) -> str:
    """The shards' file extension: ``.parquet``, ``.csv.gz`` or ``.csv``."""
    if file_format == "parquet":
        return ".parquet"
    return ".csv.gz" if options.compression == "gzip" else ".csv"


def _check_null_marker(batch: pa.RecordBatch, marker: str) -> None:
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        is_text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        if is_text and pc.any(pc.equal(column, marker)).as_py():
            raise NullMarkerCollisionError(
                f"column {name!r} holds the text {marker!r}, which is csv.null_marker: "
                "BigQuery would load it as NULL. Choose a null_marker that never occurs "
                "in the data, or use format: parquet."
            )


def write_csv(
    snapshot: "Path | Snapshot", start: int, end: int, destination: Path, options: CsvOptions
) -> int:
    """Write rows ``[start, end)`` of the snapshot as one CSV file; returns the rows written.

    Values are written the way BigQuery parses them back exactly (see ``schema.csv_schema``);
    text is always quoted, so an empty string (``""``) and NULL (an empty field, or the
    ``null_marker``) stay apart in the file. A text equal to a non-empty ``null_marker`` fails
    the export (``NullMarkerCollisionError``) rather than turning into NULL silently.
    Deterministic: the same rows and options always give the same bytes.
    """
    source = as_snapshot(snapshot)
    schema = csv_schema(source.schema)
    write_options = pacsv.WriteOptions(
        include_header=options.header,
        batch_size=CSV_BATCH_ROWS,
        delimiter=options.delimiter,
        null_string=options.null_marker,
        quoting_style="all_valid" if options.quote == "all" else "needed",
    )
    rows = 0
    with destination.open("wb") as raw:
        sink = GzipSink(raw, options.gzip_level) if options.compression == "gzip" else raw
        with pacsv.CSVWriter(sink, schema, write_options=write_options) as writer:
            for batch in source.batches(start, end):
                batch = csv_batch(batch, schema)
                if options.null_marker:
                    _check_null_marker(batch, options.null_marker)
                writer.write_batch(batch)
                rows += batch.num_rows
        sink.close()
    return rows


def write_parquet(snapshot: "Path | Snapshot", start: int, end: int, destination: Path) -> int:
    """Write rows ``[start, end)`` of the snapshot as one Parquet file; returns the rows written.

    Types are those BigQuery loads into the manifest's schema (see ``schema.parquet_schema``);
    Parquet keeps NULL and empty strings apart, and decimals, timestamps and dates exact.
    """
    source = as_snapshot(snapshot)
    schema = parquet_schema(source.schema)
    rows = 0
    with pq.ParquetWriter(
        destination,
        schema,
        compression="snappy",
        coerce_timestamps="us",
        allow_truncated_timestamps=False,
    ) as writer:
        for batch in source.batches(start, end):
            writer.write_batch(parquet_batch(batch, schema))
            rows += batch.num_rows
    return rows
