"""A real PostgreSQL server for tests: Debian's ``postgresql`` package, a temp dir, a free port.

``PostgresServer.start()`` runs ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/*/bin``
(installed by ``make postgres`` when missing) as the ``postgres`` user when we are root,
since PostgreSQL refuses to run as root. Host connections need a password (scram-sha-256),
so a wrong password is a real authentication failure. ``stop()`` stops the server and
deletes its directory. Nothing here is specific to one test: any test that needs a Postgres
(a source, a Dagster instance) can start one.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

USER = "postgres"
PASSWORD = "test-password-not-secret"
DATABASE = "postgres"


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None when the package is missing."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class PostgresServer:
    """One running PostgreSQL server on 127.0.0.1 (``dsn``, ``port``), owned by this process."""

    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bq-assets-pg-")))
    host: str = "127.0.0.1"
    user: str = USER
    password: str = PASSWORD
    database: str = DATABASE

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def dsn(self, database: str | None = None) -> str:
        return (
            f"host={self.host} port={self.port} dbname={database or self.database} "
            f"user={self.user} password={self.password}"
        )

    def start(self, timeout_s: float = 60.0) -> PostgresServer:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(
                "PostgreSQL is not installed: run `make postgres` (apt-get install -y postgresql)"
            )
        password_file = self.root / "pwfile"
        password_file.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(password_file, "postgres", "postgres")
        subprocess.run(
            _as_postgres_user(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    f"--pwfile={password_file}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                ]
            ),
            check=True,
            capture_output=True,
        )
        options = f"-p {self.port} -k {self.root} -c listen_addresses={self.host} -c fsync=off"
        subprocess.run(
            _as_postgres_user(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-o",
                    options,
                    "-l",
                    str(self.root / "server.log"),
                    "-w",
                    "-t",
                    str(int(timeout_s)),
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self._wait_until_ready(timeout_s)
        return self

    def _wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg2.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is not None and self.data_dir.exists():
            subprocess.run(
                _as_postgres_user(
                    [str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "stop"]
                ),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def execute(self, sql: str, database: str | None = None) -> None:
        """Run ``sql`` (one or more statements) in autocommit mode (CREATE DATABASE works)."""
        con = psycopg2.connect(self.dsn(database))
        try:
            con.autocommit = True
            with con.cursor() as cursor:
                cursor.execute(sql)
        finally:
            con.close()

    def fetch(self, sql: str, database: str | None = None) -> tuple[list[str], list[tuple]]:
        """Column names and rows of ``sql``."""
        with psycopg2.connect(self.dsn(database)) as con, con.cursor() as cursor:
            cursor.execute(sql)
            rows = cursor.fetchall()
            columns = [d[0] for d in cursor.description]
        con.close()
        return columns, rows
