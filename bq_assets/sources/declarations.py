"""Sources: where an export's query runs, declared once and chosen per export (``source:``).

A source of kind ``duckdb`` is a DuckDB database file (the default source, and the embedded
sample ``make demo`` uses); ``postgres``, ``mysql`` and ``sqlite`` databases are read through
DuckDB's scanner extensions; ``files`` is an in-memory DuckDB whose query reads Parquet / CSV /
Delta / Iceberg paths itself. This module holds what a declaration is and the errors a source
raises; ``connection`` makes DuckDB query one. A password is never shown: not in ``repr``, and
every message that leaves this package has it blanked out. No Dagster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from bq_assets.errors import BqAssetsError, ServiceUnreachableError

SourceKind = Literal["duckdb", "postgres", "mysql", "sqlite", "files"]
SOURCE_KINDS: tuple[str, ...] = ("duckdb", "postgres", "mysql", "sqlite", "files")
DEFAULT_SOURCE = "default"
SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}


class SourceError(BqAssetsError):
    """A source cannot be used as declared (unknown, misconfigured, extension missing,
    login refused); retrying cannot help."""


class SourceUnreachableError(ServiceUnreachableError):
    """A source server did not answer (down, or not reachable yet); a retry may help.
    The message names host and port."""


@dataclass(frozen=True)
class Source:
    """One declared source. ``password`` is never shown (not in ``repr``, not in messages)."""

    name: str
    kind: SourceKind = "duckdb"
    path: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """Where the source is, for messages: a file, or host:port/database (never a secret)."""
        if self.kind in ("postgres", "mysql"):
            port = self.port or DEFAULT_PORTS[self.kind]
            return f"{self.kind} {self.host or 'localhost'}:{port}/{self.database or ''}"
        if self.kind == "files":
            return "files"
        return f"{self.kind} {self.path}"

    def problems(self) -> list[str]:
        """What is missing from this declaration (empty when it is usable)."""
        found = []
        if not SOURCE_NAME.fullmatch(self.name):
            found.append(f"{self.name!r} is not a valid source name ({SOURCE_NAME.pattern})")
        if self.kind not in SOURCE_KINDS:
            found.append(f"kind {self.kind!r} is not one of {', '.join(SOURCE_KINDS)}")
        if self.kind in ("duckdb", "sqlite") and not self.path:
            found.append(f"a {self.kind} source needs a path")
        if self.kind in ("postgres", "mysql") and not (self.host and self.database and self.user):
            found.append(f"a {self.kind} source needs host, database and user")
        return found


def blank_secret(text: str, source: Source) -> str:
    """``text`` with the source's password (and any ``password=…`` pair) blanked out."""
    if source.password:
        text = text.replace(source.password, "***")
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
