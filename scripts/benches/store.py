"""Store benchmark: appends/s (1 and 8 writer processes), reservation grants/s, and the
time to answer "status of every worker in epic E" from the workers projection versus by
scanning the events (the upstream ADR's way), at two log sizes.

Everything is measured side by side in one run on temporary stores; compare the ratios,
not the absolute numbers (they depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from swarm_pool.paths import ProjectPaths
from swarm_pool.store import Store, open_store
from swarm_pool.store.events import (
    CellCreated,
    EpicCreated,
    InstanceReady,
    WorkerCompleted,
    WorkerProgress,
    WorkerSpawned,
)
from swarm_pool.store.projections import WORKER_EVENT_TYPES

CTX = mp.get_context("fork")


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


def run(args: argparse.Namespace) -> dict[str, Any]:
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
