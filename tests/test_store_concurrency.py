"""Many real processes on one store, as a contract run on SQLite and on PostgreSQL: 8
writer processes split over two "hosts" (on PostgreSQL two routes to the server, TCP and
the unix socket, each process with its own connections) while a ninth writer is killed
with SIGKILL mid-loop; 16 processes over two hosts racing for overlapping reservations;
and a writer killed again and again. Nothing returned is lost, nothing is duplicated,
seq has no gap, and a transaction is never half there."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import textwrap
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any, ClassVar

import pytest

from swarm_pool.store import Store
from swarm_pool.store.core import open_url
from tests.store_backends import OnPostgres, OnSQLite, StoreBackend, StoreFixtures

ROOT = Path(__file__).resolve().parent.parent
# fork: cheap children that need no re-import; no Store is open in the parent at fork.
CTX = mp.get_context("fork")

# Within a set every two patterns overlap; across sets none do.
CONFLICT_SETS = [
    ["src/**", "src/a.py", "src/*.py", "src/a*"],
    ["docs/**", "docs/x.md", "docs/*.md", "docs/[xy].md"],
    ["lib/*/mod.py", "lib/core/**", "lib/core/mod.py", "lib/**/*.py"],
    ["tests/test_a.py", "tests/test_?.py", "tests/**", "tests/*.py"],
]

_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from swarm_pool.store.core import open_url
    from swarm_pool.store.events import InstanceReady

    url, root, run = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    store = open_url(url, project_root=root)
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


def _appender(url: str, root: str, worker: int, count: int, go: MpEvent, out: Any) -> None:
    try:
        from swarm_pool.store.events import InstanceReady

        with open_url(url, project_root=Path(root)) as store:
            go.wait(30)
            seqs = [store.append(InstanceReady(instance=f"w{worker}", pid=n)) for n in range(count)]
        out.put((worker, seqs, None))
    except BaseException as e:
        out.put((worker, [], repr(e)))


def _reserver(url: str, root: str, agent: int, pattern: str, go: MpEvent, out: Any) -> None:
    try:
        with open_url(url, project_root=Path(root)) as store:
            go.wait(30)
            result = store.reservations.reserve(f"agent-{agent}", [pattern], reason="race")
        out.put((agent, result.granted, result.holders, None))
    except BaseException as e:
        out.put((agent, False, [], repr(e)))


def _start_writer(url: str, root: Path, run: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, url, str(root), run],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _confirm(proc: subprocess.Popen[str], run: str, lines: int) -> dict[str, list[int]]:
    """Read ``lines`` confirmed batches from a writer, then SIGKILL it."""
    confirmed: dict[str, list[int]] = {}
    try:
        assert proc.stdout is not None
        for _ in range(lines):
            line = proc.stdout.readline()
            assert line, f"writer died early (exit {proc.poll()})"
            n, *seqs = line.split()
            confirmed[f"{run}-{n}"] = [int(s) for s in seqs]
        os.kill(proc.pid, signal.SIGKILL)  # mid-loop, most likely mid-transaction
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return confirmed


def _check_log(store: Store, confirmed: dict[str, list[int]]) -> dict[int, tuple[str, int]]:
    """Every confirmed batch there whole, consecutively; no hole; the events by seq."""
    by_seq = {s.seq: (s.event.instance, s.event.pid) for s in store.read()}  # type: ignore[union-attr]
    assert sorted(by_seq) == list(range(1, len(by_seq) + 1))  # gap-free
    for key, seqs in confirmed.items():
        assert [by_seq.get(s) for s in seqs] == [(key, k) for k in range(3)]
    batches: dict[str, list[int]] = {}
    for seq, (inst, _pid) in by_seq.items():
        if inst.startswith("r"):
            batches.setdefault(inst, []).append(seq)
    for seqs in batches.values():  # no transaction is half there
        assert len(seqs) == 3 and seqs == list(range(seqs[0], seqs[0] + 3))
    report = store.check()
    assert report["integrity"] == "ok" and report["seq_gap_free"]
    return by_seq


class ConcurrencyContract(StoreFixtures):
    APPENDS_PER_PROCESS: ClassVar[int] = 500

    @pytest.mark.timeout(300)
    def test_8_processes_over_two_hosts_with_a_killed_writer(
        self, backend: StoreBackend, url: str, root: Path
    ) -> None:
        backend.open(url, root).close()  # create and migrate once, like a pool would
        hosts = backend.host_urls(url)
        workers, count = 8, self.APPENDS_PER_PROCESS
        go = CTX.Event()
        out = CTX.Queue()
        procs = [
            CTX.Process(target=_appender, args=(hosts[k % 2], str(root), k, count, go, out))
            for k in range(workers)
        ]
        for p in procs:
            p.start()
        killed = _start_writer(hosts[1], root, "r0")
        go.set()
        confirmed = _confirm(killed, "r0", random.Random(7).randint(30, 200))
        results = [out.get(timeout=240) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        assert [r[2] for r in results] == [None] * workers  # no errors
        returned = {k: seqs for k, seqs, _ in results}
        flat = [s for seqs in returned.values() for s in seqs]
        assert len(flat) == workers * count
        assert len(set(flat)) == len(flat)  # no duplicates
        for seqs in returned.values():
            assert seqs == sorted(seqs)  # strictly increasing per writer
        with backend.open(url, root) as store:
            by_seq = _check_log(store, confirmed)
        # every returned seq holds exactly the event that writer appended with it
        for k, seqs in returned.items():
            assert [by_seq[s] for s in seqs] == [(f"w{k}", n) for n in range(count)]
        killed_batches = {inst for inst, _pid in by_seq.values() if inst.startswith("r0-")}
        assert len(by_seq) == workers * count + 3 * len(killed_batches)

    @pytest.mark.timeout(180)
    def test_16_processes_over_two_hosts_race_for_overlapping_reservations(
        self, backend: StoreBackend, url: str, root: Path
    ) -> None:
        from swarm_pool.store.globs import patterns_overlap

        for i, a_set in enumerate(CONFLICT_SETS):
            for a in a_set:
                assert all(patterns_overlap(a, b) for b in a_set)
                for other in CONFLICT_SETS[i + 1 :]:
                    assert not any(patterns_overlap(a, b) for b in other)

        backend.open(url, root).close()
        hosts = backend.host_urls(url)
        go = CTX.Event()
        out = CTX.Queue()
        plan = {agent: (agent % 4, CONFLICT_SETS[agent % 4][agent // 4]) for agent in range(16)}
        procs = [
            CTX.Process(
                target=_reserver, args=(hosts[agent % 2], str(root), agent, pattern, go, out)
            )
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
        with backend.open(url, root) as store:
            active = store.reservations.active()
            assert len(active) == 4
            assert len(store.read(types=["file_conflict"])) == 12

    @pytest.mark.timeout(120)
    def test_kill_9_writer_loses_nothing_it_returned(
        self, backend: StoreBackend, url: str, root: Path
    ) -> None:
        backend.open(url, root).close()
        rng = random.Random(1234)
        confirmed: dict[str, list[int]] = {}
        for run in range(5):
            host = backend.host_urls(url)[run % 2]
            proc = _start_writer(host, root, f"r{run}")
            confirmed.update(_confirm(proc, f"r{run}", rng.randint(30, 300)))
        with backend.open(url, root) as store:  # opens fine and keeps going
            by_seq = _check_log(store, confirmed)
            assert store.append({"type": "instance_ready", "instance": "after"}) == len(by_seq) + 1


class TestConcurrencyOnSQLite(OnSQLite, ConcurrencyContract):
    pass


class TestConcurrencyOnPostgres(OnPostgres, ConcurrencyContract):
    APPENDS_PER_PROCESS = 1000
