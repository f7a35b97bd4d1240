"""What both backends (``sqlite.py``, ``postgres.py``) share beside the
recorder protocol.

Room: store.

Owns the one append path (``EventWriter.append``: insert the event, then
``projections.apply`` in the same transaction, so a projection that raises rolls both
back), the events table's row of an event and its insert, the reads through an
``EventFilter`` and ``rebuild`` (``RecordingBase``), replay into empty projections and
the backend-independent counts of ``check``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

from swarm_pool.errors import StoreError, SwarmPoolError
from swarm_pool.store import projections
from swarm_pool.store.db import Params, Row
from swarm_pool.store.events import Event, parse_event
from swarm_pool.store.recorder import EventFilter, StoredEvent
from swarm_pool.store.tx import Reader, Writer

INSERT_EVENT = (
    "INSERT INTO events (type, timestamp, epic_id, bead_id, session_id, data)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def event_row(event: Event) -> tuple[Any, ...]:
    """``(type, timestamp, epic_id, bead_id, session_id, data)`` of the events table."""
    epic_id = getattr(event, "epic_id", None)
    bead_id = getattr(event, "bead_id", None) or getattr(event, "cell_id", None)
    session_id = getattr(event, "session_id", None)
    return (event.type, event.timestamp, epic_id, bead_id, session_id, event.model_dump_json())


class EventWriter(ABC):
    """A backend's write transaction: its statements, and the shared append on top."""

    @abstractmethod
    def query(self, sql: str, params: Params = ()) -> list[Row]: ...

    @abstractmethod
    def query_one(self, sql: str, params: Params = ()) -> Row | None: ...

    @abstractmethod
    def execute(self, sql: str, params: Params = ()) -> None: ...

    @abstractmethod
    def _insert_event(self, event: Event, row: tuple[Any, ...]) -> int:
        """Insert ``(type, timestamp, epic_id, bead_id, session_id, data)``; its seq."""

    def append(self, event: Event) -> int:
        seq = self._insert_event(event, event_row(event))
        projections.apply(self, seq, event)
        return seq


def stored_events(rows: Iterable[Row]) -> list[StoredEvent]:
    return [
        StoredEvent(int(r["seq"]), r["type"], int(r["timestamp"]), parse_event(r["data"]))
        for r in rows
    ]


def replay(w: Writer) -> None:
    """Empty the projections and apply every event again, in ``w``'s transaction."""
    projections.clear(w)
    last = 0
    while True:
        rows = w.query(
            "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq LIMIT 2000", (last,)
        )
        if not rows:
            break
        for r in rows:
            try:
                projections.apply(w, int(r["seq"]), parse_event(r["data"]))
            except SwarmPoolError as e:
                raise StoreError(f"rebuild failed at event {r['seq']}: {e}") from e
        last = int(rows[-1]["seq"])


def summarize(r: Reader) -> dict[str, Any]:
    """The backend-independent part of ``check``: counts, gap-freedom, migrations."""
    counts = r.query("SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type")
    stats = r.query_one("SELECT count(*) AS n, coalesce(max(seq), 0) AS last FROM events")
    versions = r.query("SELECT version FROM schema_migrations ORDER BY version")
    assert stats is not None
    return {
        "events": int(stats["n"]),
        "last_seq": int(stats["last"]),
        # seq starts at 1 and rows are never deleted, so a hole means damage.
        "seq_gap_free": int(stats["n"]) == int(stats["last"]),
        "by_type": {row["type"]: int(row["n"]) for row in counts},
        "migrations": [int(row["version"]) for row in versions],
    }


class RecordingBase(ABC):
    """The recorder methods that differ between backends only in how one statement
    runs: reads through an ``EventFilter``, and ``rebuild``."""

    @abstractmethod
    def writing(self) -> AbstractContextManager[Writer]: ...

    @abstractmethod
    def _select(self, sql: str, params: Params = ()) -> list[Row]:
        """One read statement outside any caller's transaction (its own snapshot)."""

    def events(self, where: EventFilter) -> list[StoredEvent]:
        query = where.sql()
        if query is None:
            return []
        return stored_events(self._select(*query))

    def rebuild(self) -> None:
        """Replay every event into empty projections, in one transaction."""
        with self.writing() as w:
            replay(w)
