"""An engine's part in a pool of several hosts sharing one PostgreSQL store.

Room: swarm (the engine loop). On a PostgreSQL store every engine is one host among
possibly several (``[pool] host``), and each tick it (``HostDuty.step``):

- heartbeats (``host_beat``: its capacity, its instances and their busy sessions, the
  machine's load) every ``pool.hosts_beat_s``;
- takes over from any host silent for ``pool.hosts_stale_s``: that host's queued
  workers are claimed for itself, and its in-flight ones are failed with cause infra
  (and so retried, under the infra budget, by whichever live host claims them next);
  every step is a conditional append, so when several live hosts see the same dead one,
  each worker is taken over exactly once;
- claims queued, unclaimed workers up to its free capacity (ready instances times
  ``pool.max_sessions_per_instance``, less the workers it already holds).

The rest of the engine then only looks at the workers this host claimed (``mine``):
their worktrees and sessions are local to it, and instance names (``oc-1``, ...) repeat
from host to host. On SQLite there is one host and none of this runs: workers carry no
host, and the engine dispatches every queued worker as it always did.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

from swarm_pool import faults
from swarm_pool.errors import SwarmPoolError
from swarm_pool.pool.router import InstanceView, busy_counts
from swarm_pool.pool.state import SERVING
from swarm_pool.store.events import FailureCause, HostBeat, HostInstance, now_ms
from swarm_pool.store.lifecycle import IN_FLIGHT, LIVE, WorkerStatus
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.engine.checks import fail_attempt
from swarm_pool.swarm.worker.failure import FailOutcome

log = logging.getLogger(__name__)


def capacity(ctx: SwarmContext, instances: Iterable[InstanceView]) -> int:
    ready = sum(1 for inst in instances if inst.state in SERVING)
    return ready * ctx.config.pool.max_sessions_per_instance


class HostDuty:
    """One engine's heartbeat, takeover and claims (see the module docstring)."""

    def __init__(self, ctx: SwarmContext) -> None:
        self.ctx = ctx
        self.host = ctx.config.pool.host
        self._beat_at = 0.0
        self.claimed = 0
        self.taken_over = 0

    def step(self, instances: list[InstanceView]) -> None:
        ctx = self.ctx
        workers = ctx.store.workers.list()
        if time.monotonic() - self._beat_at >= ctx.config.pool.hosts_beat_s:
            self.beat(instances, workers)
        self.take_over_stale()
        if any(w.status == WorkerStatus.PENDING and not w.host for w in workers):
            # (Only then: a claim is a write transaction under the store's write lock.)
            self.claim(instances)

    def beat(self, instances: list[InstanceView], workers: list[WorkerView]) -> None:
        held = [w for w in workers if w.host == self.host and w.status in IN_FLIGHT]
        busy = busy_counts(w.instance for w in held)
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
        self.ctx.store.append(
            HostBeat(
                host=self.host,
                pid=os.getpid(),
                capacity=capacity(self.ctx, instances),
                in_flight=len(held),
                load=round(load, 2),
                instances=[
                    HostInstance(name=inst.name, state=inst.state, busy=busy.get(inst.name, 0))
                    for inst in instances
                ],
            )
        )
        self._beat_at = time.monotonic()

    def claim(self, instances: list[InstanceView]) -> list[str]:
        ctx = self.ctx
        held = sum(1 for w in ctx.store.workers.list() if w.host == self.host and w.status in LIVE)
        free = capacity(ctx, instances) - held
        if free <= 0:
            return []
        got = ctx.store.hosts.claim(self.host, free, worktree=self._worktree_pattern())
        if got:
            log.info("hosts: %s claimed %s", self.host, got)
            self.claimed += len(got)
        return got

    def _worktree_pattern(self) -> str:
        return str(self.ctx.paths.worktrees_dir / "{bead_id}")

    def take_over_stale(self) -> list[str]:
        """Take over the workers of every host silent for ``hosts_stale_s``; returns the
        beads this engine moved (each one by exactly one engine)."""
        ctx = self.ctx
        now = now_ms()
        stale_ms = int(ctx.config.pool.hosts_stale_s * 1000)
        dead = {
            h.name for h in ctx.store.hosts.list() if h.name != self.host and h.stale(now, stale_ms)
        }
        if not dead:
            return []
        moved: list[str] = []
        for w in ctx.store.workers.list():
            if w.host not in dead or w.status not in LIVE:
                continue
            faults.point("hosts.before_takeover")
            try:
                if w.status == WorkerStatus.PENDING:
                    if ctx.store.hosts.take_over(
                        w.bead_id,
                        host=self.host,
                        from_host=w.host,
                        version=w.version,
                        worktree=self._worktree_pattern(),
                    ):
                        moved.append(w.bead_id)
                    continue
                error = f"host {w.host} stopped heartbeating while the worker was running"
                outcome = fail_attempt(
                    ctx, w, error=error, reason="host_stale", cause=FailureCause.INFRA
                )
                if outcome != FailOutcome.IGNORED:
                    moved.append(w.bead_id)
            except SwarmPoolError as e:
                log.warning("hosts: taking %s over from %s failed: %s", w.bead_id, w.host, e)
        if moved:
            log.info("hosts: %s took over %s from %s", self.host, moved, sorted(dead))
            self.taken_over += len(moved)
        return moved
