"""A real MySQL-compatible server for tests: Debian's ``mariadb-server``, a temp dir, a free port.

``MariaDBServer.start()`` runs ``mariadb-install-db`` and ``mariadbd`` (installed by
``make mariadb`` when missing) as the ``mysql`` user when we are root, listening on 127.0.0.1 and
a socket in its directory. The tests connect over TCP as ``exporter`` with a password (a real
account: a wrong password is a real authentication failure); ``root`` (no password, socket only)
sets the server up. ``stop()`` stops the server and deletes its directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from bq_assets_tests.postgres import free_port

USER = "exporter"
PASSWORD = "test-password-not-secret"
DATABASE = "crm"
MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"


def mariadb_installed() -> bool:
    return Path(MARIADBD).exists() and Path(INSTALL_DB).exists()


@dataclass
class MariaDBServer:
    """One running MariaDB on 127.0.0.1:``port``, owned by this process, with database
    ``database`` and the account ``user`` / ``password`` allowed to do anything in it."""

    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bq-assets-my-")))
    host: str = "127.0.0.1"
    user: str = USER
    password: str = PASSWORD
    database: str = DATABASE

    @property
    def socket(self) -> Path:
        return self.root / "mariadb.sock"

    @property
    def pid_file(self) -> Path:
        return self.root / "mariadb.pid"

    def start(self, timeout_s: float = 60.0) -> MariaDBServer:
        if not mariadb_installed():
            raise RuntimeError(
                "MariaDB is not installed: run `make mariadb` (apt-get install -y mariadb-server)"
            )
        run_as = ["--user=mysql"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.root, "mysql", "mysql")
        subprocess.run(
            [
                INSTALL_DB,
                "--no-defaults",
                f"--datadir={self.root / 'data'}",
                *run_as,
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
        self._process = subprocess.Popen(
            [
                MARIADBD,
                "--no-defaults",
                f"--datadir={self.root / 'data'}",
                *run_as,
                f"--port={self.port}",
                f"--bind-address={self.host}",
                f"--socket={self.socket}",
                f"--pid-file={self.pid_file}",
                f"--log-error={self.root / 'server.log'}",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_bin",
                "--default-time-zone=+00:00",
                "--innodb-buffer-pool-size=64M",
                "--skip-log-bin",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_until_ready(timeout_s)
        self.execute_as_root(
            f"CREATE DATABASE {self.database} CHARACTER SET utf8mb4",
            f"CREATE USER '{self.user}'@'%' IDENTIFIED BY '{self.password}'",
            f"GRANT ALL ON {self.database}.* TO '{self.user}'@'%'",
        )
        return self

    def _wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                pymysql.connect(
                    unix_socket=str(self.socket), user="root", connect_timeout=2
                ).close()
                return
            except pymysql.err.OperationalError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"MariaDB did not start: {log}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def execute_as_root(self, *statements: str) -> None:
        con = pymysql.connect(unix_socket=str(self.socket), user="root", charset="utf8mb4")
        try:
            with con.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
            con.commit()
        finally:
            con.close()

    def connect(self) -> pymysql.connections.Connection:
        """A connection as ``user`` over TCP, in UTC."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            charset="utf8mb4",
            init_command="SET time_zone = '+00:00'",
        )

    def execute(self, *statements: str) -> None:
        con = self.connect()
        try:
            with con.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
            con.commit()
        finally:
            con.close()

    def fetch(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Column names and rows of ``sql``."""
        con = self.connect()
        try:
            with con.cursor() as cursor:
                cursor.execute(sql)
                return [d[0] for d in cursor.description], list(cursor.fetchall())
        finally:
            con.close()
