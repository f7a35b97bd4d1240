"""The store's core, on both backends (a conformance contract run on SQLite and on
PostgreSQL): append/read, seq, the append-only table, migrations, reopening, threads
sharing one Store, wait_for_change, the write lock; then what only one backend has
(SQLite's WAL checkpoints and lock file, PostgreSQL's URLs, NOTIFY and lost
connections), and finding the project's store from a worktree."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from swarm_pool.config import StoreSection
from swarm_pool.errors import ConfigError, MigrationError, StoreError, StoreUnavailableError
from swarm_pool.paths import ProjectPaths
from swarm_pool.store import Store, find_project_store, open_project_store, open_store
from swarm_pool.store.core import open_url, parse_store_url
from swarm_pool.store.events import InstanceReady, WorkerProgress, WorkerSpawned
from swarm_pool.store.schema import MIGRATIONS
from tests.pg_server import ScratchPostgres
from tests.store_backends import OnPostgres, OnSQLite, StoreBackend, StoreFixtures
from tests.support import wait_for

EPIC = "bd-abc123"


class CoreContract(StoreFixtures):
    def test_append_returns_increasing_gap_free_seq(self, store: Store) -> None:
        seqs = [store.append(InstanceReady(instance="i1", pid=n)) for n in range(50)]
        assert seqs == list(range(1, 51))
        assert store.last_seq() == 50
        more = store.append_many([InstanceReady(instance="i2") for _ in range(5)])
        assert more == [51, 52, 53, 54, 55]
        assert store.append_many([]) == []

    def test_a_refused_append_leaves_no_hole(self, store: Store) -> None:
        store.append(InstanceReady(instance="i1"))
        bad = {"type": "cell_status_changed", "cell_id": "bd-0000aa.1", "epic_id": "bd-0000aa"}
        with pytest.raises(StoreError):
            store.append_many([InstanceReady(instance="i2"), {**bad, "status": "closed"}])
        assert store.append(InstanceReady(instance="i3")) == 2
        assert store.check()["seq_gap_free"]

    def test_append_accepts_dicts_and_models_and_read_round_trips(self, store: Store) -> None:
        seq = store.append({"type": "instance_ready", "instance": "i1", "pid": 7, "timestamp": 5})
        stored = store.read()[0]
        assert (stored.seq, stored.type, stored.timestamp) == (seq, "instance_ready", 5)
        assert isinstance(stored.event, InstanceReady)
        assert stored.to_dict() == {
            "seq": seq,
            "type": "instance_ready",
            "timestamp": 5,
            "instance": "i1",
            "pid": 7,
            "port": None,
            "startup_ms": None,
        }

    def test_millisecond_timestamps_and_text_round_trip(self, store: Store) -> None:
        ms = 1_796_000_000_123  # beyond a 32-bit integer
        text = "100% \u00e9t\u00e9 ? 'quoted' \\ %s"
        store.append({"type": "instance_ready", "instance": text, "timestamp": ms})
        stored = store.read()[0]
        assert stored.timestamp == ms and stored.event.instance == text  # type: ignore[union-attr]
        assert [e.seq for e in store.read(types=["instance_ready"], after_seq=0)] == [1]

    def test_read_filters(self, store: Store) -> None:
        store.append(WorkerSpawned(bead_id=f"{EPIC}.1", epic_id=EPIC, session_id="s1"))
        store.append(WorkerSpawned(bead_id="bd-other1.1", epic_id="bd-other1", session_id="s2"))
        store.append(WorkerProgress(bead_id=f"{EPIC}.1", epic_id=EPIC, progress_percent=50))
        store.append(InstanceReady(instance="i1"))
        assert [e.seq for e in store.read(epic_id=EPIC)] == [1, 3]
        assert [e.seq for e in store.read(bead_id="bd-other1.1")] == [2]
        assert [e.seq for e in store.read(session_id="s1")] == [1]
        assert [e.seq for e in store.read(types=["worker_progress", "instance_ready"])] == [3, 4]
        assert [e.seq for e in store.read(types="instance_ready")] == [4]
        assert [e.seq for e in store.read(after_seq=2)] == [3, 4]
        assert [e.seq for e in store.read(limit=2)] == [1, 2]
        assert [e.seq for e in store.read(limit=2, descending=True)] == [4, 3]
        assert [e.seq for e in store.read(epic_id=EPIC, types=["worker_spawned"])] == [1]
        assert store.read(types=[]) == []

    def test_events_table_is_append_only(
        self, store: Store, backend: StoreBackend, url: str, root: Path
    ) -> None:
        store.append(InstanceReady(instance="i1"))
        with backend.raw(url, root) as conn:
            for sql in ("UPDATE events SET type = 'x'", "DELETE FROM events"):
                with pytest.raises(Exception, match="append-only"):
                    conn.execute(sql)
            assert list(conn.execute("SELECT count(*) FROM events").fetchone()) == [1]
        assert store.check()["seq_gap_free"]

    def test_migrations_recorded_and_not_rerun(
        self, store: Store, backend: StoreBackend, url: str, root: Path
    ) -> None:
        store.append(InstanceReady(instance="i1"))
        report = store.check()
        assert report["integrity"] == "ok"
        assert report["backend"] == backend.name
        assert report["migrations"] == [m.version for m in MIGRATIONS]
        with backend.raw(url, root) as conn:
            rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1")
            found = [tuple(r) for r in rows.fetchall()]
        assert found == [(m.version, m.name) for m in MIGRATIONS]
        assert found[:5] == [
            (1, "events"),
            (2, "projections"),
            (3, "reservation_prefix"),
            (4, "worker_lifecycle"),
            (5, "worker_blocked_time"),
        ]
        with backend.open(url, root) as again:
            assert again.last_seq() == 1
            assert again.check()["migrations"] == [m.version for m in MIGRATIONS]

    def test_unknown_future_migration_is_refused(
        self, store: Store, backend: StoreBackend, url: str, root: Path
    ) -> None:
        with backend.raw(url, root) as conn:
            conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
        with pytest.raises(MigrationError, match="upgrade swarm-pool"):
            backend.open(url, root)

    def test_closed_store_refuses_work(self, store: Store) -> None:
        store.close()
        store.close()  # idempotent
        with pytest.raises(StoreError, match="closed"):
            store.append(InstanceReady(instance="i1"))

    def test_threads_share_one_store(self, store: Store) -> None:
        errors: list[BaseException] = []
        seqs: list[list[int]] = [[] for _ in range(8)]

        def work(k: int) -> None:
            try:
                for n in range(150):
                    seqs[k].append(store.append(InstanceReady(instance=f"t{k}", pid=n)))
                    if n % 25 == 0:
                        store.read(limit=5, descending=True)
                        store.reservations.active()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        flat = sorted(s for per in seqs for s in per)
        assert flat == list(range(1, 1201))
        for per in seqs:
            assert per == sorted(per)

    def test_wait_for_change_wakes_on_another_connections_append(
        self, store: Store, backend: StoreBackend, url: str, root: Path
    ) -> None:
        start = time.monotonic()
        assert store.wait_for_change(0, timeout=0.2) == 0
        assert time.monotonic() - start >= 0.19
        other = backend.open(backend.host_urls(url)[1], root)

        def later() -> None:
            time.sleep(0.2)
            other.append(InstanceReady(instance="i1"))

        t = threading.Thread(target=later)
        t.start()
        try:
            start = time.monotonic()
            assert store.wait_for_change(0, timeout=30) == 1
            assert time.monotonic() - start < 20
        finally:
            t.join()
            other.close()
        assert store.wait_for_change(0, timeout=5) == 1  # already past: returns at once

    def test_write_lock_held_elsewhere_times_out_cleanly(
        self, backend: StoreBackend, url: str, root: Path
    ) -> None:
        with backend.open(url, root, lock_timeout_s=0.3) as s:
            assert s.append(InstanceReady(instance="i1")) == 1
            with backend.hold_write_lock(url, root):
                start = time.monotonic()
                with pytest.raises(StoreError, match="timed out"):
                    s.append(InstanceReady(instance="i2"))
                assert 0.25 < time.monotonic() - start < 10
            assert s.append(InstanceReady(instance="i3")) == 2  # nothing half-written


class TestCoreOnSQLite(OnSQLite, CoreContract):
    pass


class TestCoreOnPostgres(OnPostgres, CoreContract):
    pass


# --- SQLite only ----------------------------------------------------------------------


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    paths = ProjectPaths(tmp_path).ensure()
    with open_store(paths.db) as s:
        yield s


def test_sqlite_wal_mode(sqlite_store: Store) -> None:
    assert sqlite_store.db_path is not None
    conn = sqlite3.connect(sqlite_store.db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


def _events_in_main_file_only(db: Path, tmp: Path) -> int:
    """Count the events SQLite finds in the main DB file alone (no -wal beside it)."""
    copy = tmp / "copy.db"
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_checkpoint_on_clean_close_leaves_nothing_only_in_the_wal(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    pp = ProjectPaths(tmp_path / "p").ensure()
    s = open_store(pp.db)
    for n in range(100):
        s.append(InstanceReady(instance="i1", pid=n))
    wal = pp.db.with_name("swarm.db-wal")
    assert wal.exists() and wal.stat().st_size > 0  # data is in the WAL now
    s.close()
    s.close()  # idempotent
    assert not wal.exists() or wal.stat().st_size == 0
    assert _events_in_main_file_only(pp.db, tmp_path) == 100


def test_checkpoint_on_open(tmp_path: Path) -> None:
    pp = ProjectPaths(tmp_path).ensure()
    writer = open_store(pp.db)
    try:
        for n in range(50):
            writer.append(InstanceReady(instance="i1", pid=n))
        # Another process opening the store moves the WAL's frames into the DB file.
        with open_store(pp.db):
            scratch = tmp_path / "scratch"
            scratch.mkdir()
            assert _events_in_main_file_only(pp.db, scratch) == 50
    finally:
        writer.close()


def test_a_second_store_in_one_process_keeps_the_wal_of_the_first(tmp_path: Path) -> None:
    """Closing any descriptor of a database file drops this process's POSIX locks on it.
    Opening a second store must not do that: another process's close would then find
    itself the last connection, checkpoint and delete the WAL the first store still
    writes to, and later events would go to an unlinked file nobody else reads."""
    pp = ProjectPaths(tmp_path).ensure()
    first = open_store(pp.db)
    try:
        first.append(InstanceReady(instance="i1", pid=1))
        with open_store(pp.db) as second:
            second.append(InstanceReady(instance="i1", pid=2))
        # Another process opens and closes its own connection (as every CLI command does).
        script = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        script += "c.execute('SELECT count(*) FROM events').fetchone(); c.close()"
        subprocess.run([sys.executable, "-c", script, str(pp.db)], check=True, timeout=60)
        first.append(InstanceReady(instance="i1", pid=3))
        # A fresh connection sees every event the first store wrote.
        conn = sqlite3.connect(pp.db)
        try:
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (3,)
        finally:
            conn.close()
    finally:
        first.close()


def test_open_project_store_creates_swarm_dir(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path)
    with open_project_store(paths) as s:
        assert s.db_path == paths.db
        assert s.project_root == tmp_path.resolve()
    assert (tmp_path / ".swarm" / ".gitignore").read_text() == "*\n"


def test_open_store_in_missing_dir_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nope" / ".swarm" / "swarm.db")


def test_open_store_on_a_file_that_is_not_a_db(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path).ensure()
    paths.db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a database"):
        open_store(paths.db)


def test_filelock_impl_times_out_cleanly_too(tmp_path: Path) -> None:
    import fcntl
    import os

    paths = ProjectPaths(tmp_path).ensure()
    with open_store(paths.db, lock_timeout_s=0.3, lock_impl="filelock") as s:
        assert s.append(InstanceReady(instance="i1")) == 1
        fd = os.open(paths.db.with_name("swarm.db.lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with pytest.raises(StoreError, match="timed out"):
                s.append(InstanceReady(instance="i2"))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        assert s.append(InstanceReady(instance="i3")) == 2


def test_find_project_store_walks_up_from_a_worktree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    with open_project_store(ProjectPaths(root)) as s:
        s.append(InstanceReady(instance="i1"))
    worktree = root / ".swarm" / "worktrees" / "bd-abc.1" / "src"
    worktree.mkdir(parents=True)
    with find_project_store(worktree) as found:
        assert found.project_root == root.resolve()
        assert found.last_seq() == 1
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(StoreError, match="no swarm store found"):
        find_project_store(elsewhere)
    monkeypatch.setenv("SWARM_POOL_PROJECT", str(root))
    with find_project_store(elsewhere) as found:
        assert found.last_seq() == 1
    monkeypatch.setenv("SWARM_POOL_PROJECT", str(tmp_path / "missing"))
    with pytest.raises(StoreError, match="not a directory"):
        find_project_store(elsewhere)


# --- store URLs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "backend", "target"),
    [
        ("", "sqlite", ""),
        ("  ", "sqlite", ""),
        ("sqlite:///tmp/x.db", "sqlite", "/tmp/x.db"),
        ("sqlite:state/x.db", "sqlite", "state/x.db"),
        ("postgresql://u:p@h:5432/db", "postgresql", "postgresql://u:p@h:5432/db"),
        ("postgres://h/db", "postgresql", "postgres://h/db"),
    ],
)
def test_parse_store_url(url: str, backend: str, target: str) -> None:
    assert parse_store_url(url) == (backend, target)


@pytest.mark.parametrize("url", ["mysql://h/db", "sqlite:", "postgresql:db", "swarm.db"])
def test_bad_store_url_is_one_clear_line(url: str) -> None:
    with pytest.raises(ConfigError, match="bad store URL") as info:
        parse_store_url(url)
    assert "\n" not in str(info.value)


def test_bad_url_never_shows_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_store_url("mysql://alice:s3cret@h/db")
    assert "s3cret" not in str(info.value) and "alice:***@h" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        (
            "postgresql://h/db?password=pw&sslmode=require",
            "postgresql://h/db?password=***&sslmode=require",
        ),
        (
            "postgresql://u@h/db?sslmode=require&PASSWORD=pw",
            "postgresql://u@h/db?sslmode=require&PASSWORD=***",
        ),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_store_urls_are_shown_without_password(url: str, shown: str) -> None:
    from swarm_pool.store.url import redact

    assert redact(url) == shown


def test_sqlite_url_relative_to_the_project(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_url("sqlite:state/other.db", project_root=tmp_path)
    (tmp_path / "state").mkdir()
    with open_url("sqlite:state/other.db", project_root=tmp_path) as s:
        s.append(InstanceReady(instance="i1"))
        assert s.db_path == tmp_path.resolve() / "state" / "other.db"
    assert (tmp_path / "state" / "other.db").is_file()


def test_project_store_from_config_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from swarm_pool.config import load_config

    target = tmp_path / "elsewhere.db"
    monkeypatch.setenv("SWARM_POOL_STORE__URL", f"sqlite://{target}")
    config = load_config(project_root=tmp_path)
    assert config.store.url == f"sqlite://{target}"
    with open_project_store(ProjectPaths(tmp_path), config) as s:
        assert s.db_path == target


# --- PostgreSQL only ------------------------------------------------------------------


def test_unreachable_server_is_one_clear_line_without_password(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://bob:hunter2@127.0.0.1:{port}/db"
    with pytest.raises(StoreUnavailableError, match="cannot connect to the store") as info:
        open_url(url, project_root=tmp_path, settings=StoreSection(connect_timeout_s=2))
    text = str(info.value)
    assert "\n" not in text and "hunter2" not in text and "bob:***@" in text


def test_wrong_password_and_missing_schema(tmp_path: Path, pg_server: ScratchPostgres) -> None:
    bad = pg_server.url().replace(pg_server.password.replace("-", "%2D"), "nope")
    bad = bad.replace(f":{pg_server.password}@", ":nope@")
    with pytest.raises(StoreUnavailableError, match="password authentication failed"):
        open_url(bad, project_root=tmp_path)
    with pytest.raises(StoreError, match="names no existing schema"):
        open_url(pg_server.url(schema="no_such_schema"), project_root=tmp_path)


def test_postgres_truncate_is_refused_and_check_sees_missing_triggers(
    tmp_path: Path, pg_server: ScratchPostgres
) -> None:
    schema = pg_server.new_schema()
    url = pg_server.url(schema=schema)
    try:
        with open_url(url, project_root=tmp_path) as s:
            s.append(InstanceReady(instance="i1"))
            with psycopg.connect(url, autocommit=True) as conn:
                with pytest.raises(psycopg.Error, match="append-only"):
                    conn.execute("TRUNCATE events")
                conn.execute("DROP TRIGGER events_no_update ON events")
            assert "events_no_update" in s.check()["integrity"]
    finally:
        pg_server.drop_schema(schema)


def test_postgres_store_survives_a_dropped_connection(
    tmp_path: Path, pg_server: ScratchPostgres
) -> None:
    schema = pg_server.new_schema()
    url = pg_server.url(schema=schema)
    try:
        with open_url(url, project_root=tmp_path) as s:
            s.append(InstanceReady(instance="i1"))
            with psycopg.connect(pg_server.url(), autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'swarm-pool[%%' AND pid <> pg_backend_pid()"
                )
            with pytest.raises(StoreUnavailableError, match="lost the store"):
                s.append(InstanceReady(instance="i2"))
            assert s.append(InstanceReady(instance="i3")) == 2  # reconnected
            assert s.check()["seq_gap_free"]
    finally:
        pg_server.drop_schema(schema)


def test_postgres_wait_is_woken_by_notify(
    tmp_path: Path, pg_server: ScratchPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    import swarm_pool.store.postgres as pg

    # Without NOTIFY a waiter would only notice at its next re-check, 2 minutes away.
    monkeypatch.setattr(pg, "LISTEN_RECHECK_S", 120.0)
    schema = pg_server.new_schema()
    try:
        with (
            open_url(pg_server.url(schema=schema), project_root=tmp_path) as waiter,
            open_url(pg_server.url(schema=schema, via="socket"), project_root=tmp_path) as other,
        ):
            waiter.append(InstanceReady(instance="i0"))
            woke: list[float] = []

            def wait() -> None:
                waiter.wait_for_change(1, timeout=100)
                woke.append(time.monotonic())

            t = threading.Thread(target=wait)
            t.start()
            recorder = waiter.recorder
            assert isinstance(recorder, pg.PostgresRecorder)
            wait_for(lambda: recorder._listener is not None, timeout=30)
            time.sleep(0.3)  # past LISTEN and the re-read of last_seq
            appended = time.monotonic()
            other.append(InstanceReady(instance="i1"))
            t.join(timeout=110)
            assert woke and woke[0] - appended < 30
    finally:
        pg_server.drop_schema(schema)
