"""The PostgreSQL recorder (psycopg 3): one store shared by pools on several
hosts.

Room: store.

Owns the connection to one PostgreSQL schema, its write transactions, migrations and
change notifications, with the same meaning as the SQLite recorder:

- Every write transaction first takes the store's advisory transaction lock
  (``pg_advisory_xact_lock``, keyed by the schema), the counterpart of SQLite's file
  lock plus ``BEGIN IMMEDIATE``: writers from every host queue on it, ``seq`` is the
  previous maximum plus one (so it is gap-free: a rolled-back append leaves no hole, and
  seq order is commit order, so a reader following ``after_seq`` never skips a late
  commit), and a reservation's check and grant can never interleave with another's.
  SERIALIZABLE was measured against it (``scripts/bench.py store``): a gap-free seq
  needs one row or lock every writer takes anyway, so SERIALIZABLE only adds aborted
  and retried transactions. A client killed mid-transaction loses only that
  transaction: the server rolls it back and drops the lock when the connection goes.
- Reads run in a ``REPEATABLE READ READ ONLY`` transaction: one snapshot for several
  queries.
- Numbered migrations (``schema.MIGRATIONS``, translated by ``dialect.POSTGRESQL``)
  are applied in one transaction under the same lock, recorded in
  ``schema_migrations``.
- Each write transaction that appended ends with ``pg_notify`` of its last seq on the
  schema's channel; ``wait_for_change`` LISTENs on a second connection, so ``await``,
  ``log --follow`` and the dashboard wake on a commit instead of polling.

The schema is the connection's ``current_schema()`` (``public`` unless the URL sets
``options=-csearch_path=NAME``), so several projects can share one database. One
connection per ``PostgresRecorder`` is shared by the threads of a process behind a
re-entrant lock (as SQLite's is); it must not cross a ``fork``. A broken connection is
replaced on the next call.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from swarm_pool.errors import MigrationError, StoreError, StoreUnavailableError
from swarm_pool.store import projections
from swarm_pool.store.db import Migration, Params, Row
from swarm_pool.store.dialect import POSTGRESQL, Backend
from swarm_pool.store.events import Event
from swarm_pool.store.recording import (
    INSERT_EVENT,
    EventWriter,
    RecordingBase,
    event_row,
    summarize,
)
from swarm_pool.store.schema import MIGRATIONS
from swarm_pool.store.tx import Reader, Writer
from swarm_pool.store.url import redact

# The first key of every advisory lock swarm-pool takes ("SWMP"); the second is the
# schema's, so stores in different schemas of one database never wait on each other.
LOCK_CLASS = 0x53574D50
# seq is given by the writer: the maximum read when the write lock was taken, plus one
# per append of the transaction.
_INSERT_EVENT = POSTGRESQL.sql(
    INSERT_EVENT.replace("(type,", "(seq, type,").replace("VALUES (", "VALUES (?, ")
)
# A waiter re-reads last_seq at least this often, whatever the notifications say (a
# reconnect of the listener may have missed one).
LISTEN_RECHECK_S = 1.0


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def lock_key(schema: str) -> int:
    """The second key of the schema's advisory write lock (a signed 32-bit int)."""
    value = zlib.crc32(schema.encode())
    return value - 2**32 if value >= 2**31 else value


class _PgReader:
    def __init__(self, conn: psycopg.Connection[Row], where: str) -> None:
        self._conn = conn
        self._where = where

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            return self._conn.execute(POSTGRESQL.sql(sql), params).fetchall()
        except psycopg.Error as e:
            raise StoreError(f"query failed on {self._where}: {_first_line(e)}") from e

    def query_one(self, sql: str, params: Params = ()) -> Row | None:
        try:
            return self._conn.execute(POSTGRESQL.sql(sql), params).fetchone()
        except psycopg.Error as e:
            raise StoreError(f"query failed on {self._where}: {_first_line(e)}") from e


