"""The house's rules, as a newcomer would check them: one translator gives every asset its
attributes, every error leaves a step one way, the hand-off is one typed set, and the local
instance queues runs like a deployment."""

from __future__ import annotations

import ast
from pathlib import Path

import dagster as dg
import grpc
import pytest
import requests
import yaml
from google.api_core import exceptions as api_exceptions

import bq_assets
from bq_assets.errors import BqAssetsError
from bq_assets.exports import SHIPPED_EXPORTS_DIR, load_specs
from bq_assets.factory import build_definitions
from bq_assets.failures import as_bq_assets_error, failing_clearly, reported_as_failure
from bq_assets.resources.google import ExportGCSResource
from bq_assets.settings import local_resources
from bq_assets.stages.handoff import STANDARD_KEYS, HandOff
from bq_assets.translator import ExportTranslator

PACKAGE = Path(bq_assets.__file__).parent
ROOT = PACKAGE.parent
#: Where Dagster assets and asset specs may be made: the factory (from the translator's spec).
ASSET_MAKERS = {"factory.py", "translator.py"}


def definitions(translator: ExportTranslator | None = None) -> dg.Definitions:
    specs = load_specs(SHIPPED_EXPORTS_DIR)
    resources = local_resources(Path("/nonexistent-stack"))
    return build_definitions(specs, resources, dg.DefaultScheduleStatus.STOPPED, translator)


