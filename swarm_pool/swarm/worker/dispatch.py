"""Dispatching a queued worker: route, create its session, prompt it,
record it.

Room: swarm.worker.

The engine in the supervisor daemon is the single dispatcher. ``dispatch`` asks the
router for an instance, creates the session with ``directory=<worktree>`` (OpenCode
bootstraps a new directory here, which takes one to a few seconds, so it is kept off the
spawner's path), records it (``worker_session_created``: the intent, before any prompt),
fires ``prompt_async`` and records ``worker_spawned``. Before OpenCode opens the
directory, the worktree gets its capability token for the shared MCP server; every
append is conditional on the version it read, and a worker stays queued while the pool
is full. What a crash or an unanswered request leaves half done, ``reconcile`` finishes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from swarm_pool import faults
from swarm_pool.errors import (
    OpenCodeError,
    OpenCodeNotSentError,
    OpenCodeUnknownOutcomeError,
    WorkerStateError,
)
from swarm_pool.opencode.client import OpenCodeClient
from swarm_pool.pool.router import (
    InstanceView,
    RouteRequest,
    Routing,
    Steadiness,
    active_instances,
    busy_counts,
    choose_instance,
)
from swarm_pool.store.events import (
    WorkerQueued,
    WorkerRetried,
    WorkerSessionCreated,
    WorkerSpawned,
    now_ms,
)
from swarm_pool.store.lifecycle import IN_FLIGHT, WorkerStatus
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.pool_view import grant_token
from swarm_pool.swarm.worker.checkout import acquire, is_slot_path
from swarm_pool.swarm.worker.dedicated import request_instance
from swarm_pool.swarm.worker.failure import infra_backoff_until
from swarm_pool.swarm.worker.prompt import prompt_hash
from swarm_pool.swarm.worker.remote import local_spec, local_worktree
from swarm_pool.swarm.worker.spec import PromptSpec, load_spec, queue_again

log = logging.getLogger(__name__)

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
    live = [w.instance for w in ctx.mine(ctx.store.workers.list()) if w.status in IN_FLIGHT]
    busy = busy_counts(live)
    with _reserved_guard:
        for name, n in _reserved.items():
            busy[name] = busy.get(name, 0) + n
    return busy


@dataclass(frozen=True)
class SessionRequest:
    """One queued attempt to start. ``version`` is the worker's version when the caller
    read it pending; ``worktree`` is its directory (with ``slotted``, only the fallback:
    a warm slot of the chosen instance is taken instead); ``prompt_for(directory)``
    renders the prompt naming the directory the session runs in; ``avoid`` names
    instances to pass over."""

    bead_id: str
    epic_id: str
    attempt: int
    version: int
    worktree: str
    prompt_for: Callable[[str], str]
    files: Sequence[str]
    title: str
    routing: Routing = "least_busy"
    avoid: frozenset[str] = frozenset()
    slotted: bool = False


def start_session(ctx: SwarmContext, req: SessionRequest) -> WorkerSpawned | None:
    """Route, create the session in the worktree, record it, prompt it, record the spawn.

    If the worker changed since ``req.version``, nothing is started. Returns None when
    nothing was started now (no instance has room, or the worker moved on; it stays as
    the store says). Only the choice happens under the router lock (with a place
    reserved in this process until the spawn is recorded); the slow part, OpenCode
    bootstrapping a new directory for the session, runs outside it, so dispatches to
    different instances overlap. Another instance is tried only when the request to
    create the session was never sent.
    """
    if not req.slotted:
        grant_token(ctx.paths, ctx.config, req.worktree)
    failed: set[str] = set()
    while True:
        inst = _choose(ctx, req, failed)
        if inst is None:
            return None
        try:
            where = req.worktree
            if req.slotted:
                where = str(acquire(ctx, inst.name, req.bead_id, req.attempt))
                grant_token(ctx.paths, ctx.config, where)
            text = req.prompt_for(where)
            attempt = _Attempt(
                req.bead_id, req.epic_id, req.attempt, req.version, where, list(req.files)
            )
            return _start_on(ctx, inst, attempt, text, req.title)
        except OpenCodeNotSentError:
            # The instance died since the supervisor last looked, and it never saw the
            # request: another one may take it.
            failed.add(inst.name)
            continue
        finally:
            _reserve(inst.name, -1)


def _choose(ctx: SwarmContext, req: SessionRequest, failed: set[str]) -> InstanceView | None:
    """The instance to start on, with a place reserved on it (None: none has room)."""
    with ctx.lock("router"):
        usable = [i for i in ctx.instances() if i.name not in failed]
        inst = choose_instance(
            usable,
            _busy(ctx),
            RouteRequest(
                ctx.config.pool.max_sessions_per_instance,
                routing=req.routing,
                bead_id=req.bead_id,
                avoid=set(req.avoid),
                steadiness=Steadiness.from_config(ctx.config),
                active=active_instances(ctx.config),
            ),
        )
        if inst is not None:
            _reserve(inst.name, +1)
        return inst


@dataclass(frozen=True)
class _Attempt:
    bead_id: str
    epic_id: str
    attempt: int
    version: int
    worktree: str
    files: list[str]


def session_title(bead_id: str, attempt: int, title: str) -> str:
    """The session's title: names its bead and attempt, so a listing can attribute it."""
    return f"{bead_id} #{attempt}: {title}"[:100]


