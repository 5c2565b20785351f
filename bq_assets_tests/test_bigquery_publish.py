"""How a load publishes into the export's table, held to BigQuery's documented form.

* A backfill through partition decorators copies every partition of its window from the
  staging table's partition to the table's (``staging$YYYYMMDD`` -> ``table$YYYYMMDD``,
  ``WRITE_TRUNCATE``), the staging table partitioned and clustered like the table. The emulator
  has no decorators, so ``FakePartitionDecorators`` (bigquery_fakes.py) takes the copies,
  asserts their form and does on the emulator what BigQuery documents they do.
* The table a first publish creates is made as the spec declares it, not inherited from a
  staging table; its clustering shows on the emulator too.
* New columns reach a partitioned table before its partitions are replaced.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bq_assets.engine.bigquery_load import run_load
from bq_assets.engine.bigquery_partitions import run_partition_load
from bq_assets.engine.bigquery_tables import ensure_dataset, spec_differences
from bq_assets.engine.manifest import Manifest, Shard
from bq_assets.exports.spec import load_spec
from bq_assets.partitioning import Window
from bq_assets.schema import schema_to_json
from bq_assets_tests.bigquery_fakes import COPY_PARTITIONS, Copy, FakePartitionDecorators
from bq_assets_tests.bq_cli import bq_show

pytestmark = pytest.mark.stack
log = logging.getLogger("test")

ORDERS = [
    bigquery.SchemaField("order_id", "INT64"),
    bigquery.SchemaField("amperity_id", "STRING"),
    bigquery.SchemaField("order_date", "DATE"),
]
DAYS = ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"]


def orders_spec(folder: Path, table: str, extra: str = ""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orders.sql").write_text(
        "SELECT order_id, amperity_id, CAST(order_datetime AS DATE) AS order_date "
        "FROM unified_transactions WHERE CAST(order_datetime AS DATE) >= $partition_start_date "
        "AND CAST(order_datetime AS DATE) < $partition_end_date"
    )
    (folder / "orders.yaml").write_text(
        "description: Orders by day.\nprimary_key: [order_id]\ncadence: daily\n"
        "partitioning: {by: day, start: 2024-01-01, column: order_date}\n"
        f"bigquery: {{table: {table}, clustering_fields: [amperity_id], "
        f"labels: {{team: data}}{extra}}}\n"
    )
    return load_spec(folder / "orders.yaml")


def manifest_with(local_stack, resources, header: str, lines: list[str], schema) -> Manifest:
    run_id = uuid.uuid4().hex
    name = f"tests/{run_id}/part-00000.csv"
    text = header + "\n" + "".join(f"{line}\n" for line in lines)
    resources["gcs"].get_client().bucket(local_stack.bucket).blob(name).upload_from_string(text)
    return Manifest(
        export="orders",
        run_id=run_id,
        prefix=f"gs://{local_stack.bucket}/tests/{run_id}/",
        rows=len(lines),
        shards=[
            Shard(uri=f"gs://{local_stack.bucket}/{name}", rows=len(lines), bytes=0, crc32c="")
        ],
        bigquery_schema=schema_to_json(schema),
        csv={"header": True, "delimiter": ","},
    )


def rows_by_day(client: bigquery.Client, table_id: str) -> dict[str, int]:
    sql = f"SELECT CAST(order_date AS STRING) AS d, COUNT(*) AS n FROM `{table_id}` GROUP BY 1"
    return {row["d"]: row["n"] for row in client.query(sql).result()}


def test_a_backfill_copies_every_partition_of_its_window_partition_to_partition(
    local_stack, resources, tmp_path
) -> None:
    """Issue 23 finding 1 and issue 24's first survivor. Before: a multi-day run copied each day
    from a table of its own, neither partitioned nor clustered (BigQuery refuses: see
    ``REFUSED_LAYOUT``), and a one-day run copied the whole staging table. A publish that skips
    a partition of the window leaves that day's old rows in place and fails here."""
    table = f"orders_{uuid.uuid4().hex[:8]}"
    spec = orders_spec(tmp_path, table)
    project = local_stack.project
    table_id = f"{project}.amperity_exports.{table}"
    window = Window(tuple(DAYS), "day", "UTC")
    lines = ["1,a,2024-03-01", "2,b,2024-03-01", "3,a,2024-03-02", "4,c,2024-03-03"]
    with resources["bigquery"].get_client() as client:
        fake = FakePartitionDecorators(client)
        # An earlier load of the same days, whose rows the backfill must replace, every day.
        old = ["90,z,2024-03-01", "91,z,2024-03-02", "92,z,2024-03-03", "93,z,2024-03-04"]
        run_partition_load(
            fake, project, spec, manifest_with(local_stack, resources, "order_id,amperity_id,order_date", old, ORDERS),
            window, "decorator", log,
        )  # fmt: skip
        fake.copies.clear()
        loaded = run_partition_load(
            fake, project, spec, manifest_with(local_stack, resources, "order_id,amperity_id,order_date", lines, ORDERS),
            window, "decorator", log,
        )  # fmt: skip
        by_day = rows_by_day(client, table_id)
        staging = [c for c in fake.created if "__staging_" in c.table_id]

    staging_id = fake.copies[0].source.split("$")[0]
    assert fake.copies == [
        Copy(f"{staging_id}${d}", f"{table_id}${d}", "WRITE_TRUNCATE", "CREATE_NEVER")
        for d in ("20240301", "20240302", "20240303")
    ], (
        f"every partition with rows copied once, in order, partition to partition ({COPY_PARTITIONS})"
    )
    assert fake.deleted_partitions == [f"{table_id}$20240304"], "the empty day is emptied"
    assert by_day == {"2024-03-01": 2, "2024-03-02": 1, "2024-03-03": 1}
    assert loaded.mechanism == "decorator" and len(loaded.publish_jobs) == 3
    assert loaded.rows_by_partition == {"2024-03-01": 2, "2024-03-02": 1, "2024-03-03": 1,
                                        "2024-03-04": 0}  # fmt: skip
    assert staging and all(
        (c.partitioning, c.clustering) == (("DAY", "order_date"), ("amperity_id",)) for c in staging
    ), "the staging table is partitioned and clustered like the table"


