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

    bench: rss_mb_query_1m=<n> rss_mb_query_10m=<n> pg_rows_per_s=<n> pg_over_copy=<r>

``pg_over_copy`` is ``pg_rows_per_s`` over PostgreSQL's own ``COPY (SELECT …) TO STDOUT`` rate on
the same table in the same run (best of two). ``--join FILE`` prefixes the closing line with the
last line of FILE: ``make bench`` joins the export-hop benchmark's, and ``benchmarks/e2e.py
--join`` then joins this one's. Targets: the query step ≤ 1 GB at 10M rows and within 25% of its
1M figure; ``pg_over_copy`` ≥ 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


TARGET_RSS_MB = 1024
TARGET_RSS_GROWTH = 0.25
TARGET_PG_OVER_COPY = 0.5


def targets(figures: dict[str, float]) -> list[str]:
    """One line per target, met or not (figures that were not measured are skipped)."""
    verdict = {True: "met", False: "NOT met"}
    load = os.getloadavg()
    lines = [
        f"(load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on "
        f"{os.cpu_count()} cores; other load stretches wall times, rerun if it was high)"
    ]
    small, large = figures.get("rss_mb_query_1m"), figures.get("rss_mb_query_10m")
    if small and large:
        growth = large / small - 1
        met = large <= TARGET_RSS_MB and abs(growth) <= TARGET_RSS_GROWTH
        lines.append(
            f"query step peak RSS: {small:.0f} MB at 1M, {large:.0f} MB at 10M ({growth:+.0%}; "
            f"target ≤ {TARGET_RSS_MB} MB and within {TARGET_RSS_GROWTH:.0%}: {verdict[met]})"
        )
    if "pg_over_copy" in figures:
        ratio = figures["pg_over_copy"]
        lines.append(
            f"query step from PostgreSQL / COPY TO STDOUT: {ratio:.2f} "
            f"(target ≥ {TARGET_PG_OVER_COPY}: {verdict[ratio >= TARGET_PG_OVER_COPY]})"
        )
    return lines


def joined_prefix(path: Path | None) -> str:
    """The last line of ``path`` without its ``bench: `` label, and a space (or nothing)."""
    if path is None or not path.exists():
        return ""
    lines = path.read_text().strip().splitlines()
    return (lines[-1].removeprefix("bench: ") + " ") if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--pg-rows", type=int, default=1_000_000, help="0: skip PostgreSQL")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument(
        "--join", type=Path, help="prefix the closing line with this file's last line"
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    from bq_assets.local import sample_data

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="query-step-bench-"))
    figures: dict[str, float] = {}
    databases = {}
    try:
        for rows in sorted(set(args.rows) | ({args.pg_rows} if args.pg_rows else set())):
            databases[rows] = sample_data.generate(
                work / f"sample_{rows}.duckdb", rows, transactions=False
            )
        for rows in args.rows:
            result = query_step(databases[rows])
            print(
                f"duckdb {rows:>11,} rows: {result['seconds']:7.2f} s  {result['rss_mb']:7.0f} MB",
                flush=True,
            )
            figures[f"rss_mb_query_{_label(rows)}"] = round(result["rss_mb"])
        if args.pg_rows:
            figures.update(_postgres_figures(databases[args.pg_rows], args.pg_rows))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + "\n".join(targets(figures)))
    closing = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"\nbench: {joined_prefix(args.join)}{closing}")


def _postgres_figures(database: Path, rows: int) -> dict[str, float]:
    """The query step from a PostgreSQL holding ``database``'s customer_360, and PostgreSQL's
    own COPY TO STDOUT on the same table: each the best of two runs, on a warm cache."""
    from bq_assets_tests.postgres import PostgresServer

    server = PostgresServer().start()
    try:
        load_postgres(server.dsn(), database)
        server.execute("VACUUM ANALYZE customer_360")
        pg = PostgresSource(server.host, server.port, server.database, server.user, server.password)
        postgres_copy_rows_per_s(server.dsn())  # warm the cache for both
        result = min(
            (query_step(database, source=pg) for _ in range(2)), key=lambda r: r["seconds"]
        )
        copy_rate = max(postgres_copy_rows_per_s(server.dsn()) for _ in range(2))
    finally:
        server.stop()
    rate = result["rows"] / result["seconds"]
    print(
        f"postgres {rows:>9,} rows: {result['seconds']:7.2f} s  {result['rss_mb']:7.0f} MB  "
        f"{rate:,.0f} rows/s (COPY TO STDOUT {copy_rate:,.0f})",
        flush=True,
    )
    return {
        "pg_rss_mb": round(result["rss_mb"]),
        "pg_rows_per_s": round(rate),
        "pg_copy_rows_per_s": round(copy_rate),
        "pg_over_copy": round(rate / copy_rate, 2),
    }


if __name__ == "__main__":
    main()
