"""The comparison every load makes before it publishes: the staging table holds exactly the rows
the manifest promises, in total and, for a partitioned export, per partition. Otherwise nothing
is published and the user's table stays as it was.

Pure engine code (no Dagster). Every load that publishes from a staging table calls
``refuse_unless_staged_as_promised`` between its load job and its publish: the unpartitioned
load (``bigquery_load.run_load``, a delivered export's too), the partitioned load
(``bigquery_partitions.run_partition_load``) and any later load that publishes a staging table.
The checks after publishing (``rows_match_manifest``) stay as the second line.
"""

from collections.abc import Mapping

from bq_assets.engine.manifest import MANIFEST, Manifest
from bq_assets.errors import BqAssetsError

#: At most this many partitions are named in the message (all are in the metadata).
SAMPLE = 5


class StagedRowsMismatchError(BqAssetsError):
    """The staging table does not hold what the manifest promises; nothing was published.

    Never retryable: a new attempt loads the same objects against the same manifest with the
    same job configuration, and a finished BigQuery load job's table is final, so it would count
    the same rows again. What needs fixing is the manifest or its objects.
    """


def staged_differences(
    manifest: Manifest,
    staged_rows: int,
    staged_rows_by_partition: Mapping[str, int] | None = None,
) -> list[str]:
    """How the staging table (``staged_rows``, and per partition when given) differs from what
    the manifest promises (its rows, its objects' rows, and its rows per partition when it has
    them), one readable line each; empty when it adds up. Read-only."""
    differences = []
    if staged_rows != manifest.rows:
        differences.append(
            f"the staging table holds {staged_rows} rows, the manifest promises {manifest.rows}"
        )
    objects_rows = sum(shard.rows for shard in manifest.shards)
    if objects_rows != manifest.rows:
        differences.append(
            f"the manifest's objects add up to {objects_rows} rows, its total says {manifest.rows}"
        )
    promised = manifest.rows_by_partition
    if promised is not None and staged_rows_by_partition is not None:
        for key in sorted(set(promised) | set(staged_rows_by_partition)):
            held, wanted = staged_rows_by_partition.get(key, 0), promised.get(key, 0)
            if held != wanted:
                differences.append(
                    f"partition {key}: the staging table holds {held} rows, the manifest "
                    f"promises {wanted}"
                )
    return differences


def refuse_unless_staged_as_promised(
    manifest: Manifest,
    staging_id: str,
    table_id: str,
    staged_rows: int,
    staged_rows_by_partition: Mapping[str, int] | None = None,
) -> None:
    """Raise ``StagedRowsMismatchError`` (naming both numbers of every difference) unless the
    staging table ``staging_id`` holds exactly what the manifest promises. Call it after the
    load job and before anything replaces or appends to ``table_id``. Read-only."""
    differences = staged_differences(manifest, staged_rows, staged_rows_by_partition)
    if not differences:
        return
    manifest_uri = manifest.prefix + MANIFEST
    shown = differences if len(differences) <= SAMPLE else [*differences[:SAMPLE], "…"]
    raise StagedRowsMismatchError(
        f"{staging_id} does not hold what {manifest_uri} promises: {'; '.join(shown)}. "
        f"Nothing was published: {table_id} keeps its previous data. A retry would load the "
        "same objects against the same manifest and count the same, so the step is not "
        "retried; materialize the step that wrote the manifest again (or find what changed "
        "its objects).",
        metadata={
            "staging_table": staging_id,
            "table": table_id,
            "manifest_uri": manifest_uri,
            "staged_rows": staged_rows,
            "manifest_rows": manifest.rows,
            "differences": differences,
        },
    )
