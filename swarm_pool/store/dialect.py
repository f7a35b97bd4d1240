"""The two SQL dialects the store speaks, and the translation of the shared SQL into each.

Room: store.

Owns ``Dialect``: everything above the recorders (projections, hive, reservations, mail,
workers) writes SQL once, in SQLite's spelling of a portable subset (``?`` placeholders,
``INTEGER``/``TEXT`` columns, ``ON CONFLICT`` upserts, JSON kept as text), and each
recorder runs it through its dialect. For PostgreSQL that means ``%s`` placeholders
(with literal ``%`` doubled), ``BIGINT`` for every integer column (millisecond
timestamps do not fit PostgreSQL's 32-bit ``INTEGER``) and ``TEXT COLLATE "C"`` so that
text compares byte by byte, as SQLite's default ``BINARY`` collation does (the
reservations' prefix range scan and every ``ORDER BY`` on ids depend on it). A
migration may also carry its own PostgreSQL statements where the dialects differ more
(triggers); see ``db.Migration``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum


class Backend(StrEnum):
    """The store backends, by the scheme of their URL."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


_INTEGER = re.compile(r"\bINTEGER\b")
_TEXT = re.compile(r"\bTEXT\b")


@functools.lru_cache(maxsize=1024)
def _postgres_sql(sql: str) -> str:
    # Shared SQL never quotes a literal "?" (values always travel as parameters), so
    # every "?" is a placeholder.
    return sql.replace("%", "%%").replace("?", "%s")


@dataclass(frozen=True)
class Dialect:
    backend: Backend

    def sql(self, sql: str) -> str:
        """A query or statement of the shared SQL, in this dialect."""
        if self.backend is Backend.SQLITE:
            return sql
        return _postgres_sql(sql)

    def ddl(self, statement: str) -> str:
        """A schema statement of the shared SQL (a migration's), in this dialect."""
        if self.backend is Backend.SQLITE:
            return statement
        statement = _INTEGER.sub("BIGINT", statement)
        return _TEXT.sub('TEXT COLLATE "C"', statement)


SQLITE = Dialect(Backend.SQLITE)
POSTGRESQL = Dialect(Backend.POSTGRESQL)