def test_the_fake_refuses_a_copy_from_an_unpartitioned_table_as_bigquery_does(
    local_stack, resources, tmp_path
) -> None:
    """The fake is strict where BigQuery is: the old publish (a day's rows in a table of their
    own, neither partitioned nor clustered) is refused."""
    project = local_stack.project
    with resources["bigquery"].get_client() as client:
        fake = FakePartitionDecorators(client)
        client.create_dataset(f"{project}.fake_test", exists_ok=True)
        target_id = f"{project}.fake_test.t_{uuid.uuid4().hex[:8]}"
        plain_id = f"{project}.fake_test.p_{uuid.uuid4().hex[:8]}"
        target = bigquery.Table(target_id, schema=ORDERS)
        target.time_partitioning = bigquery.TimePartitioning(type_="DAY", field="order_date")
        client.create_table(target)
        client.create_table(bigquery.Table(plain_id, schema=ORDERS))
        with pytest.raises(gexc.BadRequest, match="Non partitioned table to Column partitioned"):
            fake.copy_table(
                plain_id, f"{target_id}$20240301", job_id="j", location="US",
                job_config=bigquery.CopyJobConfig(write_disposition="WRITE_TRUNCATE"),
            )  # fmt: skip


def test_the_first_publish_creates_the_table_as_the_spec_declares_it(
    local_stack, resources, tmp_path
) -> None:
    """What a copy job gives a table it creates is not fully documented (whether it takes the
    staging table's expiration is not written anywhere; the staging dataset expires its tables
    after a day): the table is created first, as declared, and the copy writes into it
    (CREATE_NEVER). On the emulator, a load that creates its table drops the clustering, which
    is why customer_360's table had none there. Before: the clustering was missing here."""
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "c.sql").write_text("SELECT amperity_id, state FROM customer_360")
    (folder / "c.yaml").write_text(
        "description: Customers.\nprimary_key: [amperity_id]\ncadence: daily\n"
        f"bigquery: {{table: c_{uuid.uuid4().hex[:8]}, clustering_fields: [state], "
        "labels: {source: amperity}}\n"
    )
    spec = load_spec(folder / "c.yaml")
    schema = [
        bigquery.SchemaField("amperity_id", "STRING"),
        bigquery.SchemaField("state", "STRING"),
    ]
    manifest = manifest_with(local_stack, resources, "amperity_id,state", ["a,WA", "b,OR"], schema)
    with resources["bigquery"].get_client() as client:
        fake = FakePartitionDecorators(client)  # records create_table; no decorators here
        result = run_load(fake, local_stack.project, spec, manifest, log)
        table = client.get_table(result.table_id)
        (copy,) = fake.copies
    (created,) = [c for c in fake.created if c.table_id == result.table_id]
    assert created.clustering == ("state",) and created.labels == {"source": "amperity"}
    assert created.description == "Customers." and created.expires is None
    assert (copy.write_disposition, copy.create_disposition) == ("WRITE_TRUNCATE", "CREATE_NEVER")
    assert table.clustering_fields == ["state"]
    assert table.labels == {"source": "amperity"} and table.description == "Customers."
    assert result.rows == 2


