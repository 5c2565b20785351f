"""Column lineage on every hop, as Dagster metadata (``bq_assets/column_lineage.py``): each
column of each asset names the columns of the asset before it is computed from, and the
``source_columns`` table traces it back to the source."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import pytest

from bq_assets.column_lineage import (
    HopLineage,
    carried_column_deps,
    databricks_column_deps,
    source_columns_markdown,
    trace_to_sources,
)
from bq_assets.exports import SHIPPED_EXPORTS_DIR, load_specs
from bq_assets.factory import build_definitions
from bq_assets.settings import local_resources
from bq_assets_tests.test_export_spec import write_export

SOURCE = dg.AssetKey(["source", "crm", "public", "customers"])


def key(hop: str) -> dg.AssetKey:
    return dg.AssetKey([hop, "profiles"])


def chain_with_a_renamed_and_a_masked_column() -> list[HopLineage]:
    """A query reading customers (``email`` from ``email_address``, ``label`` unresolved,
    ``loaded`` a constant), carried through gcs and bigquery, and a Databricks view that
    renames ``surname`` to ``last_name`` and masks ``email`` (as issue 25's views will)."""
    query = {
        "email": [(SOURCE, "email_address")],
        "surname": [(SOURCE, "surname")],
        "label": [],
        "loaded": [],
    }
    carried = {c: [(key("query"), c)] for c in query}
    return [
        HopLineage(key("query"), query),
        HopLineage(key("gcs"), carried),
        HopLineage(key("bigquery"), {c: [(key("gcs"), c)] for c in query}),
        HopLineage(
            key("databricks"),
            {
                "email": [(key("bigquery"), "email")],
                "last_name": [(key("bigquery"), "surname")],
                "label": [(key("bigquery"), "label")],
                "loaded": [(key("bigquery"), "loaded")],
            },
        ),
    ]


def test_a_databricks_column_is_traced_back_to_its_source_column_three_hops_earlier() -> None:
    traced = trace_to_sources(chain_with_a_renamed_and_a_masked_column())
    assert traced["email"] == {(SOURCE, "email_address")}
    assert traced["last_name"] == {(SOURCE, "surname")}
    # A column computed from no column ends at the query hop, not at a source.
    assert traced["loaded"] == {(key("query"), "loaded")}


def test_source_columns_names_the_source_column_or_says_why_not() -> None:
    table = source_columns_markdown(
        chain_with_a_renamed_and_a_masked_column(),
        unresolved={"label": ["name cannot be traced to one table"]},
    )
    assert table.splitlines()[0] == (
        "Each column's source columns, traced through query/profiles → gcs/profiles → "
        "bigquery/profiles → databricks/profiles:"
    )
    assert "| email | source/crm/public/customers · email_address |" in table
    assert "| last_name | source/crm/public/customers · surname |" in table
    assert "| label | not resolved: name cannot be traced to one table |" in table
    assert "| loaded | none (computed from no column) |" in table


@pytest.fixture(scope="module")
def shipped() -> dict:
    return {spec.name: spec for spec in load_specs(SHIPPED_EXPORTS_DIR)}


def test_the_databricks_view_maps_each_column_to_the_bigquery_column_it_reads(shipped) -> None:
    spec = shipped["customer_360"]
    upstream = dg.AssetKey(["bigquery", "customer_360"])
    deps = databricks_column_deps(spec, upstream)
    assert deps == carried_column_deps(spec, upstream)
    assert deps["email"] == [(upstream, "email")]


def test_the_databricks_lineage_follows_the_view_statement_when_it_renames_or_masks(
    shipped, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Databricks hop's lineage is read from the statement the hop runs: a view that
    renames or masks a column (issue 25) needs no other change for its lineage."""
    import bq_assets.column_lineage as column_lineage

    def masking_view(spec, source) -> str:
        return (
            "CREATE OR REPLACE VIEW `main`.`amperity`.`customer_360` AS SELECT amperity_id, "
            "CASE WHEN is_account_group_member('pii_readers') THEN email ELSE '***' END AS email, "
            "surname AS last_name FROM `bigquery`.`amperity_exports`.`customer_360`"
        )

    monkeypatch.setattr(column_lineage, "view_statement", masking_view)
    upstream = dg.AssetKey(["bigquery", "customer_360"])
    assert databricks_column_deps(shipped["customer_360"], upstream) == {
        "amperity_id": [(upstream, "amperity_id")],
        "email": [(upstream, "email")],
        "last_name": [(upstream, "surname")],
    }


# --- the shipped exports, checked through the asset graph (dg.Definitions) -------------------


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dg.AssetSpec]:
    """Every asset spec of the shipped code location (local wiring; no stack needed)."""
    defs = build_definitions(
        load_specs(SHIPPED_EXPORTS_DIR),
        local_resources(tmp_path_factory.mktemp("unused-stack")),
        dg.DefaultScheduleStatus.STOPPED,
    )
    return {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}


def column_lineage(spec: dg.AssetSpec) -> dict[str, list[tuple[str, str]]]:
    lineage = spec.metadata["dagster/column_lineage"]
    return {
        column: [(d.asset_key.to_user_string(), d.column_name) for d in deps]
        for column, deps in lineage.deps_by_column.items()
    }


def traced_through_graph(graph: dict[str, dg.AssetSpec], key: str, column: str) -> set:
    """Follow ``dagster/column_lineage`` from asset to asset, the way Dagster's UI does,
    until an asset that records none (a source)."""
    spec = graph[key]
    if "dagster/column_lineage" not in spec.metadata:
        return {(key, column)}
    return {
        end
        for upstream, upstream_column in column_lineage(spec)[column]
        for end in traced_through_graph(graph, upstream, upstream_column)
    }


@pytest.mark.parametrize(
    ("asset", "column", "sources"),
    [
        ("databricks/customer_360", "email", {("source/default/main/customer_360", "email")}),
        (
            "databricks/customer_segments",
            "segment",
            {("source/default/main/unified_transactions", "order_amount")},
        ),
        (
            "databricks/customer_segments",
            "email",
            {("source/default/main/customer_360", "email")},
        ),
        (
            "databricks/unified_transactions",
            "order_datetime",
            {("source/default/main/unified_transactions", "order_datetime")},
        ),
        (
            "databricks/amperity_orders",
            "order_total",
            {("source/delivery/amperity/orders", "order_total")},
        ),
    ],
)
def test_a_databricks_column_leads_back_to_its_source_column_through_the_graph(
    graph, asset: str, column: str, sources: set
) -> None:
    assert traced_through_graph(graph, asset, column) == sources


def test_every_hop_records_one_to_one_lineage_to_the_hop_before(graph) -> None:
    for export in ("customer_360", "customer_segments", "unified_transactions"):
        columns = list(column_lineage(graph[f"query/{export}"]))
        for hop, before in [("gcs", "query"), ("bigquery", "gcs"), ("databricks", "bigquery")]:
            assert column_lineage(graph[f"{hop}/{export}"]) == {
                c: [(f"{before}/{export}", c)] for c in columns
            }


def test_each_column_dep_is_on_an_asset_the_asset_depends_on(graph) -> None:
    """The column graph stays inside the asset graph: every asset a column comes from is
    one of the asset's deps (otherwise Dagster's UI cannot place it)."""
    for key, spec in graph.items():
        if "dagster/column_lineage" not in spec.metadata:
            continue
        deps = {d.asset_key.to_user_string() for d in spec.deps}
        named = {upstream for pairs in column_lineage(spec).values() for upstream, _ in pairs}
        assert named <= deps, f"{key}: columns from {named - deps}, not among its deps"


def test_the_sources_are_external_assets_shared_by_the_exports_that_read_them(graph) -> None:
    sources = {k: s for k, s in graph.items() if k.startswith("source/")}
    assert set(sources) == {
        "source/default/main/customer_360",
        "source/default/main/unified_transactions",
        "source/delivery/amperity/orders",
    }
    readers = {
        k: sorted(
            r for r, s in graph.items() if k in {d.asset_key.to_user_string() for d in s.deps}
        )
        for k in sources
    }
    assert readers["source/default/main/customer_360"] == [
        "query/customer_360",
        "query/customer_segments",
    ]
    assert readers["source/delivery/amperity/orders"] == ["gcs/amperity_orders"]
    assert {s.group_name for s in sources.values()} == {"sources"}
    assert graph["source/default/main/customer_360"].kinds == {"duckdb"}


def test_catalogs_find_each_asset_by_its_fully_qualified_name(graph) -> None:
    names = {
        key: graph[key].metadata.get("dagster/table_name") or graph[key].metadata.get("dagster/uri")
        for key in (
            "source/default/main/customer_360",
            "source/delivery/amperity/orders",
            "gcs/customer_360",
            "gcs/amperity_orders",
            "bigquery/customer_360",
            "databricks/customer_360",
        )
    }
    assert names == {
        "source/default/main/customer_360": "main.customer_360",
        "source/delivery/amperity/orders": "gs://bq-assets-local/amperity/orders/",
        "gcs/customer_360": "gs://bq-assets-local/exports/customer_360/",
        "gcs/amperity_orders": "gs://bq-assets-local/amperity/orders/",
        "bigquery/customer_360": "bq-assets-local.amperity_exports.customer_360",
        "databricks/customer_360": "main.amperity.customer_360",
    }


def test_the_readable_source_columns_table_is_on_every_hop(graph) -> None:
    table = graph["databricks/customer_360"].metadata["source_columns"].value
    assert "| email | source/default/main/customer_360 · email |" in table
    assert graph["gcs/amperity_orders"].metadata["source_columns"].value.count("|---|") == 1


# --- exports on other sources, and queries the lineage cannot fully resolve -----------------


def code_location(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, dg.AssetSpec]:
    """The code location for the exports in ``folder``, with the sources ``crm`` (PostgreSQL),
    ``shop`` (MySQL) and ``lake`` (files) declared in the environment."""
    for name, variables in {
        "CRM": {"KIND": "postgres", "HOST": "db", "DATABASE": "crm", "USER": "u"},
        "SHOP": {"KIND": "mysql", "HOST": "db", "DATABASE": "shop", "USER": "u"},
        "LAKE": {"KIND": "files"},
    }.items():
        for field, value in variables.items():
            monkeypatch.setenv(f"BQ_ASSETS_SOURCE_{name}_{field}", value)
    monkeypatch.setenv("BQ_ASSETS_SOURCES", "crm,shop,lake")
    defs = build_definitions(
        load_specs(folder), local_resources(folder / "stack"), dg.DefaultScheduleStatus.STOPPED
    )
    return {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}


def spec_yaml(source: str) -> str:
    return f"primary_key: [id]\ncadence: daily\nsource: {source}\n"


def test_exports_on_postgres_mysql_and_files_name_their_tables_in_each_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_export(
        tmp_path,
        "contacts",
        spec_yaml("crm"),
        "SELECT c.id, c.email, s.name AS segment FROM customers c "
        "JOIN marketing.segments s ON s.id = c.segment_id",
    )
    write_export(tmp_path, "orders", spec_yaml("shop"), "SELECT id, total FROM orders")
    write_export(
        tmp_path,
        "events",
        spec_yaml("lake"),
        "SELECT id, kind FROM read_parquet('gs://lake/events/*.parquet')",
    )
    graph = code_location(tmp_path, monkeypatch)
    assert column_lineage(graph["query/contacts"]) == {
        "id": [("source/crm/public/customers", "id")],
        "email": [("source/crm/public/customers", "email")],
        "segment": [("source/crm/marketing/segments", "name")],
    }
    assert graph["source/crm/public/customers"].metadata["dagster/table_name"] == (
        "crm.public.customers"
    )
    assert graph["source/crm/marketing/segments"].kinds == {"postgres"}
    assert column_lineage(graph["query/orders"])["total"] == [("source/shop/shop/orders", "total")]
    assert graph["source/shop/shop/orders"].metadata["dagster/table_name"] == "shop.orders"
    # The files' asset is the folder before the glob; a key part stays a Python name's.
    events = "source/lake/gs/lake/events"
    assert column_lineage(graph["query/events"])["kind"] == [(events, "kind")]
    assert graph[events].metadata["dagster/uri"] == "gs://lake/events/"
    assert graph[events].kinds == {"gcs"}


def test_a_query_lineage_cannot_resolve_still_loads_and_says_what_it_could_not_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sql = (
        "SELECT c.id, q.score, CASE WHEN c.vip THEN name END AS label FROM customers c "
        "JOIN postgres_query('src', 'SELECT id, score FROM scores') AS q ON q.id = c.id "
        "JOIN accounts a ON a.id = c.id"
    )
    write_export(tmp_path, "scored", spec_yaml("crm"), sql)
    with caplog.at_level(logging.WARNING, logger="bq_assets.factory"):
        graph = code_location(tmp_path, monkeypatch)
    query = graph["query/scored"]
    # The tables it does name are its sources; the table function is not guessed at.
    assert sorted(d.asset_key.to_user_string() for d in query.deps) == [
        "source/crm/public/accounts",
        "source/crm/public/customers",
    ]
    assert column_lineage(query)["score"] == []
    assert column_lineage(query)["label"] == [("source/crm/public/customers", "vip")]
    table = graph["databricks/scored"].metadata["source_columns"].value
    assert (
        "| score | not resolved: POSTGRES_QUERY('src', 'SELECT id, score FROM scores'): a table function"
        in table
    )
    assert (
        "| label | source/crm/public/customers · vip<br>not resolved: name cannot be traced"
        in table
    )
    logged = [r.getMessage() for r in caplog.records]
    assert f"{tmp_path / 'scored.sql'}: lineage: reads POSTGRES_QUERY" in logged[0]
    assert any("lineage: column label: name cannot be traced to one table" in m for m in logged)
