"""The recorder interface (what the store needs from a database), the parts every
backend shares, and the SQLite recorder.

A recorder appends events, keeps the projections in step inside the same transaction,
and answers reads. Everything above it (hive, reservations, mail, workers) talks to the
``Recorder`` protocol and its ``Writer``/``Reader`` transactions with plain SQL in a
portable subset (``?`` placeholders, ``ON CONFLICT`` upserts, JSON kept as text; see
``dialect.py``), so the same code runs on SQLite and on PostgreSQL (``postgres.py``).
Shared here: event validation, the numbered ``MIGRATIONS`` (one list for both
backends, each statement translated to the backend's dialect), the one append path
(``EventWriter.append``: insert the event, then ``projections.apply`` in the same
transaction), the read filters, replay for ``rebuild`` and the counts of ``check``.
``SQLiteRecorder`` owns the SQLite events table: append-only (triggers abort any UPDATE
or DELETE), ``seq`` an ``INTEGER PRIMARY KEY`` that only grows by one per append (rows
are never deleted, and a rolled-back append leaves no hole), indexed for the read
filters.
"""

from __future__ import annotations

import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from swarm_pool.errors import EventValidationError, StoreError, SwarmPoolError
from swarm_pool.store import projections
from swarm_pool.store.db import Database, Migration, Params, Row
from swarm_pool.store.dialect import Backend
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

