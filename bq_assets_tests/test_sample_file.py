"""The user's file is never replaced (issue 24): the sample generator writes only a file it
made (or where there is none); a database of one's own at the sample's path stays as it is,
and one message says whose it is and how to declare it as a source."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest

from bq_assets.local import sample_data
from bq_assets.local.sample_data import NotTheSampleError

ROOT = Path(__file__).resolve().parents[1]


def own_database(path: Path) -> str:
    """A DuckDB database of someone's own (no sample_info); returns its content's digest."""
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE my_orders AS SELECT range AS id, 'mine' AS note FROM range(3)")
    return digest(path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_database_of_ones_own_at_the_samples_path_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "source.duckdb"
    before = own_database(path)
    modified = path.stat().st_mtime
    with pytest.raises(NotTheSampleError) as refused:
        sample_data.ensure(path, 10)
    assert digest(path) == before and path.stat().st_mtime == modified
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM my_orders").fetchone() == (3,)
    message = str(refused.value)
    assert message.startswith(
        f"{path} is not the generated sample (it has no sample_info table): it is a file of "
        "your own (owner "
    )
    assert "so it was left as it is and no sample was written over it" in message
    assert f"BQ_ASSETS_SOURCE_DATABASE={path}" in message
    assert "BQ_ASSETS_SOURCES=mine, BQ_ASSETS_SOURCE_MINE_KIND=duckdb" in message
    assert "\n" not in message and not refused.value.retryable


def test_a_file_that_is_no_database_at_all_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "source.duckdb"
    path.write_text("id,name\n1,a\n")
    with pytest.raises(NotTheSampleError, match="is not the generated sample"):
        sample_data.ensure(path, 10)
    assert path.read_text() == "id,name\n1,a\n"


def test_a_table_named_sample_info_of_ones_own_does_not_make_it_the_sample(
    tmp_path: Path,
) -> None:
    path = tmp_path / "source.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE sample_info AS SELECT 'my notes' AS note")
    before = digest(path)
    with pytest.raises(NotTheSampleError):
        sample_data.ensure(path, 10)
    assert digest(path) == before


def test_the_sample_is_made_where_there_is_none_and_made_again_when_stale(
    tmp_path: Path,
) -> None:
    path = tmp_path / "source.duckdb"
    sample_data.ensure(path, 10)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM customer_360").fetchone() == (10,)
    with duckdb.connect(str(path)) as con:  # as if made on an earlier day
        con.execute("UPDATE sample_info SET generated_on = DATE '2020-01-01'")
    sample_data.ensure(path, 10)
    with duckdb.connect(str(path), read_only=True) as con:
        (day,) = con.execute("SELECT generated_on FROM sample_info").fetchone()
    assert day == dt.datetime.now(dt.UTC).date()
    sample_data.ensure(path, 12)  # another size: its own sample, made again
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM customer_360").fetchone() == (12,)


@pytest.mark.stack
@pytest.mark.timeout(600)
def test_make_demo_leaves_a_database_of_ones_own_untouched_and_says_so_once(
    local_stack, stack_dir: Path, tmp_path: Path
) -> None:
    """`make demo` as the Makefile runs it, with BQ_ASSETS_LOCAL_DIR a folder of the test's own
    that holds the session stack's state (so `make up` finds the running stack) and, where the
    local default source lives, a database of one's own."""
    local = tmp_path / "local"
    local.mkdir()
    shutil.copy(stack_dir / "stack.json", local / "stack.json")
    own = local / "source.duckdb"
    before = own_database(own)
    env = os.environ | {
        "BQ_ASSETS_LOCAL_DIR": str(local),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    env.pop("BQ_ASSETS_SOURCE_DATABASE", None)
    done = subprocess.run(
        ["make", "--no-print-directory", "demo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert digest(own) == before, "the user's database was changed"
    assert output.count("is not the generated sample") == 1, output
    assert f"{own} is not the generated sample" in output
    assert "Traceback" not in output and "checks:" not in output, output
    assert not (local / "source.tmp").exists()