def test_a_new_column_reaches_a_partitioned_table_before_its_partitions_are_replaced(
    local_stack, resources, tmp_path
) -> None:
    """A copy job has no schemaUpdateOptions and a transaction's INSERT names columns the table
    must have: the allowed new column is added with tables.patch first. Before: the emulator's
    transaction failed ("Table ... does not have a column with name ...")."""
    table = f"orders_{uuid.uuid4().hex[:8]}"
    spec = orders_spec(tmp_path, table, ", schema_update_options: [ALLOW_FIELD_ADDITION]")
    project = local_stack.project
    window = Window(("2024-03-01",), "day", "UTC")
    wider = [*ORDERS, bigquery.SchemaField("channel", "STRING")]
    header = "order_id,amperity_id,order_date"
    with resources["bigquery"].get_client() as client:
        run_partition_load(
            client, project, spec,
            manifest_with(local_stack, resources, header, ["1,a,2024-03-01"], ORDERS),
            window, "transaction", log,
        )  # fmt: skip
        run_partition_load(
            client, project, spec,
            manifest_with(local_stack, resources, header + ",channel", ["2,b,2024-03-01,web"], wider),
            window, "transaction", log,
        )  # fmt: skip
        got = client.get_table(f"{project}.amperity_exports.{table}")
        rows = [tuple(r.values()) for r in client.list_rows(got)]
    assert [f.name for f in got.schema] == ["order_id", "amperity_id", "order_date", "channel"]
    assert [(r[0], r[3]) for r in rows] == [(2, "web")]


def test_an_existing_dataset_is_read_not_created_again(local_stack, resources, tmp_path) -> None:
    """``datasets.insert`` needs bigquery.datasets.create on the project even when the dataset
    exists (BigQuery checks the permission first: langchain-google#457, google/adk-python#3688),
    and a service account with BigQuery Data Editor on the datasets alone lacks it
    (https://cloud.google.com/bigquery/docs/datasets#required_permissions). Before: every load
    failed with 403 for such an account."""

    class FakeWithoutDatasetsCreate(FakePartitionDecorators):
        """A named fake of a client whose principal lacks bigquery.datasets.create: the
        insert is refused with BigQuery's 403, whether or not the dataset exists."""

        def create_dataset(self, dataset, *args, **kwargs):
            raise gexc.Forbidden(
                f"Access Denied: Project {local_stack.project}: User does not have "
                f"bigquery.datasets.create permission in project {local_stack.project}."
            )

    spec = orders_spec(tmp_path, "any")
    with resources["bigquery"].get_client() as client:
        client.create_dataset(f"{local_stack.project}.amperity_exports", exists_ok=True)
        dataset = ensure_dataset(FakeWithoutDatasetsCreate(client), local_stack.project, spec)
    assert dataset.dataset_id == "amperity_exports"


