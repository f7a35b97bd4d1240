"""A dead host's workers, taken over by live hosts' engines (``swarm/hosts.py``) on a
real PostgreSQL store, with no pool: two live hosts, each in its own project folder with
its own connection, see the same dead host at once. A fault hook holds both at the
conditional append until both have read the worker, so the race is forced, not hoped
for: the running worker is failed (cause infra) and retried exactly once, and the
queued one moves to exactly one of them. A host still beating is left alone, and a
worker's own host is never taken over by itself."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from swarm_pool import faults
from swarm_pool.config import Config
from swarm_pool.errors import VersionConflictError
from swarm_pool.paths import ProjectPaths
from swarm_pool.store import Store
from swarm_pool.store.core import open_url
from swarm_pool.store.events import (
    FailureCause,
    HostBeat,
    WorkerQueued,
    WorkerSessionCreated,
    WorkerSpawned,
    now_ms,
)
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.engine.host_duty import HostDuty
from tests.pg_server import ScratchPostgres

E = "bd-takeover"


def _ctx(root: Path, url: str, host: str) -> SwarmContext:
    config = Config()
    config.store.url = url
    config.pool.host = host
    config.pool.hosts_stale_s = 5.0
    config.pool.hosts_beat_s = 1.0
    paths = ProjectPaths(root).ensure()
    return SwarmContext(paths=paths, config=config, store=open_url(url, project_root=root))


@pytest.fixture
def hosts(tmp_path: Path, pg_server: ScratchPostgres) -> Iterator[list[SwarmContext]]:
    schema = pg_server.new_schema()
    url = pg_server.url(schema=schema)
    routes = [url, pg_server.url(via="socket", schema=schema)]
    names = ["dead", "b", "c"]
    for name in names:
        (tmp_path / name).mkdir()
    ctxs = [_ctx((tmp_path / name).resolve(), routes[k % 2], name) for k, name in enumerate(names)]
    try:
        yield ctxs
    finally:
        for ctx in ctxs:
            ctx.store.close()
        pg_server.drop_schema(schema)


def _running_on(ctx: SwarmContext, bead: str) -> None:
    store = ctx.store
    store.append(WorkerQueued(bead_id=bead, epic_id=E), expect={bead: 0})
    assert store.hosts.claim(ctx.config.pool.host, 1) == [bead]
    store.append(WorkerSessionCreated(bead_id=bead, epic_id=E, session_id=f"s-{bead}"))
    store.append(WorkerSpawned(bead_id=bead, epic_id=E, session_id=f"s-{bead}", instance="oc-1"))


def test_a_dead_hosts_workers_are_taken_over_exactly_once(hosts: list[SwarmContext]) -> None:
    dead, b, c = hosts
    running, queued = f"{E}.1", f"{E}.2"
    _running_on(dead, running)
    dead.store.append(WorkerQueued(bead_id=queued, epic_id=E), expect={queued: 0})
    assert dead.store.hosts.claim("dead", 1) == [queued]
    old = now_ms() - 60_000
    dead.store.append(HostBeat(host="dead", pid=1, capacity=4, timestamp=old))
    for ctx in (b, c):
        ctx.store.append(HostBeat(host=ctx.config.pool.host, pid=2, capacity=4))

    # Both engines list the workers, then both build the running worker's failure from
    # the same version, before either appends: one append must lose the race.
    barriers = {
        "hosts.before_takeover": threading.Barrier(2, timeout=30),
        "store.before_conditional_append": threading.Barrier(2, timeout=30),
    }
    passed = threading.local()

    def hold(point: str) -> Callable[[], None]:
        def wait() -> None:
            done: set[str] = passed.__dict__.setdefault("done", set())
            if point not in done:
                done.add(point)
                barriers[point].wait()

        return wait

    moved: dict[str, list[str]] = {}
    conflicts: list[str] = []

    def take(ctx: SwarmContext) -> None:
        moved[ctx.config.pool.host] = HostDuty(ctx).take_over_stale()

    real_append_many = Store.append_many

    def counting(self: Store, *args: Any, **kwargs: Any) -> list[int]:
        try:
            return real_append_many(self, *args, **kwargs)
        except VersionConflictError as e:
            conflicts.append(str(e))
            raise

    with (
        faults.inject("hosts.before_takeover", hold("hosts.before_takeover")),
        faults.inject("store.before_conditional_append", hold("store.before_conditional_append")),
        mock.patch.object(Store, "append_many", counting),
    ):
        threads = [threading.Thread(target=take, args=(ctx,)) for ctx in (b, c)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(conflicts) == 1, conflicts  # the race happened, and one side lost it
    assert sorted(moved) == ["b", "c"]
    assert sorted(moved["b"] + moved["c"]) == [running, queued]  # each once, by one host

    store = b.store
    failed = store.read(types=["worker_failed"], bead_id=running)
    assert len(failed) == 1
    assert failed[0].event.cause == FailureCause.INFRA  # type: ignore[union-attr]
    assert len(store.read(types=["worker_retried"], bead_id=running)) == 1
    worker = store.workers.get(running)
    assert worker is not None and worker.status == "pending" and worker.attempt == 2
    assert worker.host == ""  # retried: any live host may claim it now
    taken = store.workers.get(queued)
    assert taken is not None and taken.host in ("b", "c") and taken.status == "pending"
    assert taken.worktree == str(hosts[1 if taken.host == "b" else 2].paths.worktrees_dir / queued)
    # The retry is claimed once more, by a live host; "mine" shows each host its own.
    assert b.store.hosts.claim("b", 4) == [running]
    assert [w.bead_id for w in b.mine(b.store.workers.list())] == sorted(
        [running] + ([queued] if taken.host == "b" else [])
    )
    # Nothing more to take over, and live hosts are never taken over.
    assert HostDuty(b).take_over_stale() == []
    assert HostDuty(dead).take_over_stale() == []
