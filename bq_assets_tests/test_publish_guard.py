"""Nothing is published that does not add up (issue 24): every load compares its staging table
with what the manifest promises, in total and per partition, before anything replaces or
appends to the user's table; a difference fails once, names both numbers, and leaves the table
as it was. Fast tests of the comparison first, then both load paths on the BigQuery emulator
with a tampered manifest (the objects hold other rows than the manifest says)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from pathlib import Path

import pytest
from google.cloud import bigquery

from bq_assets.engine.bigquery_load import SchemaDriftError, appended_schema, run_load
from bq_assets.engine.bigquery_partitions import run_partition_load
from bq_assets.engine.manifest import Manifest, Shard
from bq_assets.engine.publish_guard import (
    StagedRowsMismatchError,
    refuse_unless_staged_as_promised,
    staged_differences,
)
from bq_assets.exports.spec import load_spec
from bq_assets.partitioning import Window
from bq_assets.schema import schema_to_json

LOG = logging.getLogger("test_publish_guard")
SCHEMA = [bigquery.SchemaField("id", "INTEGER"), bigquery.SchemaField("name", "STRING")]


def manifest_promising(rows: int, shards: list[int], by_partition: dict | None = None) -> Manifest:
    return Manifest(
        export="t",
        run_id="r",
        prefix="gs://b/exports/t/r/",
        rows=rows,
        shards=[Shard(f"gs://b/exports/t/r/part-{i}.csv", n, 1, "c") for i, n in enumerate(shards)],
        bigquery_schema=schema_to_json(SCHEMA),
        rows_by_partition=by_partition,
    )


# -- the comparison -------------------------------------------------------------------------


def test_a_staging_table_holding_the_promised_rows_adds_up() -> None:
    manifest = manifest_promising(5, [2, 3], {"2026-01-05": 4, "2026-01-06": 1})
    assert staged_differences(manifest, 5) == []
    assert staged_differences(manifest, 5, {"2026-01-05": 4, "2026-01-06": 1}) == []
    refuse_unless_staged_as_promised(manifest, "p.s.stage", "p.d.t", 5)  # does not raise


@pytest.mark.parametrize("staged", [4, 6, 0])
def test_a_staging_table_with_other_rows_than_promised_differs_naming_both(staged: int) -> None:
    assert staged_differences(manifest_promising(5, [5]), staged) == [
        f"the staging table holds {staged} rows, the manifest promises 5"
    ]


def test_a_manifest_whose_objects_do_not_add_up_to_its_total_differs() -> None:
    """A manifest tampered in its total alone: the staging table agrees with the total, but the
    objects the manifest lists promise another number."""
    assert staged_differences(manifest_promising(5, [2, 2]), 5) == [
        "the manifest's objects add up to 4 rows, its total says 5"
    ]


def test_rows_in_the_wrong_partition_differ_although_the_total_agrees() -> None:
    manifest = manifest_promising(5, [5], {"2026-01-05": 4, "2026-01-06": 1})
    assert staged_differences(manifest, 5, {"2026-01-05": 3, "2026-01-06": 2}) == [
        "partition 2026-01-05: the staging table holds 3 rows, the manifest promises 4",
        "partition 2026-01-06: the staging table holds 2 rows, the manifest promises 1",
    ]


def test_a_partition_on_one_side_only_differs() -> None:
    manifest = manifest_promising(4, [4], {"2026-01-05": 4})
    assert staged_differences(manifest, 4, {"2026-01-05": 3, "2026-01-06": 1}) == [
        "partition 2026-01-05: the staging table holds 3 rows, the manifest promises 4",
        "partition 2026-01-06: the staging table holds 1 rows, the manifest promises 0",
    ]
    assert staged_differences(
        manifest_promising(4, [4], {"2026-01-05": 3, "x": 1}), 4, {"2026-01-05": 3}
    ) == ["partition x: the staging table holds 0 rows, the manifest promises 1"]


def test_partitions_are_compared_only_when_both_sides_count_them() -> None:
    assert staged_differences(manifest_promising(4, [4]), 4, {"2026-01-05": 3}) == []
    assert staged_differences(manifest_promising(4, [4], {"2026-01-05": 3}), 4) == []


def test_a_refused_publish_names_both_numbers_the_tables_and_is_not_retried() -> None:
    manifest = manifest_promising(5, [5], {"2026-01-05": 5})
    with pytest.raises(StagedRowsMismatchError) as refused:
        refuse_unless_staged_as_promised(
            manifest, "p.d_staging.t__staging_1", "p.d.t", 3, {"2026-01-05": 3}
        )
    assert str(refused.value) == (
        "p.d_staging.t__staging_1 does not hold what gs://b/exports/t/r/manifest.json promises: "
        "the staging table holds 3 rows, the manifest promises 5; partition 2026-01-05: the "
        "staging table holds 3 rows, the manifest promises 5. Nothing was published: p.d.t "
        "keeps its previous data. A retry would load the same objects against the same "
        "manifest and count the same, so the step is not retried; materialize the step that "
        "wrote the manifest again (or find what changed its objects)."
    )
    assert refused.value.retryable is False
    assert refused.value.metadata == {
        "staging_table": "p.d_staging.t__staging_1",
        "table": "p.d.t",
        "manifest_uri": "gs://b/exports/t/r/manifest.json",
        "staged_rows": 3,
        "manifest_rows": 5,
        "differences": [
            "the staging table holds 3 rows, the manifest promises 5",
            "partition 2026-01-05: the staging table holds 3 rows, the manifest promises 5",
        ],
    }


def test_a_long_list_of_differences_is_shortened_in_the_message_not_in_the_metadata() -> None:
    promised = {f"2026-01-{day:02d}": 1 for day in range(1, 7)}
    manifest = manifest_promising(6, [6], promised)
    staged = {key: 0 for key in promised}
    with pytest.raises(StagedRowsMismatchError) as refused:
        refuse_unless_staged_as_promised(manifest, "s", "t", 6, staged)
    assert "partition 2026-01-05" in str(refused.value)
    assert "partition 2026-01-06" not in str(refused.value)
    assert "; …. Nothing was published" in str(refused.value)
    assert len(refused.value.metadata["differences"]) == 6


def test_five_differences_are_all_named() -> None:
    promised = {f"2026-01-{day:02d}": 1 for day in range(1, 6)}
    with pytest.raises(StagedRowsMismatchError) as refused:
        refuse_unless_staged_as_promised(
            manifest_promising(5, [5], promised), "s", "t", 5, dict.fromkeys(promised, 0)
        )
    assert "partition 2026-01-05" in str(refused.value) and "…" not in str(refused.value)


# -- the manifest's promise per partition ----------------------------------------------------


def test_the_manifest_carries_rows_per_partition_only_when_partitioned() -> None:
    plain = manifest_promising(5, [5])
    assert "rows_by_partition" not in plain.to_json()
    assert Manifest.from_json(plain.to_json()) == plain
    partitioned = manifest_promising(5, [5], {"2026-01-05": 5})
    assert Manifest.from_json(partitioned.to_json()).rows_by_partition == {"2026-01-05": 5}


# -- what an append may do to the table's schema -------------------------------------------


def test_an_append_with_the_tables_schema_needs_no_change() -> None:
    assert appended_schema(SCHEMA, list(SCHEMA), "p.d.t") is None


def test_an_append_adds_new_columns_at_the_end_and_relaxes_required_ones() -> None:
    table = [bigquery.SchemaField("id", "INTEGER", "REQUIRED", description="the key"), SCHEMA[1]]
    incoming = [*SCHEMA, bigquery.SchemaField("email", "STRING")]
    widened = appended_schema(table, incoming, "p.d.t")
    assert widened is not None
    assert [(f.name, f.field_type, f.mode, f.description) for f in widened] == [
        ("id", "INTEGER", "NULLABLE", "the key"),
        ("name", "STRING", "NULLABLE", None),
        ("email", "STRING", "NULLABLE", None),
    ]
    still_required = [bigquery.SchemaField("id", "INTEGER", "REQUIRED"), *incoming[1:]]
    kept = appended_schema(table, still_required, "p.d.t")
    assert kept is not None and kept[0].mode == "REQUIRED"


def test_an_append_that_drops_a_required_column_is_refused_not_crashed() -> None:
    """(The drift check refuses a dropped column first; this is the rule on its own.)"""
    table = [*SCHEMA, bigquery.SchemaField("extra", "STRING", "REQUIRED")]
    with pytest.raises(SchemaDriftError, match=r"the table would need \(id, name, extra\)"):
        appended_schema(table, SCHEMA, "p.d.t")


@pytest.mark.parametrize(
    "incoming",
    [
        [SCHEMA[0], bigquery.SchemaField("email", "STRING"), SCHEMA[1]],
        [bigquery.SchemaField("email", "STRING"), SCHEMA[1], SCHEMA[0]],
    ],
)
def test_an_append_that_puts_columns_out_of_the_tables_order_is_refused_before_loading(
    incoming: list[bigquery.SchemaField],
) -> None:
    with pytest.raises(SchemaDriftError) as refused:
        appended_schema(SCHEMA, incoming, "p.d.t")
    assert str(refused.value).endswith(
        f"the query returns ({', '.join(f.name for f in incoming)}), the table would need "
        "(id, name, email). Reorder the query's columns."
    )


# -- both load paths on the BigQuery emulator --------------------------------------------------


def spec_for(folder: Path, table: str, extra: str = ""):
    (folder / "t.sql").write_text("SELECT id, name FROM t")
    (folder / "t.yaml").write_text(
        f"primary_key: [id]\ncadence: daily\nbigquery: {{table: {table}{extra}}}\n"
    )
    return load_spec(folder / "t.yaml")


def objects_with(local_stack, resources, csv_text: str, schema=SCHEMA, **promise) -> Manifest:
    """One CSV object holding ``csv_text`` and a manifest for it: honest, unless ``promise``
    overrides what the manifest says (``rows``, ``shards``, ``rows_by_partition``)."""
    run_id = uuid.uuid4().hex
    name = f"tests/{run_id}/part-00000.csv"
    bucket = resources["gcs"].get_client().bucket(local_stack.bucket)
    bucket.blob(name).upload_from_string(csv_text)
    rows = csv_text.count("\n") - 1
    manifest = Manifest(
        export="t",
        run_id=run_id,
        prefix=f"gs://{local_stack.bucket}/tests/{run_id}/",
        rows=rows,
        shards=[Shard(uri=f"gs://{local_stack.bucket}/{name}", rows=rows, bytes=0, crc32c="")],
        bigquery_schema=schema_to_json(schema),
        csv={"header": True, "delimiter": ","},
    )
    return dataclasses.replace(manifest, **promise)


def tampered(manifest: Manifest, rows: int) -> Manifest:
    """The manifest saying ``rows`` where its objects hold other rows (total and shard)."""
    shard = dataclasses.replace(manifest.shards[0], rows=rows)
    return dataclasses.replace(manifest, rows=rows, shards=[shard])


def fresh_table(client: bigquery.Client, project: str, table: str) -> str:
    """The table's id, the table dropped first (a stack may be shared by test sessions)."""
    table_id = f"{project}.amperity_exports.{table}"
    client.delete_table(table_id, not_found_ok=True)
    return table_id


