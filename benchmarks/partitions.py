"""One-day refresh vs full refresh of the same orders (issue 14).

``python benchmarks/partitions.py [--customers N]`` starts a local stack of its own in a temp
dir, generates the sample source (N customers, 3N orders over the year before today; not
timed) and declares two exports of the same query: the shipped ``unified_transactions``
(partitioned by New York day) and ``unified_transactions_full`` (the same query without the
window, unpartitioned: every run replaces the whole table). Each is materialized with all its
checks through ``dagster asset materialize``, the job's own executor in a run worker process of
its own, as a run launched from the UI is:

* full refresh: ``unified_transactions_full`` twice (the second, on an existing table, counts);
* one-day refresh: ``unified_transactions`` for the day before yesterday (creates the table,
  not counted), then for yesterday (counts): one day's orders into a table holding others.

It prints the wall time of each command and the rows each moved, and ends with::

    bench-partitions: full_refresh_s=<n> full_rows=<n> day_refresh_s=<n> day_rows=<n>
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.materialize import materialize as run_group  # noqa: E402
from bq_assets.exports import SHIPPED_EXPORTS_DIR, load_specs  # noqa: E402
from bq_assets.local import sample_data, stack  # noqa: E402
from bq_assets.stages.partitions import partitions_definition  # noqa: E402

PARTITIONED = "unified_transactions"
FULL = "unified_transactions_full"


def declare_exports(folder: Path) -> None:
    """The shipped partitioned export, and the same query unpartitioned beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".sql", ".yaml"):
        shutil.copy(SHIPPED_EXPORTS_DIR / f"{PARTITIONED}{suffix}", folder)
    sql = (SHIPPED_EXPORTS_DIR / f"{PARTITIONED}.sql").read_text()
    (folder / f"{FULL}.sql").write_text(re.sub(r"\nWHERE .*\$partition_end\n", "\n", sql))
    yaml = (SHIPPED_EXPORTS_DIR / f"{PARTITIONED}.yaml").read_text()
    yaml = re.sub(r"# One partition.*\n|partitioning:\n(  .*\n)+", "", yaml)
    yaml = yaml.replace("bigquery:\n", "bigquery:\n  partition_field: order_datetime\n")
    (folder / f"{FULL}.yaml").write_text(yaml)


def materialize(root: Path, home: Path, exports: Path, group: str, partition: str | None) -> float:
    wall = run_group(root, home, exports, group, partition)
    print(f"bench-partitions: {group} {partition or '(all)'}: {wall:.1f} s", flush=True)
    return wall


def bigquery_rows(home: Path, group: str) -> int:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["bigquery", group]))
        assert event is not None and event.asset_materialization is not None
        return int(event.asset_materialization.metadata["dagster/row_count"].value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-partitions-"))
    try:
        stack.up(root)
        sample_data.generate(root / "source.duckdb", args.customers)
        # The runs' source resource makes the sample again unless it has this size.
        os.environ["BQ_ASSETS_SAMPLE_ROWS"] = str(args.customers)
        home = root / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").touch()
        exports = root / "exports"
        declare_exports(exports)
        (spec,) = [s for s in load_specs(exports) if s.name == PARTITIONED]
        definition = partitions_definition(spec)
        assert definition is not None
        before, yesterday = definition.get_partition_keys(current_time=dt.datetime.now(dt.UTC))[-2:]

        materialize(root, home, exports, FULL, None)
        full_s = materialize(root, home, exports, FULL, None)
        full_rows = bigquery_rows(home, FULL)
        materialize(root, home, exports, PARTITIONED, before)
        day_s = materialize(root, home, exports, PARTITIONED, yesterday)
        day_rows = bigquery_rows(home, PARTITIONED)
        print(
            f"bench-partitions: full_refresh_s={full_s:.1f} full_rows={full_rows} "
            f"day_refresh_s={day_s:.1f} day_rows={day_rows}"
        )
    finally:
        stack.down(root)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
