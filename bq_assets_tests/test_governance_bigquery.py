"""Governed columns and visible cost in BigQuery (issue 25, points 2, 4 and 5), on the real
emulator: column descriptions land and survive every way the table is replaced, the read-back
check names each column that differs, every job is labelled and counted, and classified values
never show in what the project writes."""

import json
import re
from pathlib import Path

import dagster as dg
import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bq_assets.engine.bigquery_metering import (
    ASSET_LABEL,
    EXPORT_LABEL,
    PARTITION_LABEL,
    MeteredClient,
    job_labels,
)
from bq_assets.errors import BqAssetsError
from bq_assets.exports import load_specs
from bq_assets.factory import build_definitions
from bq_assets.failures import as_bq_assets_error
from bq_assets.resources.google import ExportBigQueryResource
from bq_assets.schedules import failed_checks, failure_message
from bq_assets.stages.cost import bigquery_jobs, run_cost
from bq_assets.translator import bigquery_key, query_key
from bq_assets_tests.conftest import run_exports
from bq_assets_tests.test_partitioned_pipeline import DAYS, materialize, orders
from bq_assets_tests.test_partitioned_pipeline import SPEC as PARTITIONED_ORDERS_SPEC
from bq_assets_tests.test_partitioned_pipeline import SQL as PARTITIONED_ORDERS_SQL

__all__ = ["orders"]  # the fixture, imported for its use here

pytestmark = pytest.mark.stack

SQL = "SELECT amperity_id, email, state FROM customer_360"
SPEC = """description: Customers and their emails.
primary_key: [amperity_id]
cadence: daily
bigquery: {{dataset: governed, labels: {{team: crm}}}}
columns:
  amperity_id: {{description: "Amperity ID of the customer."}}
  email: {{description: "{email}", classification: pii_email}}
  state: {{description: "US state."}}
"""
TAG = "projects/bq-assets-local/locations/us/taxonomies/1/policyTags/11"
PARTITION_SQL = PARTITIONED_ORDERS_SQL
SPEC_PARTITIONED = PARTITIONED_ORDERS_SPEC + "{columns}"
PARTITION_COLUMNS = """columns:
  order_id: {description: The order.}
  amperity_id: {description: Who ordered.}
  order_datetime: {description: When.}
  amount: {description: How much.}
"""


def export(folder: Path, name: str, email: str = "The customer's email.", sql: str = SQL) -> list:
    (folder / f"{name}.sql").write_text(sql)
    (folder / f"{name}.yaml").write_text(SPEC.format(email=email))
    return load_specs(folder)


def check(
    result: dg.ExecuteInProcessResult, name: str, hop: str | None = "bigquery"
) -> dg.AssetCheckEvaluation:
    """The run's evaluation of check ``name`` on the ``hop`` asset (the Databricks view has a
    check of the same name), or on whichever asset has it when ``hop`` is None."""
    (found,) = [
        c
        for c in result.get_asset_check_evaluations()
        if c.check_name == name and (hop is None or c.asset_key.path[0] == hop)
    ]
    return found


