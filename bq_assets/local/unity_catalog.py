"""What Unity-Catalog-only DDL declares, kept for the local Databricks stand-in.

``CREATE CONNECTION``, ``ALTER CONNECTION``, ``CREATE FOREIGN CATALOG`` and grants have no
open-source engine (Unity Catalog's; their production text is golden-tested against Databricks'
SQL reference in ``test_databricks.py``). The stand-in records what they declare, with their
documented semantics, so the rest of the local path behaves as on a workspace:

- ``CREATE CONNECTION [IF NOT EXISTS]`` adds a connection (an existing one without ``IF NOT
  EXISTS`` is an error); ``ALTER CONNECTION … OPTIONS`` replaces its whole option list
  ("ALTER CONNECTION", https://docs.databricks.com/sql/language-manual/sql-ref-syntax-ddl-alter-connection.html);
- ``CREATE FOREIGN CATALOG [IF NOT EXISTS] … USING CONNECTION … OPTIONS`` adds a foreign catalog
  over an existing connection and leaves an existing one as it is ("CREATE CATALOG",
  https://docs.databricks.com/sql/language-manual/sql-ref-syntax-ddl-create-catalog.html);
- ``GRANT``/``REVOKE`` are accepted and change nothing (the stand-in has one user).

``catalog(name)`` answers as the catalogs API does (``CatalogInfo``: ``connection_name``,
``options``). The record is ``unity_catalog.json`` in the warehouse folder, written under a lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlglot
from databricks.sdk.service.catalog import CatalogInfo, CatalogType
from sqlglot.tokens import Token, TokenType

from bq_assets.resources.databricks import StatementError

UNITY_CATALOG_ONLY = re.compile(
    r"\s*(CREATE\s+CONNECTION|ALTER\s+CONNECTION|DROP\s+CONNECTION|CREATE\s+FOREIGN\s+CATALOG"
    r"|GRANT|REVOKE|ALTER\s+VIEW\s+\S+\s+ALTER\s+COLUMN\s+\S+\s+(UN)?SET\s+TAGS)\b",
    re.IGNORECASE,
)
#: The read of column tags from Unity Catalog's information schema (``column_tags``).
COLUMN_TAGS_QUERY = re.compile(
    r"\s*SELECT\s+column_name,\s*tag_value\s+FROM\s+`?(?P<catalog>\w+)`?\.information_schema"
    r"\.column_tags\s+WHERE\s+schema_name\s*=\s*'(?P<schema>\w+)'\s+AND\s+table_name\s*=\s*"
    r"'(?P<table>\w+)'\s+AND\s+tag_name\s*=\s*'(?P<tag>\w+)'\s*$",
    re.IGNORECASE,
)
_NAME = (TokenType.VAR, TokenType.IDENTIFIER)


def is_unity_catalog_only(statement: str) -> bool:
    """True for DDL only Unity Catalog runs (no open-source engine has it)."""
    return UNITY_CATALOG_ONLY.match(statement) is not None


class UnityCatalogRecord:
    """The connections and foreign catalogs Unity-Catalog-only DDL declared, in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def catalog(self, name: str) -> CatalogInfo | None:
        """The foreign catalog ``name`` as ``GET /api/2.1/unity-catalog/catalogs/{name}``
        describes it, or None."""
        found = self._read()["catalogs"].get(name.lower())
        if found is None:
            return None
        return CatalogInfo(
            name=name.lower(),
            full_name=name.lower(),
            catalog_type=CatalogType.FOREIGN_CATALOG,
            connection_name=found["connection_name"],
            options=dict(found["options"]),
        )

    def column_tags(self, statement: str) -> tuple[list[str], list[list[str | None]]] | None:
        """The answer to a read of ``<catalog>.information_schema.column_tags`` (see
        ``COLUMN_TAGS_QUERY``) from the tags ``SET TAGS`` recorded; None for any other
        statement."""
        asked = COLUMN_TAGS_QUERY.match(statement)
        if asked is None:
            return None
        view = ".".join(asked[part].lower() for part in ("catalog", "schema", "table"))
        tags = self._read().get("column_tags", {}).get(view, {})
        rows = [
            [column, found[asked["tag"]]]
            for column, found in sorted(tags.items())
            if asked["tag"] in found
        ]
        return ["column_name", "tag_value"], rows

    def apply(self, statement: str) -> None:
        """Record what ``statement`` declares (see the module's docstring)."""
        tokens = [t for t in sqlglot.Dialect.get_or_raise("databricks").tokenize(statement)]
        words = [t.text.upper() for t in tokens]
        if words[:1] in (["GRANT"], ["REVOKE"]):
            return
        with self._locked() as record:
            if words[:2] == ["CREATE", "CONNECTION"]:
                name, options = _name_after(tokens, 2), _options(tokens)
                if name in record["connections"] and "IF" not in words[:5]:
                    raise StatementError(f"CONNECTION_ALREADY_EXISTS: connection {name}")
                record["connections"].setdefault(name, {"options": options})
            elif words[:2] == ["ALTER", "CONNECTION"]:
                name = _name_after(tokens, 2)
                if name not in record["connections"]:
                    raise StatementError(f"CONNECTION_NOT_FOUND: connection {name}")
                record["connections"][name] = {"options": _options(tokens)}
            elif words[:2] == ["DROP", "CONNECTION"]:
                record["connections"].pop(_name_after(tokens, 2), None)
            elif words[:3] == ["CREATE", "FOREIGN", "CATALOG"]:
                name = _name_after(tokens, 3)
                using = words.index("USING")
                connection = _name_after(tokens, using + 2)
                if connection not in record["connections"]:
                    raise StatementError(f"CONNECTION_NOT_FOUND: connection {connection}")
                if name in record["catalogs"] and "IF" not in words[:6]:
                    raise StatementError(f"CATALOG_ALREADY_EXISTS: catalog {name}")
                record["catalogs"].setdefault(
                    name, {"connection_name": connection, "options": _options(tokens)}
                )
            elif words[:2] == ["ALTER", "VIEW"] and "TAGS" in words:
                _apply_column_tags(record, tokens, words)
            else:
                raise StatementError(f"The local stand-in does not know this DDL: {statement}")

    def _read(self) -> dict:
        path = self.folder / "unity_catalog.json"
        if not path.exists():
            return {"connections": {}, "catalogs": {}}
        return json.loads(path.read_text())

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "unity_catalog.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = self._read()
            yield record
            partial = self.folder / "unity_catalog.json.partial"
            partial.write_text(json.dumps(record, indent=2, sort_keys=True))
            os.replace(partial, self.folder / "unity_catalog.json")