def _start_on(
    ctx: SwarmContext, inst: InstanceView, a: _Attempt, prompt: str, title: str
) -> WorkerSpawned | None:
    client = ctx.client(inst)
    try:
        try:
            session = client.create_session(
                a.worktree, title=session_title(a.bead_id, a.attempt, title)
            )
        except OpenCodeUnknownOutcomeError:
            # It may exist; unprompted and unrecorded, it must not live on.
            _drop_unrecorded(client, a)
            return None
        session_id = str(session["id"])
        # The intent, before the side effect: the attempt's one session is on record
        # before it is prompted, so a crash in between leaves something to reconcile.
        try:
            ctx.store.append(
                WorkerSessionCreated(
                    bead_id=a.bead_id,
                    epic_id=a.epic_id,
                    session_id=session_id,
                    attempt=a.attempt,
                    instance=inst.name,
                    worktree=a.worktree,
                ),
                expect={a.bead_id: a.version},
            )
        except WorkerStateError:
            # The worker moved on while the session was created (failed, re-queued).
            _delete(client, session_id, a.worktree)
            return None
        faults.point("dispatch.before_prompt")
        try:
            client.prompt_async(session_id, prompt, directory=a.worktree)
        except OpenCodeUnknownOutcomeError:
            # Maybe prompted: the reconciler looks at its messages and decides.
            return None
        except OpenCodeError as e:
            # Not prompted (never sent, or refused): the session goes, the attempt goes
            # back to the queue, and the next tick dispatches it afresh (its version moved
            # on, so no failover from here).
            log.info("dispatch of %s: prompt failed, queued again: %s", a.bead_id, e)
            _delete(client, session_id, a.worktree)
            requeue(ctx, a.bead_id, a.attempt, session_id)
            return None
        return record_spawn(ctx, a.bead_id, session_id, inst.name, prompt)
    finally:
        client.close()


def record_spawn(
    ctx: SwarmContext, bead_id: str, session_id: str, instance: str, prompt: str
) -> WorkerSpawned | None:
    """Record that the attempt's recorded session is prompted (None: it moved on, or its
    session already reported, which says as much)."""
    recorded: list[WorkerSpawned] = []

    def build(current: WorkerView | None) -> list[WorkerSpawned] | None:
        recorded.clear()
        if current is None or current.session_id != session_id:
            return None
        if current.status != WorkerStatus.DISPATCHING:
            return None
        event = WorkerSpawned(
            bead_id=bead_id,
            epic_id=current.epic_id,
            session_id=session_id,
            attempt=current.attempt,
            agent_name=f"worker-{bead_id}",
            instance=instance,
            worktree=current.worktree,
            files=list(current.files),
            prompt_hash=prompt_hash(prompt),
        )
        recorded.append(event)
        return [event]

    ctx.store.change_worker(bead_id, build)
    return recorded[0] if recorded else None


