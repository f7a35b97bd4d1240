"""Store benchmark: appends/s (1 and 8 writer processes), reservation grants/s and
denials/s, the wake-up of ``await`` after a completion, and the time to answer "status
of every worker in epic E" from the workers projection versus by scanning the events
(the upstream ADR's way), at two log sizes.

``--backend sqlite|postgresql|both`` picks the stores (PostgreSQL: a throw-away server
from the server binaries on this machine, fsync on, as ``tests/pg_server.py`` starts
it). With two backends, the same figures come side by side; PostgreSQL's 8 writers and
reservation racers are split over two "hosts" (TCP and the unix socket), and the write
lock is measured both ways the issue asks: the advisory transaction lock the recorder
uses, and SERIALIZABLE transactions retried on conflict.

Everything is measured side by side in one run on temporary stores; compare the ratios,
not the absolute numbers (they depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from psycopg.errors import SerializationFailure, UniqueViolation

from swarm_pool.config import StoreSection
from swarm_pool.errors import StoreError
from swarm_pool.paths import ProjectPaths
from swarm_pool.store import Store, open_store
from swarm_pool.store.core import open_url
from swarm_pool.store.events import (
    CellCreated,
    EpicCreated,
    InstanceReady,
    BeadSpec,
    WorkerCompleted,
    WorkerProgress,
    WorkerQueued,
    WorkerSpawned,
)
from swarm_pool.store.postgres import PostgresRecorder
from swarm_pool.store.projections import WORKER_EVENT_TYPES
from tests.pg_server import ScratchPostgres, find_bin_dir

CTX = mp.get_context("fork")
_names = itertools.count()


def _new_store(base: Path, name: str, lock_impl: str = "flock") -> Store:
    root = base / name
    root.mkdir()
    paths = ProjectPaths(root).ensure()
    return open_store(paths.db, lock_impl=lock_impl)


# --- appends --------------------------------------------------------------------------


def _append_worker(db: str, lock_impl: str, worker: int, count: int, go: MpEvent, q: Any) -> None:
    with open_store(Path(db), lock_impl=lock_impl) as store:
        go.wait(60)
        for n in range(count):
            store.append(InstanceReady(instance=f"w{worker}", pid=n))
    q.put(worker)


def appends_per_s(base: Path, name: str, writers: int, total: int, lock_impl: str) -> float:
    store = _new_store(base, name, lock_impl)
    db = store.db_path
    if writers == 1:
        start = time.perf_counter()
        for n in range(total):
            store.append(InstanceReady(instance="w0", pid=n))
        elapsed = time.perf_counter() - start
        store.close()
        return total / elapsed
    store.close()
    go, q = CTX.Event(), CTX.Queue()
    per = total // writers
    procs = [
        CTX.Process(target=_append_worker, args=(str(db), lock_impl, k, per, go, q))
        for k in range(writers)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let every child open its store before the clock starts
    start = time.perf_counter()
    go.set()
    for _ in procs:
        q.get(timeout=600)
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join(timeout=60)
    with open_store(db) as check:
        assert check.last_seq() == per * writers, "lost appends"
    return per * writers / elapsed


# --- reservations ---------------------------------------------------------------------


def grants_per_s(base: Path, count: int) -> dict[str, float]:
    store = _new_store(base, "reservations")
    r = store.reservations
    start = time.perf_counter()
    for n in range(count):
        result = r.reserve(f"agent-{n % 50}", [f"area{n}/**", f"docs/area{n}.md"], ttl_s=600)
        assert result.granted
    granted = time.perf_counter() - start
    start = time.perf_counter()
    denials = max(1, count // 5)
    for n in range(denials):
        assert not r.reserve("intruder", [f"area{n}/x.py"]).granted
    denied = time.perf_counter() - start
    store.close()
    return {
        "grants_per_s": round(count / granted, 1),
        "denials_per_s": round(denials / denied, 1),
        "active_reservations_at_end": count * 2,
    }


# --- status of every worker in epic E -------------------------------------------------

BEADS_PER_EPIC = 10
EVENTS_PER_BEAD = 10  # spawned, 8 progress, completed


def _fill(store: Store, events: int) -> str:
    """Write about ``events`` worker events over many epics; return one epic's id."""
    epics = max(1, events // (BEADS_PER_EPIC * EVENTS_PER_BEAD))
    target = ""
    for k in range(epics):
        epic = f"bd-{k:06x}"
        target = target or epic
        batch: list[Any] = [EpicCreated(epic_id=epic, title=f"epic {k}")]
        for b in range(1, BEADS_PER_EPIC + 1):
            bead = f"{epic}.{b}"
            batch.append(CellCreated(cell_id=bead, epic_id=epic, title=f"task {b}"))
            batch.append(WorkerSpawned(bead_id=bead, epic_id=epic, session_id=f"s-{bead}"))
            for pct in range(10, 90, 10):
                batch.append(WorkerProgress(bead_id=bead, epic_id=epic, progress_percent=pct))
            if b % 3:
                batch.append(WorkerCompleted(bead_id=bead, epic_id=epic, summary="ok"))
        store.append_many(batch)
    return target


def _fold(events: list[Any], epic_id: str) -> dict[str, str]:
    status: dict[str, str] = {}
    for stored in events:
        e = stored.event
        if getattr(e, "epic_id", None) != epic_id:
            continue
        if e.type in ("worker_spawned", "worker_retried", "worker_progress"):
            status[e.bead_id] = "running"
        elif e.type == "worker_completed":
            status[e.bead_id] = {"success": "completed"}.get(e.status, e.status)
        elif e.type == "worker_failed":
            status[e.bead_id] = "failed"
        elif e.type == "worker_blocked":
            status[e.bead_id] = "blocked"
    return status


def _median_ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def epic_status(base: Path, events: int, repeat: int) -> dict[str, Any]:
    store = _new_store(base, f"status-{events}")
    start = time.perf_counter()
    epic = _fill(store, events)
    fill_s = time.perf_counter() - start
    total = store.last_seq()
    types = sorted(WORKER_EVENT_TYPES)

    from_projection = {w.bead_id: w.status for w in store.workers.list(epic_id=epic)}
    scanned = _fold(store.read(types=types), epic)
    assert from_projection == scanned, "projection and scan disagree"

    projection_ms = _median_ms(lambda: store.workers.list(epic_id=epic), repeat)
    # Upstream: read the worker events and fold them (no per-epic index to lean on).
    scan_ms = _median_ms(lambda: _fold(store.read(types=types), epic), max(3, repeat // 10))
    # Ours, had we no projection: the epic index narrows the scan first.
    scan_indexed_ms = _median_ms(lambda: _fold(store.read(types=types, epic_id=epic), epic), repeat)
    rebuild_start = time.perf_counter()
    store.rebuild()
    rebuild_s = time.perf_counter() - rebuild_start
    store.close()
    return {
        "events": total,
        "workers_in_epic": len(from_projection),
        "fill_events_per_s": round(total / fill_s),
        "projection_ms": round(projection_ms, 3),
        "scan_events_ms": round(scan_ms, 2),
        "scan_events_by_epic_index_ms": round(scan_indexed_ms, 3),
        "scan_over_projection": round(scan_ms / projection_ms, 1),
        "indexed_scan_over_projection": round(scan_indexed_ms / projection_ms, 1),
        "rebuild_s": round(rebuild_s, 2),
    }


# --- backends side by side -----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One way in to one store: its URL (empty: the project's SQLite file) and project."""

    url: str
    root: str
    synchronous_commit: bool = False
    serializable: bool = False

    def open(self) -> Store:
        settings = StoreSection(url=self.url, synchronous_commit=self.synchronous_commit)
        if self.serializable:
            recorder = _SerializableRecorder(self.url, synchronous_commit=self.synchronous_commit)
            return Store(recorder, db_path=None, project_root=Path(self.root))
        return open_url(self.url, project_root=Path(self.root), settings=settings)


class _SerializableRecorder(PostgresRecorder):
    """The alternative measured against the advisory lock: SERIALIZABLE transactions,
    no lock; a conflict (a serialization failure, or two writers taking the same seq)
    aborts one, which the caller retries."""

    def _begin_write(self, conn: Any, *, read_seq: bool = True) -> int:
        conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        if not read_seq:
            return 0
        row = conn.execute("SELECT coalesce(max(seq), 0) AS last FROM events").fetchone()
        return int(row["last"])

    def append_one(self, event: Any) -> int:
        with self.writing() as w:
            return w.append(event)


def _conflicted(e: StoreError) -> bool:
    return isinstance(e.__cause__, SerializationFailure | UniqueViolation)


def _retrying(fn: Any) -> tuple[Any, int]:
    """``fn()``, again after each conflict; the result and the number of retries."""
    retries = 0
    while True:
        try:
            return fn(), retries
        except StoreError as e:
            if not _conflicted(e):
                raise
            retries += 1


def _new_target(base: Path, name: str, pg: ScratchPostgres | None, **kw: Any) -> list[Target]:
    """A fresh store; its two "hosts" (the same file twice for SQLite)."""
    root = base / f"{name}-{next(_names)}"
    root.mkdir()
    ProjectPaths(root).ensure()
    if pg is None:
        hosts = [Target("", str(root), **kw)] * 2
    else:
        schema = pg.new_schema()
        hosts = [
            Target(pg.url(schema=schema), str(root), **kw),
            Target(pg.url(schema=schema, via="socket"), str(root), **kw),
        ]
    hosts[0].open().close()  # create and migrate before the clock starts
    return hosts


def _run_procs(target: Any, args: list[tuple[Any, ...]]) -> tuple[float, list[Any]]:
    """Start one process per args tuple, release them at once; wall time and results."""
    go, q = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=target, args=(*a, go, q)) for a in args]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let every child open its store before the clock starts
    start = time.perf_counter()
    go.set()
    results = [q.get(timeout=900) for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join(timeout=60)
    return elapsed, results


def _appender(t: Target, worker: int, count: int, kind: str, go: MpEvent, q: Any) -> None:
    errors = 0
    try:
        with t.open() as store:
            go.wait(60)
            bead = f"bd-{worker:06x}.1"
            for n in range(count):
                event: Any = (
                    InstanceReady(instance=f"w{worker}", pid=n)
                    if kind == "plain"
                    else WorkerProgress(bead_id=bead, epic_id=bead[:-2], progress_percent=n % 100)
                )
                try:
                    store.append(event)
                except StoreError:
                    errors += 1
    finally:
        q.put(errors)


def backend_appends(
    base: Path, pg: ScratchPostgres | None, total: int, **kw: Any
) -> dict[str, Any]:
    name = "pg" if pg else "sqlite"
    out: dict[str, Any] = {}
    for writers in (1, 8):
        for kind in ("plain", "worker_progress"):
            hosts = _new_target(base, f"ap-{name}", pg, **kw)
            per = total // writers
            elapsed, errors = _run_procs(
                _appender, [(hosts[k % 2], k, per, kind) for k in range(writers)]
            )
            with hosts[0].open() as check:
                done = check.last_seq()
                assert check.check()["seq_gap_free"]
            label = "one_writer" if writers == 1 else "eight_writer_processes"
            suffix = "" if kind == "plain" else "_worker_progress"
            out[f"{label}{suffix}_per_s"] = round(done / elapsed)
            out[f"{label}{suffix}_errors"] = sum(errors) + (per * writers - done)
    return out


def _reserver(t: Target, k: int, count: int, phase: str, go: MpEvent, q: Any) -> None:
    try:
        _reserve_loop(t, k, count, phase, go, q)
    except BaseException as e:
        q.put((0, 0, repr(e)))


def _reserve_loop(t: Target, k: int, count: int, phase: str, go: MpEvent, q: Any) -> None:
    granted = denied = retries = 0
    with t.open() as store:
        go.wait(60)
        for n in range(count):
            if phase == "grant":
                patterns = [f"area{k}-{n}/**", f"docs/area{k}-{n}.md"]
            else:  # ask for what the next process holds
                patterns = [f"area{(k + 1) % 8}-{n}/x.py"]
            result, tries = _retrying(
                lambda p=patterns: store.reservations.reserve(f"agent-{k}", p, ttl_s=600)
            )
            retries += tries
            if result.granted:
                granted += 1
            else:
                denied += 1
    q.put((granted, denied, retries))


def backend_reservations(
    base: Path, pg: ScratchPostgres | None, count: int, **kw: Any
) -> dict[str, Any]:
    hosts = _new_target(base, f"rsv-{'pg' if pg else 'sqlite'}", pg, **kw)
    per = count // 8
    grant_s, grants = _run_procs(_reserver, [(hosts[k % 2], k, per, "grant") for k in range(8)])
    deny_s, denials = _run_procs(
        _reserver, [(hosts[k % 2], k, max(1, per // 5), "deny") for k in range(8)]
    )
    failed = [r for _g, _d, r in grants + denials if isinstance(r, str)]
    assert not failed, failed[0]
    granted = sum(g for g, _d, _r in grants)
    denied = sum(d for _g, d, _r in denials)
    assert granted == per * 8 and denied == max(1, per // 5) * 8, "wrong grants or denials"
    return {
        "processes": 8,
        "grants_per_s": round(granted / grant_s, 1),
        "denials_per_s": round(denied / deny_s, 1),
        "retries": sum(r for *_x, r in grants) + sum(r for *_x, r in denials),
    }


def _awaiter(t: Target, rounds: int, ready: Any, go: MpEvent, q: Any) -> None:
    """Await each round's epic; report when each await returned."""
    from swarm_pool.config import Config
    from swarm_pool.swarm.context import SwarmContext
    from swarm_pool.swarm.status import await_workers

    with t.open() as store:
        ctx = SwarmContext(paths=ProjectPaths(Path(t.root)), config=Config(), store=store)
        go.wait(60)
        for _ in range(rounds):
            epic = ready.get(timeout=60)
            result = await_workers(ctx, epic, timeout=30)
            assert not result.timed_out
            q.put(time.perf_counter())


def await_wakeup(base: Path, pg: ScratchPostgres | None, rounds: int) -> dict[str, Any]:
    """From just before a worker_completed is appended (by another process) to the
    return of ``await_workers`` waiting on it: p50/p95 in ms."""
    hosts = _new_target(base, f"await-{'pg' if pg else 'sqlite'}", pg)
    go, q, ready = CTX.Event(), CTX.Queue(), CTX.Queue()
    waiter = CTX.Process(target=_awaiter, args=(hosts[0], rounds, ready, go, q))
    waiter.start()
    latencies = []
    rng = random.Random(5)
    with hosts[1].open() as store:
        go.set()
        for n in range(rounds):
            epic = store.hive.create_epic(f"await {n}", [BeadSpec(title="t")])
            bead = epic.cells[0].id
            store.append(WorkerQueued(bead_id=bead, epic_id=epic.id))
            store.append(WorkerSpawned(bead_id=bead, epic_id=epic.id, session_id=f"s{n}"))
            ready.put(epic.id)
            time.sleep(rng.uniform(0.03, 0.08))  # the waiter is blocked in its wait by now
            start = time.perf_counter()
            store.append(WorkerCompleted(bead_id=bead, epic_id=epic.id, summary="done"))
            latencies.append((q.get(timeout=60) - start) * 1000)
    waiter.join(timeout=60)
    latencies.sort()
    return {
        "rounds": rounds,
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        "max_ms": round(latencies[-1], 2),
    }


def _scratch_server() -> ScratchPostgres:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server binaries here: run scripts/setup")
    return ScratchPostgres(bin_dir, fsync=True).start()


def run(args: argparse.Namespace) -> dict[str, Any]:
    backend = getattr(args, "backend", "sqlite")
    quick = bool(getattr(args, "quick", False))
    if backend == "sqlite":
        return run_sqlite(args)
    n_appends = 1000 if quick else 4000
    n_reservations = 400 if quick else 1600
    rounds = 20 if quick else 60
    result: dict[str, Any] = {}
    pg = _scratch_server()
    try:
        with tempfile.TemporaryDirectory(prefix="swarm-pool-bench-") as tmp:
            base = Path(tmp)
            backends: list[tuple[str, ScratchPostgres | None]] = [("postgresql", pg)]
            if backend == "both":
                backends.insert(0, ("sqlite", None))
            appends: dict[str, Any] = {"appends_per_run": n_appends}
            for name, server in backends:
                appends[name] = backend_appends(base, server, n_appends)
            appends["postgresql_synchronous_commit_on"] = backend_appends(
                base, pg, n_appends, synchronous_commit=True
            )
            if backend == "both":
                appends["postgresql_over_sqlite_8_writers"] = round(
                    appends["postgresql"]["eight_writer_processes_per_s"]
                    / appends["sqlite"]["eight_writer_processes_per_s"],
                    2,
                )
            result["appends"] = appends
            reservations: dict[str, Any] = {"reservations_per_run": n_reservations}
            for name, server in backends:
                reservations[name] = backend_reservations(base, server, n_reservations)
            reservations["postgresql_serializable"] = backend_reservations(
                base, pg, n_reservations, serializable=True
            )
            result["reservations_two_hosts"] = reservations
            result["await_wakeup"] = {
                name: await_wakeup(base, server, rounds) for name, server in backends
            }
    finally:
        pg.stop()
    return result


def run_sqlite(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    n_appends = 1000 if quick else 4000
    sizes = (2_000, 10_000) if quick else (10_000, 100_000)
    repeat = 20 if quick else 50
    with tempfile.TemporaryDirectory(prefix="swarm-pool-bench-") as tmp:
        base = Path(tmp)
        appends: dict[str, Any] = {"appends_per_run": n_appends}
        for impl in ("flock", "filelock"):
            one = appends_per_s(base, f"a1-{impl}", 1, n_appends, impl)
            eight = appends_per_s(base, f"a8-{impl}", 8, n_appends, impl)
            appends[impl] = {
                "one_writer_per_s": round(one),
                "eight_writer_processes_per_s": round(eight),
                "eight_over_one": round(eight / one, 2),
            }
        appends["flock_over_filelock_8_writers"] = round(
            appends["flock"]["eight_writer_processes_per_s"]
            / appends["filelock"]["eight_writer_processes_per_s"],
            2,
        )
        result: dict[str, Any] = {
            "appends": appends,
            "reservations": grants_per_s(base, 200 if quick else 1000),
        }
        for size in sizes:
            result[f"epic_status_{size // 1000}k"] = epic_status(base, size, repeat)
    return result