def _apply_column_tags(record: dict, tokens: list[Token], words: list[str]) -> None:
    """``ALTER VIEW <c>.<s>.<v> ALTER COLUMN <col> SET TAGS ('k' = 'v', …)`` (or ``UNSET TAGS
    ('k', …)``): the view column's tags, others kept ("ALTER VIEW … COLUMN clause",
    https://docs.databricks.com/aws/en/sql/language-manual/sql-ref-syntax-ddl-alter-view-manage-column).
    The view must exist: the stand-in keeps views as ``<catalog>/<schema>/<view>.view.json``."""
    column_at = words.index("COLUMN")
    view = ".".join(t.text.lower() for t in tokens[2 : column_at - 1] if t.token_type in _NAME)
    column = tokens[column_at + 1].text.lower()
    tags = record.setdefault("column_tags", {}).setdefault(view, {}).setdefault(column, {})
    strings = [t.text for t in tokens if t.token_type == TokenType.STRING]
    if "UNSET" in words:
        for name in strings:
            tags.pop(name, None)
    else:
        tags.update(zip(strings[0::2], strings[1::2], strict=True))


def _name_after(tokens: list[Token], start: int) -> str:
    """The first name at or after ``start``, past ``IF NOT EXISTS``, in lower case (Unity
    Catalog stores names in lower case)."""
    for token in tokens[start:]:
        if token.token_type in _NAME and token.text.upper() not in ("IF", "NOT", "EXISTS"):
            return token.text.lower()
    raise StatementError("a Unity Catalog statement without a name")


def _options(tokens: list[Token]) -> dict[str, str]:
    """``OPTIONS (name 'value', name secret('scope', 'key'), …)`` as a dict; a secret keeps its
    reference, never a value."""
    texts = [t.text.upper() for t in tokens]
    if "OPTIONS" not in texts:
        return {}
    position = texts.index("OPTIONS") + 2
    options: dict[str, str] = {}
    while position < len(tokens) and tokens[position].token_type != TokenType.R_PAREN:
        key = tokens[position].text
        value = tokens[position + 1]
        if value.token_type == TokenType.STRING:
            options[key] = value.text
            position += 2
        else:  # secret('scope', 'key')
            scope, name = tokens[position + 3].text, tokens[position + 5].text
            options[key] = f"secret('{scope}', '{name}')"
            position += 7
        if position < len(tokens) and tokens[position].token_type == TokenType.COMMA:
            position += 1
    return options
