"""Merge exports end to end on the real local stack, through Dagster (issue 26): a first run
loads the table; the source then gets updates, inserts, a delete by flag, an older version of a
key and a row arriving late inside the lookback; the second run leaves BigQuery and the
Databricks stand-in equal to the source, row for row; running it again changes nothing; a
MERGE that fails leaves the table and the high-water mark as they were. Also: an explicit
window from run tags, a table dropped under its mark, and the checks seen failing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from bq_assets.engine import bigquery_merge
from bq_assets.exports import ExportSpec, load_specs
from bq_assets.factory import build_definitions
from bq_assets.local.resources import LocalBigQueryResource
from bq_assets.resources.source import DuckDBSourceResource
from bq_assets.stages.cursor import CURSOR_END_TAG, CURSOR_START_TAG, stored_state
from bq_assets.stages.databricks import table_name
from bq_assets.stages.merge import MERGE_MATCHES_WINDOW, PRIMARY_KEY_UNIQUE_IN_TABLE
from bq_assets.translator import bigquery_key, databricks_key, gcs_key, query_key
from bq_assets_tests.conftest import step_errors
from bq_assets_tests.test_pipeline import sorted_rows

pytestmark = pytest.mark.stack

SQL = """
SELECT id, name, score, updated_at, is_deleted
FROM profiles
WHERE updated_at >= $cursor_start AND updated_at < $cursor_end
"""
SPEC = """
description: Profiles, merged by id.
primary_key: [id]
cadence: daily
load: {mode: merge, cursor: updated_at, lookback: 2h, deleted: is_deleted}
bigquery: {dataset: merge_tests}
databricks: {schema: merge_tests}
"""
COLUMNS = "id, name, score, updated_at, is_deleted"
#: The export as its table should be: the latest row of each key, unless flagged deleted.
EXPECTED = f"""
SELECT {COLUMNS} FROM profiles
QUALIFY row_number() OVER (PARTITION BY id ORDER BY updated_at DESC) = 1
ORDER BY id
"""
#: Ten days ago at midnight UTC: the first rows' times, six of them five hours apart.
BASE = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(
    days=10
)
MARK = BASE + dt.timedelta(hours=25)  # the largest updated_at of the first rows


def spec_in(folder: Path, name: str, sql: str = SQL, spec: str = SPEC) -> ExportSpec:
    (folder / f"{name}.sql").write_text(sql)
    (folder / f"{name}.yaml").write_text(spec)
    (loaded,) = load_specs(folder)
    return loaded


@pytest.fixture
def profiles(local_stack, resources, tmp_path: Path) -> tuple[dict, Path]:
    """The stack's resources with a source of its own: six profiles, five hours apart."""
    database = tmp_path / "profiles.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute(
            "CREATE TABLE profiles AS SELECT 'id-' || i AS id, 'name ' || i AS name, "
            "(i * 1.5)::DECIMAL(10, 2) AS score, "
            "$base::TIMESTAMPTZ + to_hours(i * 5) AS updated_at, false AS is_deleted "
            "FROM range(6) t(i)",
            {"base": BASE},
        )
    source = DuckDBSourceResource(database=str(database), staging_dir=str(tmp_path / "staging"))
    return {**resources, "source": source}, database


def change(database: Path, *statements: str) -> None:
    with duckdb.connect(str(database)) as con:
        for statement in statements:
            con.execute(statement, {"mark": MARK} if "$mark" in statement else None)


def materialize(
    spec: ExportSpec,
    resources: dict,
    instance: dg.DagsterInstance,
    tags: dict | None = None,
    databricks: bool = False,
) -> dg.ExecuteInProcessResult:
    """One run of the export's assets up to BigQuery (and Databricks, if asked), with their
    checks."""
    job = build_definitions(
        [spec], resources, dg.DefaultScheduleStatus.STOPPED
    ).resolve_implicit_global_asset_job_def()
    keys = [query_key(spec.name), gcs_key(spec.name), bigquery_key(spec.name)]
    if databricks:
        keys.append(databricks_key(spec.name))
    return job.execute_in_process(
        instance=instance, raise_on_error=False, tags=tags, asset_selection=keys
    )


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def query_mark(result: dg.ExecuteInProcessResult) -> str:
    """The high-water mark a run's BigQuery materialization recorded."""
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key.path[0] == "bigquery"
    ]
    return event.materialization.metadata["cursor_mark"].value


def failed_checks(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        c.check_name: c.description or ""
        for c in result.get_asset_check_evaluations()
        if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR
    }


