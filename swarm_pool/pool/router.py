"""The router: picks the instance a new worker session goes to.

It owns one pure decision. Given the pool's instances (as the supervisor last recorded
them), how many live worker sessions each one carries, and the per-instance limit, it
returns the ready instance with the fewest busy sessions, or ``None`` when the pool is
full (the caller then queues the spawn). Instances that are not ready, that the
supervisor is draining (waiting for a memory-limit restart, or being removed), or that
are dedicated to another worker never get new work. Under the ``dedicated`` policy a
worker only ever goes to the instance started for it. An instance that is not steady
(restarted moments ago, or flapping: several restarts in the supervisor's flap window)
only gets work when no steady one can take it, so a retry does not land on the instance
that is failing its workers. With ``[pool] active_instances`` (default: one per core),
only the first that many instances take work while one of them has room; the others
are overflow: on a 2-core machine 4 instances cost more CPU per worker than 2 and were
slower, never faster (the workers benchmark). One ``RouteRequest`` carries the limit and
the preferences of a question. The router does no I/O, so it is unit-tested directly;
reading the pool state and the store lives in ``swarm/pool_view.py``. Room: pool (its
pure part: no process, file or network).
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from swarm_pool.config import Config
from swarm_pool.pool.state import InstanceState

Routing = Literal["least_busy", "dedicated"]
ROUTINGS: tuple[Routing, ...] = ("least_busy", "dedicated")


@dataclass(frozen=True)
class InstanceView:
    """What the router needs to know about one pool instance."""

    name: str
    url: str
    state: str
    password: str | None = None
    # The supervisor sends no new work to an instance it is about to restart or remove.
    draining: bool = False
    # Set for an instance started for one worker (routing "dedicated").
    dedicated_to: str | None = None
    pid: int | None = None
    # Wall-clock times of its restarts within the supervisor's flap window.
    restarted_at: tuple[float, ...] = ()

    @property
    def accepts_work(self) -> bool:
        return self.state == InstanceState.READY and not self.draining


@dataclass(frozen=True)
class Steadiness:
    """When an instance counts as unsteady: restarted less than ``settle_s`` ago, or
    restarted ``flap_restarts`` times within ``flap_window_s`` (0 disables each)."""

    settle_s: float
    flap_restarts: int
    flap_window_s: float

    @classmethod
    def from_config(cls, config: Config) -> Steadiness:
        return cls(
            settle_s=config.pool.avoid_restarted_s,
            flap_restarts=config.pool.avoid_flapping_restarts,
            flap_window_s=config.supervisor.flap_window_s,
        )

    def unsteady(self, inst: InstanceView, now: float) -> bool:
        if not inst.restarted_at:
            return False
        if self.settle_s > 0 and now - max(inst.restarted_at) < self.settle_s:
            return True
        recent = [t for t in inst.restarted_at if now - t < self.flap_window_s]
        return self.flap_restarts > 0 and len(recent) >= self.flap_restarts


def active_instances(config: Config) -> int:
    """How many instances take work before the others: ``[pool] active_instances``, or
    the CPU cores this process may run on when 0."""
    if config.pool.active_instances > 0:
        return config.pool.active_instances
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def busy_counts(instances_of_live_workers: Iterable[str]) -> dict[str, int]:
    """Count live worker sessions per instance name (one entry per live worker)."""
    counts: dict[str, int] = {}
    for name in instances_of_live_workers:
        if name:
            counts[name] = counts.get(name, 0) + 1
    return counts


@dataclass(frozen=True)
class RouteRequest:
    """One routing question: the per-instance session limit and how to choose.

    ``avoid`` names instances to use only if nothing else can take the session (a retry
    prefers another instance than the one that just failed it); with ``steadiness``,
    unsteady instances come last too (``now``: wall clock, default the current time).
    With ``active`` > 0, instances after the first ``active`` that accept work (in the
    given order) are overflow: used only when none of those can take the session.
    """

    max_sessions: int
    routing: Routing = "least_busy"
    bead_id: str | None = None
    avoid: Collection[str] = ()
    steadiness: Steadiness | None = None
    now: float | None = None
    active: int = 0


def choose_instance(
    instances: Iterable[InstanceView], busy: Mapping[str, int], request: RouteRequest
) -> InstanceView | None:
    """The instance for a new session, or None when none can take it now."""
    if request.routing == "dedicated":
        for inst in instances:
            if inst.dedicated_to == request.bead_id and inst.accepts_work:
                return inst
        return None
    eligible = [inst for inst in instances if inst.accepts_work and inst.dedicated_to is None]
    candidates = [inst for inst in eligible if busy.get(inst.name, 0) < request.max_sessions]
    if not candidates:
        return None
    at = time.time() if request.now is None else request.now
    active = request.active
    first = {inst.name for inst in eligible[:active]} if active > 0 else None
    steadiness = request.steadiness

    def unsteady(inst: InstanceView) -> bool:
        return steadiness is not None and steadiness.unsteady(inst, at)

    # Steady before unsteady, then not avoided before avoided, then active before
    # overflow, then fewest busy; the name breaks ties so the choice is deterministic.
    return min(
        candidates,
        key=lambda inst: (
            unsteady(inst),
            inst.name in request.avoid,
            first is not None and inst.name not in first,
            busy.get(inst.name, 0),
            inst.name,
        ),
    )