def test_a_changed_clustering_is_applied_to_the_existing_table_before_the_copy(
    local_stack, resources, tmp_path
) -> None:
    """BigQuery refuses to copy into a table clustered otherwise than the source; a table's
    clustering can be changed in place (manage-clustered-tables#modifying-cluster-spec). The
    emulator keeps the destination's clustering on a copy. Before: the table kept the old
    clustering here (and BigQuery refused the publish)."""
    table = f"c_{uuid.uuid4().hex[:8]}"
    schema = [
        bigquery.SchemaField("amperity_id", "STRING"),
        bigquery.SchemaField("state", "STRING"),
    ]
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "c.sql").write_text("SELECT amperity_id, state FROM customer_360")

    def spec_clustered_by(column: str):
        (folder / "c.yaml").write_text(
            "primary_key: [amperity_id]\ncadence: daily\n"
            f"bigquery: {{table: {table}, clustering_fields: [{column}]}}\n"
        )
        return load_spec(folder / "c.yaml")

    with resources["bigquery"].get_client() as client:
        for column in ("amperity_id", "state"):
            manifest = manifest_with(local_stack, resources, "amperity_id,state", ["a,WA"], schema)
            result = run_load(client, local_stack.project, spec_clustered_by(column), manifest, log)
        assert client.get_table(result.table_id).clustering_fields == ["state"]


def test_the_table_matches_its_spec_and_each_dropped_property_is_named(
    local_stack, resources, tmp_path
) -> None:
    """The comparison behind the ``table_matches_spec`` check, on the emulator; Google's own
    ``bq show`` reads the same clustering and labels (DESIGN.md: it showed customer_360's labels
    but no clustering, because the emulator's load dropped it: the table is now created as
    declared)."""
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "c.sql").write_text("SELECT amperity_id, state FROM customer_360")
    (folder / "c.yaml").write_text(
        "description: Customers.\nprimary_key: [amperity_id]\ncadence: daily\n"
        f"bigquery: {{table: c_{uuid.uuid4().hex[:8]}, clustering_fields: [state], "
        "labels: {source: amperity, export: c}}\n"
    )
    spec = load_spec(folder / "c.yaml")
    schema = [
        bigquery.SchemaField("amperity_id", "STRING"),
        bigquery.SchemaField("state", "STRING"),
    ]
    manifest = manifest_with(local_stack, resources, "amperity_id,state", ["a,WA"], schema)
    with resources["bigquery"].get_client() as client:
        result = run_load(client, local_stack.project, spec, manifest, log)
        table = client.get_table(result.table_id)
        assert spec_differences(table, spec, None) == []
        shown = bq_show(local_stack.bigquery_endpoint, local_stack.project, result.table_id,
                        tmp_path / "bq")  # fmt: skip
        assert shown["clustering"] == {"fields": ["state"]}
        assert shown["labels"] == {"source": "amperity", "export": "c"}

        table.clustering_fields = ["amperity_id"]
        table.labels = {"source": "amperity"}  # the emulator's PATCH replaces labels
        client.update_table(table, ["clustering_fields", "labels"])
        dropped = spec_differences(client.get_table(result.table_id), spec, None)
    assert dropped == [
        "clustering: the table has ['amperity_id'], the spec ['state']",
        "label export: the table has '(none)', the spec 'c'",
    ]


def test_an_expiring_table_or_partition_is_a_difference_from_the_spec(tmp_path) -> None:
    """The emulator keeps no expiration (it drops expirationTime), so this is read from a table
    resource as BigQuery returns it (https://cloud.google.com/bigquery/docs/reference/rest/v2/tables:
    expirationTime in ms, timePartitioning.expirationMs)."""
    spec = orders_spec(tmp_path, "t")
    partitioning = bigquery.TimePartitioning(type_="DAY", field="order_date")
    table = bigquery.Table.from_api_repr({
        "tableReference": {"projectId": "p", "datasetId": "d", "tableId": "t"},
        "expirationTime": "1796600000000", "description": "Orders by day.",
        "labels": {"team": "data"}, "clustering": {"fields": ["amperity_id"]},
        "timePartitioning": {"type": "DAY", "field": "order_date", "expirationMs": "2592000000"},
    })  # fmt: skip
    found = spec_differences(table, spec, partitioning)
    assert found[0].startswith("expiration: the table expires at 2026-")
    assert found[1] == (
        "partition expiration: the table's partitions expire after 30 day(s), the spec declares none"
    )
    assert len(found) == 2
