"""Staging tables live apart from the published dataset and never outlive a failed load."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bq_assets.engine.bigquery_load import run_load
from bq_assets.engine.bigquery_tables import STAGING_TABLE_EXPIRATION_MS
from bq_assets.errors import BqAssetsError
from bq_assets_tests.test_bigquery_load import manifest_of, spec_for, table_rows

pytestmark = pytest.mark.stack


def table_names(client, dataset: str, prefix: str) -> list[str]:
    return sorted(t.table_id for t in client.list_tables(dataset) if t.table_id.startswith(prefix))


def test_failed_loads_leave_no_staging_table_and_the_published_dataset_holds_only_the_table(
    local_stack, resources, tmp_path: Path
) -> None:
    log = logging.getLogger("test")
    spec = spec_for(tmp_path, "staged")
    good = manifest_of(local_stack, resources, "id,name\n1,a\n2,b\n")
    with resources["bigquery"].get_client() as client:
        run_load(client, local_stack.project, spec, good, log)
        for bad_value in ("not-a-number", "also-not-a-number"):  # as a new user did: twice
            bad = manifest_of(local_stack, resources, f"id,name\n3,c\n{bad_value},d\n")
            with pytest.raises(BqAssetsError):
                run_load(client, local_stack.project, spec, bad, log)

        published = f"{local_stack.project}.amperity_exports"
        staging = f"{local_stack.project}.amperity_exports_staging"
        assert table_names(client, published, "staged") == ["staged"]
        assert table_names(client, staging, "staged") == []
        assert table_rows(resources, f"{published}.staged") == [(1, "a"), (2, "b")]

        dataset = client.get_dataset(staging)
        assert dataset.location == "US"
        # The emulator stores the dataset's default expiration (real BigQuery then sets each new
        # table's `expires` from it; the emulator does not expire tables: see the README).
        assert dataset.default_table_expiration_ms == STAGING_TABLE_EXPIRATION_MS


def test_the_staging_dataset_is_configurable_and_never_the_published_one(
    local_stack, resources, tmp_path: Path
) -> None:
    log = logging.getLogger("test")
    spec = spec_for(tmp_path, "elsewhere", ", staging_dataset: bq_assets_scratch")
    manifest = manifest_of(local_stack, resources, "id,name\n1,a\n")
    with resources["bigquery"].get_client() as client:
        run_load(client, local_stack.project, spec, manifest, log)
        assert table_names(client, f"{local_stack.project}.bq_assets_scratch", "elsewhere") == []
    with pytest.raises(Exception, match="staging_dataset must differ from dataset"):
        spec_for(tmp_path, "same", ", staging_dataset: amperity_exports")
