"""The deployment, proven on a real PostgreSQL server: an instance made from deploy/dagster.yaml,
the code location served by `dagster code-server start` and `dagster-daemon run`, each its own
process, on the local emulator stack. The compose file and the Helm values cannot run here (no
container engine): they are checked statically against dagster.yaml and the workspace.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from bq_assets.exports import SHIPPED_EXPORTS_DIR, ExportSpec, load_specs
from bq_assets.partitioning import Window
from bq_assets.schedules import EXPORT_TAG
from bq_assets.settings import local_resources
from bq_assets.translator import gcs_key, query_key
from bq_assets_tests.postgres import PostgresServer, free_port
from bq_assets_tests.test_pipeline import normalized, source_rows

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
EVERY_MINUTE = "*/1 * * * *"
TICK_SCHEDULE = "cron_1_utc_refresh_schedule"  # customer_segments, every minute, in UTC
#: The day of unified_transactions (partitioned by New York day) the deployment test loads.
DAY = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).date().isoformat()

pytestmark = pytest.mark.deploy


# --- the PostgreSQL server -------------------------------------------------------------------


@pytest.fixture(scope="session")
def dagster_postgres(postgres: PostgresServer) -> dict[str, str]:
    """A database of its own on the suite's PostgreSQL server (conftest), as the ``DAGSTER_PG_*``
    variables deploy/dagster.yaml reads."""
    postgres.execute("CREATE DATABASE dagster")
    return {
        "DAGSTER_PG_HOST": postgres.host,
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_DB": "dagster",
        "DAGSTER_PG_USERNAME": postgres.user,
        "DAGSTER_PG_PASSWORD": postgres.password,
    }


# --- the deployment: instance, code server, daemon -------------------------------------------


@dataclass
class Deployment:
    home: Path  # DAGSTER_HOME, with deploy/dagster.yaml
    workspace: Path
    env: dict[str, str]
    stack_dir: Path

    @contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        """The deployment's instance, as the webserver and the daemon see it."""
        saved = dict(os.environ)
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("DAGSTER_PG_")})
        try:
            instance = dg.DagsterInstance.from_config(str(self.home))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        with instance:
            yield instance

    def cli(self, *args: str, cwd: Path | None = None, env: dict | None = None, timeout=180):
        result = subprocess.run(
            [str(BIN / "dagster"), *args], cwd=cwd or ROOT, env={**self.env, **(env or {})},
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen) -> None:
    """Stop a process this suite started, and the processes it started (its own group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def every_minute_specs(folder: Path) -> Path:
    """The shipped export specs, with customer_segments refreshed every minute (UTC)."""
    shutil.copytree(SHIPPED_EXPORTS_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__*"))
    spec = folder / "customer_segments.yaml"
    raw = yaml.safe_load(spec.read_text())
    raw |= {"cadence": EVERY_MINUTE, "timezone": "UTC"}
    spec.write_text(yaml.safe_dump(raw))
    return folder


def wait_for_grpc(port: int, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"the code server did not listen within {timeout}s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def deployment(dagster_postgres, local_stack, stack_dir, tmp_path_factory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("deployment")
    home = base / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    (grpc,) = [entry["grpc_server"] for entry in workspace["load_from"]]
    grpc |= {"host": "127.0.0.1", "port": port}
    (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    env = {
        **os.environ,
        **dagster_postgres,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "DAGSTER_HOME": str(home),
        "BQ_ASSETS_ENV": "local",
        "BQ_ASSETS_LOCAL_DIR": str(stack_dir),
        "BQ_ASSETS_EXPORTS_DIR": str(every_minute_specs(base / "exports")),
        "BQ_ASSETS_SCHEDULES": "stopped",
    }
    deployment = Deployment(home, home / "workspace.yaml", env, stack_dir)
    limits = subprocess.run(
        ["sh", str(DEPLOY / "pool-limits.sh")], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert limits.returncode == 0, limits.stdout[-3000:] + limits.stderr[-3000:]
    code_log, daemon_log = base / "code-server.log", base / "daemon.log"
    code_server = start(
        [str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(port),
         "-m", "bq_assets.definitions"],
        env, code_log,
    )  # fmt: skip
    daemon = None
    try:
        wait_for_grpc(port, code_server, code_log)
        daemon = start(
            [str(BIN / "dagster-daemon"), "run", "-w", str(deployment.workspace)], env, daemon_log
        )
        # Started now, so that its first tick (at the next minute) comes while the other
        # tests run; test_the_daemon_launches_a_run_from_a_schedule_tick waits for its run.
        deployment.cli("schedule", "start", TICK_SCHEDULE, "-w", str(deployment.workspace))
        yield deployment
    finally:
        if daemon is not None:
            stop(daemon)
        stop(code_server)


def wait_for_runs(instance: dg.DagsterInstance, run_ids: list[str], timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = instance.get_run_records(dg.RunsFilter(run_ids=run_ids))
        if len(records) == len(run_ids) and all(r.dagster_run.is_finished for r in records):
            return records
        time.sleep(1)
    states = {r.dagster_run.run_id: r.dagster_run.status for r in records}
    pytest.fail(f"runs not finished within {timeout}s: {states}")


def launch(deployment: Deployment, job: str, partition: str | None = None) -> subprocess.Popen:
    """`dagster job launch`: submits the run to the instance's queue (the daemon launches it)."""
    tags = ["--tags", json.dumps({"dagster/partition": partition})] if partition else []
    return subprocess.Popen(
        [str(BIN / "dagster"), "job", "launch", "-w", str(deployment.workspace), "-j", job,
         "--config-json", json.dumps(IN_PROCESS), *tags],
        env=deployment.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def dequeued_at(instance: dg.DagsterInstance, record) -> float:
    """When the run coordinator took the run off the queue and launched it."""
    (event,) = instance.get_records_for_run(
        record.dagster_run.run_id, of_type=dg.DagsterEventType.RUN_STARTING
    ).records
    return event.timestamp


def interval(record) -> tuple[float, float]:
    return record.start_time, record.end_time


def table_rows(deployment: Deployment, spec: ExportSpec) -> list[tuple]:
    """The rows of the export's BigQuery table on the emulator the deployment used."""
    bigquery = local_resources(deployment.stack_dir)["bigquery"]
    table_id = f"{bigquery.project_id()}.{spec.bigquery.dataset}.{spec.bigquery_table}"
    with bigquery.get_client() as client:
        return [tuple(row.values()) for row in client.list_rows(table_id)]


def as_sorted(rows: list[tuple]) -> list[tuple]:
    return sorted((tuple(normalized(v) for v in row) for row in rows), key=lambda r: str(r[0]))


# --- the tests -------------------------------------------------------------------------------


def test_one_run_per_export_at_a_time_while_other_exports_run_beside_it(deployment) -> None:
    started = time.monotonic()
    submitters = [
        launch(deployment, "daily_america_los_angeles_refresh"),  # customer_360
        launch(deployment, "daily_america_los_angeles_refresh"),  # customer_360 again
        launch(deployment, "daily_america_new_york_refresh", DAY),  # unified_transactions
    ]
    for submitter in submitters:
        output, _ = submitter.communicate(timeout=120)
        assert submitter.returncode == 0, output[-3000:]
    with deployment.instance() as instance:
        queued_runs_were_one_per_export(instance, started)
    database = str(deployment.stack_dir / "source.duckdb")
    for export in ("customer_360", "unified_transactions"):
        spec = next(s for s in load_specs(SHIPPED_EXPORTS_DIR) if s.name == export)
        window = Window((DAY,), "day", spec.timezone) if spec.partitioned else None
        _, expected = source_rows(spec, database, window)
        assert as_sorted(table_rows(deployment, spec)) == as_sorted(expected), export


def queued_runs_were_one_per_export(instance: dg.DagsterInstance, started: float) -> None:
    submitted = instance.get_run_records(
        dg.RunsFilter(job_name="daily_america_los_angeles_refresh")
    )
    submitted += instance.get_run_records(dg.RunsFilter(job_name="daily_america_new_york_refresh"))
    assert len(submitted) == 3
    records = wait_for_runs(instance, [r.dagster_run.run_id for r in submitted], timeout=240)

    by_export: dict[str, list] = {}
    for record in records:
        by_export.setdefault(record.dagster_run.tags[EXPORT_TAG], []).append(record)
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS, record.dagster_run.run_id
    first, second = sorted(by_export["customer_360"], key=lambda r: r.start_time)
    (other,) = by_export["unified_transactions"]
    assert interval(first)[1] <= interval(second)[0], "two customer_360 runs overlapped"
    # The queue let the other export go while a customer_360 run was under way: it was
    # dequeued before that run ended (when its process then starts depends on the machine).
    assert any(
        dequeued_at(instance, other) < interval(c)[1] and interval(c)[0] < interval(other)[1]
        for c in (first, second)
    ), "unified_transactions was held back behind customer_360"
    for record in sorted(records, key=lambda r: r.start_time):
        start, end = interval(record)
        print(
            f"{record.dagster_run.tags[EXPORT_TAG]:22} run {record.dagster_run.run_id[:8]} "
            f"start {dt.datetime.fromtimestamp(start, dt.UTC):%H:%M:%S.%f} "
            f"end {dt.datetime.fromtimestamp(end, dt.UTC):%H:%M:%S.%f}"
        )
    print(f"three runs through the queue in {time.monotonic() - started:.1f}s")


def test_the_gcs_stage_runs_in_another_process_without_the_query_stages_disk(
    deployment, tmp_path
) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    for folder in (first_dir / "tmp", second_dir / "tmp"):
        folder.mkdir(parents=True)

    def materialize(selection: str, cwd: Path) -> None:
        deployment.cli(
            "asset", "materialize", "-m", "bq_assets.definitions", "--select", selection,
            "--config-json", json.dumps(IN_PROCESS), cwd=cwd, env={"TMPDIR": str(cwd / "tmp")},
        )  # fmt: skip

    materialize("query/customer_360", first_dir)
    with deployment.instance() as instance:
        query = instance.get_latest_materialization_event(query_key("customer_360"))
    assert query is not None
    shutil.rmtree(first_dir)  # nothing the first process left on disk is there any more

    materialize("gcs/customer_360", second_dir)
    with deployment.instance() as instance:
        gcs = instance.get_latest_materialization_event(gcs_key("customer_360"))
    assert gcs is not None and gcs.run_id != query.run_id
    metadata = gcs.asset_materialization.metadata
    assert metadata["input_run_id"].value == query.run_id
    snapshot = query.asset_materialization.metadata["snapshot_uri"].value
    assert snapshot.startswith("gs://") and query.run_id in snapshot


def test_the_daemon_launches_a_run_from_a_schedule_tick(deployment) -> None:
    with deployment.instance() as instance:
        daemon_launches_a_scheduled_run(deployment, instance)


def daemon_launches_a_scheduled_run(deployment: Deployment, instance: dg.DagsterInstance) -> None:
    """The schedule was started with the deployment; its first tick falls at the next minute."""
    deadline = time.monotonic() + 150
    runs = []
    try:
        while time.monotonic() < deadline and not runs:
            runs = instance.get_run_records(
                dg.RunsFilter(tags={"dagster/schedule_name": TICK_SCHEDULE})
            )
            time.sleep(2)
    finally:
        deployment.cli("schedule", "stop", TICK_SCHEDULE, "-w", str(deployment.workspace))
    assert runs, "no run launched by the schedule within 150 s"
    run = runs[-1].dagster_run  # the first tick's run (records come newest first)
    assert run.tags[EXPORT_TAG] == "customer_segments"
    (record,) = wait_for_runs(instance, [run.run_id], timeout=240)
    assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    print(
        f"run {run.run_id[:8]} of {TICK_SCHEDULE}: "
        f"created {dt.datetime.fromtimestamp(record.create_timestamp.timestamp(), dt.UTC):%H:%M:%S} "
        f"start {dt.datetime.fromtimestamp(record.start_time, dt.UTC):%H:%M:%S} "
        f"end {dt.datetime.fromtimestamp(record.end_time, dt.UTC):%H:%M:%S}"
    )


# --- the compose file and the Helm values, checked statically (no container engine here) -------


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def env_vars_of(config: object) -> set[str]:
    """Every ``{env: NAME}`` in an instance configuration."""
    if isinstance(config, dict):
        if set(config) == {"env"}:
            return {config["env"]}
        return set().union(*(env_vars_of(v) for v in config.values()))
    if isinstance(config, list):
        return set().union(*(env_vars_of(v) for v in config))
    return set()


def dockerfile_env() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text()
    return dict(re.findall(r"\b([A-Z_]+)=(\S+?)\s*(?:\\|\n)", text))


def pyproject_module() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]