# PostgreSQL's own spelling of migration 1: seq is given by the writer (max + 1 under
# the store's write lock, so a rolled-back append leaves no hole), and the append-only
# rule is a trigger function.
EVENTS_SCHEMA_POSTGRES = (
    """CREATE TABLE events (
        seq BIGINT PRIMARY KEY,
        type TEXT COLLATE "C" NOT NULL,
        timestamp BIGINT NOT NULL,
        epic_id TEXT COLLATE "C",
        bead_id TEXT COLLATE "C",
        session_id TEXT COLLATE "C",
        data TEXT NOT NULL
    )""",
    *EVENTS_SCHEMA[1:5],
    """CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'events are append-only'; END $$""",
    """CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
       FOR EACH ROW EXECUTE FUNCTION events_append_only()""",
    """CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
       FOR EACH STATEMENT EXECUTE FUNCTION events_append_only()""",
    # One event that touches no projection, in one round trip: lock, insert, notify, and
    # (called in autocommit) commit, with the lock held only inside the server. Each
    # statement of a volatile function takes a fresh snapshot, so max(seq) is read
    # after the lock is granted.
    """CREATE FUNCTION swarm_pool_append(lock_class integer, lock_key integer, channel text,
           etype text, ts bigint, epic text, bead text, sess text, body text)
       RETURNS bigint LANGUAGE plpgsql AS $$
       DECLARE s bigint;
       BEGIN
           PERFORM pg_advisory_xact_lock(lock_class, lock_key);
           INSERT INTO events (seq, type, timestamp, epic_id, bead_id, session_id, data)
               VALUES ((SELECT coalesce(max(seq), 0) + 1 FROM events),
                       etype, ts, epic, bead, sess, body)
               RETURNING seq INTO s;
           PERFORM pg_notify(channel, s::text);
           RETURN s;
       END $$""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events", EVENTS_SCHEMA, postgres=EVENTS_SCHEMA_POSTGRES),
    Migration(2, "projections", projections.SCHEMA),
    Migration(3, "reservation_prefix", projections.RESERVATION_PREFIX),
    Migration(4, "worker_lifecycle", projections.WORKER_LIFECYCLE),
    Migration(5, "worker_blocked_time", projections.WORKER_BLOCKED_TIME),
    Migration(6, "session_instances", projections.SESSION_INSTANCES),
    Migration(7, "worktree_slots", projections.SLOTS),
    Migration(8, "hosts", projections.HOSTS),
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

    backend: Backend

    def append_one(self, event: Event) -> int:
        """Record one event (and its projection changes) in a transaction of its own."""
        ...

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

    def wait_for_change(self, after_seq: int, timeout: float) -> int:
        """Return as soon as ``last_seq() > after_seq``, or at the timeout; returns the
        current ``last_seq`` either way."""
        ...

    @property
    def location(self) -> str:
        """Where the store lives, for messages (a path, or a URL without password)."""
        ...

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


# --- shared by every backend -----------------------------------------------------------


class EventWriter(ABC):
    """The one append path of every backend: record the event, then apply it to the
    projections inside the same transaction (a projection that raises rolls both
    back)."""

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


def event_row(event: Event) -> tuple[Any, ...]:
    """``(type, timestamp, epic_id, bead_id, session_id, data)`` of the events table."""
    epic_id, bead_id, session_id = _index_columns(event)
    return (event.type, event.timestamp, epic_id, bead_id, session_id, event.model_dump_json())


INSERT_EVENT = (
    "INSERT INTO events (type, timestamp, epic_id, bead_id, session_id, data)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def events_query(
    *,
    types: Iterable[str] | None,
    epic_id: str | None,
    bead_id: str | None,
    session_id: str | None,
    after_seq: int,
    limit: int | None,
    descending: bool,
) -> tuple[str, list[Any]] | None:
    """The shared SQL (and parameters) of ``Recorder.events``; None if nothing can match."""
    where = ["seq > ?"]
    params: list[Any] = [after_seq]
    if types is not None:
        wanted = sorted(set(types))
        unknown = [t for t in wanted if t not in EVENT_TYPES]
        if unknown:
            raise EventValidationError(f"unknown event type {unknown[0]!r}")
        if not wanted:
            return None
        where.append(f"type IN ({', '.join('?' * len(wanted))})")
        params.extend(wanted)
    for column, value in (("epic_id", epic_id), ("bead_id", bead_id), ("session_id", session_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sql = f"SELECT seq, type, timestamp, data FROM events WHERE {' AND '.join(where)}"
    sql += " ORDER BY seq DESC" if descending else " ORDER BY seq"
    if limit is not None:
        if limit < 0:
            raise StoreError(f"limit must be >= 0, got {limit}")
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


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


# --- SQLite ---------------------------------------------------------------------------

# SQLite's wait_for_change polls last_seq this often: one indexed max() per tick.
POLL_S = 0.025


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


class _SQLiteWriter(_SQLiteReader, EventWriter):
    def execute(self, sql: str, params: Params = ()) -> None:
        try:
            self._conn.execute(sql, params)
        except sqlite3.Error as e:
            raise StoreError(f"write failed on {self._db.path}: {e}") from e

    def _insert_event(self, event: Event, row: tuple[Any, ...]) -> int:
        try:
            cur = self._conn.execute(INSERT_EVENT, row)
        except sqlite3.Error as e:
            raise StoreError(f"append failed on {self._db.path}: {e}") from e
        seq = cur.lastrowid
        assert seq is not None
        return seq


class SQLiteRecorder:
    """The SQLite recorder: one ``Database`` plus the events table and projections."""

    backend = Backend.SQLITE

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

    def append_one(self, event: Event) -> int:
        with self.writing() as w:
            return w.append(event)

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
        query = events_query(
            types=types,
            epic_id=epic_id,
            bead_id=bead_id,
            session_id=session_id,
            after_seq=after_seq,
            limit=limit,
            descending=descending,
        )
        if query is None:
            return []
        return stored_events(self.db.query(*query))

    def last_seq(self) -> int:
        value = self.db.scalar("SELECT max(seq) FROM events")
        return int(value or 0)

    def wait_for_change(self, after_seq: int, timeout: float) -> int:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            seq = self.last_seq()
            remaining = deadline - time.monotonic()
            if seq > after_seq or remaining <= 0:
                return seq
            time.sleep(min(POLL_S, remaining))

    @property
    def location(self) -> str:
        return str(self.db.path)

    def rebuild(self) -> None:
        """Replay every event into empty projections, in one transaction."""
        with self.writing() as w:
            replay(w)

    def check(self) -> dict[str, Any]:
        integrity = self.db.integrity_check()
        with self.reading() as r:
            summary = summarize(r)
        return {
            "backend": "sqlite",
            "integrity": integrity,
            **summary,
            "path": str(self.db.path),
        }

    def close(self) -> None:
        self.db.close()


def ensure_events(events: Sequence[BaseEvent | dict[str, Any]]) -> list[Event]:
    return [validate_event(e) for e in events]
