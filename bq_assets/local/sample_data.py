"""Deterministic Amperity-style sample source: a DuckDB database with ``customer_360`` and
``unified_transactions``.

Every value is a pure function of the row number (and, for order times, of the day the sample
is generated: orders go back a year from that day's midnight UTC, the newest first, so a daily
partitioned export's latest days hold orders), so the same size on the same day always gives
the same database, byte for byte in content. The data deliberately contains what breaks naive CSV:
commas, quotes and apostrophes in names and addresses, non-ASCII names, NULL emails and
phones, and empty strings.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import pwd
from pathlib import Path

import duckdb

from bq_assets.errors import BqAssetsError

DEFAULT_SAMPLE_ROWS = 1_000

_GIVEN = [
    "Ana",
    "José",
    "Zoë",
    "Liam",
    "Mei",
    "Noah",
    "Olivia",
    "Søren",
    "Aisha",
    "Chloé",
    "Dmitri",
    "李",
]
_SURNAMES = [
    "Smith",
    "O'Brien",
    "García",
    "Nguyen",
    "Müller",
    "Smith, Jr.",
    "Kowalski",
    "Chen",
    "Dubois",
    "Patel",
]
_STREETS = ["Main St", "Oak Ave", "Pine Rd, Apt 4", 'Elm "Old" Way', "Market St", "Rue de l'Église"]
_CITIES = [
    ("Seattle", "WA"),
    ("Portland", "OR"),
    ("Austin", "TX"),
    ("Boston", "MA"),
    ("Denver", "CO"),
]
_CATEGORIES = ["apparel", "footwear", "accessories", "home", "beauty"]
_STORES = ["online", "SEA-01", "PDX-02", "AUS-03", "BOS-04"]


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _customer_sql(rows: int) -> str:
    cities = _sql_list([c for c, _ in _CITIES])
    states = _sql_list([s for _, s in _CITIES])
    return f"""
    CREATE OR REPLACE TABLE customer_360 AS
    WITH n AS (SELECT range AS i FROM range({rows}))
    SELECT
        format('{{}}-{{}}-{{}}-{{}}-{{}}', m[1:8], m[9:12], m[13:16], m[17:20], m[21:32]) AS amperity_id,
        {_sql_list(_GIVEN)}[1 + (i * 7) % {len(_GIVEN)}] AS given_name,
        {_sql_list(_SURNAMES)}[1 + (i * 11) % {len(_SURNAMES)}] AS surname,
        CASE WHEN i % 17 = 0 THEN NULL
             WHEN i % 53 = 0 THEN ''
             ELSE 'customer' || i || '@example.com' END AS email,
        CASE WHEN i % 13 = 0 THEN NULL
             ELSE '+1-206-555-' || lpad(((i * 37) % 10000)::VARCHAR, 4, '0') END AS phone,
        ((i * 31) % 9000 + 100)::VARCHAR || ' ' || {_sql_list(_STREETS)}[1 + (i * 3) % {len(_STREETS)}]
            AS address,
        {cities}[1 + (i * 5) % {len(_CITIES)}] AS city,
        {states}[1 + (i * 5) % {len(_CITIES)}] AS state,
        lpad(((i * 97) % 99999)::VARCHAR, 5, '0') AS postal_code,
        CASE WHEN i % 29 = 0 THEN NULL
             ELSE DATE '1940-01-01' + ((i * 7919) % 25000)::INTEGER END AS birthdate,
        (((i * 104729) % 5000000) / 100.0)::DECIMAL(18, 2) AS lifetime_value,
        ((i * 13) % 60)::INTEGER AS order_count,
        (i % 3 = 0) AS is_subscribed,
        TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds((i * 7901) % 31536000) AS updated_at
    FROM (SELECT i, md5('amperity-' || i::VARCHAR) AS m FROM n)
    """


def _transactions_sql(customers: int) -> str:
    return f"""
    CREATE OR REPLACE TABLE unified_transactions AS
    WITH t AS (SELECT range AS j FROM range({customers * 3}))
    SELECT
        'ORD-' || lpad(j::VARCHAR, 10, '0') AS order_id,
        c.amperity_id,
        date_trunc('day', get_current_timestamp()) - to_seconds(1 + (j * 6007) % 31536000)
            AS order_datetime,
        {_sql_list(_STORES)}[1 + (j * 3) % {len(_STORES)}] AS store_id,
        {_sql_list(_CATEGORIES)}[1 + (j * 7) % {len(_CATEGORIES)}] AS product_category,
        (1 + (j * 11) % 5)::INTEGER AS quantity,
        (((j * 7877) % 50000) / 100.0 + 1)::DECIMAL(12, 2) AS order_amount,
        'USD' AS currency
    FROM t
    JOIN (SELECT amperity_id, row_number() OVER (ORDER BY amperity_id) - 1 AS k FROM customer_360) c
      ON c.k = (t.j * 7) % {customers}
    """


def generate(path: Path, rows: int = DEFAULT_SAMPLE_ROWS, transactions: bool = True) -> Path:
    """Write the sample database to ``path`` (replacing it) with ``rows`` customers and, unless
    ``transactions`` is false (benchmarks need only ``customer_360``), 3x transactions."""
    if rows < 1:
        raise ValueError(f"sample size must be at least 1 customer, got {rows}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with duckdb.connect(str(tmp)) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(_customer_sql(rows))
        if transactions:
            con.execute(_transactions_sql(rows))
        con.execute(
            "CREATE TABLE sample_info AS SELECT ?::DATE AS generated_on, ?::BIGINT AS customers",
            [_today(), rows],
        )
        con.execute("CHECKPOINT")
    os.replace(tmp, path)
    return path


def _today() -> dt.date:
    """The day order times are counted back from (midnight UTC, as ``_transactions_sql``)."""
    return dt.datetime.now(dt.UTC).date()


def _is_current(path: Path, rows: int) -> bool:
    """Was the sample at ``path`` generated today, with ``rows`` customers? A sample from another
    day has no orders in the latest partitions of a partitioned export, so it is made again."""
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            info = con.execute("SELECT generated_on, customers FROM sample_info").fetchone()
    except duckdb.Error:
        return False
    return info == (_today(), rows)


class NotTheSampleError(BqAssetsError):
    """Something other than the generated sample sits where the sample belongs: it is someone's
    own file, and the sample generator leaves it alone."""


def _is_sample(path: Path) -> bool:
    """Was the file at ``path`` written by ``generate`` (it holds ``sample_info`` with the
    columns ``generate`` writes)? Anything else, a database without that table or a file that
    is not a DuckDB database, is not the sample's to replace. Read-only."""
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            columns = con.execute(
                "SELECT column_name FROM duckdb_columns() "
                "WHERE table_name = 'sample_info' AND schema_name = 'main'"
            ).fetchall()
    except duckdb.Error:
        return False
    return {name for (name,) in columns} == {"generated_on", "customers"}


