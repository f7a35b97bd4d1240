"""The store's core on a real SQLite file: append/read, seq, the append-only table,
migrations, WAL checkpoints, threads sharing one Store, wait_for_change, and finding the
project's store from a worktree."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm_pool.errors import StoreError
from swarm_pool.paths import ProjectPaths
from swarm_pool.store import Store, find_project_store, open_project_store, open_store
from swarm_pool.store.events import InstanceReady, WorkerProgress, WorkerSpawned
from swarm_pool.store.recorder import MIGRATIONS

EPIC = "bd-abc123"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    paths = ProjectPaths(tmp_path).ensure()
    with open_store(paths.db) as s:
        yield s


def test_append_returns_increasing_gap_free_seq(store: Store) -> None:
    seqs = [store.append(InstanceReady(instance="i1", pid=n)) for n in range(50)]
    assert seqs == list(range(1, 51))
    assert store.last_seq() == 50
    more = store.append_many([InstanceReady(instance="i2") for _ in range(5)])
    assert more == [51, 52, 53, 54, 55]
    assert store.append_many([]) == []


def test_append_accepts_dicts_and_models_and_read_round_trips(store: Store) -> None:
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


def test_read_filters(store: Store) -> None:
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


def test_events_table_is_append_only(store: Store) -> None:
    store.append(InstanceReady(instance="i1"))
    conn = sqlite3.connect(store.db_path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE events SET type = 'x'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM events")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    finally:
        conn.close()


def test_wal_mode_and_migrations_recorded(store: Store) -> None:
    conn = sqlite3.connect(store.db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()
        assert rows == [(m.version, m.name) for m in MIGRATIONS]
        assert rows[:5] == [
            (1, "events"),
            (2, "projections"),
            (3, "reservation_prefix"),
            (4, "worker_lifecycle"),
            (5, "worker_blocked_time"),
        ]
    finally:
        conn.close()
    report = store.check()
    assert report["integrity"] == "ok"
    assert report["migrations"] == [m.version for m in MIGRATIONS]


def test_reopen_keeps_data_and_does_not_remigrate(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path).ensure()
    with open_store(paths.db) as s:
        s.append(InstanceReady(instance="i1"))
    with open_store(paths.db) as s:
        assert s.last_seq() == 1
        assert s.check()["migrations"] == [m.version for m in MIGRATIONS]


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


def test_closed_store_refuses_work(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.append(InstanceReady(instance="i1"))


def test_threads_share_one_store(store: Store) -> None:
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


def test_wait_for_change(store: Store) -> None:
    start = time.monotonic()
    assert store.wait_for_change(0, timeout=0.2) == 0
    assert time.monotonic() - start >= 0.19

    def later() -> None:
        time.sleep(0.2)
        store.append(InstanceReady(instance="i1"))

    t = threading.Thread(target=later)
    t.start()
    start = time.monotonic()
    assert store.wait_for_change(0, timeout=10) == 1
    assert time.monotonic() - start < 5
    t.join()
    assert store.wait_for_change(0, timeout=5) == 1  # already past: returns at once


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


def test_unknown_future_migration_is_refused(store: Store) -> None:
    conn = sqlite3.connect(store.db_path)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="upgrade swarm-pool"):
        open_store(store.db_path)


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


@pytest.mark.parametrize("lock_impl", ["flock", "filelock"])
def test_write_lock_held_elsewhere_times_out_cleanly(tmp_path: Path, lock_impl: str) -> None:
    import fcntl
    import os

    paths = ProjectPaths(tmp_path).ensure()
    with open_store(paths.db, lock_timeout_s=0.3, lock_impl=lock_impl) as s:
        assert s.append(InstanceReady(instance="i1")) == 1
        fd = os.open(paths.db.with_name("swarm.db.lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another writer holds the lock
            start = time.monotonic()
            with pytest.raises(StoreError, match="timed out"):
                s.append(InstanceReady(instance="i2"))
            assert 0.25 < time.monotonic() - start < 5
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        assert s.append(InstanceReady(instance="i3")) == 2  # nothing half-written