def test_the_compose_file_runs_the_services_the_instance_and_workspace_need() -> None:
    compose, instance, workspace = (
        load("docker-compose.yaml"),
        load("dagster.yaml"),
        load("workspace.yaml"),
    )
    services = compose["services"]
    assert set(services) == {"postgres", "code-location", "webserver", "daemon"}
    (grpc,) = [entry["grpc_server"] for entry in workspace["load_from"]]
    code_location = services["code-location"]["command"]
    assert grpc["host"] == "code-location"
    assert code_location[code_location.index("-p") + 1] == str(grpc["port"])
    assert code_location[code_location.index("-m") + 1] == pyproject_module()

    needed = env_vars_of(instance["storage"])
    assert needed == {f"DAGSTER_PG_{k}" for k in ("HOST", "PORT", "DB", "USERNAME", "PASSWORD")}
    home = dockerfile_env()["DAGSTER_HOME"]
    for name in ("code-location", "webserver", "daemon"):
        env = services[name]["environment"]
        assert needed <= set(env), name
        assert env["DAGSTER_HOME"] == home, name
        assert env["DAGSTER_PG_HOST"] == "postgres", name
    for name in ("webserver", "daemon"):
        assert f"{home}/workspace.yaml" in " ".join(services[name]["command"]), name
    assert "pool-limits.sh" in " ".join(services["daemon"]["command"])
    pg = services["postgres"]["environment"]
    env = services["daemon"]["environment"]
    assert (pg["POSTGRES_DB"], pg["POSTGRES_USER"]) == (
        env["DAGSTER_PG_DB"],
        env["DAGSTER_PG_USERNAME"],
    )
    assert pg["POSTGRES_PASSWORD"] == env["DAGSTER_PG_PASSWORD"]