def calls_named(path: Path, names: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in names:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    return found


def test_assets_and_checks_are_made_only_by_the_factory() -> None:
    """No hop writes an asset attribute or decorates its own body: the factory makes every
    asset from the translator's spec and every check from its declaration."""
    makers = {"asset", "multi_asset", "AssetSpec", "asset_check", "multi_asset_check"}
    offenders = [
        call
        for path in PACKAGE.rglob("*.py")
        if str(path.relative_to(PACKAGE)) not in ASSET_MAKERS
        for call in calls_named(path, makers)
    ]
    assert offenders == []


def test_a_subclassed_translator_changes_every_asset_it_makes() -> None:
    class Platform(ExportTranslator):
        def get_owners(self, spec, hop):  # type: ignore[override]
            return ["team:platform"]

        def get_group_name(self, spec, hop):  # type: ignore[override]
            return "exports"

        def get_pool(self, spec, hop):  # type: ignore[override]
            return "warehouse"

    defs = definitions(Platform())
    specs = [s for s in defs.resolve_all_asset_specs() if s.key.path[0] != "source"]
    assert len(specs) == 15
    assert {s.group_name for s in specs} == {"exports"}
    assert all(s.owners == ["team:platform"] for s in specs)
    assert {a.op.pool for a in defs.assets if isinstance(a, dg.AssetsDefinition)} == {"warehouse"}
    # The schedules ask the translator too: a run selects the export's assets.
    (tick,) = [s for s in defs.schedules if "daily" in s.name and "unified" not in s.name][:1]
    assert tick.job.selection is not None


def test_the_translator_gives_each_hop_its_attributes() -> None:
    """What users see in the UI, per hop, from the one place that says it."""
    by_key = {s.key.to_user_string(): s for s in definitions().resolve_all_asset_specs()}
    query, gcs = by_key["query/customer_360"], by_key["gcs/customer_360"]
    assert query.kinds == {"duckdb", "parquet"} and "sql" in query.metadata
    assert [d.asset_key.to_user_string() for d in gcs.deps] == ["query/customer_360"]
    delivered = by_key["gcs/amperity_orders"]
    assert [d.asset_key.to_user_string() for d in delivered.deps] == [
        "source/delivery/amperity/orders"
    ]
    assert delivered.kinds == {"gcs", "csv"}
    assert "query/amperity_orders" not in by_key
    partitioned = by_key["databricks/unified_transactions"]
    assert partitioned.partitions_def is not None and partitioned.freshness_policy is not None


def test_the_hand_off_reads_back_exactly_what_it_wrote() -> None:
    written = HandOff(
        row_count=3,
        table_name="p.d.t",
        manifest_uri="gs://b/m.json",
        rows_by_partition={"2024-01-01": 3},
        objects=[{"uri": "gs://b/x", "rows": 3}],
    )
    metadata = written.metadata()
    assert metadata["dagster/row_count"] == 3 and metadata["dagster/table_name"] == "p.d.t"
    assert "snapshot_uri" not in metadata  # unset fields are not written
    unwrapped = {k: getattr(v, "value", v) for k, v in metadata.items()}
    assert HandOff.read(unwrapped) == written


def test_the_hand_off_keys_are_spelled_only_by_the_hand_off() -> None:
    """A hop reads and writes what the next hop needs through ``HandOff`` only: none of its
    keys appears as a string anywhere else in the package."""
    keys = {field for field in HandOff.__dataclass_fields__} | set(STANDARD_KEYS.values())
    # Also display keys of other metadata (a check's result, the Databricks asset's table).
    keys -= {"objects", "dagster/row_count", "dagster/table_name", "rows_before_load"}
    offenders = []
    for path in (PACKAGE / "stages").glob("*.py"):
        if path.name == "handoff.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in keys:
                offenders.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert offenders == []


@pytest.mark.parametrize(
    ("raised", "retryable", "says"),
    [
        (requests.exceptions.ConnectionError("Max retries exceeded port=4443"), True, "GCS at"),
        (api_exceptions.Forbidden("storage.objects.create denied"), False, "permission denied"),
        (api_exceptions.NotFound("Not found: Table p:d.t"), False, "Not found: Table p:d.t"),
        (api_exceptions.InternalServerError("backend error"), True, "backend error"),
        (BqAssetsError("our own words", retryable=True), True, "our own words"),
    ],
)
def test_every_runtime_error_becomes_one_failure_that_says_whether_a_retry_helps(
    raised: Exception, retryable: bool, says: str
) -> None:
    gcs = ExportGCSResource(project="p", bucket="b")
    with pytest.raises(dg.Failure) as failure, reported_as_failure(gcs=gcs):
        raise raised
    assert says in failure.value.description
    assert failure.value.allow_retries is retryable
    assert failure.value.__cause__ is None and failure.value.__suppress_context__


def test_a_bug_keeps_its_stack_trace() -> None:
    assert as_bq_assets_error(KeyError("oops"), {}) is None
    with pytest.raises(KeyError), reported_as_failure():
        raise KeyError("oops")


def test_the_wrapper_keeps_the_body_s_signature_for_dagster_and_wraps_generators() -> None:
    def body(context: dg.AssetCheckExecutionContext, gcs: ExportGCSResource):
        yield dg.AssetCheckResult(passed=True)
        raise BqAssetsError("after the first result")

    wrapped = failing_clearly(body)
    assert list(wrapped.__signature__.parameters) == ["context", "gcs"]
    assert wrapped.__signature__.parameters["gcs"].annotation is ExportGCSResource
    results = wrapped(None, gcs=ExportGCSResource(project="p"))
    assert next(results).passed
    with pytest.raises(dg.Failure, match="after the first result"):
        next(results)


def test_grpc_unavailable_names_the_service() -> None:
    class Unavailable(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return "failed to connect to all addresses"

    error = as_bq_assets_error(Unavailable(), {"BigQuery": "http://127.0.0.1:9050"})
    assert error is not None and error.retryable
    assert "BigQuery at http://127.0.0.1:9050 is unreachable" in str(error)


def test_the_local_instance_queues_runs_and_pools_steps_like_a_deployment() -> None:
    local = yaml.safe_load((PACKAGE / "local" / "dagster.yaml").read_text())
    deployed = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    assert local["run_coordinator"] == deployed["run_coordinator"]
    assert local["concurrency"] == deployed["concurrency"]
    assert "storage" not in local  # SQLite in DAGSTER_HOME, not PostgreSQL
