"""Claims and heartbeats of several hosts, as a contract run on SQLite and on PostgreSQL:
a claim takes the oldest unclaimed queued workers up to its limit and nothing twice;
16 claimer processes over two "hosts" (on PostgreSQL two routes to the server, TCP and
the unix socket) never get one worker twice and leave none behind; a queued worker of a
dead host is taken over by exactly one of two live hosts that read it at once; a retry
clears the claim; heartbeats project into ``hosts``; a rebuild reproduces all of it."""

from __future__ import annotations

import multiprocessing as mp
import random
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import pytest

from swarm_pool.store import Store
from swarm_pool.store.core import open_url
from swarm_pool.store.events import (
    HostBeat,
    HostInstance,
    WorkerFailed,
    WorkerQueued,
    WorkerRetried,
    WorkerSessionCreated,
    WorkerSpawned,
)
from tests.store_backends import OnPostgres, OnSQLite, StoreBackend, StoreFixtures

CTX = mp.get_context("fork")
E = "bd-hosts"


def _queue(store: Store, n: int, start: int = 1) -> list[str]:
    beads = [f"{E}.{i}" for i in range(start, start + n)]
    for bead in beads:
        store.append(
            WorkerQueued(bead_id=bead, epic_id=E, worktree=f"/spawner/{bead}"), expect={bead: 0}
        )
    return beads


def _claimer(url: str, root: str, host: str, go: MpEvent, out: Any) -> None:
    try:
        got: list[str] = []
        rng = random.Random(host)
        with open_url(url, project_root=Path(root)) as store:
            go.wait(30)
            empty = 0
            while empty < 2:
                batch = store.hosts.claim(host, rng.randint(1, 3))
                got.extend(batch)
                empty = 0 if batch else empty + 1
        out.put((host, got, None))
    except BaseException as e:
        out.put((host, [], repr(e)))


class HostsContract(StoreFixtures):
    def test_claim_takes_the_oldest_unclaimed_up_to_its_limit(self, store: Store) -> None:
        beads = _queue(store, 5)
        assert store.hosts.claim("a", 3, worktree="/a/{bead_id}") == beads[:3]
        assert store.hosts.claim("b", 5) == beads[3:]
        assert store.hosts.claim("a", 5) == []
        assert store.hosts.claim("a", 0) == []
        workers = {w.bead_id: w for w in store.workers.list()}
        assert [workers[b].host for b in beads] == ["a", "a", "a", "b", "b"]
        assert workers[beads[0]].worktree == f"/a/{beads[0]}"
        assert workers[beads[4]].worktree == f"/spawner/{beads[4]}"  # as queued
        assert all(w.status == "pending" for w in workers.values())
        claims = store.read(types=["worker_claimed"])
        assert sorted(s.event.bead_id for s in claims) == beads  # type: ignore[union-attr]

    def test_a_retry_clears_the_claim_and_a_spawn_keeps_it(self, store: Store) -> None:
        (bead,) = _queue(store, 1)
        store.hosts.claim("a", 1)
        store.append(
            WorkerSessionCreated(bead_id=bead, epic_id=E, session_id="s1", instance="oc-1")
        )
        store.append(WorkerSpawned(bead_id=bead, epic_id=E, session_id="s1", instance="oc-1"))
        worker = store.workers.get(bead)
        assert worker is not None and worker.status == "running" and worker.host == "a"
        store.append_many(
            [
                WorkerFailed(bead_id=bead, epic_id=E, session_id="s1", error="host gone"),
                WorkerRetried(bead_id=bead, epic_id=E, session_id="s1", attempt=2),
            ]
        )
        worker = store.workers.get(bead)
        assert worker is not None and worker.status == "pending" and worker.host == ""
        assert store.hosts.claim("b", 1) == [bead]
        worker = store.workers.get(bead)
        assert worker is not None and worker.host == "b" and worker.attempt == 2

    def test_a_dead_hosts_queued_worker_is_taken_over_exactly_once(self, store: Store) -> None:
        (bead,) = _queue(store, 1)
        store.hosts.claim("dead", 1)
        worker = store.workers.get(bead)
        assert worker is not None
        # Both live hosts read the worker at the same version, then race to move it.
        first = store.hosts.take_over(bead, host="b", from_host="dead", version=worker.version)
        second = store.hosts.take_over(bead, host="c", from_host="dead", version=worker.version)
        assert (first, second) == (True, False)
        moved = store.workers.get(bead)
        assert moved is not None and moved.host == "b"
        claims = [s.event for s in store.read(types=["worker_claimed"], bead_id=bead)]
        assert [(c.host, c.from_host) for c in claims] == [("dead", ""), ("b", "dead")]  # type: ignore[union-attr]
        # A worker no longer on the dead host is not taken from its new owner.
        assert not store.hosts.take_over(bead, host="c", from_host="dead", version=moved.version)

    def test_heartbeats_project_into_hosts_and_rebuild_reproduces(self, store: Store) -> None:
        store.append(HostBeat(host="a", pid=10, capacity=4, timestamp=1_000))
        store.append(
            HostBeat(
                host="a",
                pid=10,
                capacity=8,
                in_flight=2,
                load=1.5,
                instances=[HostInstance(name="oc-1", state="ready", busy=2)],
                timestamp=3_000,
            )
        )
        store.append(HostBeat(host="b", pid=20, capacity=4, timestamp=2_000))
        _queue(store, 3)
        store.hosts.claim("b", 2)
        a, b = store.hosts.list()
        assert (a.name, a.capacity, a.in_flight, a.load) == ("a", 8, 2, 1.5)
        assert (a.first_beat, a.last_beat) == (1_000, 3_000)
        assert a.instances == [{"name": "oc-1", "state": "ready", "busy": 2}]
        assert b.stale(now_ms=2_000 + 5_001, stale_ms=5_000)
        assert not b.stale(now_ms=2_000 + 5_000, stale_ms=5_000)
        # A restarted host (a new pid) starts a new first beat.
        store.append(HostBeat(host="b", pid=21, capacity=4, timestamp=4_000))
        restarted = store.hosts.get("b")
        assert restarted is not None and restarted.first_beat == 4_000
        before = store.projections_snapshot()
        store.rebuild()
        assert store.projections_snapshot() == before

    @pytest.mark.timeout(180)
    def test_16_claimers_over_two_hosts_never_share_a_worker(
        self, backend: StoreBackend, url: str, root: Path
    ) -> None:
        with backend.open(url, root) as store:
            beads = _queue(store, 60)
        routes = backend.host_urls(url)
        go = CTX.Event()
        out = CTX.Queue()
        procs = [
            CTX.Process(target=_claimer, args=(routes[k % 2], str(root), f"h{k % 2}-{k}", go, out))
            for k in range(16)
        ]
        for p in procs:
            p.start()
        go.set()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        assert [r[2] for r in results] == [None] * 16
        claimed = [bead for r in results for bead in r[1]]
        assert sorted(claimed) == sorted(beads)  # every worker once, none twice
        by_host = {r[0]: set(r[1]) for r in results}
        with backend.open(url, root) as store:
            for w in store.workers.list():
                assert w.bead_id in by_host[w.host]
            assert len(store.read(types=["worker_claimed"])) == 60
            assert store.check()["integrity"] == "ok"


class TestHostsOnSQLite(OnSQLite, HostsContract):
    pass


class TestHostsOnPostgres(OnPostgres, HostsContract):
    pass
