"""The recorder interface (what the store needs from a database) and its SQLite version.

A recorder appends events, keeps the projections in step inside the same transaction,
and answers reads. Everything above it (hive, reservations, mail, workers) talks to the
``Recorder`` protocol and its ``Writer``/``Reader`` transactions with plain SQL in a
portable subset (``?`` placeholders, ``ON CONFLICT`` upserts, JSON kept as text), so a
PostgreSQL recorder for pools spread over several machines can be added without
touching them. ``SQLiteRecorder`` owns the events table: append-only (triggers abort any
UPDATE or DELETE), ``seq`` an ``INTEGER PRIMARY KEY`` that only grows by one per append
(rows are never deleted, and a rolled-back append leaves no hole), indexed for the read
filters.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from swarm_pool.errors import EventValidationError, StoreError, SwarmPoolError
from swarm_pool.store import projections
from swarm_pool.store.db import Database, Migration, Params, Row
from swarm_pool.store.events import EVENT_TYPES, BaseEvent, Event, parse_event

EPIC_ID_RE = re.compile(r"^bd-[0-9a-z]{3,40}$")
CELL_ID_RE = re.compile(r"^bd-[0-9a-z]{3,40}(\.[0-9]+)+$")

EVENTS_SCHEMA = (
    """CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        type TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        epic_id TEXT,
        bead_id TEXT,
        session_id TEXT,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX events_type ON events (type, seq)",
    "CREATE INDEX events_epic ON events (epic_id, seq) WHERE epic_id IS NOT NULL",
    "CREATE INDEX events_bead ON events (bead_id, seq) WHERE bead_id IS NOT NULL",
    "CREATE INDEX events_session ON events (session_id, seq) WHERE session_id IS NOT NULL",
    """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
       BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
    """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
       BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events", EVENTS_SCHEMA),
    Migration(2, "projections", projections.SCHEMA),
    Migration(3, "reservation_prefix", projections.RESERVATION_PREFIX),
    Migration(4, "worker_lifecycle", projections.WORKER_LIFECYCLE),
    Migration(5, "worker_blocked_time", projections.WORKER_BLOCKED_TIME),
    Migration(6, "session_instances", projections.SESSION_INSTANCES),
)


@dataclass(frozen=True)
class StoredEvent:
    """An event as recorded: its sequence number plus the typed event."""

    seq: int
    type: str
    timestamp: int
    event: Event

    def to_dict(self) -> dict[str, Any]:
        data = self.event.model_dump(mode="json")
        return {"seq": self.seq, **data}


class Reader(Protocol):
    def query(self, sql: str, params: Params = ()) -> list[Row]: ...

    def query_one(self, sql: str, params: Params = ()) -> Row | None: ...


class Writer(Reader, Protocol):
    def execute(self, sql: str, params: Params = ()) -> None: ...

    def append(self, event: Event) -> int:
        """Record the event and apply it to the projections; returns its seq."""
        ...


class Recorder(Protocol):
    """What the store needs from a database backend."""

    def writing(self) -> AbstractContextManager[Writer]:
        """One atomic write transaction, serialized with every other writer."""
        ...

    def reading(self) -> AbstractContextManager[Reader]:
        """A consistent read snapshot."""
        ...

    def events(
        self,
        *,
        types: Iterable[str] | None = None,
        epic_id: str | None = None,
        bead_id: str | None = None,
        session_id: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
        descending: bool = False,
    ) -> list[StoredEvent]: ...

    def last_seq(self) -> int: ...

    def rebuild(self) -> None: ...

    def check(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


# --- validation -----------------------------------------------------------------------


def validate_event(event: BaseEvent | dict[str, Any]) -> Event:
    """Turn a dict or model into a checked event; EventValidationError if bad."""
    if isinstance(event, dict):
        etype = event.get("type")
        if etype is None:
            raise EventValidationError("invalid event: missing field 'type'")
        if etype not in EVENT_TYPES:
            raise EventValidationError(f"unknown event type {etype!r}")
        parsed = parse_event(event)
    elif isinstance(event, BaseEvent):
        etype = getattr(event, "type", None)
        if etype not in EVENT_TYPES:
            raise EventValidationError(f"unknown event type {etype!r}")
        parsed = event  # type: ignore[assignment]
    else:
        raise EventValidationError(f"an event must be a dict or an event model, not {event!r}")
    epic_id = getattr(parsed, "epic_id", None)
    if epic_id is not None and not EPIC_ID_RE.match(epic_id):
        raise EventValidationError(
            f"bad epic id {epic_id!r} in {parsed.type} event: epic ids look like bd-<hash>"
        )
    return parsed


def _index_columns(event: Event) -> tuple[str | None, str | None, str | None]:
    epic_id = getattr(event, "epic_id", None)
    bead_id = getattr(event, "bead_id", None) or getattr(event, "cell_id", None)
    session_id = getattr(event, "session_id", None)
    return epic_id, bead_id, session_id


# --- SQLite ---------------------------------------------------------------------------


class _SQLiteReader:
    def __init__(self, conn: sqlite3.Connection, db: Database) -> None:
        self._conn = conn
        self._db = db

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            rows: list[Row] = self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"query failed on {self._db.path}: {e}") from e
        return rows

    def query_one(self, sql: str, params: Params = ()) -> Row | None:
        try:
            row: Row | None = self._conn.execute(sql, params).fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"query failed on {self._db.path}: {e}") from e
        return row


