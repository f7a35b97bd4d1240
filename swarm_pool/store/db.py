"""The SQLite connection: WAL, busy timeout, migrations, and locked write transactions.

Room: store.

Owns one connection per ``Database`` and the rules every writer follows, whatever the
process: each write transaction is ``BEGIN IMMEDIATE`` taken while holding a file lock
next to the DB (``swarm.db.lock``), so writers from many processes queue on the lock
instead of failing with "database is locked", and a writer killed with ``kill -9`` loses
only its open transaction (SQLite rolls it back from the WAL; the kernel drops the
flock). The lock is ``flock(2)`` on a descriptor kept open per ``Database`` (the
``filelock`` package re-opens the file and keeps fork bookkeeping on every acquire,
which measured about 3x slower with 8 writers; it stays available as
``lock_impl="filelock"``). Numbered migrations are recorded in ``schema_migrations``
and applied under the same lock. The WAL is checkpointed when the DB is opened and when
it is closed cleanly, so committed data never lives only in ``-wal``. ``synchronous`` is
NORMAL: a commit survives the process being killed; a power cut may lose the last
commits but never corrupts. One connection is shared by the threads of a process behind
a re-entrant lock; it must not cross a ``fork``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import filelock

from swarm_pool.errors import MigrationError, StoreCorruptError, StoreError
from swarm_pool.paths import FILE_MODE, make_private

Params = Sequence[Any] | Mapping[str, Any]
Row = dict[str, Any]

# Waiting writers poll the file lock; a short interval keeps the queue moving (the
# holder's transaction takes well under a millisecond) at a small CPU cost.
LOCK_POLL_S = 0.001
LOCK_POLL_MIN_S = 0.0001


class LockTimeout(Exception):
    pass


def _sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


class _FileLock(Protocol):
    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class _FilelockLock:
    """The ``filelock`` package's lock (portable; re-opens the file on each acquire)."""

    def __init__(self, path: Path, timeout: float) -> None:
        # thread_local=False: our RLock already serializes threads, and the lock must be
        # the same object whichever thread opens the transaction.
        self._lock = filelock.FileLock(str(path), timeout=timeout, thread_local=False)

    def acquire(self) -> None:
        try:
            self._lock.acquire(poll_interval=LOCK_POLL_S)
        except filelock.Timeout as e:
            raise LockTimeout(str(e)) from e

    def release(self) -> None:
        self._lock.release()

    def close(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)


class _FlockLock:
    """``flock(2)`` on a descriptor kept open for the life of the ``Database``.

    Much cheaper per transaction than ``filelock`` (no open/close, no bookkeeping); a
    waiting writer polls with a short exponential backoff. The descriptor is opened
    non-inheritable, and a ``Database`` refuses to work after ``fork``.
    """

    def __init__(self, path: Path, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        deadline = time.monotonic() + self._timeout
        delay = LOCK_POLL_MIN_S
        while True:
            time.sleep(delay)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"{self._path} is held by another process") from None
                delay = min(delay * 2, LOCK_POLL_S)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class Migration:
    """One numbered schema step. ``statements`` are the shared SQL, which each backend
    translates through its dialect; ``postgres``, when given, replaces them on
    PostgreSQL where the dialects differ beyond translation (triggers, functions)."""

    version: int
    name: str
    statements: tuple[str, ...]
    postgres: tuple[str, ...] | None = None


# SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB.
_DAMAGED_CODES = frozenset({11, 26})