def requeue(ctx: SwarmContext, bead_id: str, attempt: int, session_id: str) -> None:
    """Back to the queue (same attempt): its session was never prompted and is gone."""

    def build(current: WorkerView | None) -> list[WorkerQueued] | None:
        if current is None or current.session_id != session_id or current.attempt != attempt:
            return None
        if current.status != WorkerStatus.DISPATCHING:
            return None
        return [queue_again(ctx, current, attempt, "its session could not be prompted")]

    with contextlib.suppress(WorkerStateError):
        ctx.store.change_worker(bead_id, build)


def _delete(client: OpenCodeClient, session_id: str, worktree: str) -> None:
    with contextlib.suppress(OpenCodeError):
        client.abort(session_id, directory=worktree)
    with contextlib.suppress(OpenCodeError):
        client.delete_session(session_id, directory=worktree)


def _drop_unrecorded(client: OpenCodeClient, a: _Attempt) -> None:
    prefix = session_title(a.bead_id, a.attempt, "")
    with contextlib.suppress(OpenCodeError):
        for s in client.sessions(directory=a.worktree):
            if str(s.get("title", "")).startswith(prefix) and s.get("directory") == a.worktree:
                _delete(client, str(s["id"]), a.worktree)


def dispatch(ctx: SwarmContext, bead_id: str) -> WorkerSpawned | None:
    """Start a queued worker if an instance can take it now; None if it must wait."""
    with ctx.lock(f"spawn-{bead_id}"):
        worker = ctx.store.workers.get(bead_id)
        if worker is None or worker.status != WorkerStatus.PENDING:
            return None
        if ctx.multi_host:
            if worker.host != ctx.config.pool.host:
                return None  # not claimed by this host: another host's engine starts it
            worker = local_worktree(ctx, worker)
        not_before = infra_backoff_until(ctx, bead_id)
        if not_before is not None and now_ms() < not_before:
            return None  # an infra retry's backoff: the engine's next ticks try again
        queued = ctx.last_event(bead_id, WorkerQueued)
        routing: Routing = (
            "dedicated" if queued is not None and queued.routing == "dedicated" else "least_busy"
        )
        spec = local_spec(load_spec(ctx, bead_id), worker.worktree)
        worktree = worker.worktree or (queued.worktree if queued is not None else "")
        if routing == "dedicated":
            request_instance(ctx, bead_id)
        request = SessionRequest(
            bead_id=bead_id,
            epic_id=worker.epic_id,
            attempt=worker.attempt,
            version=worker.version,
            worktree=worktree,
            prompt_for=lambda where: render_prompt(ctx, bead_id, worker.attempt, spec, where),
            files=list(worker.files or (queued.files if queued is not None else [])),
            title=spec.contract.title or bead_id,
            routing=routing,
            avoid=frozenset(_avoid_after_failure(ctx, bead_id)),
            # The spawner decided: no directory yet (or its slot, on a retry) means a slot.
            slotted=not worktree or is_slot_path(ctx, worktree),
        )
        return start_session(ctx, request)


def render_prompt(
    ctx: SwarmContext, bead_id: str, attempt: int, spec: PromptSpec, worktree: str = ""
) -> str:
    """The attempt's prompt (a retry's says why the earlier attempt ended), naming
    ``worktree`` when given (a slot is known only once the worker is dispatched)."""
    spec = local_spec(spec, worktree)
    reason = ""
    if attempt > 1:
        retried = ctx.last_event(bead_id, WorkerRetried)
        reason = (retried.reason if retried is not None else "") or "interrupted"
    return spec.render(attempt, reason)


def _avoid_after_failure(ctx: SwarmContext, bead_id: str) -> set[str]:
    spawned = ctx.last_event(bead_id, WorkerSpawned)
    return {spawned.instance} if spawned is not None and spawned.instance else set()
