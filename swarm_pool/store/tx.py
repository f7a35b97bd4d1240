"""The transaction types every store module writes its SQL against.

Room: store.

Owns ``Reader`` (queries in one snapshot) and ``Writer`` (a write transaction: plain
statements plus ``append``, which records an event and applies it to the projections
in the same transaction). The SQL is a portable subset (``?`` placeholders,
``ON CONFLICT`` upserts, JSON kept as text; see ``dialect.py``), so the same code runs
on both backends (``sqlite.py``, ``postgres.py``). They sit at the bottom of the store
so that the projections, the facades and the backends can all name them without
importing each other.
"""

from __future__ import annotations

from typing import Protocol

from swarm_pool.store.db import Params, Row
from swarm_pool.store.events import Event


class Reader(Protocol):
    def query(self, sql: str, params: Params = ()) -> list[Row]: ...

    def query_one(self, sql: str, params: Params = ()) -> Row | None: ...


class Writer(Reader, Protocol):
    def execute(self, sql: str, params: Params = ()) -> None: ...

    def append(self, event: Event) -> int:
        """Record the event and apply it to the projections; returns its seq."""
        ...
