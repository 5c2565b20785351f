"""Partition DML and checks prune to the partitions they touch (issue 25, point 5): a large
backfill's daily DELETE and its checks must not scan the whole table.

BigQuery prunes a partitioned table's scan to the partitions a filter on the partition column
with constant bounds selects
(https://cloud.google.com/bigquery/docs/querying-partitioned-tables#prune_partitions); a query
without such a filter reads every partition. The emulator's dry run answers 0 bytes for every
statement (docs/local-stack.md), so here every statement a partitioned run sends to the
*published* table is read back from its job and held to that rule, and each is dry-run on the
emulator (valid BigQuery SQL, nothing executed); the dry-run bytes estimate on a real
partitioned table is the live suite's (``test_live_governance.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlglot
from google.cloud import bigquery
from sqlglot import exp

from bq_assets.translator import bigquery_key
from bq_assets_tests.test_partitioned_pipeline import DAYS, materialize, orders, spec_in

pytestmark = pytest.mark.stack
__all__ = ["orders"]  # the fixture, imported for its use here

COLUMN = "order_datetime"


def _bounded_by_constants(where: exp.Expression | None, column: str) -> bool:
    """Does ``where`` bound ``column`` below and above by constants only (a literal, or a
    TIMESTAMP/DATE literal), as BigQuery's pruning needs?"""
    if where is None:
        return False
    lower = upper = False
    for comparison in where.find_all(exp.GTE, exp.GT, exp.LT, exp.LTE):
        left, right = comparison.this, comparison.expression
        if not (isinstance(left, exp.Column) and left.name == column):
            continue
        if right.find(exp.Column, exp.Subquery, exp.Select) is not None:
            return False
        lower |= isinstance(comparison, exp.GTE | exp.GT)
        upper |= isinstance(comparison, exp.LT | exp.LTE)
    return lower and upper


def statements_reading(sql: str, table: str) -> list[exp.Expression]:
    """The statements of ``sql`` (a query or a script) that scan ``table`` (an INSERT into it
    does not scan it)."""
    found = []
    for statement in sqlglot.parse(sql, read="bigquery"):
        if statement is None or isinstance(statement, exp.Transaction | exp.Commit):
            continue
        scanned = statement.expression if isinstance(statement, exp.Insert) else statement
        if scanned is not None and any(t.name == table for t in scanned.find_all(exp.Table)):
            found.append(scanned)
    return found


def test_every_statement_on_the_published_table_prunes_to_the_run_s_partitions(
    orders, instance, tmp_path: Path
) -> None:
    resources, _ = orders
    spec = spec_in(tmp_path, name="pruned_orders")
    result = materialize(spec, resources, instance, DAYS[0], DAYS[1])
    assert result.success
    job_ids = [
        job["job_id"]
        for event in result.get_asset_materialization_events()
        if event.asset_key == bigquery_key("pruned_orders")
        for job in event.materialization.metadata["bigquery_job_costs"].value
    ]
    job_ids += [
        job["job_id"]
        for check in result.get_asset_check_evaluations()
        if "bigquery_job_costs" in check.metadata
        for job in check.metadata["bigquery_job_costs"].value
    ]
    with resources["bigquery"].get_client() as client:
        jobs = [client.get_job(job_id) for job_id in job_ids]
        queries = [job.query for job in jobs if job.job_type == "query"]
        scanning = [
            (sql, statement)
            for sql in queries
            for statement in statements_reading(sql, "pruned_orders")
        ]
        # The window's DELETE, the count after publishing, the row check, and the Databricks
        # checks' counts and key checksums on the BigQuery side: all of them prune.
        assert len(scanning) >= 4
        unpruned = [
            sql for sql, s in scanning if not _bounded_by_constants(s.args.get("where"), COLUMN)
        ]
        assert unpruned == []
        # Each is BigQuery SQL the emulator plans without running (a statement of a script on
        # its own: the script's staging table is gone by now). The emulator's jobs do not keep
        # their query parameters, so a parameterized count is planned by its run above only.
        for sql, statement in (pair for pair in scanning if "?" not in pair[0]):
            alone = (
                sql if len(sqlglot.parse(sql, read="bigquery")) == 1 else statement.sql("bigquery")
            )
            dry = client.query(alone, job_config=bigquery.QueryJobConfig(dry_run=True))
            assert dry.state == "DONE"


def test_the_pruning_rule_catches_a_statement_that_reads_every_partition() -> None:
    whole = "SELECT COUNTIF(`order_datetime` >= ?) AS p0 FROM `p.d.pruned_orders`"
    pruned = (
        "SELECT COUNT(*) FROM `p.d.pruned_orders` WHERE `order_datetime` >= "
        "TIMESTAMP '2026-01-05 05:00:00+00' AND `order_datetime` < TIMESTAMP '2026-01-06 05:00:00+00'"
    )
    subquery = (
        "DELETE FROM `p.d.pruned_orders` WHERE `order_datetime` >= (SELECT MIN(x) FROM t) "
        "AND `order_datetime` < TIMESTAMP '2026-01-06 05:00:00+00'"
    )
    verdicts = [
        _bounded_by_constants(statements_reading(sql, "pruned_orders")[0].args.get("where"), COLUMN)
        for sql in (whole, pruned, subquery)
    ]
    assert verdicts == [False, True, False]