class _SQLiteWriter(_SQLiteReader):
    def execute(self, sql: str, params: Params = ()) -> None:
        try:
            self._conn.execute(sql, params)
        except sqlite3.Error as e:
            raise StoreError(f"write failed on {self._db.path}: {e}") from e

    def append(self, event: Event) -> int:
        epic_id, bead_id, session_id = _index_columns(event)
        try:
            cur = self._conn.execute(
                "INSERT INTO events (type, timestamp, epic_id, bead_id, session_id, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    event.type,
                    event.timestamp,
                    epic_id,
                    bead_id,
                    session_id,
                    event.model_dump_json(),
                ),
            )
        except sqlite3.Error as e:
            raise StoreError(f"append failed on {self._db.path}: {e}") from e
        seq = cur.lastrowid
        assert seq is not None
        projections.apply(self, seq, event)
        return seq


class SQLiteRecorder:
    """The SQLite recorder: one ``Database`` plus the events table and projections."""

    def __init__(
        self,
        db_path: Path,
        *,
        busy_timeout_ms: int = 10000,
        lock_timeout_s: float = 30.0,
        lock_impl: str = "flock",
    ) -> None:
        self.db = Database(
            db_path,
            migrations=MIGRATIONS,
            busy_timeout_ms=busy_timeout_ms,
            lock_timeout_s=lock_timeout_s,
            lock_impl=lock_impl,
        )

    @contextmanager
    def writing(self) -> Iterator[Writer]:
        with self.db.write() as conn:
            yield _SQLiteWriter(conn, self.db)

    @contextmanager
    def reading(self) -> Iterator[Reader]:
        with self.db.read() as conn:
            yield _SQLiteReader(conn, self.db)

    def events(
        self,
        *,
        types: Iterable[str] | None = None,
        epic_id: str | None = None,
        bead_id: str | None = None,
        session_id: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
        descending: bool = False,
    ) -> list[StoredEvent]:
        where = ["seq > ?"]
        params: list[Any] = [after_seq]
        if types is not None:
            wanted = sorted(set(types))
            unknown = [t for t in wanted if t not in EVENT_TYPES]
            if unknown:
                raise EventValidationError(f"unknown event type {unknown[0]!r}")
            if not wanted:
                return []
            where.append(f"type IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        for column, value in (("epic_id", epic_id), ("bead_id", bead_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        sql = f"SELECT seq, type, timestamp, data FROM events WHERE {' AND '.join(where)}"
        sql += " ORDER BY seq DESC" if descending else " ORDER BY seq"
        if limit is not None:
            if limit < 0:
                raise StoreError(f"limit must be >= 0, got {limit}")
            sql += " LIMIT ?"
            params.append(limit)
        rows = self.db.query(sql, params)
        return [
            StoredEvent(r["seq"], r["type"], r["timestamp"], parse_event(r["data"])) for r in rows
        ]

    def last_seq(self) -> int:
        value = self.db.scalar("SELECT max(seq) FROM events")
        return int(value or 0)

    def rebuild(self) -> None:
        """Replay every event into empty projections, in one transaction."""
        with self.writing() as w:
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
                        projections.apply(w, r["seq"], parse_event(r["data"]))
                    except SwarmPoolError as e:
                        raise StoreError(f"rebuild failed at event {r['seq']}: {e}") from e
                last = rows[-1]["seq"]

    def check(self) -> dict[str, Any]:
        integrity = self.db.integrity_check()
        with self.reading() as r:
            counts = r.query("SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type")
            stats = r.query_one("SELECT count(*) AS n, coalesce(max(seq), 0) AS last FROM events")
            versions = r.query("SELECT version FROM schema_migrations ORDER BY version")
        assert stats is not None
        return {
            "integrity": integrity,
            "events": stats["n"],
            "last_seq": stats["last"],
            # seq starts at 1 and rows are never deleted, so a hole means damage.
            "seq_gap_free": stats["n"] == stats["last"],
            "by_type": {row["type"]: row["n"] for row in counts},
            "migrations": [row["version"] for row in versions],
            "path": str(self.db.path),
        }

    def close(self) -> None:
        self.db.close()


def ensure_events(events: Sequence[BaseEvent | dict[str, Any]]) -> list[Event]:
    return [validate_event(e) for e in events]