def materialization(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def run_check(
    spec, resources: dict, instance: dg.DagsterInstance, name: str, hop: str = "bigquery"
) -> dg.AssetCheckEvaluation:
    """Run one check of ``spec``'s ``hop`` alone, as the UI's "Execute check" does."""
    key = dg.AssetCheckKey(dg.AssetKey([hop, spec.name]), name)
    job = dg.define_asset_job("one_check", selection=dg.AssetSelection.checks(key))
    defs = dg.Definitions.merge(
        build_definitions([spec], resources, dg.DefaultScheduleStatus.STOPPED),
        dg.Definitions(jobs=[job]),
    )
    result = defs.resolve_job_def("one_check").execute_in_process(
        instance=instance, raise_on_error=False
    )
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def descriptions(client: bigquery.Client, table_id: str) -> dict[str, str | None]:
    return {f.name: f.description for f in client.get_table(table_id).schema}


def test_column_descriptions_land_survive_a_reload_and_their_check_names_each_column_that_differs(
    local_stack, resources, instance, tmp_path: Path
) -> None:
    specs = export(tmp_path, "governed_customers")
    table_id = f"{local_stack.project}.governed.governed_customers"
    first = run_exports(specs, resources, instance)
    assert first.success
    with resources["bigquery"].get_client() as client:
        assert descriptions(client, table_id) == {
            "amperity_id": "Amperity ID of the customer.",
            "email": "The customer's email.",
            "state": "US state.",
        }
    assert check(first, "column_governance_matches_spec").passed

    # Someone drops a description (or a copy with WRITE_TRUNCATE loses it): the check says which.
    with resources["bigquery"].get_client() as client:
        table = client.get_table(table_id)
        table.schema = [
            bigquery.SchemaField(f.name, f.field_type, f.mode, description=None)
            if f.name == "email"
            else f
            for f in table.schema
        ]
        client.update_table(table, ["schema"])
    failed = run_check(specs[0], resources, instance, "column_governance_matches_spec")
    assert not failed.passed
    assert failed.description == (
        f"{table_id}: 1 column propert(ies) differ from governed_customers.yaml: email: "
        'description is None, the spec says "The customer\'s email."'
    )
    assert failed.metadata["columns_differing"].value == 1

    # The next load (staged, published by a copy with WRITE_TRUNCATE) sets it again, and a
    # changed description in the spec reaches the table.
    specs = export(tmp_path, "governed_customers", email="Preferred email address.")
    again = run_exports(specs, resources, instance)
    assert again.success
    assert check(again, "column_governance_matches_spec").passed
    with resources["bigquery"].get_client() as client:
        assert descriptions(client, table_id)["email"] == "Preferred email address."


def test_a_classified_column_without_its_policy_tag_fails_the_check_naming_the_column(
    local_stack, resources, instance, tmp_path: Path
) -> None:
    """With a policy tag configured for pii_email, the load sends it (the emulator keeps no
    policy tags: docs/local-stack.md), and the read-back check fails naming ``email`` and the
    tag it needs, blocking the Databricks hop. What a real BigQuery does with the tag is in the
    live suite (test_live_governance.py)."""
    local = resources["bigquery"]
    tagged = {
        **resources,
        "bigquery": type(local)(
            local_stack_dir=local.local_stack_dir,
            require_policy_tags=False,
            policy_tags={"pii_email": TAG},
        ),
    }
    specs = export(tmp_path, "tagged_customers")
    result = run_exports(specs, tagged, instance)
    failed = check(result, "column_governance_matches_spec")
    assert not failed.passed
    assert f"email: policy tags are none, pii_email needs {TAG}" in failed.description
    assert "amperity_id" not in failed.description and "state" not in failed.description
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "databricks/tagged_customers" not in materialized


def test_every_job_of_the_bigquery_hop_is_labelled_and_its_cost_is_numeric_metadata(
    local_stack, resources, instance, tmp_path: Path
) -> None:
    specs = export(tmp_path, "costed_customers")
    result = run_exports(specs, resources, instance)
    assert result.success
    loaded = materialization(result, bigquery_key("costed_customers"))
    jobs = loaded["bigquery_job_costs"]
    assert loaded["bigquery_jobs"] == len(jobs) >= 3  # load, copy, COUNT(*)
    assert {job["kind"] for job in jobs} >= {"load", "copy", "query"}
    for key in ("bigquery_bytes_processed", "bigquery_bytes_billed", "bigquery_slot_ms"):
        assert isinstance(loaded[key], int)
    assert loaded["bigquery_job_ms"] == sum(job["duration_ms"] for job in jobs)
    # The emulator keeps the labels of load and copy jobs (not of queries: see below).
    with resources["bigquery"].get_client() as client:
        for job in jobs:
            if job["kind"] in ("load", "copy"):
                labels = client.get_job(job["job_id"]).labels
                assert labels == {
                    "team": "crm",
                    EXPORT_LABEL: "costed_customers",
                    ASSET_LABEL: "bigquery-costed_customers",
                }
    rows_check = check(result, "rows_match_manifest")
    assert rows_check.metadata["bigquery_jobs"].value >= 1
    assert isinstance(rows_check.metadata["table_rows"].value, int)
    total = run_cost(instance, result.run_id)
    assert total is not None and len(total.jobs) >= len(jobs) + 1


class RecordingClient:
    """A named fake of the client's job-creating calls: records the configuration each job is
    created with (the emulator drops a query job's labels and maximumBytesBilled: see
    docs/local-stack.md), then lets the real emulator client run it. The documented form:
    ``JobConfiguration.labels`` and ``JobConfigurationQuery.maximumBytesBilled``
    (https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobConfiguration)."""

    def __init__(self, client: bigquery.Client) -> None:
        self.client = client
        self.configs: list[dict] = []

    def query(self, sql: str, job_config: bigquery.QueryJobConfig, **kwargs) -> bigquery.QueryJob:
        self.configs.append(job_config.to_api_repr())
        return self.client.query(sql, job_config=job_config, **kwargs)


def test_query_jobs_carry_labels_and_the_bytes_billed_cap(local_stack, resources) -> None:
    labels = job_labels({"team": "crm"}, "orders", "bigquery/orders", "2024-01-01_2024-01-03")
    with resources["bigquery"].get_client() as client:
        recording = RecordingClient(client)
        metered = MeteredClient(recording, labels, maximum_bytes_billed=10_000_000)  # type: ignore[arg-type]
        list(metered.query("SELECT 1").result())
        list(
            metered.query(
                "SELECT 2", job_config=bigquery.QueryJobConfig(labels={"x": "y"})
            ).result()
        )
    first, second = recording.configs
    assert first["labels"] == {
        "team": "crm",
        EXPORT_LABEL: "orders",
        ASSET_LABEL: "bigquery-orders",
        PARTITION_LABEL: "2024-01-01_2024-01-03",
    }
    assert first["query"]["maximumBytesBilled"] == "10000000"
    assert second["labels"]["x"] == "y" and second["labels"][EXPORT_LABEL] == "orders"
    assert len(metered.costs().jobs) == 2


def test_a_query_refused_for_its_bytes_billed_is_one_clear_message_not_retried() -> None:
    """A named fake of BigQuery's answer: HTTP 400 with reason ``bytesBilledLimitExceeded``
    (https://cloud.google.com/bigquery/docs/error-messages), as the client raises it."""
    answer = gexc.BadRequest(
        "Query exceeded limit for bytes billed: 1000. 10485760 or higher required.",
        errors=[{"reason": "bytesBilledLimitExceeded", "message": "Query exceeded limit"}],
    )
    error = as_bq_assets_error(answer, {})
    assert error is not None and not error.retryable
    assert str(error) == (
        "BigQuery refused a query that would bill more than its maximum_bytes_billed: Query "
        "exceeded limit for bytes billed: 1000. 10485760 or higher required. Raise "
        "bigquery.maximum_bytes_billed in the export's spec (or BQ_ASSETS_MAXIMUM_BYTES_BILLED), "
        "or make the query read less (filter on the partition column)."
    )


EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[a-z]{2,}")


def test_a_classified_key_never_shows_its_values_in_samples_messages_alerts_logs_or_metadata(
    local_stack, resources, instance, tmp_path: Path
) -> None:
    """An email as the primary key, duplicated: the key check fails and says how often, never
    which email."""
    (tmp_path / "by_email.sql").write_text(
        "SELECT email, amperity_id FROM (SELECT * FROM customer_360 LIMIT 3) "
        "UNION ALL SELECT email, amperity_id FROM (SELECT * FROM customer_360 LIMIT 2)"
    )
    (tmp_path / "by_email.yaml").write_text(
        "primary_key: [email]\ncadence: daily\n"
        "columns:\n  email: {description: Email address., classification: pii_email}\n"
    )
    result = run_exports(load_specs(tmp_path), resources, instance)
    failed = check(result, "primary_key_unique_and_not_null", hop="query")
    assert not failed.passed
    assert failed.metadata["duplicate_sample"].value == [
        ["<redacted pii_email>", "2"],
        ["<redacted pii_email>", "2"],
    ]
    assert "e.g. <redacted pii_email>" in failed.description
    (alert,) = failed_checks(instance, result.run_id)
    everything = [alert, failed.description or ""]
    everything += [json.dumps(str(e.dagster_event)) for e in instance.all_logs(result.run_id)]
    everything += [str(e.user_message) for e in instance.all_logs(result.run_id)]
    query = materialization(result, query_key("by_email"))
    everything.append(repr(query))
    leaked = [text for text in everything if EMAIL.search(text)]
    assert leaked == []


def test_a_failed_run_names_its_bigquery_cost_in_the_alert_even_for_the_step_that_failed(
    local_stack, resources, instance, tmp_path: Path
) -> None:
    """A step that fails after running jobs records their cost as an observation of its asset;
    the run's total (the demo's summary, the failure alert) counts it."""
    (spec,) = export(tmp_path, "failing_costs")

    @dg.asset(name="failing_costs", key_prefix="bigquery")
    def failing(context: dg.AssetExecutionContext, bigquery: ExportBigQueryResource) -> None:
        with bigquery_jobs(context, bigquery, spec) as client:
            list(client.query("SELECT 1").result())
            raise BqAssetsError("the publish failed")

    result = dg.materialize(
        [failing], resources={"bigquery": resources["bigquery"]}, instance=instance,
        raise_on_error=False,
    )  # fmt: skip
    assert not result.success
    cost = run_cost(instance, result.run_id)
    assert cost is not None and [job.kind for job in cost.jobs] == ["query"]
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="report_failed_runs",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()
    message = failure_message(context)
    assert message.endswith(f"(the run's {cost.describe()})")
    assert "1 BigQuery job(s): 0 bytes processed, 0 billed" in message


def test_descriptions_survive_partition_replaces(orders, instance, tmp_path: Path) -> None:
    """A partitioned export: the first run creates the table, a later run replaces one of its
    days; each time the table has the spec's descriptions and the check reads them back."""
    resources, _ = orders
    described = SPEC_PARTITIONED.replace("{columns}", PARTITION_COLUMNS)
    (tmp_path / "described_orders.sql").write_text(PARTITION_SQL)
    (tmp_path / "described_orders.yaml").write_text(described)
    (spec,) = load_specs(tmp_path)
    table_id = f"{resources['bigquery'].emulator().project}.partition_tests.described_orders"
    for first, last in ((DAYS[0], DAYS[1]), (DAYS[1], DAYS[1])):
        result = materialize(spec, resources, instance, first, last)
        assert result.success
        assert check(result, "column_governance_matches_spec").passed
        with resources["bigquery"].get_client() as client:
            assert descriptions(client, table_id) == {
                "order_id": "The order.",
                "amperity_id": "Who ordered.",
                "order_datetime": "When.",
                "amount": "How much.",
            }


class FakeTablesApi:
    """A named fake of ``tables.patch`` (what ``update_table`` sends), for the policy tags no
    engine here keeps: records each patched schema in its REST form, ``TableFieldSchema`` with
    ``policyTags.names`` (https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#TableFieldSchema;
    "Set a policy tag on a column",
    https://cloud.google.com/bigquery/docs/column-level-security#set_policy)."""

    def __init__(self) -> None:
        self.patched: list[list[dict]] = []
        self.policy_tags = {"pii_email": TAG}

    def update_table(self, table: bigquery.Table, fields: list[str], **_: object) -> bigquery.Table:
        assert fields == ["schema"]
        self.patched.append([f.to_api_repr() for f in table.schema])
        return table


def test_policy_tags_are_set_in_the_documented_form_and_only_where_missing(tmp_path: Path) -> None:
    from bq_assets.engine.bigquery_columns import apply_column_governance

    (spec,) = export(tmp_path, "tag_form")
    table = bigquery.Table(
        "p.d.tag_form",
        schema=[
            bigquery.SchemaField(
                "amperity_id", "STRING", description="Amperity ID of the customer."
            ),
            bigquery.SchemaField("email", "STRING", description="The customer's email."),
            bigquery.SchemaField("state", "STRING", description="US state."),
        ],
    )
    api = FakeTablesApi()
    table = apply_column_governance(api, table, spec)  # type: ignore[arg-type]
    (patched,) = api.patched
    assert patched[1] == {
        "name": "email",
        "type": "STRING",
        "mode": "NULLABLE",
        "description": "The customer's email.",
        "policyTags": {"names": [TAG]},
    }
    assert "policyTags" not in patched[0] and "policyTags" not in patched[2]
    apply_column_governance(api, table, spec)  # type: ignore[arg-type]
    assert len(api.patched) == 1  # nothing differs any more: no second patch
