"""The partitioned load called directly on the BigQuery emulator (its transaction publish): it
replaces exactly the window's partitions, says how, and publishes nothing when a row falls
outside the window. (The pipeline runs of test_partitioned_pipeline.py show the same through
Dagster; these are the fast tests `make mutation` runs.)"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from google.cloud import bigquery

from bq_assets.engine.bigquery_partitions import PartitionBoundsError, run_partition_load
from bq_assets.engine.manifest import Manifest, Shard
from bq_assets.errors import BqAssetsError
from bq_assets.exports.spec import load_spec
from bq_assets.partitioning import Window
from bq_assets.schema import schema_to_json

pytestmark = pytest.mark.stack

LOG = logging.getLogger("test_partition_load")


def sales_spec(folder: Path, table: str, column_type: str = "DATE"):
    bound = "_date" if column_type == "DATE" else ""
    (folder / "sales.sql").write_text(
        "SELECT id, amount, sold_at FROM sales "
        f"WHERE sold_at >= $partition_start{bound} AND sold_at < $partition_end{bound}"
    )
    (folder / "sales.yaml").write_text(
        "primary_key: [id]\ncadence: daily\ndescription: Sales, a day per partition.\n"
        "timezone: America/New_York\n"
        "partitioning: {by: day, start: 2026-01-01, column: sold_at}\n"
        f"bigquery: {{table: {table}, dataset: partition_loads, labels: {{team: data}}}}\n"
    )
    return load_spec(folder / "sales.yaml")


def sales_objects(local_stack, resources, rows: list[tuple], column_type: str = "DATE"):
    """One CSV object of ``rows`` (id, amount, sold_at) and its honest manifest."""
    run_id = uuid.uuid4().hex
    name = f"tests/partition_load/{run_id}/part-00000.csv"
    text = "id,amount,sold_at\n" + "".join(f"{i},{a},{s}\n" for i, a, s in rows)
    resources["gcs"].get_client().bucket(local_stack.bucket).blob(name).upload_from_string(text)
    schema = [
        bigquery.SchemaField("id", "INTEGER"),
        bigquery.SchemaField("amount", "INTEGER"),
        bigquery.SchemaField("sold_at", column_type),
    ]
    return Manifest(
        export="sales",
        run_id=run_id,
        prefix=f"gs://{local_stack.bucket}/tests/partition_load/{run_id}/",
        rows=len(rows),
        shards=[Shard(f"gs://{local_stack.bucket}/{name}", len(rows), len(text), "")],
        bigquery_schema=schema_to_json(schema),
        csv={"header": True, "delimiter": ","},
    )


def rows_of(client: bigquery.Client, table_id: str) -> list[tuple]:
    return sorted(tuple(row.values()) for row in client.list_rows(table_id))


def fresh(client: bigquery.Client, project: str, table: str) -> str:
    table_id = f"{project}.partition_loads.{table}"
    client.delete_table(table_id, not_found_ok=True)
    return table_id


def test_a_load_replaces_exactly_its_windows_partitions_and_says_how(
    local_stack, resources, tmp_path: Path
) -> None:
    spec = sales_spec(tmp_path, "loads")
    both = Window(("2026-01-05", "2026-01-06"), "day", spec.timezone)
    sixth = Window(("2026-01-06",), "day", spec.timezone)
    first = sales_objects(
        local_stack,
        resources,
        [(1, 10, "2026-01-05"), (2, 20, "2026-01-06"), (3, 30, "2026-01-06")],
    )
    correction = sales_objects(local_stack, resources, [(4, 40, "2026-01-06")])
    with resources["bigquery"].get_client() as client:
        table_id = fresh(client, local_stack.project, "loads")
        loaded = run_partition_load(
            client, local_stack.project, spec, first, both, "transaction", LOG
        )
        assert loaded.mechanism == "transaction"  # the emulator knows no partition decorators
        assert loaded.window == both
        assert loaded.rows_by_partition == {"2026-01-05": 1, "2026-01-06": 2}
        assert (loaded.result.table_id, loaded.result.rows) == (table_id, 3)
        assert loaded.result.job_id.endswith("_1") and len(loaded.publish_jobs) == 1
        assert loaded.publish_jobs[0].startswith(f"{loaded.result.job_id}_publish_")
        assert [f.name for f in loaded.result.schema] == ["id", "amount", "sold_at"]
        table = client.get_table(table_id)
        assert (table.labels, table.description) == (
            {"team": "data"},
            "Sales, a day per partition.",
        )

        again = run_partition_load(
            client, local_stack.project, spec, correction, sixth, "transaction", LOG
        )
        assert again.rows_by_partition == {"2026-01-06": 1} and again.result.rows == 1
        assert [row[:2] for row in rows_of(client, table_id)] == [(1, 10), (4, 40)]
        staging = f"{local_stack.project}.{spec.bigquery_staging_dataset}"
        assert not [t for t in client.list_tables(staging) if t.table_id.startswith("loads__")]


@pytest.mark.parametrize(
    ("column_type", "outside"),
    [
        ("DATE", "2026-01-06"),
        # 23:30 on the 4th in New York: the day before the window, though the 5th in UTC.
        ("TIMESTAMP", "2026-01-05 04:30:00+00:00"),
    ],
)
def test_a_row_outside_the_window_publishes_nothing_and_says_what_to_fix(
    local_stack, resources, tmp_path: Path, column_type: str, outside: str
) -> None:
    spec = sales_spec(tmp_path, f"outside_{column_type.lower()}", column_type)
    fifth = Window(("2026-01-05",), "day", spec.timezone)
    inside = "2026-01-05" if column_type == "DATE" else "2026-01-05 12:00:00+00:00"
    good = sales_objects(local_stack, resources, [(1, 10, inside)], column_type)
    leaky = sales_objects(local_stack, resources, [(2, 20, inside), (3, 30, outside)], column_type)
    with resources["bigquery"].get_client() as client:
        table_id = fresh(client, local_stack.project, f"outside_{column_type.lower()}")
        run_partition_load(client, local_stack.project, spec, good, fifth, "transaction", LOG)
        before = rows_of(client, table_id)
        with pytest.raises(PartitionBoundsError) as refused:
            run_partition_load(client, local_stack.project, spec, leaky, fifth, "transaction", LOG)
        assert rows_of(client, table_id) == before and [r[0] for r in before] == [1]
    assert str(refused.value) == (
        f"{spec.sql_file}: 1 row(s) of {fifth.describe()} have sold_at outside the partition "
        "(or NULL); nothing was published. The query must return only the window's rows: "
        "WHERE <column> >= $partition_start AND <column> < $partition_end "
        "(partitioning.column must be the column the query filters on)."
    )
    assert not refused.value.retryable


def test_a_decorator_publish_first_refuses_a_table_partitioned_otherwise(
    local_stack, resources, tmp_path: Path
) -> None:
    """Asked for decorators on partitions BigQuery's own (New York days of a DATE column are
    the column's own days), the load checks the existing table's partitioning before it loads
    anything; asked for them where BigQuery's days are not the export's (a TIMESTAMP in New
    York), it publishes by transaction and needs no such check."""
    aligned = sales_spec(tmp_path, "plain_date")
    fifth = Window(("2026-01-05",), "day", aligned.timezone)
    with resources["bigquery"].get_client() as client:
        plain = fresh(client, local_stack.project, "plain_date")
        client.create_dataset(f"{local_stack.project}.partition_loads", exists_ok=True)
        client.create_table(bigquery.Table(plain, schema=[bigquery.SchemaField("id", "INTEGER"),
            bigquery.SchemaField("amount", "INTEGER"), bigquery.SchemaField("sold_at", "DATE")]))  # fmt: skip
        objects = sales_objects(local_stack, resources, [(1, 10, "2026-01-05")])
        with pytest.raises(BqAssetsError, match=f"^{plain} is not partitioned, but "):
            run_partition_load(
                client, local_stack.project, aligned, objects, fifth, "decorator", LOG
            )
        assert rows_of(client, plain) == []

        (tmp_path / "ts").mkdir()
        unaligned = sales_spec(tmp_path / "ts", "plain_timestamp", "TIMESTAMP")
        plain_ts = fresh(client, local_stack.project, "plain_timestamp")
        client.create_table(bigquery.Table(plain_ts, schema=[bigquery.SchemaField("id", "INTEGER"),
            bigquery.SchemaField("amount", "INTEGER"), bigquery.SchemaField("sold_at", "TIMESTAMP")]))  # fmt: skip
        stamped = sales_objects(
            local_stack, resources, [(1, 10, "2026-01-05 12:00:00+00:00")], "TIMESTAMP"
        )
        loaded = run_partition_load(
            client, local_stack.project, unaligned, stamped, fifth, "decorator", LOG
        )
        assert loaded.mechanism == "transaction" and loaded.rows_by_partition == {"2026-01-05": 1}