def test_the_image_has_production_dependencies_and_the_instance_files() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"pip install \.\s", text), "installs the project without extras"
    assert not re.search(r"bqemulator|fake-gcs|\[local|\[dev|pytest", text)
    for name in ("dagster.yaml", "workspace.yaml", "pool-limits.sh"):
        assert f"deploy/{name}" in text and (DEPLOY / name).exists()
    assert f'"-m", "{pyproject_module()}"' in text


def test_the_helm_values_say_what_dagster_yaml_says() -> None:
    values, instance, workspace = (
        load("helm/values.yaml"),
        load("dagster.yaml"),
        load("workspace.yaml"),
    )
    runs, pools = instance["concurrency"]["runs"], instance["concurrency"]["pools"]
    assert values["concurrency"]["runs"] == {
        "maxConcurrentRuns": runs["max_concurrent_runs"],
        "tagConcurrencyLimits": [
            {"key": limit["key"], "value": limit["value"], "limit": limit["limit"]}
            for limit in runs["tag_concurrency_limits"]
        ],
    }
    assert values["concurrency"]["pools"] == {
        "defaultLimit": pools["default_limit"],
        "granularity": pools["granularity"],
    }
    retries = instance["run_retries"]
    assert values["dagsterDaemon"]["runRetries"] == {
        "enabled": retries["enabled"],
        "maxRetries": retries["max_retries"],
        "retryOnAssetOrOpFailure": retries["retry_on_asset_or_op_failure"],
    }
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] == instance["run_monitoring"]["enabled"]
    assert monitoring["startTimeoutSeconds"] == instance["run_monitoring"]["start_timeout_seconds"]
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == instance["run_coordinator"]["class"]

    postgresql = values["postgresql"]
    assert postgresql["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert (
        postgresql["postgresqlScheme"] == instance["storage"]["postgres"]["postgres_db"]["scheme"]
    )
    assert values["runLauncher"]["type"] == "K8sRunLauncher"

    (deployment,) = values["dagster-user-deployments"]["deployments"]
    (grpc,) = [entry["grpc_server"] for entry in workspace["load_from"]]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", pyproject_module()]
    assert deployment["port"] == grpc["port"]
    secrets = values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]
    assert deployment["envSecrets"] == secrets, "runs see the settings the code location sees"
