"""An incremental (merge) run against a full refresh of the same customers (issue 26).

``python benchmarks/incremental.py [--customers N] [--changed 0.01]`` starts a local stack of its
own in a temp dir, generates the sample source (N customers; not timed) and declares two
exports of the same query: the shipped ``customer_360`` (a merge export: each run sends the
profiles whose ``updated_at`` moved and merges them by key) and ``customer_360_full`` (the same
query without its window: every run replaces the whole table). Each is materialized with all
its checks through ``dagster asset materialize``, the job's own executor in a run worker
process of its own, as a run launched from the UI is:

* full refresh: ``customer_360_full`` twice (the second, on an existing table, counts);
* incremental: ``customer_360`` once (the first load, from the beginning: not counted); then a
  fraction ``--changed`` of the profiles get a new lifetime value and ``updated_at`` (now),
  and ``customer_360`` runs again (counts): the changed rows merged into a table holding N.

For each counted run it prints the wall time, each step's time, the rows moved, the bytes each
hop wrote (snapshot, GCS objects), and BigQuery's bytes processed: as the job reported it (the
emulator reports 0 for every query), and as BigQuery would bill it on demand, computed from
its documented rules on the data (load and copy jobs are free; a MERGE with an UPDATE or
DELETE clause bills the bytes of the columns it reads in both tables plus the size of the
table it changes: https://cloud.google.com/bigquery/docs/reference/standard-sql/dml-syntax#on-demand_query_size_calculation;
sizes per type: https://cloud.google.com/bigquery/docs/storage_overview#data_type_sizes).
It ends with::

    bench-incremental: full_refresh_s=<n> full_rows=<n> full_billed_bytes=0
    incremental_s=<n> incremental_rows=<n> incremental_billed_bytes=<n> ...
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402
import duckdb  # noqa: E402

from benchmarks.materialize import materialize as run_group  # noqa: E402
from bq_assets.exports import SHIPPED_EXPORTS_DIR  # noqa: E402
from bq_assets.local import sample_data, stack  # noqa: E402

MERGED = "customer_360"
FULL = "customer_360_full"
DATASET = "amperity_exports"
#: BigQuery's logical size of a value of each type, in bytes (STRING and BYTES: 2 + length).
TYPE_BYTES = {
    "INTEGER": 8, "INT64": 8, "FLOAT": 8, "FLOAT64": 8, "NUMERIC": 16, "BIGNUMERIC": 32,
    "BOOLEAN": 1, "BOOL": 1, "DATE": 8, "DATETIME": 8, "TIME": 8, "TIMESTAMP": 8,
}  # fmt: skip


def declare_exports(folder: Path) -> None:
    """The shipped merge export, and the same query as a full refresh beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".sql", ".yaml"):
        shutil.copy(SHIPPED_EXPORTS_DIR / f"{MERGED}{suffix}", folder)
    sql = (SHIPPED_EXPORTS_DIR / f"{MERGED}.sql").read_text()
    (folder / f"{FULL}.sql").write_text(re.sub(r"\nWHERE .*\$cursor_end\n", "\n", sql))
    yaml = (SHIPPED_EXPORTS_DIR / f"{MERGED}.yaml").read_text()
    (folder / f"{FULL}.yaml").write_text(re.sub(r"(# .*\n)*load:\n(  .*\n)+", "", yaml))


def materialize(root: Path, home: Path, exports: Path, export: str, customers: int) -> float:
    wall = run_group(root, home, exports, export, env={"BQ_ASSETS_SAMPLE_ROWS": str(customers)})
    print(f"bench-incremental: {export}: {wall:.1f} s", flush=True)
    return wall


def change_customers(database: Path, fraction: float) -> int:
    """Give ``fraction`` of the profiles a new lifetime value and ``updated_at`` (now)."""
    every = max(1, round(1 / fraction))
    with duckdb.connect(str(database)) as con:
        con.execute(
            "UPDATE customer_360 SET lifetime_value = lifetime_value + 1, "
            f"updated_at = get_current_timestamp() WHERE hash(amperity_id) % {every} = 0"
        )
        (changed,) = con.execute(
            "SELECT count(*) FROM customer_360 WHERE updated_at > now() - INTERVAL 1 HOUR"
        ).fetchone()
    return int(changed)


def latest(home: Path, export: str) -> tuple[dict[str, dict], dict[str, float]]:
    """The latest run's materialization metadata per hop, and each step's seconds."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        metadata = {}
        for hop in ("query", "gcs", "bigquery", "databricks"):
            event = instance.get_latest_materialization_event(dg.AssetKey([hop, export]))
            assert event is not None and event.asset_materialization is not None
            metadata[hop] = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        run_id = event.run_id
        steps = {}
        for record in instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.STEP_SUCCESS
        ).records:
            entry = record.event_log_entry
            assert entry.dagster_event is not None
            steps[entry.step_key] = entry.dagster_event.step_success_data.duration_ms / 1000
    return metadata, steps


def logical_bytes(
    root: Path, table_id: str, columns: list[str] | None = None, where: str = "TRUE"
) -> int:
    """The size of ``columns`` (default: all) of the table's rows ``where`` as BigQuery bills
    it: its documented size per type, a NULL counting 0."""
    from bq_assets.settings import local_resources

    bigquery = local_resources(root)["bigquery"]
    with bigquery.get_client() as client:
        fields = [f for f in client.get_table(table_id).schema if not columns or f.name in columns]
        sizes = [
            f"SUM(IF(`{f.name}` IS NULL, 0, 2 + BYTE_LENGTH(`{f.name}`)))"
            if f.field_type in ("STRING", "BYTES")
            else f"COUNT(`{f.name}`) * {TYPE_BYTES[f.field_type]}"
            for f in fields
        ]
        (row,) = client.query(
            f"SELECT {' + '.join(sizes)} FROM `{table_id}` WHERE {where}"
        ).result()
    return int(row[0] or 0)


def billed_estimate(root: Path, table_id: str, bigquery: dict, before: int) -> int:
    """What BigQuery would bill for the incremental run's query jobs, on demand: the MERGE
    (q + t: the staging table's columns and the table's key columns it reads, plus the size of
    the table it changes) and the plan (the key columns of both). The window's rows are read
    back from the table (the staging table is gone), by the run's own window."""
    key = ["amperity_id"]
    window = (
        f"updated_at >= TIMESTAMP '{bigquery['cursor_start']}' "
        f"AND updated_at < TIMESTAMP '{bigquery['cursor_end']}'"
    )
    staged = logical_bytes(root, table_id, where=window)
    staged_keys = logical_bytes(root, table_id, key, where=window)
    table_keys = logical_bytes(root, table_id, key)
    return (staged + table_keys + before) + (staged_keys + table_keys)


def report(name: str, wall: float, export: str, metadata: dict, steps: dict[str, float]) -> str:
    query, gcs, bigquery = metadata["query"], metadata["gcs"], metadata["bigquery"]
    hops = ", ".join(
        f"{hop} {steps.get(f'{hop}__{export}', 0):.1f} s"
        for hop in ("query", "gcs", "bigquery", "databricks")
    )
    checks = sum(
        seconds
        for step, seconds in steps.items()
        if any(
            step.startswith(f"{hop}__{export}_")
            for hop in ("query", "gcs", "bigquery", "databricks")
        )
    )
    return (
        f"bench-incremental: {name}: {wall:.1f} s wall ({hops}; checks {checks:.1f} s in all), "
        f"{query['dagster/row_count']:,} rows moved, snapshot {query['bytes']:,} B, GCS objects "
        f"{gcs['bytes']:,} B, table {bigquery['dagster/row_count']:,} rows"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of rows changed")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    try:
        state = stack.up(root)
        database = root / "source.duckdb"
        sample_data.generate(database, args.customers, transactions=False)
        home = root / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").touch()
        exports = root / "exports"
        declare_exports(exports)
        table_id = f"{state.project}.{DATASET}.{MERGED}"

        materialize(root, home, exports, FULL, args.customers)
        full_s = materialize(root, home, exports, FULL, args.customers)
        full, full_steps = latest(home, FULL)
        print(report("full refresh", full_s, FULL, full, full_steps), flush=True)

        materialize(root, home, exports, MERGED, args.customers)
        changed = change_customers(database, args.changed)
        print(f"bench-incremental: {changed:,} of {args.customers:,} profiles changed", flush=True)
        before = logical_bytes(root, table_id)
        incremental_s = materialize(root, home, exports, MERGED, args.customers)
        merged, merged_steps = latest(home, MERGED)
        print(report("incremental", incremental_s, MERGED, merged, merged_steps), flush=True)
        bq = merged["bigquery"]
        billed = billed_estimate(root, table_id, bq, before)
        print(
            f"bench-incremental: full_refresh_s={full_s:.1f} "
            f"full_rows={full['query']['dagster/row_count']} "
            f"full_gcs_bytes={full['gcs']['bytes']} full_billed_bytes=0 "
            f"incremental_s={incremental_s:.1f} "
            f"incremental_rows={merged['query']['dagster/row_count']} "
            f"incremental_gcs_bytes={merged['gcs']['bytes']} "
            f"incremental_reported_bytes={bq['merge_bytes_processed']} "
            f"incremental_billed_bytes_estimate={billed} table_billed_bytes={before} "
            f"merged={bq['merge_inserted']}/{bq['merge_updated']}/{bq['merge_deleted']}"
        )
    finally:
        stack.down(root)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
