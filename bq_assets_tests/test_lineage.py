"""Column lineage read from an export's SQL alone (``bq_assets/exports/lineage.py``): for each
query, every table it reads and, for each result column, the source columns it comes from;
what the SQL leaves open is listed as unresolved, never guessed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bq_assets.exports import SHIPPED_EXPORTS_DIR
from bq_assets.exports.lineage import (
    ColumnLineage,
    SourceColumn,
    SourceTable,
    query_lineage,
    select_lineage,
)
from bq_assets.exports.source_names import (
    SourcePlace,
    delivery_key_path,
    path_uri,
    table_key_path,
    table_name,
)


def sources(lineage: ColumnLineage) -> set[str]:
    return {str(s) for s in lineage.sources}


def traced(sql: str) -> dict[str, set[str]]:
    """Each result column → its source columns as ``table.column``; asserts none unresolved."""
    found = query_lineage(sql)
    assert found.problems() == []
    return {name: sources(column) for name, column in found.columns.items()}


# (what the query shows, SQL, each result column → its source columns)
RESOLVED = [
    (
        "plain columns and an alias",
        "SELECT id, email AS contact FROM customers",
        {"id": {"customers.id"}, "contact": {"customers.email"}},
    ),
    (
        "a join through aliases, and USING",
        "SELECT c.id, c.email, o.total AS order_total FROM crm.customers AS c "
        "JOIN sales.orders o USING (id)",
        {
            "id": {"crm.customers.id"},
            "email": {"crm.customers.email"},
            "order_total": {"sales.orders.total"},
        },
    ),
    (
        "CTEs that rename, one reading another",
        "WITH base AS (SELECT id AS customer_id, lower(email_address) AS mail FROM customers), "
        "named AS (SELECT customer_id, mail AS email FROM base) "
        "SELECT customer_id, email FROM named",
        {"customer_id": {"customers.id"}, "email": {"customers.email_address"}},
    ),
    (
        "CASE over columns of two tables",
        "SELECT CASE WHEN c.vip THEN 'gold' WHEN o.total > 100 THEN o.tier ELSE 'none' END "
        "AS tier FROM customers c LEFT JOIN orders o ON o.customer_id = c.id",
        {"tier": {"customers.vip", "orders.total", "orders.tier"}},
    ),
    (
        "window functions: the partition and order columns count",
        "SELECT id, row_number() OVER (PARTITION BY region ORDER BY created_at) AS rank_in_region, "
        "sum(amount) OVER (PARTITION BY region) AS region_total FROM sales",
        {
            "id": {"sales.id"},
            "rank_in_region": {"sales.region", "sales.created_at"},
            "region_total": {"sales.amount", "sales.region"},
        },
    ),
    (
        "aggregates over a join, grouped",
        "SELECT c.id, count(o.id) AS orders, coalesce(sum(o.amount), 0)::DECIMAL(18, 2) AS spend, "
        "max(o.ordered_at) AS last_order FROM customers c LEFT JOIN orders o "
        "ON o.customer_id = c.id GROUP BY c.id",
        {
            "id": {"customers.id"},
            "orders": {"orders.id"},
            "spend": {"orders.amount"},
            "last_order": {"orders.ordered_at"},
        },
    ),
    (
        "a subquery in FROM, and a filter on another table (read, but no column comes from it)",
        "SELECT s.id, s.latest FROM (SELECT id, max(seen_at) AS latest FROM visits GROUP BY id) s "
        "WHERE s.id NOT IN (SELECT id FROM banned)",
        {"id": {"visits.id"}, "latest": {"visits.seen_at"}},
    ),
    (
        "UNION ALL: a column comes from both branches",
        "SELECT id, email FROM customers UNION ALL SELECT id, mail FROM leads",
        {"id": {"customers.id", "leads.id"}, "email": {"customers.email", "leads.mail"}},
    ),
    (
        "constants, count(*) and the partition window: computed from no source column",
        "SELECT 'v1' AS version, count(*) AS n, $partition_start AS window_start, "
        "current_date AS today FROM orders",
        {"version": set(), "n": set(), "window_start": set(), "today": set()},
    ),
    (
        "SELECT * over one table in a CTE: a column of that name can only be the table's",
        "WITH latest AS (SELECT * FROM customers) SELECT id, email FROM latest",
        {"id": {"customers.id"}, "email": {"customers.email"}},
    ),
    (
        "QUALIFY and GROUP BY ALL (DuckDB)",
        "SELECT region, sum(v) AS total FROM t GROUP BY ALL QUALIFY total > 0",
        {"region": {"t.region"}, "total": {"t.v"}},
    ),
]


@pytest.mark.parametrize(("what", "sql", "expected"), RESOLVED, ids=[r[0] for r in RESOLVED])
def test_each_result_column_is_traced_to_its_source_columns(
    what: str, sql: str, expected: dict[str, set[str]]
) -> None:
    assert traced(sql) == expected


def test_every_table_a_query_reads_is_found_once_and_cte_names_are_not_tables() -> None:
    found = query_lineage(
        "WITH recent AS (SELECT id FROM sales.orders WHERE ts > now() - INTERVAL 1 DAY) "
        "SELECT r.id, c.email FROM recent r JOIN customers c ON c.id = r.id "
        "WHERE EXISTS (SELECT 1 FROM sales.orders o WHERE o.id = r.id) "
        "AND c.id NOT IN (SELECT id FROM banned)"
    )
    assert found.tables == (
        SourceTable("banned"),
        SourceTable("customers"),
        SourceTable("orders", schema="sales"),
    )


def test_files_read_by_path_are_sources_each_path_its_own() -> None:
    found = query_lineage(
        "SELECT p.id, p.amount, c.city FROM read_parquet(['gs://lake/a/*.parquet', "
        "'gs://lake/b/*.parquet']) AS p JOIN read_csv('/data/cities.csv', header = true) AS c "
        "ON c.id = p.id JOIN 'gs://lake/extra.parquet' AS e ON e.id = p.id"
    )
    a, b = (
        SourceTable("gs://lake/a/*.parquet", is_path=True),
        SourceTable("gs://lake/b/*.parquet", is_path=True),
    )
    cities = SourceTable("/data/cities.csv", is_path=True)
    assert set(found.tables) == {a, b, cities, SourceTable("gs://lake/extra.parquet", is_path=True)}
    assert found.columns["amount"].sources == (SourceColumn(a, "amount"), SourceColumn(b, "amount"))
    assert found.columns["city"].sources == (SourceColumn(cities, "city"),)
    assert found.problems() == []


@pytest.mark.parametrize(
    "reader",
    [
        "delta_scan('/data/orders_delta')",
        "iceberg_scan('/data/t/metadata/v3.metadata.json', allow_moved_paths = true)",
        "read_json_auto('/data/orders.json')",
    ],
)
def test_delta_iceberg_and_json_readers_name_their_path(reader: str) -> None:
    found = query_lineage(f"SELECT id FROM {reader}")
    (table,) = found.tables
    assert table.is_path and table.name.startswith("/data/")
    assert found.columns["id"].sources == (SourceColumn(table, "id"),)


def test_a_table_function_still_loads_and_says_what_it_could_not_resolve() -> None:
    found = query_lineage(
        "SELECT c.id, q.score FROM customers c "
        "JOIN postgres_query('src', 'SELECT id, score FROM scores') AS q ON q.id = c.id"
    )
    assert found.tables == (SourceTable("customers"),)
    assert found.columns["id"].sources == (SourceColumn(SourceTable("customers"), "id"),)
    assert found.columns["score"].sources == ()
    assert found.problems() == [
        "reads POSTGRES_QUERY('src', 'SELECT id, score FROM scores'): a table function, "
        "not a table or a file",
        "column score: POSTGRES_QUERY('src', 'SELECT id, score FROM scores'): a table "
        "function, not a table or a file",
    ]


def test_a_path_that_is_not_a_literal_is_unresolved() -> None:
    found = query_lineage("SELECT id FROM read_parquet($path)")
    assert found.tables == ()
    assert found.problems()[0] == "reads READ_PARQUET($path): the path is not a string literal"


def test_an_unqualified_column_over_two_tables_is_listed_not_guessed() -> None:
    found = query_lineage(
        "SELECT c.id, CASE WHEN c.vip THEN name END AS label FROM customers c "
        "JOIN orders o ON o.customer_id = c.id"
    )
    label = found.columns["label"]
    # What the SQL does say is kept; what it does not is listed.
    assert label.sources == (SourceColumn(SourceTable("customers"), "vip"),)
    assert label.unresolved == (
        "name cannot be traced to one table: the query reads several here "
        "(write <table or alias>.column)",
    )
    assert found.problems() == [f"column label: {label.unresolved[0]}"]


def test_select_star_over_a_join_in_a_cte_hides_the_columns_and_says_so() -> None:
    found = query_lineage(
        "WITH joined AS (SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id) "
        "SELECT email FROM joined"
    )
    assert found.tables == (SourceTable("customers"), SourceTable("orders"))
    assert found.columns["email"].sources == ()
    assert found.columns["email"].unresolved == (
        "email comes through SELECT * over customers AS c, orders AS o: name the columns "
        "in that SELECT to trace it",
    )


def test_result_columns_keep_the_query_s_names_and_order() -> None:
    found = query_lineage("SELECT Email AS Contact, id FROM customers")
    assert list(found.columns) == ["Contact", "id"]
    assert sources(found.columns["Contact"]) == {"customers.email"}


SHIPPED = {
    "customer_360": {
        c: {f"customer_360.{c}"}
        for c in [
            "amperity_id",
            "given_name",
            "surname",
            "email",
            "phone",
            "address",
            "city",
            "state",
            "postal_code",
            "birthdate",
            "lifetime_value",
            "order_count",
            "is_subscribed",
            "updated_at",
        ]
    },
    "customer_segments": {
        "amperity_id": {"customer_360.amperity_id"},
        "email": {"customer_360.email"},
        "orders": {"unified_transactions.order_id"},
        "total_spend": {"unified_transactions.order_amount"},
        "last_order_at": {"unified_transactions.order_datetime"},
        "segment": {"unified_transactions.order_amount"},
    },
    "unified_transactions": {
        c: {f"unified_transactions.{c}"}
        for c in [
            "order_id",
            "amperity_id",
            "order_datetime",
            "store_id",
            "product_category",
            "quantity",
            "order_amount",
            "currency",
        ]
    },
}


@pytest.mark.parametrize("export", sorted(SHIPPED))
def test_the_shipped_queries_are_fully_resolved(export: str) -> None:
    assert traced((SHIPPED_EXPORTS_DIR / f"{export}.sql").read_text()) == SHIPPED[export]


def test_a_view_over_one_table_maps_each_column_to_the_columns_it_reads() -> None:
    """What the Databricks hop's lineage is read from: its view statement, in Databricks SQL.
    ``SELECT *`` expands to the table's columns; a renamed or masked column maps to the
    column it reads."""
    columns = ["amperity_id", "email", "surname"]
    star = "CREATE OR REPLACE VIEW `main`.`a`.`v` AS SELECT * FROM `bq`.`ds`.`t`"
    assert select_lineage(star, "databricks", columns) == {c: [c] for c in columns}
    masked = (
        "CREATE OR REPLACE VIEW `main`.`a`.`v` AS SELECT amperity_id, "
        "CASE WHEN is_account_group_member('pii_readers') THEN email ELSE sha2(email, 256) END "
        "AS email, surname AS last_name FROM `bq`.`ds`.`t`"
    )
    assert select_lineage(masked, "databricks", columns) == {
        "amperity_id": ["amperity_id"],
        "email": ["email"],
        "last_name": ["surname"],
    }
    # A view's column list (e.g. to carry column comments) names its columns in order.
    commented = (
        "CREATE OR REPLACE VIEW `main`.`a`.`v` (amperity_id COMMENT 'the person', "
        "contact COMMENT 'masked', surname) AS SELECT * FROM `bq`.`ds`.`t`"
    )
    assert select_lineage(commented, "databricks", columns) == {
        "amperity_id": ["amperity_id"],
        "contact": ["email"],
        "surname": ["surname"],
    }


def test_the_lineage_module_imports_no_dagster() -> None:
    code = "import sys, bq_assets.exports.lineage; print('dagster' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert output.stdout.strip() == "False", output.stderr


# --- the public names of what a query reads (bq_assets/exports/source_names.py) -------------


@pytest.mark.parametrize(
    ("place", "table", "key", "name"),
    [
        (
            SourcePlace("default", "duckdb"),
            SourceTable("customer_360"),
            "source/default/main/customer_360",
            "main.customer_360",
        ),
        (
            SourcePlace("crm", "postgres", database="crm"),
            SourceTable("customers"),
            "source/crm/public/customers",
            "crm.public.customers",
        ),
        (
            SourcePlace("crm", "postgres", database="crm"),
            SourceTable("orders", schema="sales", catalog="src"),
            "source/crm/sales/orders",
            "crm.sales.orders",
        ),
        (
            SourcePlace("shop", "mysql", database="shop"),
            SourceTable("orders"),
            "source/shop/shop/orders",
            "shop.orders",
        ),
        (SourcePlace("app", "sqlite"), SourceTable("users"), "source/app/main/users", "main.users"),
        (
            SourcePlace("lake", "files"),
            SourceTable("gs://lake/orders/*.parquet", is_path=True),
            "source/lake/gs/lake/orders",
            None,
        ),
        (
            SourcePlace("lake", "files"),
            SourceTable("gs://lake/orders/2024-*/part-*.parquet", is_path=True),
            "source/lake/gs/lake/orders",
            None,
        ),
        (
            SourcePlace("lake", "files"),
            SourceTable("/data/my file.csv", is_path=True),
            "source/lake/file/data/my_file.csv",
            None,
        ),
        (
            SourcePlace("lake", "files"),
            SourceTable("/data/orders_delta", is_path=True),
            "source/lake/file/data/orders_delta",
            None,
        ),
    ],
)
def test_a_source_table_s_key_names_the_source_schema_and_table(
    place: SourcePlace, table: SourceTable, key: str, name: str | None
) -> None:
    """Unqualified names get the schema the source resolves them in (checked on this
    machine: DuckDB's ``current_schema()`` after ``USE src`` is ``public`` on PostgreSQL and
    the database on MySQL/MariaDB)."""
    assert "/".join(table_key_path(place, table)) == key
    assert table_name(place, table) == name


def test_an_unqualified_and_a_qualified_name_of_one_table_are_one_asset() -> None:
    crm = SourcePlace("crm", "postgres", database="crm")
    assert table_key_path(crm, SourceTable("customers")) == table_key_path(
        crm, SourceTable("customers", schema="public")
    )


@pytest.mark.parametrize(
    ("path", "uri"),
    [
        ("gs://lake/orders/*.parquet", "gs://lake/orders/"),
        ("gs://lake/orders/2024-*/part-*.parquet", "gs://lake/orders/"),
        ("gs://lake/x.parquet", "gs://lake/x.parquet"),
        ("/data/orders_delta", "/data/orders_delta"),
    ],
)
def test_a_path_s_asset_stands_for_its_folder_before_any_glob(path: str, uri: str) -> None:
    assert path_uri(path) == uri


def test_a_delivery_prefix_is_keyed_under_the_reserved_delivery_source() -> None:
    assert delivery_key_path("amperity/orders/") == ["source", "delivery", "amperity", "orders"]