def _owner_of(path: Path) -> str:
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except KeyError:
        return f"uid {path.stat().st_uid}"


def not_the_sample(path: Path) -> NotTheSampleError:
    """The one message for a file of someone's own where the sample belongs."""
    modified = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M")
    return NotTheSampleError(
        f"{path} is not the generated sample (it has no sample_info table): it is a file of "
        f"your own (owner {_owner_of(path)}, modified {modified} UTC), so it was left as it "
        "is and no sample was written over it. To export from it, make it the default source "
        f"(BQ_ASSETS_SOURCE_DATABASE={path}), or move it elsewhere and declare it as a further "
        "source (BQ_ASSETS_SOURCES=mine, BQ_ASSETS_SOURCE_MINE_KIND=duckdb, "
        "BQ_ASSETS_SOURCE_MINE_PATH=<its new path>, and `source: mine` in the export's YAML; "
        'docs/exports.md, "Sources"), which lets the sample be generated here again.'
    )


def is_current(path: Path, rows: int = DEFAULT_SAMPLE_ROWS) -> bool:
    """Is the sample at ``path`` today's, of ``rows`` customers (so ``ensure`` keeps it)?"""
    return path.exists() and _is_current(path, rows)


#: The customers ``change_customers`` updates, and the ids of those it adds.
CHANGED_CUSTOMERS = 10
ADDED_CUSTOMERS = ("demo-added-0001", "demo-added-0002")


def change_customers(path: Path) -> int:
    """Change the sample as a day of Amperity's work would: the first ``CHANGED_CUSTOMERS``
    profiles (by id) get a new lifetime value, order count and ``updated_at`` (now), and the
    profiles ``ADDED_CUSTOMERS`` appear (again, if an earlier change added them). The same
    profiles every time, so what a merge export's table holds stays what the sample holds.
    Returns the rows changed or added."""
    with duckdb.connect(str(path)) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(
            "UPDATE customer_360 SET lifetime_value = lifetime_value + 1, "
            "order_count = order_count + 1, updated_at = get_current_timestamp() "
            "WHERE amperity_id IN (SELECT amperity_id FROM customer_360 "
            f"WHERE amperity_id NOT LIKE 'demo-%' ORDER BY amperity_id LIMIT {CHANGED_CUSTOMERS})"
        )
        con.execute("DELETE FROM customer_360 WHERE amperity_id IN ?", [list(ADDED_CUSTOMERS)])
        for number, amperity_id in enumerate(ADDED_CUSTOMERS, start=1):
            con.execute(
                "INSERT INTO customer_360 SELECT ?, 'Ana', 'Demo', ?, NULL, '1 Main St', "
                "'Seattle', 'WA', '98101', NULL, 0.00, 0, true, get_current_timestamp()",
                [amperity_id, f"demo{number}@example.com"],
            )
        con.execute("CHECKPOINT")
    return CHANGED_CUSTOMERS + len(ADDED_CUSTOMERS)


def ensure(path: Path, rows: int = DEFAULT_SAMPLE_ROWS) -> Path:
    """The sample database at ``path``: generated on first use, and again when it is from
    another day or of another size (``BQ_ASSETS_SAMPLE_ROWS``); otherwise left as it is. A
    file at ``path`` that the generator did not make is never replaced: ``NotTheSampleError``
    says whose it is and how to declare it as a source.

    Safe when several step processes ask at once (the multiprocess executor runs the exports'
    query steps side by side): one generates it under a file lock, the others wait for it, and
    a step still reading the previous file keeps reading it (the new one replaces it whole).
    """
    if path.exists() and _is_current(path, rows):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and not _is_sample(path):
            raise not_the_sample(path)
        if not (path.exists() and _is_current(path, rows)):
            generate(path, rows)
    return path
