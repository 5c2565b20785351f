"""Column lineage on every hop, as Dagster metadata (``bq_assets/column_lineage.py``): each
column of each asset names the columns of the asset before it is computed from, and the
``source_columns`` table traces it back to the source."""

from __future__ import annotations

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
