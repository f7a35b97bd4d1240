"""Many real processes on one store file: concurrent appends, racing reservations, and a
writer killed with SIGKILL in the middle of its loop."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import pytest

from swarm_pool.paths import ProjectPaths
from swarm_pool.store import open_store

ROOT = Path(__file__).resolve().parent.parent
# fork: cheap children that need no re-import; no Store is open in the parent at fork.
CTX = mp.get_context("fork")


def _fresh_db(tmp_path: Path) -> Path:
    paths = ProjectPaths(tmp_path).ensure()
    open_store(paths.db).close()  # create and migrate once, like a pool would
    return paths.db


# --- 8 processes x 500 appends --------------------------------------------------------


def _appender(db: str, worker: int, count: int, go: MpEvent, out: Any) -> None:
    try:
        from swarm_pool.store.events import InstanceReady

        with open_store(Path(db)) as store:
            go.wait(30)
            seqs = [store.append(InstanceReady(instance=f"w{worker}", pid=n)) for n in range(count)]
        out.put((worker, seqs, None))
    except BaseException as e:
        out.put((worker, [], repr(e)))


def test_8_processes_x_500_appends(tmp_path: Path) -> None:
    db = _fresh_db(tmp_path)
    workers, count = 8, 500
    go = CTX.Event()
    out = CTX.Queue()
    procs = [
        CTX.Process(target=_appender, args=(str(db), k, count, go, out)) for k in range(workers)
    ]
    for p in procs:
        p.start()
    go.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [r[2] for r in results] == [None] * workers  # no errors
    returned = {k: seqs for k, seqs, _ in results}
    flat = [s for seqs in returned.values() for s in seqs]
    total = workers * count
    assert len(flat) == total
    assert len(set(flat)) == total  # no duplicates
    assert sorted(flat) == list(range(1, total + 1))  # gap-free
    for seqs in returned.values():
        assert seqs == sorted(seqs)  # strictly increasing per writer

    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT seq, json_extract(data, '$.instance'), json_extract(data, '$.pid')"
            " FROM events ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    assert [r[0] for r in rows] == list(range(1, total + 1))
    # every returned seq holds exactly the event that writer appended with it
    by_seq = {seq: (inst, pid) for seq, inst, pid in rows}
    for k, seqs in returned.items():
        assert [by_seq[s] for s in seqs] == [(f"w{k}", n) for n in range(count)]
    with open_store(db) as store:
        report = store.check()
    assert report["integrity"] == "ok"
    assert report["events"] == total and report["seq_gap_free"]


# --- 16 processes race for overlapping reservations -----------------------------------

# Within a set every two patterns overlap; across sets none do.
CONFLICT_SETS = [
    ["src/**", "src/a.py", "src/*.py", "src/a*"],
    ["docs/**", "docs/x.md", "docs/*.md", "docs/[xy].md"],
    ["lib/*/mod.py", "lib/core/**", "lib/core/mod.py", "lib/**/*.py"],
    ["tests/test_a.py", "tests/test_?.py", "tests/**", "tests/*.py"],
]


def _reserver(db: str, agent: int, pattern: str, go: MpEvent, out: Any) -> None:
    try:
        with open_store(Path(db)) as store:
            go.wait(30)
            result = store.reservations.reserve(f"agent-{agent}", [pattern], reason="race")
        out.put((agent, result.granted, result.holders, None))
    except BaseException as e:
        out.put((agent, False, [], repr(e)))


def test_16_processes_race_for_overlapping_reservations(tmp_path: Path) -> None:
    from swarm_pool.store.globs import patterns_overlap

    for i, a_set in enumerate(CONFLICT_SETS):
        for a in a_set:
            assert all(patterns_overlap(a, b) for b in a_set)
            for other in CONFLICT_SETS[i + 1 :]:
                assert not any(patterns_overlap(a, b) for b in other)

    db = _fresh_db(tmp_path)
    go = CTX.Event()
    out = CTX.Queue()
    plan = {agent: (agent % 4, CONFLICT_SETS[agent % 4][agent // 4]) for agent in range(16)}
    procs = [
        CTX.Process(target=_reserver, args=(str(db), agent, pattern, go, out))
        for agent, (_set, pattern) in plan.items()
    ]
    for p in procs:
        p.start()
    go.set()
    results = {r[0]: r for r in (out.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [r[3] for r in results.values()] == [None] * 16
    for set_index in range(4):
        members = [a for a, (s, _p) in plan.items() if s == set_index]
        winners = [a for a in members if results[a][1]]
        assert len(winners) == 1, (set_index, winners)
        winner = f"agent-{winners[0]}"
        for loser in members:
            if loser != winners[0]:
                assert results[loser][2] == [winner]  # each loser gets the winner's name
    with open_store(db) as store:
        active = store.reservations.active()
        assert len(active) == 4
        assert len(store.read(types=["file_conflict"])) == 12


# --- kill -9 a writer in a loop -------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from swarm_pool.store import open_store
    from swarm_pool.store.events import InstanceReady

    db, run = Path(sys.argv[1]), sys.argv[2]
    store = open_store(db)
    n = 0
    while True:
        # Batches of 3 in one transaction: a kill must never leave part of one.
        batch = [InstanceReady(instance=f"{run}-{n}", pid=k) for k in range(3)]
        seqs = store.append_many(batch)
        sys.stdout.write(f"{n} {seqs[0]} {seqs[1]} {seqs[2]}\\n")
        sys.stdout.flush()
        n += 1
    """
)


@pytest.mark.timeout(120)
def test_kill_9_writer_loses_nothing_it_returned(tmp_path: Path) -> None:
    db = _fresh_db(tmp_path)
    rng = random.Random(1234)
    confirmed: dict[str, list[int]] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for run in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(db), f"r{run}"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            stop_after = rng.randint(30, 300)
            for _ in range(stop_after):
                line = proc.stdout.readline()
                assert line, f"writer died early (exit {proc.poll()})"
                n, *seqs = line.split()
                confirmed[f"r{run}-{n}"] = [int(s) for s in seqs]
            os.kill(proc.pid, signal.SIGKILL)  # mid-loop, most likely mid-transaction
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute(
            "SELECT seq, json_extract(data, '$.instance'), json_extract(data, '$.pid')"
            " FROM events ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    by_seq = {seq: (inst, pid) for seq, inst, pid in rows}
    # every append that returned is there, with its own content
    for key, seqs in confirmed.items():
        assert [by_seq.get(s) for s in seqs] == [(key, k) for k in range(3)]
    # no transaction is half there: every batch has all 3 events, consecutively
    batches: dict[str, list[int]] = {}
    for seq, inst, _pid in rows:
        batches.setdefault(inst, []).append(seq)
    for seqs in batches.values():
        assert len(seqs) == 3 and seqs == list(range(seqs[0], seqs[0] + 3))
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    with open_store(db) as store:  # opens fine and keeps going
        assert store.check()["integrity"] == "ok"
        assert store.append({"type": "instance_ready", "instance": "after"}) == len(rows) + 1
