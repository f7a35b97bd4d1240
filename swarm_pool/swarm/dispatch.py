"""Dispatching a queued worker: route, create its session, prompt it, record it.

The engine in the supervisor daemon is the single dispatcher. ``dispatch`` asks the
router for an instance, creates the session with ``directory=<worktree>`` (OpenCode
bootstraps a new directory here, which takes one to a few seconds, so it is kept off the
spawner's path), fires ``prompt_async`` and records ``worker_spawned``; a worker stays
queued while the pool is full.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence

from swarm_pool.errors import OpenCodeError
from swarm_pool.store.events import WorkerSpawned
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.prompt import prompt_hash
from swarm_pool.swarm.router import InstanceSlot, Routing, busy_counts, choose_instance
from swarm_pool.swarm.spawn import IN_FLIGHT_STATUSES
from swarm_pool.swarm.spec import load_spec

# In-process slot reservations: a dispatch holds one from routing until its
# worker_spawned is in the store, so parallel dispatches never overfill an instance.
_reserved_guard = threading.Lock()
_reserved: dict[str, int] = {}


def _reserve(name: str, delta: int) -> None:
    with _reserved_guard:
        _reserved[name] = _reserved.get(name, 0) + delta
        if _reserved[name] <= 0:
            del _reserved[name]


def _busy(ctx: SwarmContext) -> dict[str, int]:
    live = [w.instance for w in ctx.store.workers.list() if w.status in IN_FLIGHT_STATUSES]
    busy = busy_counts(live)
    with _reserved_guard:
        for name, n in _reserved.items():
            busy[name] = busy.get(name, 0) + n
    return busy


def start_session(
    ctx: SwarmContext,
    *,
    bead_id: str,
    epic_id: str,
    attempt: int,
    worktree: str,
    prompt: str,
    files: Sequence[str],
    title: str,
    routing: Routing = "least_busy",
    avoid: Iterable[str] = (),
) -> WorkerSpawned | None:
    """Route, create the session in the worktree, fire the prompt, record worker_spawned.

    Returns None when no instance can take the session now (it stays queued). Only the
    choice happens under the router lock (with a slot reserved in this process until
    the spawn is recorded); the slow part, OpenCode bootstrapping a new directory for the
    session, runs outside it, so dispatches to different instances overlap.
    """
    limit = ctx.config.pool.max_sessions_per_instance
    failed: set[str] = set()
    while True:
        with ctx.lock("router"):
            usable = [s for s in ctx.instances() if s.name not in failed]
            slot = choose_instance(
                usable, _busy(ctx), limit, routing=routing, bead_id=bead_id, avoid=set(avoid)
            )
            if slot is None:
                return None
            _reserve(slot.name, +1)
        try:
            event = _start_on(ctx, slot, bead_id, epic_id, attempt, worktree, prompt, files, title)
        except OpenCodeError:
            # The instance died or hung since the supervisor last looked: try another.
            failed.add(slot.name)
            continue
        finally:
            _reserve(slot.name, -1)
        return event


def _start_on(
    ctx: SwarmContext,
    slot: InstanceSlot,
    bead_id: str,
    epic_id: str,
    attempt: int,
    worktree: str,
    prompt: str,
    files: Sequence[str],
    title: str,
) -> WorkerSpawned:
    client = ctx.client(slot)
    try:
        session = client.create_session(worktree, title=f"{bead_id}: {title}"[:100])
        session_id = str(session["id"])
        try:
            client.prompt_async(session_id, prompt, directory=worktree)
        except OpenCodeError:
            with contextlib.suppress(OpenCodeError):
                client.delete_session(session_id, directory=worktree)
            raise
    finally:
        client.close()
    event = WorkerSpawned(
        bead_id=bead_id,
        epic_id=epic_id,
        session_id=session_id,
        attempt=attempt,
        agent_name=f"worker-{bead_id}",
        instance=slot.name,
        worktree=worktree,
        files=list(files),
        prompt_hash=prompt_hash(prompt),
    )
    ctx.store.append(event)
    return event


def dispatch(ctx: SwarmContext, bead_id: str) -> WorkerSpawned | None:
    """Start a queued worker if an instance can take it now; None if it must wait."""
    with ctx.lock(f"spawn-{bead_id}"):
        worker = ctx.store.workers.get(bead_id)
        if worker is None or worker.status != "pending":
            return None
        queued = ctx.last_event(bead_id, "worker_queued")
        routing: Routing = (
            "dedicated" if getattr(queued, "routing", "") == "dedicated" else ("least_busy")
        )
        reason = ""
        if worker.attempt > 1:
            retried = ctx.last_event(bead_id, "worker_retried")
            reason = getattr(retried, "reason", "") or "interrupted"
        spec = load_spec(ctx, bead_id)
        prompt = spec.render(worker.attempt, reason)
        if routing == "dedicated":
            from swarm_pool.swarm.dedicated import request_instance

            request_instance(ctx, bead_id)
        return start_session(
            ctx,
            bead_id=bead_id,
            epic_id=worker.epic_id,
            attempt=worker.attempt,
            worktree=worker.worktree or getattr(queued, "worktree", ""),
            prompt=prompt,
            files=list(worker.files or getattr(queued, "files", [])),
            title=spec.contract.title or bead_id,
            routing=routing,
            avoid=_avoid_after_failure(ctx, bead_id),
        )


def _avoid_after_failure(ctx: SwarmContext, bead_id: str) -> set[str]:
    spawned = ctx.last_event(bead_id, "worker_spawned")
    return {spawned.instance} if spawned is not None and spawned.instance else set()
