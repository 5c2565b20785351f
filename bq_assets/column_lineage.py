"""Column lineage as Dagster metadata, hop by hop: which columns of the asset before each column
of an export's asset is computed from (``dagster/column_lineage``), and, readable in the open
source UI, each column's source columns traced end to end (``source_columns``).

- ``query/<export>``: each result column → the source columns the SQL computes it from
  (``bq_assets.exports.lineage``), on the source assets (``source/...``);
- ``gcs/<export>`` and ``bigquery/<export>``: each column → the same column one hop before
  (the objects and the table carry the query's columns unchanged); a delivered export's
  ``gcs/`` asset → the same column of its delivery prefix (``source/delivery/...``);
- ``databricks/<export>``: each column → the BigQuery columns its view reads, read from the
  very view statement the hop runs (every column named; a masked one through its ``CASE``,
  so it maps to the column it reads).

Dagster's UI draws ``dagster/column_lineage`` as a column graph only in Dagster+ ("Viewing
column-level lineage in the UI is a Dagster+ feature",
https://docs.dagster.io/guides/build/assets/metadata-and-tags/column-level-lineage); the open
source UI hides the entry, so ``source_columns`` says the same in a table anyone can read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache

import dagster as dg

from bq_assets.engine.databricks_sql import BigQueryTable, view_statement
from bq_assets.exports.lineage import QueryLineage, SourceTable, query_lineage, select_lineage
from bq_assets.exports.spec import ExportSpec
from bq_assets.exports.sql import query_columns

#: Each column of a hop's table → the (asset, column) pairs it is computed from.
ColumnDeps = dict[str, list[tuple[dg.AssetKey, str]]]


@cache
def lineage_of(sql: str) -> QueryLineage:
    """The query's lineage, computed once per SQL text (the translator asks per hop)."""
    return query_lineage(sql)


def export_columns(spec: ExportSpec) -> list[str]:
    """The export's columns in order: the query's, or the delivery's declared ones."""
    return spec.delivery.column_names if spec.delivery else query_columns(spec.sql)


def query_column_deps(
    spec: ExportSpec, source_key: Callable[[SourceTable], dg.AssetKey]
) -> ColumnDeps:
    """Each result column → the source columns the SQL computes it from (none: a constant,
    ``count(*)``, or a column it could not resolve; see ``unresolved_lines``)."""
    return {
        name: [(source_key(s.table), s.column) for s in column.sources]
        for name, column in lineage_of(spec.sql).columns.items()
    }


def carried_column_deps(spec: ExportSpec, upstream: dg.AssetKey) -> ColumnDeps:
    """Each column → the same column of ``upstream`` (a hop that carries columns unchanged)."""
    return {column: [(upstream, column)] for column in export_columns(spec)}


def databricks_column_deps(spec: ExportSpec, upstream: dg.AssetKey) -> ColumnDeps:
    """Each column of the Databricks view → the BigQuery columns the view statement reads.
    The legacy ``external`` mode's table carries the BigQuery table's columns unchanged."""
    if spec.databricks.mode != "federation":
        return carried_column_deps(spec, upstream)
    # Only the view's select list matters here, not where the table is.
    statement = view_statement(spec, BigQueryTable("project", spec.bigquery.dataset, "table"))
    origins = select_lineage(statement, "databricks", export_columns(spec))
    return {column: [(upstream, read) for read in reads] for column, reads in origins.items()}


def table_column_lineage(deps: ColumnDeps) -> dg.TableColumnLineage:
    """``deps`` as Dagster's ``dagster/column_lineage`` value."""
    return dg.TableColumnLineage(
        deps_by_column={
            column: [dg.TableColumnDep(asset_key=key, column_name=name) for key, name in pairs]
            for column, pairs in deps.items()
        }
    )


@dataclass(frozen=True)
class HopLineage:
    """One hop's column deps, with the hop's asset key (for tracing end to end)."""

    key: dg.AssetKey
    deps: ColumnDeps


def trace_to_sources(chain: list[HopLineage]) -> dict[str, set[tuple[dg.AssetKey, str]]]:
    """Each column of the last hop in ``chain`` (hops in lineage order) → where it ends when
    followed back through each hop's deps: columns of assets outside the chain (the sources),
    or a column of a hop computed from no column (a constant, or one not resolved)."""
    by_key = {hop.key: hop.deps for hop in chain}
    return {
        column: {(key, name) for key, name in visited if not by_key.get(key, {}).get(name)}
        for column, visited in _visited(chain).items()
    }


def _visited(chain: list[HopLineage]) -> dict[str, set[tuple[dg.AssetKey, str]]]:
    """Each column of the last hop → every (asset, column) its lineage passes through."""
    by_key: Mapping[dg.AssetKey, ColumnDeps] = {hop.key: hop.deps for hop in chain}

    def walk(key: dg.AssetKey, column: str) -> set[tuple[dg.AssetKey, str]]:
        deps = by_key[key].get(column, []) if key in by_key else []
        return {(key, column)}.union(*(walk(k, c) for k, c in deps))

    last = chain[-1]
    return {column: walk(last.key, column) for column in last.deps}


def source_columns_markdown(
    chain: list[HopLineage], unresolved: Mapping[str, list[str]] | None = None
) -> str:
    """The ``source_columns`` entry: each column of the last hop and the source columns it
    comes from, traced through ``chain``, as a Markdown table. ``unresolved`` gives, for a
    column of the first hop, what could not be resolved; every column computed from it
    says so."""
    unresolved = unresolved or {}
    in_chain, first = {hop.key for hop in chain}, chain[0].key
    through = " → ".join(hop.key.to_user_string() for hop in chain)
    lines = [
        f"Each column's source columns, traced through {through}:",
        "",
        "| column | source columns |",
        "|---|---|",
    ]
    visited = _visited(chain)
    for column, ends in trace_to_sources(chain).items():
        cells = [
            f"{key.to_user_string()} · {name}"
            for key, name in sorted(ends, key=lambda end: (end[0].to_user_string(), end[1]))
            if key not in in_chain
        ]
        reached = sorted(name for key, name in visited[column] if key == first)
        cells += [f"not resolved: {why}" for name in reached for why in unresolved.get(name, [])]
        lines.append(f"| {column} | {'<br>'.join(cells) or 'none (computed from no column)'} |")
    return "\n".join(lines)