def expected_rows(database: Path) -> list[tuple]:
    with duckdb.connect(str(database), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return [row for row in con.execute(EXPECTED).fetchall() if not row[-1]]


def bigquery_rows(resources: dict, spec: ExportSpec) -> list[tuple]:
    table_id = f"{resources['bigquery'].project_id()}.merge_tests.{spec.name}"
    with resources["bigquery"].get_client() as client:
        return sorted_rows([tuple(row.values()) for row in client.list_rows(table_id)])


def stand_in_rows(resources: dict, spec: ExportSpec) -> list[tuple]:
    table = resources["databricks"].read_table(table_name(spec))
    return sorted_rows([tuple(row.values()) for row in table.to_pylist()])


def assert_equal_to_the_source(
    resources: dict, spec: ExportSpec, database: Path, databricks: bool = False
) -> None:
    expected = sorted_rows(expected_rows(database))
    assert bigquery_rows(resources, spec) == expected
    if databricks:
        assert stand_in_rows(resources, spec) == expected


def test_a_second_run_merges_exactly_what_changed_and_a_third_changes_nothing(
    profiles, tmp_path: Path
) -> None:
    resources, database = profiles
    spec = spec_in(tmp_path, "mp_profiles")
    with dg.instance_for_test() as instance:
        first = materialize(spec, resources, instance, databricks=True)
        assert first.success, step_errors(first)
        assert failed_checks(first) == {}
        assert metadata(first, query_key(spec.name))["cursor_from"] == "initial"
        assert metadata(first, bigquery_key(spec.name))["cursor_mark"] == MARK.isoformat()
        assert_equal_to_the_source(resources, spec, database, databricks=True)

        change(
            database,
            # two updates, one delete by flag, one insert
            "UPDATE profiles SET name = name || ' (moved)', score = score + 100, "
            "updated_at = now() - INTERVAL 1 MINUTE WHERE id IN ('id-1', 'id-2')",
            "UPDATE profiles SET is_deleted = true, updated_at = now() - INTERVAL 1 MINUTE "
            "WHERE id = 'id-3'",
            "INSERT INTO profiles VALUES ('id-new', 'new', 7.25, now() - INTERVAL 1 MINUTE, false)",
            # an older version of an updated key: the latest wins
            "INSERT INTO profiles VALUES ('id-1', 'stale', 0, now() - INTERVAL 5 MINUTE, false)",
            # older than the mark, inside the 2 h lookback: a row that arrived late
            "INSERT INTO profiles VALUES ('id-late', 'late', 1, $mark - INTERVAL 1 HOUR, false)",
        )
        second = materialize(spec, resources, instance, databricks=True)
        assert second.success, step_errors(second)
        assert failed_checks(second) == {}
        query = metadata(second, query_key(spec.name))
        assert query["cursor_start"] == (MARK - dt.timedelta(hours=2)).isoformat()
        assert query["window_duplicates_dropped"] == 1
        merged = metadata(second, bigquery_key(spec.name))
        # id-new and id-late inserted; id-1, id-2 and id-5 (at the mark, sent again) updated;
        # id-3 deleted.
        counts = [merged[k] for k in ("merge_inserted", "merge_updated", "merge_deleted")]
        assert counts == [2, 3, 1]
        assert merged["merge_affected_rows"] == 6
        assert merged["dagster/row_count"] == 6 + 2 - 1
        assert_equal_to_the_source(resources, spec, database, databricks=True)
        mark, moved = merged["cursor_mark"], merged["cursor_mark_moved_at"]
        assert dt.datetime.fromisoformat(mark) > MARK

        third = materialize(spec, resources, instance, databricks=True)
        assert third.success, step_errors(third)
        again = metadata(third, bigquery_key(spec.name))
        assert again["merge_inserted"] == again["merge_deleted"] == 0
        assert again["merge_updated"] == 3  # id-1, id-2, id-new: inside the lookback
        assert (again["cursor_mark"], again["cursor_mark_moved_at"]) == (mark, moved)
        assert_equal_to_the_source(resources, spec, database, databricks=True)


class MergeFaultBigQueryResource(LocalBigQueryResource):
    """FAULT INJECTION (a named fault, not a double): the local BigQuery resource, whose MERGE
    statements reach the emulator with one assignment replaced by ``ERROR()`` for one key, so
    the statement fails inside the engine at run time, after it started on the matched rows
    (https://cloud.google.com/bigquery/docs/reference/standard-sql/debugging_functions#error).
    Everything else goes through unchanged."""

    failing_key: str

    @contextmanager
    def get_client(self) -> Iterator:
        with super().get_client() as client:
            query = client.query

            def failing_merge(sql: str, *args, **kwargs):
                if sql.startswith("MERGE"):
                    sql = sql.replace(
                        "`name` = source.`name`",
                        f"`name` = IF(source.`id` = '{self.failing_key}', "
                        "ERROR('fault injected at the MERGE'), source.`name`)",
                    )
                return query(sql, *args, **kwargs)

            client.query = failing_merge
            yield client


def test_a_failed_merge_leaves_the_table_and_the_mark_as_they_were(
    profiles, tmp_path: Path
) -> None:
    resources, database = profiles
    spec = spec_in(tmp_path, "mp_fault")
    with dg.instance_for_test() as instance:
        assert materialize(spec, resources, instance).success
        before = bigquery_rows(resources, spec)
        state = stored_state(instance, spec)
        change(
            database,
            "UPDATE profiles SET name = 'changed', updated_at = now() - INTERVAL 1 MINUTE "
            "WHERE id IN ('id-0', 'id-4')",
        )
        faulty = MergeFaultBigQueryResource(
            local_stack_dir=resources["bigquery"].local_stack_dir, failing_key="id-4"
        )
        failed = materialize(spec, {**resources, "bigquery": faulty}, instance)
        assert not failed.success
        message = step_errors(failed)[f"bigquery__{spec.name}"]
        assert "fault injected at the MERGE" in message and "nothing of it was applied" in message
        assert bigquery_rows(resources, spec) == before
        assert stored_state(instance, spec) == state  # the mark did not move

        repaired = materialize(spec, resources, instance)
        assert repaired.success, step_errors(repaired)
        assert_equal_to_the_source(resources, spec, database)
        assert stored_state(instance, spec) != state


def test_run_tags_re_send_a_range_and_the_next_run_carries_on_from_the_mark(
    profiles, tmp_path: Path
) -> None:
    resources, database = profiles
    spec = spec_in(tmp_path, "mp_resend")
    with dg.instance_for_test() as instance:
        assert materialize(spec, resources, instance).success
        # A correction that kept its old updated_at: no window from the mark sees it.
        change(database, "UPDATE profiles SET name = 'corrected' WHERE id = 'id-0'")
        window = {
            CURSOR_START_TAG: (BASE - dt.timedelta(hours=1)).isoformat(),
            CURSOR_END_TAG: (BASE + dt.timedelta(hours=1)).isoformat(),
        }
        resent = materialize(spec, resources, instance, tags=window)
        assert resent.success, step_errors(resent)
        query = metadata(resent, query_key(spec.name))
        assert (query["cursor_from"], query["dagster/row_count"]) == ("tags", 1)
        assert metadata(resent, bigquery_key(spec.name))["cursor_mark"] == MARK.isoformat()
        assert_equal_to_the_source(resources, spec, database)

        carried_on = materialize(spec, resources, instance)
        assert carried_on.success, step_errors(carried_on)
        query = metadata(carried_on, query_key(spec.name))
        assert query["cursor_from"] == "mark"
        assert query["cursor_start"] == (MARK - dt.timedelta(hours=2)).isoformat()

        # A window where nothing changed goes through every hop, merging nothing.
        nothing = {
            CURSOR_START_TAG: (BASE - dt.timedelta(days=2)).isoformat(),
            CURSOR_END_TAG: (BASE - dt.timedelta(days=1)).isoformat(),
        }
        empty = materialize(spec, resources, instance, tags=nothing)
        assert empty.success, step_errors(empty)
        assert failed_checks(empty) == {}
        merged = metadata(empty, bigquery_key(spec.name))
        assert merged["staged_rows"] == merged["merge_affected_rows"] == 0
        assert merged["cursor_mark"] == query_mark(carried_on)
        assert_equal_to_the_source(resources, spec, database)

        bad = materialize(spec, resources, instance, tags={CURSOR_START_TAG: "last tuesday"})
        message = step_errors(bad)[f"query__{spec.name}"]
        assert f"run tag {CURSOR_START_TAG}: 'last tuesday' is not an ISO 8601 date" in message


def test_a_table_dropped_under_its_mark_is_refused_until_everything_is_sent_again(
    profiles, tmp_path: Path
) -> None:
    resources, database = profiles
    spec = spec_in(tmp_path, "mp_dropped")
    with dg.instance_for_test() as instance:
        first = materialize(spec, resources, instance)
        assert first.success
        table_id = metadata(first, bigquery_key(spec.name))["dagster/table_name"]
        with resources["bigquery"].get_client() as client:
            client.delete_table(table_id)
        refused = materialize(spec, resources, instance)
        message = step_errors(refused)[f"bigquery__{spec.name}"]
        assert f"{table_id} does not exist, and this run's window does not reach back" in message
        assert "bq_assets/cursor_start: initial" in message

        rebuilt = materialize(spec, resources, instance, tags={CURSOR_START_TAG: "initial"})
        assert rebuilt.success, step_errors(rebuilt)
        assert_equal_to_the_source(resources, spec, database)


def without_delete_clause(*args, **kwargs) -> str:
    """The MERGE a careless edit could leave: no WHEN MATCHED … THEN DELETE."""
    statement = MERGE_STATEMENT(*args, **kwargs)
    return "\n".join(line for line in statement.splitlines() if "THEN DELETE" not in line)


MERGE_STATEMENT = bigquery_merge.merge_statement


def test_the_merge_checks_fail_when_the_merge_or_the_table_is_wrong(
    profiles, tmp_path: Path, monkeypatch
) -> None:
    resources, database = profiles
    spec = spec_in(tmp_path, "mp_checks")
    with dg.instance_for_test() as instance:
        first = materialize(spec, resources, instance)
        assert first.success
        table_id = metadata(first, bigquery_key(spec.name))["dagster/table_name"]
        change(
            database,
            "UPDATE profiles SET is_deleted = true, updated_at = now() - INTERVAL 1 MINUTE "
            "WHERE id = 'id-2'",
        )
        monkeypatch.setattr(bigquery_merge, "merge_statement", without_delete_clause)
        careless = materialize(spec, resources, instance)
        failed = failed_checks(careless)
        assert set(failed) == {MERGE_MATCHES_WINDOW}
        assert (
            "the table went from 6 to 6 rows, not by 0 inserted - 1 deleted"
            in (failed[MERGE_MATCHES_WINDOW])
        )
        monkeypatch.undo()

        # A duplicated key that no window touches: only the whole-table check sees it.
        with resources["bigquery"].get_client() as client:
            client.query(
                f"INSERT INTO `{table_id}` SELECT * FROM `{table_id}` WHERE id = 'id-0'"
            ).result()
        duplicated = materialize(spec, resources, instance)
        failed = failed_checks(duplicated)
        assert set(failed) == {PRIMARY_KEY_UNIQUE_IN_TABLE}
        assert "1 key(s) of id occur more than once" in failed[PRIMARY_KEY_UNIQUE_IN_TABLE]
        assert "id-0 (2 rows)" in failed[PRIMARY_KEY_UNIQUE_IN_TABLE]


FROM_THE_MARK = SPEC.replace("is_deleted}", f"is_deleted, initial: '{MARK.isoformat()}'}}")


@pytest.mark.parametrize(
    ("sql", "spec", "says"),
    [
        (
            # ignores $cursor_start: the rows before the window (from initial) come back too
            SQL.replace("updated_at >= $cursor_start", "$cursor_start IS NOT NULL"),
            FROM_THE_MARK,
            "5 of 6 row(s) have updated_at outside the window",
        ),
        (
            SQL.replace("FROM profiles", "FROM (FROM profiles UNION ALL FROM profiles)"),
            SPEC,
            "6 key(s) have two or more rows with the same latest updated_at",
        ),
    ],
    ids=["outside-the-window", "tied-latest-rows"],
)
def test_a_window_the_query_does_not_keep_or_cannot_settle_fails_the_query_step(
    profiles, tmp_path: Path, sql: str, spec: str, says: str
) -> None:
    resources, _ = profiles
    export = spec_in(tmp_path, "mp_refused", sql=sql, spec=spec)
    with dg.instance_for_test() as instance:
        result = materialize(export, resources, instance)
    message = step_errors(result)[f"query__{export.name}"]
    assert says in message and "nothing was exported" in message
    assert "Traceback" not in message


def test_a_new_column_the_spec_allows_reaches_the_table_before_the_merge(
    profiles, tmp_path: Path
) -> None:
    resources, database = profiles
    spec = spec_in(tmp_path, "mp_widened")
    with dg.instance_for_test() as instance:
        assert materialize(spec, resources, instance).success
        change(
            database,
            "ALTER TABLE profiles ADD COLUMN tier VARCHAR",
            "UPDATE profiles SET tier = 'gold', updated_at = now() - INTERVAL 1 MINUTE "
            "WHERE id = 'id-1'",
        )
        widened = spec_in(
            tmp_path,
            "mp_widened",
            sql=SQL.replace("is_deleted\n", "is_deleted, tier\n"),
            spec=SPEC.replace(
                "{dataset: merge_tests}",
                "{dataset: merge_tests, schema_update_options: [ALLOW_FIELD_ADDITION]}",
            ),
        )
        result = materialize(widened, resources, instance)
        assert result.success, step_errors(result)
        assert failed_checks(result) == {}
    rows = {row[0]: row[-1] for row in bigquery_rows(resources, widened)}
    assert rows["id-1"] == "gold" and rows["id-0"] is None
