"""How a snapshot is cut into shards: evenly, at most ``csv.shard_rows`` rows each, and enough
of them that every core has work while finished shards upload."""

import math
import os

# A result is split across workers only when each shard gets at least this many rows; below
# that, another object costs more than the parallelism saves.
MIN_PARALLEL_SHARD_ROWS = 50_000


def shard_ranges(total_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """``[start, end)`` row ranges of the shards; an empty result is one (header-only) shard."""
    if total_rows == 0:
        return [(0, 0)]
    return [(s, min(s + shard_rows, total_rows)) for s in range(0, total_rows, shard_rows)]


def plan_shard_rows(total_rows: int, max_shard_rows: int, workers: int) -> int:
    """Rows per shard: at most ``max_shard_rows``, split evenly. While each shard still gets
    ``MIN_PARALLEL_SHARD_ROWS`` rows, there are at least two shards per worker, and a multiple
    of ``workers`` of them: every worker has the same work, and the first shards' uploads
    overlap with writing the last ones. Smaller results keep ``ceil(rows / max_shard_rows)``."""
    if total_rows == 0:
        return max_shard_rows
    shards = max(
        math.ceil(total_rows / max_shard_rows),
        min(2 * workers, total_rows // MIN_PARALLEL_SHARD_ROWS),
    )
    rounded = math.ceil(shards / workers) * workers
    if total_rows // rounded >= MIN_PARALLEL_SHARD_ROWS:
        shards = rounded
    return math.ceil(total_rows / shards)


def default_workers() -> int:
    """The cores this process may use (a container's CPU set, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 2