def is_damaged(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _DAMAGED_CODES


def damaged(path: Path, error: sqlite3.Error) -> StoreCorruptError:
    return StoreCorruptError(
        f"store {path} is damaged ({error}); `swarm-pool db check` reports on it; "
        "move it aside to start afresh"
    )


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


class Database:
    """One SQLite connection with locked write transactions and snapshot reads."""

    def __init__(
        self,
        path: Path,
        *,
        migrations: Sequence[Migration] = (),
        busy_timeout_ms: int = 10000,
        lock_timeout_s: float = 30.0,
        synchronous: str = "NORMAL",
        lock_impl: str = "flock",
    ) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.busy_timeout_ms = busy_timeout_ms
        self.lock_timeout_s = lock_timeout_s
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._depth = 0
        self._closed = False
        if not path.parent.is_dir():
            raise StoreError(f"store directory does not exist: {path.parent}")
        if lock_impl not in ("flock", "filelock"):
            raise StoreError(f"bad lock_impl {lock_impl!r}: 'flock' or 'filelock'")
        impl = _FlockLock if lock_impl == "flock" else _FilelockLock
        try:
            self._filelock: _FileLock = impl(self.lock_path, lock_timeout_s)
        except OSError as e:
            raise StoreError(f"cannot open the store's lock file {self.lock_path}: {e}") from e
        try:
            # SQLite gives the -wal and -shm files the database file's mode: born 0600.
            # Only a file that does not exist yet is opened here: closing any descriptor
            # of a database file drops every POSIX lock this process holds on it,
            # SQLite's own included, and then another process's close can checkpoint and
            # delete the WAL that this process's connections still write to.
            if not path.exists():
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE))
            # A store made before its files were private: fix the modes on open.
            for private in (path, self.lock_path, *_sidecars(path)):
                make_private(private)
        except OSError as e:
            self._filelock.close()
            raise StoreError(f"cannot open store {path}: {e}") from e
        try:
            self._conn = sqlite3.connect(
                str(path),
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
        except sqlite3.Error as e:
            self._filelock.close()
            raise StoreError(f"cannot open store {path}: {e}") from e
        self._conn.row_factory = _dict_row
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            with self._file_locked():
                # Switching to WAL needs an exclusive lock; do it under ours so that many
                # processes opening a fresh DB at once do not trip over each other.
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()
                if mode is None or next(iter(mode.values())).lower() != "wal":
                    raise StoreError(f"cannot put {path} in WAL mode (got {mode})")
                self._migrate(migrations)
            self._conn.execute(f"PRAGMA synchronous = {synchronous}")
            self._conn.execute("PRAGMA foreign_keys = OFF")
            self.checkpoint("PASSIVE")
        except BaseException as e:
            self._conn.close()
            self._filelock.close()
            if isinstance(e, sqlite3.Error):
                if is_damaged(e):
                    raise damaged(path, e) from e
                raise StoreError(f"cannot open store {path}: {e}") from e
            cause = e.__cause__
            if isinstance(cause, sqlite3.Error) and is_damaged(cause):
                raise damaged(path, cause) from e
            raise

    # --- locking ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        if os.getpid() != self._pid:
            raise StoreError("a Store cannot be used across fork(); open a new one in the child")

    @contextmanager
    def _file_locked(self) -> Iterator[None]:
        try:
            self._filelock.acquire()
        except LockTimeout as e:
            raise StoreError(
                f"timed out after {self.lock_timeout_s}s waiting for the store's write lock "
                f"{self.lock_path}"
            ) from e
        try:
            yield
        finally:
            self._filelock.release()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: thread lock, file lock, ``BEGIN IMMEDIATE``; commit or
        roll back. Nested calls in the same thread join the outer transaction."""
        with self._lock:
            self._check_open()
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            with self._file_locked():
                self._begin("BEGIN IMMEDIATE")
                self._depth = 1
                try:
                    yield self._conn
                except BaseException:
                    self._depth = 0
                    self._rollback()
                    raise
                self._depth = 0
                self._commit()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several queries (or the open write transaction)."""
        with self._lock:
            self._check_open()
            if self._depth or self._conn.in_transaction:
                yield self._conn
                return
            self._begin("BEGIN")
            try:
                yield self._conn
            finally:
                self._rollback()

    def _begin(self, sql: str) -> None:
        try:
            self._conn.execute(sql)
        except sqlite3.OperationalError as e:
            raise StoreError(f"cannot start a transaction on {self.path}: {e}") from e

    def _commit(self) -> None:
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise StoreError(f"commit failed on {self.path}: {e}") from e

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            # The transaction is gone either way; the original error is what matters.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    # --- queries ----------------------------------------------------------------------

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        with self._lock:
            self._check_open()
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                if is_damaged(e):
                    raise damaged(self.path, e) from e
                raise StoreError(f"query failed on {self.path}: {e}") from e

    def scalar(self, sql: str, params: Params = ()) -> Any:
        rows = self.query(sql, params)
        if not rows:
            return None
        return next(iter(rows[0].values()))

    # --- maintenance ------------------------------------------------------------------

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        conn = self._conn
        versions = [m.version for m in migrations]
        if versions != sorted(set(versions)):
            raise MigrationError(f"migrations must have increasing unique versions: {versions}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
            )
            done = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations")}
            known = set(versions)
            if done - known:
                raise MigrationError(
                    f"store {self.path} has migrations this version does not know: "
                    f"{sorted(done - known)}; upgrade swarm-pool"
                )
            for m in migrations:
                if m.version in done:
                    continue
                for stmt in m.statements:
                    conn.execute(stmt)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, int(time.time() * 1000)),
                )
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise MigrationError(f"migrating {self.path} failed: {e}") from e
        except BaseException:
            self._rollback()
            raise

    def migrations(self) -> list[Row]:
        return self.query("SELECT version, name, applied_at FROM schema_migrations ORDER BY 1")

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """``PRAGMA wal_checkpoint``; returns (busy, wal_pages, checkpointed_pages).

        Never waits for other processes' readers: TRUNCATE/RESTART run with the busy
        timeout lowered, and fall back to what PASSIVE could do if readers are active.
        """
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise StoreError(f"bad checkpoint mode {mode!r}")
        with self._lock:
            self._check_open()
            if self._conn.in_transaction:
                return (1, -1, -1)
            if mode != "PASSIVE":
                self._conn.execute("PRAGMA busy_timeout = 100")
            try:
                row = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            except sqlite3.Error as e:
                raise StoreError(f"checkpoint failed on {self.path}: {e}") from e
            finally:
                if mode != "PASSIVE":
                    self._conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            values = list(row.values()) if row else [1, -1, -1]
            return (int(values[0]), int(values[1]), int(values[2]))

    def integrity_check(self) -> str:
        rows = self.query("PRAGMA integrity_check")
        return "; ".join(str(next(iter(r.values()))) for r in rows)

    def close(self) -> None:
        """Checkpoint (TRUNCATE when no one else reads) and close; idempotent."""
        with self._lock:
            if self._closed:
                return
            if os.getpid() == self._pid:
                # If another process is mid-transaction, its own close will do it.
                with contextlib.suppress(StoreError):
                    self.checkpoint("TRUNCATE")
                self._conn.close()
            self._filelock.close()
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed
