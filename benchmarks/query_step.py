"""The query step's peak memory and PostgreSQL throughput, for ``make bench`` (issue 13).

Each measurement runs the real query step (``DuckDBSourceResource.snapshot``, DuckDB → Parquet
snapshot with the resource's memory_limit / threads / temp_directory) in a fresh subprocess, so
the peak RSS (``VmHWM``) is the query step's alone. Functions the bench can call:

* ``query_step(database, rows, source=None)`` → ``{"seconds", "rss_mb", "rows"}``: the shipped
  ``customer_360`` query on a sample DuckDB file (``source=None``) or on a PostgreSQL source
  (``source=PostgresSource(...)``);
* ``postgres_copy_rows_per_s(dsn, table)``: PostgreSQL's own ``COPY (SELECT …) TO STDOUT`` on
  the same table, the yardstick for ``pg_rows_per_s``;
* ``load_postgres(dsn, database)``: copy the sample's ``customer_360`` into PostgreSQL.

Standalone (generates the samples, starts a PostgreSQL of its own, prints the closing line)::

    python -m benchmarks.query_step --rows 1000000 10000000 --pg-rows 1000000

    query_step: rss_mb_query_1m=<n> rss_mb_query_10m=<n> pg_rows_per_s=<n> pg_copy_rows_per_s=<n>

To add the figures to ``benchmarks/export_step.py``'s closing line, call ``query_step`` for the 1M and 10M
databases the bench already generates, and ``load_postgres`` + ``query_step(..., source=…)`` +
``postgres_copy_rows_per_s`` once on a PostgreSQL started with ``bq_assets_tests.postgres``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class PostgresSource:
    """A PostgreSQL the query step reads (the password goes through the environment)."""

    host: str
    port: int
    database: str
    user: str
    password: str


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(args: dict) -> dict:
    """In the subprocess: one query step, timed, with this process's peak RSS."""
    import dagster as dg

    from bq_assets.exports import SHIPPED_EXPORTS_DIR, load_specs
    from bq_assets.resources.source import DuckDBSourceResource, SourceDeclaration

    spec = next(s for s in load_specs(SHIPPED_EXPORTS_DIR) if s.name == "customer_360")
    declarations, source_name = [], "default"
    if args.get("postgres"):
        pg = args["postgres"]
        os.environ["BQ_ASSETS_SOURCE_BENCH_PASSWORD"] = pg["password"]
        declarations = [
            SourceDeclaration(
                name="bench",
                kind="postgres",
                host=pg["host"],
                port=pg["port"],
                database=pg["database"],
                user=pg["user"],
                password=dg.EnvVar("BQ_ASSETS_SOURCE_BENCH_PASSWORD"),
            )
        ]
        source_name = "bench"
    settings = {k: v for k, v in args.get("settings", {}).items() if v is not None}
    source = DuckDBSourceResource(
        database=args["database"], staging_dir=args["scratch"], sources=declarations, **settings
    )
    started = time.perf_counter()
    footer = source.snapshot(spec.sql, spec.sql_file, Path(args["snapshot"]), source_name)
    return {
        "seconds": time.perf_counter() - started,
        "rss_mb": _peak_rss_mb(),
        "rows": footer.num_rows,
    }


def query_step(
    database: Path,
    source: PostgresSource | None = None,
    settings: dict | None = None,
) -> dict:
    """Run the query step once in a fresh process: ``{"seconds", "rss_mb", "rows"}``.
    ``settings`` overrides the resource's memory_limit / threads / temp_directory."""
    with tempfile.TemporaryDirectory(prefix="query-step-") as scratch:
        args = {
            "database": str(database),
            "scratch": scratch,
            "snapshot": str(Path(scratch) / "snapshot.parquet"),
            "postgres": asdict(source) if source else None,
            "settings": settings or {},
        }
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.query_step", "--child", json.dumps(args)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"query step failed: {done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def load_postgres(dsn: str, database: Path) -> int:
    """Copy ``customer_360`` of the sample DuckDB ``database`` into PostgreSQL; its row count."""
    import duckdb

    from bq_assets.sources import load_extension

    with duckdb.connect() as con:
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        load_extension(con, "postgres_scanner")
        con.execute(f"ATTACH '{database}' AS sample (READ_ONLY)")
        con.execute(f"ATTACH '{dsn}' AS pg (TYPE postgres)")
        con.execute("DROP TABLE IF EXISTS pg.public.customer_360")
        con.execute("CREATE TABLE pg.public.customer_360 AS FROM sample.main.customer_360")
        (rows,) = con.execute("SELECT count(*) FROM sample.main.customer_360").fetchone()
    return int(rows)


class _Sink:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: str | bytes) -> int:
        self.bytes += len(data)
        return len(data)


def postgres_copy_rows_per_s(dsn: str, table: str = "customer_360") -> float:
    """Rows per second of PostgreSQL's ``COPY (SELECT * FROM table) TO STDOUT`` (to nowhere)."""
    import psycopg2

    con = psycopg2.connect(dsn)
    try:
        with con.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {table}")
            (rows,) = cursor.fetchone()
            started = time.perf_counter()
            cursor.copy_expert(f"COPY (SELECT * FROM {table}) TO STDOUT", _Sink())
            return rows / (time.perf_counter() - started)
    finally:
        con.close()


def _label(rows: int) -> str:
    return f"{rows // 1_000_000}m" if rows % 1_000_000 == 0 else str(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--pg-rows", type=int, default=1_000_000, help="0: skip PostgreSQL")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    from bq_assets.local import sample_data

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="query-step-bench-"))
    figures: dict[str, float] = {}
    databases = {}
    for rows in sorted(set(args.rows) | ({args.pg_rows} if args.pg_rows else set())):
        databases[rows] = sample_data.generate(
            work / f"sample_{rows}.duckdb", rows, transactions=False
        )
    for rows in args.rows:
        result = query_step(databases[rows])
        print(f"duckdb {rows:>11,} rows: {result['seconds']:7.2f} s  {result['rss_mb']:7.0f} MB")
        figures[f"rss_mb_query_{_label(rows)}"] = round(result["rss_mb"])
    if args.pg_rows:
        from bq_assets_tests.postgres import PostgresServer

        server = PostgresServer().start()
        try:
            load_postgres(server.dsn(), databases[args.pg_rows])
            pg = PostgresSource(
                server.host, server.port, server.database, server.user, server.password
            )
            result = query_step(databases[args.pg_rows], source=pg)
            copy_rate = postgres_copy_rows_per_s(server.dsn())
        finally:
            server.stop()
        rate = result["rows"] / result["seconds"]
        print(
            f"postgres {args.pg_rows:>9,} rows: {result['seconds']:7.2f} s  "
            f"{result['rss_mb']:7.0f} MB  {rate:,.0f} rows/s (COPY TO STDOUT {copy_rate:,.0f})"
        )
        figures["pg_rss_mb"] = round(result["rss_mb"])
        figures["pg_rows_per_s"] = round(rate)
        figures["pg_copy_rows_per_s"] = round(copy_rate)
    print("query_step: " + " ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