def table_rows(client: bigquery.Client, table_id: str) -> list[tuple]:
    return sorted(tuple(row.values()) for row in client.list_rows(table_id))


def staging_tables(client: bigquery.Client, dataset: str) -> list[str]:
    return [t.table_id for t in client.list_tables(dataset)]


@pytest.mark.stack
@pytest.mark.parametrize("disposition", ["WRITE_TRUNCATE", "WRITE_APPEND"])
def test_a_tampered_manifest_publishes_nothing_and_the_table_keeps_its_rows(
    local_stack, resources, tmp_path, disposition: str
) -> None:
    table = f"guard_{disposition.lower()}"
    spec = spec_for(tmp_path, table, f", write_disposition: {disposition}")
    good = objects_with(local_stack, resources, "id,name\n1,a\n2,b\n")
    # Three rows in the object, four in the manifest (a row lost between writing and loading).
    bad = tampered(objects_with(local_stack, resources, "id,name\n3,c\n4,d\n5,e\n"), 4)
    with resources["bigquery"].get_client() as client:
        table_id = fresh_table(client, local_stack.project, table)
        run_load(client, local_stack.project, spec, good, LOG)
        with pytest.raises(StagedRowsMismatchError) as refused:
            run_load(client, local_stack.project, spec, bad, LOG)
        assert table_rows(client, table_id) == [(1, "a"), (2, "b")]
        assert table not in " ".join(staging_tables(client, spec.bigquery_staging_dataset))
    assert "the staging table holds 3 rows, the manifest promises 4" in str(refused.value)
    assert f"Nothing was published: {table_id} keeps its previous data" in str(refused.value)
    assert not refused.value.retryable


@pytest.mark.stack
def test_an_append_publishes_the_checked_rows_once_even_when_run_again(
    local_stack, resources, tmp_path
) -> None:
    spec = spec_for(tmp_path, "guard_appended", ", write_disposition: WRITE_APPEND")
    first = objects_with(local_stack, resources, "id,name\n1,a\n2,b\n")
    second = objects_with(local_stack, resources, "id,name\n3,c\n")
    with resources["bigquery"].get_client() as client:
        table_id = fresh_table(client, local_stack.project, "guard_appended")
        run_load(client, local_stack.project, spec, first, LOG)
        result = run_load(client, local_stack.project, spec, second, LOG)
        again = run_load(client, local_stack.project, spec, second, LOG)  # a retried step
        assert table_rows(client, table_id) == [(1, "a"), (2, "b"), (3, "c")]
    assert result.rows == again.rows == 3 and again.job_id == result.job_id


PARTITION_SCHEMA = [
    bigquery.SchemaField("id", "INTEGER"),
    bigquery.SchemaField("amount", "INTEGER"),
    bigquery.SchemaField("sold_at", "DATE"),
]
DAYS = ("2026-01-05", "2026-01-06")


def partitioned_spec(folder: Path):
    (folder / "sales.sql").write_text(
        "SELECT id, amount, sold_at FROM sales "
        "WHERE sold_at >= $partition_start_date AND sold_at < $partition_end_date"
    )
    (folder / "sales.yaml").write_text(
        "primary_key: [id]\ncadence: daily\n"
        "partitioning: {by: day, start: 2026-01-01, column: sold_at}\n"
        "bigquery: {table: guard_partitioned}\n"
    )
    return load_spec(folder / "sales.yaml")


@pytest.mark.stack
def test_a_tampered_manifest_publishes_no_partition_and_the_table_keeps_its_rows(
    local_stack, resources, tmp_path
) -> None:
    """The partitioned load (the transaction publish, which the emulator runs): a manifest
    promising other rows, in total or for one partition, replaces no partition."""
    spec = partitioned_spec(tmp_path)
    window = Window(DAYS, "day", spec.timezone)
    honest = "id,amount,sold_at\n1,10,2026-01-05\n2,20,2026-01-06\n"
    good = objects_with(
        local_stack, resources, honest, PARTITION_SCHEMA, rows_by_partition=dict.fromkeys(DAYS, 1)
    )
    corrected = "id,amount,sold_at\n1,11,2026-01-05\n2,21,2026-01-06\n3,31,2026-01-06\n"
    short = tampered(objects_with(local_stack, resources, corrected, PARTITION_SCHEMA), 4)
    # Right total, wrong days: the manifest puts two of the three rows on the 5th.
    misplaced = objects_with(
        local_stack, resources, corrected, PARTITION_SCHEMA,
        rows_by_partition={DAYS[0]: 2, DAYS[1]: 1},
    )  # fmt: skip
    with resources["bigquery"].get_client() as client:
        table_id = fresh_table(client, local_stack.project, "guard_partitioned")
        loaded = run_partition_load(
            client, local_stack.project, spec, good, window, "transaction", LOG
        )
        assert loaded.rows_by_partition == dict.fromkeys(DAYS, 1)
        before = table_rows(client, table_id)
        for bad, difference in [
            (short, "the staging table holds 3 rows, the manifest promises 4"),
            (misplaced, f"partition {DAYS[0]}: the staging table holds 1 rows, the manifest "
                        "promises 2"),
        ]:  # fmt: skip
            with pytest.raises(StagedRowsMismatchError) as refused:
                run_partition_load(
                    client, local_stack.project, spec, bad, window, "transaction", LOG
                )
            message = str(refused.value)
            staging = f"{local_stack.project}.amperity_exports_staging.guard_partitioned__staging_"
            assert message.startswith(staging) and difference in message
            assert f"Nothing was published: {table_id} keeps its previous data" in message
            assert not refused.value.retryable
            assert table_rows(client, table_id) == before
    assert [row[1] for row in before] == [10, 20]