class _PgWriter(_PgReader, EventWriter):
    """Inside a write transaction in pipeline mode: statements whose result nobody reads
    (projection writes, event inserts) travel together with the next read or the
    commit, instead of one round trip each while the write lock is held."""

    def __init__(self, conn: psycopg.Connection[Row], where: str, last_seq: int) -> None:
        super().__init__(conn, where)
        self.last_seq = last_seq
        self.appended = 0

    def execute(self, sql: str, params: Params = ()) -> None:
        try:
            self._conn.execute(POSTGRESQL.sql(sql), params)
        except psycopg.Error as e:
            raise StoreError(f"write failed on {self._where}: {_first_line(e)}") from e

    def _insert_event(self, event: Event, row: tuple[Any, ...]) -> int:
        seq = self.last_seq + 1
        try:
            self._conn.execute(_INSERT_EVENT, (seq, *row))
        except psycopg.Error as e:
            raise StoreError(f"append failed on {self._where}: {_first_line(e)}") from e
        self.last_seq = seq
        self.appended += 1
        return seq


class PostgresRecorder(RecordingBase):
    """The PostgreSQL recorder: one connection, the write lock, LISTEN/NOTIFY."""

    backend = Backend.POSTGRESQL

    def __init__(
        self,
        url: str,
        *,
        lock_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        synchronous_commit: bool = False,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.url = url
        self._where = redact(url)
        self.lock_timeout_s = lock_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.synchronous_commit = synchronous_commit
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._listen_lock = threading.Lock()
        self._writer: _PgWriter | None = None
        self._closed = False
        self._listener: psycopg.Connection[Row] | None = None
        self._conn = self._connect()
        try:
            schema = self._conn.execute("SELECT current_schema() AS s").fetchone()
        except psycopg.Error as e:
            self._conn.close()
            raise StoreError(f"cannot use the store {self._where}: {_first_line(e)}") from e
        if schema is None or schema["s"] is None:
            self._conn.close()
            raise StoreError(
                f"store {self._where}: the search_path names no existing schema "
                "(create it first, or drop options=-csearch_path from the URL)"
            )
        self.schema: str = schema["s"]
        self._key = lock_key(self.schema)
        self.channel = f"swarm_pool_{zlib.crc32(self.schema.encode()):08x}"
        try:
            self._migrate(migrations)
        except BaseException:
            self._conn.close()
            raise

    # --- connections ------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Row]:
        options = [f"-c lock_timeout={int(self.lock_timeout_s * 1000)}"]
        # A client that stops talking mid-transaction (a hung or partitioned host)
        # must not hold the store's write lock for ever.
        options.append(
            f"-c idle_in_transaction_session_timeout={int(max(self.lock_timeout_s, 1) * 1000)}"
        )
        if not self.synchronous_commit:
            options.append("-c synchronous_commit=off")
        try:
            params: dict[str, Any] = conninfo_to_dict(self.url)
        except psycopg.Error as e:
            raise StoreError(f"bad store URL {self._where}: {_first_line(e)}") from e
        # Ours go after the URL's own options (its search_path, for one).
        params["options"] = " ".join([params.get("options") or "", *options]).strip()
        params.setdefault("connect_timeout", max(1, int(self.connect_timeout_s)))
        params.setdefault("application_name", f"swarm-pool[{os.getpid()}]")
        try:
            conn: psycopg.Connection[Row] = psycopg.connect(
                autocommit=True, row_factory=dict_row, **params
            )
        except psycopg.Error as e:
            raise StoreUnavailableError(
                f"cannot connect to the store {self._where}: {_first_line(e)}"
            ) from e
        # No server-side prepared statements: a pipeline that aborts (a lost race under
        # SERIALIZABLE, a projection refusing an event) can leave psycopg believing a
        # statement is prepared when the server never kept it.
        conn.prepare_threshold = None
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self._where} is closed")
        if os.getpid() != self._pid:
            raise StoreError("a store connection cannot be used after fork; open a new one")

    def _healthy(self) -> psycopg.Connection[Row]:
        """The connection, replaced if the server dropped it (outside a transaction)."""
        if self._conn.broken or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    # --- transactions -----------------------------------------------------------------

    def append_one(self, event: Event) -> int:
        if projections.touches(event):
            with self.writing() as w:
                return w.append(event)
        with self._lock:
            self._check_open()
            if self._writer is not None:  # inside a caller's transaction: join it
                return self._writer.append(event)
            conn = self._healthy()
            try:
                row = conn.execute(
                    "SELECT swarm_pool_append(%s, %s, %s, %s, %s, %s, %s, %s, %s) AS seq",
                    (LOCK_CLASS, self._key, self.channel, *event_row(event)),
                ).fetchone()
            except psycopg.errors.LockNotAvailable as e:
                raise self._lock_timeout() from e
            except psycopg.Error as e:
                raise self._mapped(e, "append") from e
            assert row is not None
            return int(row["seq"])

    # The connection runs in autocommit mode and opens its transactions itself; a write
    # transaction runs in pipeline mode, so BEGIN travels with the lock and the last seq,
    # and writes nobody reads back travel with the next read or with NOTIFY and COMMIT:
    # round trips while the write lock is held are most of its cost.

    @contextmanager
    def writing(self) -> Iterator[Writer]:
        """A write transaction under the store's advisory lock; nested calls in the same
        thread join the outer one."""
        with self._lock:
            self._check_open()
            if self._writer is not None:
                yield self._writer
                return
            conn = self._healthy()
            try:
                with conn.pipeline():
                    writer = _PgWriter(conn, self._where, self._begin_write(conn))
                    self._writer = writer
                    yield writer
                    if writer.appended:
                        conn.execute(
                            "SELECT pg_notify(%s, %s)", (self.channel, str(writer.last_seq))
                        )
                    conn.execute("COMMIT")
            except BaseException as e:
                self._rollback(conn)
                if isinstance(e, psycopg.Error):
                    raise self._mapped(e, "commit") from e
                raise
            finally:
                self._writer = None

    def _begin_write(self, conn: psycopg.Connection[Row], *, read_seq: bool = True) -> int:
        """BEGIN, take the write lock, and read the last seq (one round trip in a
        pipeline); 0 without ``read_seq`` (before the events table exists)."""
        try:
            conn.execute("BEGIN")
            locked = conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, self._key))
            if not read_seq:
                locked.fetchone()
                return 0
            row = conn.execute("SELECT coalesce(max(seq), 0) AS last FROM events").fetchone()
        except psycopg.errors.LockNotAvailable as e:
            raise self._lock_timeout() from e
        assert row is not None
        return int(row["last"])

    def _lock_timeout(self) -> StoreError:
        return StoreError(
            f"timed out after {self.lock_timeout_s}s waiting for the store's write lock "
            f"on {self._where}"
        )

    def _rollback(self, conn: psycopg.Connection[Row]) -> None:
        if conn.broken or conn.closed:
            return
        # The transaction is gone either way; the original error is what matters.
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")

    def _mapped(self, e: psycopg.Error, what: str) -> StoreError:
        if isinstance(e, psycopg.OperationalError) and self._conn.broken:
            return StoreUnavailableError(f"lost the store {self._where}: {_first_line(e)}")
        return StoreError(f"{what} failed on {self._where}: {_first_line(e)}")

    @contextmanager
    def reading(self) -> Iterator[Reader]:
        """One snapshot for several queries (or the open write transaction)."""
        with self._lock:
            self._check_open()
            if self._writer is not None:
                yield self._writer
                return
            conn = self._healthy()
            try:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            except psycopg.Error as e:
                raise self._mapped(e, "read") from e
            try:
                yield _PgReader(conn, self._where)
            finally:
                self._rollback(conn)

    def _select(self, sql: str, params: Params = ()) -> list[Row]:
        """One statement: its own snapshot, no transaction needed."""
        with self._lock:
            self._check_open()
            if self._writer is not None:
                return self._writer.query(sql, params)
            conn = self._healthy()
            try:
                return _PgReader(conn, self._where).query(sql, params)
            except StoreError as e:
                if isinstance(e.__cause__, psycopg.Error):
                    raise self._mapped(e.__cause__, "query") from e.__cause__
                raise

    # --- migrations -------------------------------------------------------------------

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        versions = [m.version for m in migrations]
        if versions != sorted(set(versions)):
            raise MigrationError(f"migrations must have increasing unique versions: {versions}")
        conn = self._conn
        try:
            self._begin_write(conn, read_seq=False)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
            )
            done = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations")}
            unknown = done - set(versions)
            if unknown:
                raise MigrationError(
                    f"store {self._where} has migrations this version does not know: "
                    f"{sorted(unknown)}; upgrade swarm-pool"
                )
            for m in migrations:
                if m.version in done:
                    continue
                statements = m.postgres or tuple(POSTGRESQL.ddl(s) for s in m.statements)
                for stmt in statements:
                    conn.execute(pgsql.SQL(stmt))  # type: ignore[arg-type]
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    (m.version, m.name, int(time.time() * 1000)),
                )
            conn.execute("COMMIT")
        except psycopg.Error as e:
            self._rollback(conn)
            raise MigrationError(f"migrating {self._where} failed: {_first_line(e)}") from e
        except BaseException:
            self._rollback(conn)
            raise

    # --- the Recorder protocol --------------------------------------------------------

    def last_seq(self) -> int:
        rows = self._select("SELECT coalesce(max(seq), 0) AS last FROM events")
        return int(rows[0]["last"])

    def wait_for_change(self, after_seq: int, timeout: float) -> int:
        deadline = time.monotonic() + max(0.0, timeout)
        seq = self.last_seq()
        if seq > after_seq or timeout <= 0:
            return seq
        # One waiter at a time listens; the others queue on the lock and find the change
        # already there (last_seq is read again after taking it).
        if not self._listen_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return self.last_seq()
        try:
            listener = self._listening()
            listen = pgsql.SQL("LISTEN {}").format(pgsql.Identifier(self.channel))
            try:
                listener.execute(listen)
            except psycopg.Error:
                self._drop_listener()
                listener = self._listening()
                listener.execute(listen)
            while True:
                # Read after LISTEN is in place: a commit from now on also notifies.
                seq = self.last_seq()
                remaining = deadline - time.monotonic()
                if seq > after_seq or remaining <= 0:
                    return seq
                try:
                    for note in listener.notifies(
                        timeout=min(remaining, LISTEN_RECHECK_S), stop_after=1
                    ):
                        if note.payload.isdigit() and int(note.payload) > after_seq:
                            return max(int(note.payload), self.last_seq())
                except psycopg.Error:
                    self._drop_listener()
                    listener = self._listening()
                    listener.execute(listen)
        except psycopg.Error as e:
            self._drop_listener()
            raise StoreUnavailableError(f"cannot LISTEN on {self._where}: {_first_line(e)}") from e
        finally:
            # Stop listening between waits: an idle listener whose notifications nobody
            # reads would hold back the server's notification queue.
            if self._listener is not None:
                try:
                    self._listener.execute("UNLISTEN *")
                except psycopg.Error:
                    self._drop_listener()
            self._listen_lock.release()

    def _listening(self) -> psycopg.Connection[Row]:
        self._check_open()
        if self._listener is None or self._listener.broken or self._listener.closed:
            self._drop_listener()
            self._listener = self._connect()
        return self._listener

    def _drop_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(psycopg.Error):
                self._listener.close()
            self._listener = None

    @property
    def location(self) -> str:
        return self._where

    def check(self) -> dict[str, Any]:
        with self.reading() as r:
            summary = summarize(r)
            triggers = r.query(
                "SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = ? AND c.relname = 'events' AND NOT t.tgisinternal"
                " ORDER BY tgname",
                (self.schema,),
            )
        missing = {"events_no_update", "events_no_truncate"} - {t["tgname"] for t in triggers}
        integrity = "ok" if not missing else f"append-only triggers missing: {sorted(missing)}"
        return {
            "backend": "postgresql",
            "integrity": integrity,
            **summary,
            "path": f"{self._where} (schema {self.schema})",
        }

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if os.getpid() != self._pid:
                return  # the parent's connection: closing it here would break the parent
            self._drop_listener()
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
