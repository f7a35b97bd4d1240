"""The SQLite recorder: one ``Database`` file (``db.py``) with the events
table and the projections.

Room: store.

Owns ``SQLiteRecorder`` and its reader and writer over one connection. The events table
is append-only (triggers abort any UPDATE or DELETE; see ``schema.py``), and ``seq`` is
an ``INTEGER PRIMARY KEY`` that only grows by one per append (rows are never deleted,
and a rolled-back append leaves no hole), indexed for the read filters. Writers are
serialized by the database's file lock plus ``BEGIN IMMEDIATE``; ``wait_for_change``
polls, since SQLite has no notifications.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from swarm_pool.errors import StoreError
from swarm_pool.store.db import Database, Params, Row
from swarm_pool.store.dialect import Backend
from swarm_pool.store.events import Event
from swarm_pool.store.recording import INSERT_EVENT, EventWriter, RecordingBase, summarize
from swarm_pool.store.schema import MIGRATIONS
from swarm_pool.store.tx import Reader, Writer

# wait_for_change polls last_seq this often: one indexed max() per tick.
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


class SQLiteRecorder(RecordingBase):
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

    def _select(self, sql: str, params: Params = ()) -> list[Row]:
        return self.db.query(sql, params)

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
