"""Async workers: spawn without waiting, dispatch, fail and retry, answer.

It owns the life of a worker up to its completion. ``spawn_async`` checks the bead's
dependencies and that no live spawn of it exists, creates (or reuses) its git worktree,
keeps what its prompt is built from (a ``Contract`` plus the task text), records
``worker_queued`` and returns: about a git worktree's worth of milliseconds. The engine
in the supervisor daemon is the single dispatcher: ``dispatch`` asks the router for an
instance, creates the session with ``directory=<worktree>`` (OpenCode bootstraps a new
directory here, which takes one to a few seconds, so it is kept off the caller's path),
fires ``prompt_async`` and records ``worker_spawned``; a worker stays queued while the
pool is full. ``fail`` records ``worker_failed`` and, under ``workers.max_retries``,
queues the worker again in the same worktree with a note that the earlier attempt was
interrupted. ``answer`` replies to a blocked worker's permission or question request.
Watching lives in ``watch``/``engine``, the views in ``status``, review and merge in
``review``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from swarm_pool.errors import (
    DependencyBlockedError,
    DuplicateSpawnError,
    NotFoundError,
    OpenCodeError,
    PoolNotRunningError,
    SwarmPoolError,
    WorkerError,
)
from swarm_pool.protocol import Contract
from swarm_pool.store.events import (
    CellStatusChanged,
    WorkerFailed,
    WorkerProgress,
    WorkerQueued,
    WorkerRetried,
    WorkerSpawned,
    now_ms,
)
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.prompt import build_worker_prompt, prompt_hash
from swarm_pool.swarm.router import (
    ROUTINGS,
    InstanceSlot,
    Routing,
    Steadiness,
    busy_counts,
    choose_instance,
)

# A worker in one of these states owns its bead: a second spawn is refused.
LIVE_STATUSES = frozenset({"running", "blocked", "pending"})
# ... and in these it holds a session on an instance (counts against the limit).
IN_FLIGHT_STATUSES = frozenset({"running", "blocked"})


@dataclass(frozen=True)
class SpawnResult:
    bead_id: str
    epic_id: str
    status: str  # "running" (a session was started) or "pending" (queued)
    attempt: int
    worktree: str
    instance: str = ""
    session_id: str = ""
    prompt_hash: str = ""
    routing: str = "least_busy"
    elapsed_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- prompts on disk ------------------------------------------------------------------
# What the prompt is built from is kept under .swarm/prompts/<bead>.json (not in the
# worktree, where the worker would commit it): the engine, in another process, needs
# it to dispatch a queued spawn or to retry a failed one with a new attempt number.


@dataclass(frozen=True)
class PromptSpec:
    contract: Contract
    description: str = ""
    shared_context: str = ""
    success_criteria: tuple[str, ...] = ()
    # Per-spawn override of workers.timeout_s (None: the config's).
    timeout_s: float | None = None

    def render(self, attempt: int | None = None, reason: str = "") -> str:
        contract = self.contract
        if attempt is not None and attempt != contract.attempt:
            contract = contract.model_copy(update={"attempt": attempt})
        note = None
        if contract.attempt > 1 and reason:
            note = (
                f"Attempt {contract.attempt}: an earlier attempt at this task was interrupted "
                f"({reason}). Your worktree may already hold part of that work: inspect it "
                "first (git status, the files) and build on it rather than starting over."
            )
        return build_worker_prompt(
            contract,
            description=self.description,
            shared_context=self.shared_context,
            success_criteria=list(self.success_criteria),
            retry_note=note,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "contract": self.contract.model_dump(mode="json"),
                "description": self.description,
                "shared_context": self.shared_context,
                "success_criteria": list(self.success_criteria),
                "timeout_s": self.timeout_s,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PromptSpec:
        data = json.loads(text)
        return cls(
            contract=Contract.model_validate(data["contract"]),
            description=data.get("description", ""),
            shared_context=data.get("shared_context", ""),
            success_criteria=tuple(data.get("success_criteria", ())),
            timeout_s=data.get("timeout_s"),
        )


def _spec_path(ctx: SwarmContext, bead_id: str) -> Path:
    return ctx.prompts_dir / f"{bead_id}.json"


def save_spec(ctx: SwarmContext, bead_id: str, spec: PromptSpec) -> None:
    path = _spec_path(ctx, bead_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(spec.to_json())
    os.replace(tmp, path)


def load_spec(ctx: SwarmContext, bead_id: str) -> PromptSpec:
    try:
        return PromptSpec.from_json(_spec_path(ctx, bead_id).read_text())
    except OSError as e:
        raise WorkerError(f"the prompt of {bead_id} is missing ({e.strerror})") from e
    except (ValueError, KeyError) as e:
        raise WorkerError(f"the prompt of {bead_id} is unreadable: {e}") from e


# --- spawning -------------------------------------------------------------------------


def _blocked_by(ctx: SwarmContext, deps: Iterable[str]) -> list[str]:
    blocked = []
    for dep in deps:
        try:
            cell = ctx.store.hive.get_cell(dep)
        except NotFoundError:
            blocked.append(dep)
            continue
        if cell.status != "closed":
            blocked.append(dep)
    return sorted(set(blocked))


def _routing(ctx: SwarmContext, routing: str | None) -> Routing:
    value = routing or ctx.config.pool.routing
    for known in ROUTINGS:
        if value == known:
            return known
    raise WorkerError(f"unknown routing {value!r}: use {' or '.join(ROUTINGS)}")


def spawn_async(
    ctx: SwarmContext,
    bead_id: str,
    epic_id: str | None = None,
    title: str | None = None,
    description: str | None = None,
    files: Sequence[str] | None = None,
    dependencies: Sequence[str] = (),
    shared_context: str = "",
    routing: str | None = None,
    *,
    read_only: Sequence[str] = (),
    success_criteria: Sequence[str] = (),
    script: list[dict[str, Any]] | None = None,
    timeout_s: float | None = None,
) -> SpawnResult:
    """Start a worker for ``bead_id`` and return at once (never waits for the worker).

    Missing arguments come from the bead's cell in the hive; ``timeout_s`` overrides
    ``workers.timeout_s`` for this worker. Raises
    DependencyBlockedError (with ``blocked_by``) when a dependency is not closed, and
    DuplicateSpawnError when the bead already has a live worker.
    """
    started = time.perf_counter()
    cell = ctx.store.hive.get_cell(bead_id)
    if epic_id and epic_id != cell.epic_id:
        raise WorkerError(f"bead {bead_id} belongs to epic {cell.epic_id}, not {epic_id}")
    if cell.status == "closed":
        raise WorkerError(f"bead {bead_id} is already closed")
    blocked = _blocked_by(ctx, [*cell.depends_on, *dependencies])
    if blocked:
        raise DependencyBlockedError(
            f"bead {bead_id} is blocked by dependencies not closed yet: {', '.join(blocked)}",
            blocked_by=blocked,
        )
    policy = _routing(ctx, routing)
    owned = list(files if files is not None else cell.files)
    if not ctx.dispatcher_running():
        raise PoolNotRunningError(
            f"no running pool to run {bead_id} on; start it with `swarm-pool start`"
        )
    with ctx.lock(f"spawn-{bead_id}"):
        current = ctx.store.workers.get(bead_id)
        if current is not None and current.status in LIVE_STATUSES:
            raise DuplicateSpawnError(
                f"bead {bead_id} already has a live worker (status {current.status}, "
                f"attempt {current.attempt})"
            )
        attempt = current.attempt + 1 if current is not None else 1
        base = ctx.config.workers.base_branch or None
        tree = ctx.worktrees.create(bead_id, base=base)
        contract = Contract(
            bead_id=bead_id,
            epic_id=cell.epic_id,
            title=title or cell.title,
            worktree=str(tree.path),
            files=owned,
            read_only=list(read_only),
            attempt=attempt,
            script=script if script is not None else cell.script,
        )
        spec = PromptSpec(
            contract=contract,
            description=description if description is not None else cell.description,
            shared_context=shared_context,
            success_criteria=tuple(success_criteria),
            timeout_s=timeout_s,
        )
        save_spec(ctx, bead_id, spec)
        text = spec.render()
        if policy == "dedicated":
            from swarm_pool.swarm.dedicated import request_instance

            request_instance(ctx, bead_id)
        # One transaction: nobody sees a queued worker on a bead that is not in progress.
        ctx.store.append_many(
            [
                WorkerQueued(
                    bead_id=bead_id,
                    epic_id=cell.epic_id,
                    attempt=attempt,
                    title=contract.title,
                    worktree=str(tree.path),
                    files=owned,
                    prompt_hash=prompt_hash(text),
                    routing=policy,
                    reason="spawned",
                ),
                CellStatusChanged(
                    cell_id=bead_id,
                    epic_id=cell.epic_id,
                    status="in_progress",
                    reason=f"worker attempt {attempt}",
                ),
            ]
        )
    return SpawnResult(
        bead_id=bead_id,
        epic_id=cell.epic_id,
        status="pending",
        attempt=attempt,
        worktree=str(tree.path),
        prompt_hash=prompt_hash(text),
        routing=policy,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
    )


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
                usable,
                _busy(ctx),
                limit,
                routing=routing,
                bead_id=bead_id,
                avoid=set(avoid),
                steadiness=Steadiness.from_config(ctx.config),
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


def _last_event(ctx: SwarmContext, bead_id: str, kind: str) -> Any | None:
    events = ctx.store.read(types=[kind], bead_id=bead_id)
    return events[-1].event if events else None


def dispatch(ctx: SwarmContext, bead_id: str) -> WorkerSpawned | None:
    """Start a queued worker if an instance can take it now; None if it must wait."""
    with ctx.lock(f"spawn-{bead_id}"):
        worker = ctx.store.workers.get(bead_id)
        if worker is None or worker.status != "pending":
            return None
        queued = _last_event(ctx, bead_id, "worker_queued")
        routing: Routing = (
            "dedicated" if getattr(queued, "routing", "") == "dedicated" else ("least_busy")
        )
        reason = ""
        if worker.attempt > 1:
            retried = _last_event(ctx, bead_id, "worker_retried")
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
    spawned = _last_event(ctx, bead_id, "worker_spawned")
    return {spawned.instance} if spawned is not None and spawned.instance else set()


# --- failure and retry ----------------------------------------------------------------


def retries_used(ctx: SwarmContext, bead_id: str) -> int:
    """Retries since the last spawn a caller asked for (not counting engine retries)."""
    used = 0
    previous_attempt: int | None = None
    for stored in ctx.store.read(
        types=["worker_spawned", "worker_queued", "worker_retried"], bead_id=bead_id
    ):
        attempt = getattr(stored.event, "attempt", 1)
        if stored.type == "worker_retried":
            used += 1
        elif attempt != previous_attempt:
            used = 0  # a new attempt number not announced by a retry: a caller's spawn
        previous_attempt = attempt
    return used


def fail(
    ctx: SwarmContext,
    bead_id: str,
    *,
    error: str,
    reason: str,
    retry: bool = True,
    abort: bool = False,
    session_id: str | None = None,
) -> str:
    """Fail the bead's current attempt; retry it under the policy.

    ``session_id`` guards against failing a newer attempt with news about an older
    one. Returns "retried" (queued again for the dispatcher), "failed" (no retry
    left) or "ignored" (nothing live to fail).
    """
    with ctx.lock(f"spawn-{bead_id}"):
        worker = ctx.store.workers.get(bead_id)
        if worker is None or worker.status not in LIVE_STATUSES:
            return "ignored"
        if session_id is not None and worker.session_id != session_id:
            return "ignored"
        if abort and worker.session_id and worker.instance:
            _abort(ctx, worker.instance, worker.session_id, worker.worktree)
        duration = now_ms() - worker.spawned_at if worker.spawned_at else None
        failed = WorkerFailed(
            bead_id=bead_id,
            epic_id=worker.epic_id,
            session_id=worker.session_id,
            attempt=worker.attempt,
            error=error,
            reason=reason,
            duration_ms=duration,
        )
        queued = _last_event(ctx, bead_id, "worker_queued")
        routing = getattr(queued, "routing", "least_busy")
        # Each outcome is one transaction, so an observer never sees a failed worker
        # whose bead is still "in progress", or a retry half recorded.
        if not retry or retries_used(ctx, bead_id) >= ctx.config.workers.max_retries:
            ctx.store.append_many(
                [
                    failed,
                    CellStatusChanged(
                        cell_id=bead_id,
                        epic_id=worker.epic_id,
                        status="blocked",
                        reason=f"worker failed: {reason}",
                    ),
                ]
            )
            if routing == "dedicated":
                from swarm_pool.swarm.dedicated import release_instance

                with contextlib.suppress(SwarmPoolError):
                    release_instance(ctx, bead_id)
            return "failed"
        attempt = worker.attempt + 1
        # Straight from failed to pending: queued for the dispatcher, which prefers
        # another instance than the one that failed it.
        ctx.store.append_many(
            [
                failed,
                WorkerRetried(
                    bead_id=bead_id,
                    epic_id=worker.epic_id,
                    session_id=worker.session_id,
                    attempt=attempt,
                    reason=reason,
                ),
                WorkerQueued(
                    bead_id=bead_id,
                    epic_id=worker.epic_id,
                    attempt=attempt,
                    title=getattr(queued, "title", ""),
                    worktree=worker.worktree,
                    files=list(worker.files),
                    prompt_hash=getattr(queued, "prompt_hash", ""),
                    routing=routing,
                    reason=f"retry after {reason}",
                ),
            ]
        )
        return "retried"


def _abort(ctx: SwarmContext, instance: str, session_id: str, worktree: str) -> None:
    try:
        slot = ctx.instance(instance)
    except WorkerError:
        return
    except Exception:
        return
    client = ctx.client(slot)
    try:
        client.abort(session_id, directory=worktree or None)
    except OpenCodeError:
        pass  # the instance may be gone; the failure is recorded either way
    finally:
        client.close()


# --- answering a blocked worker -------------------------------------------------------


def answer(
    ctx: SwarmContext,
    bead_id: str,
    *,
    reply: str | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    """Reply to the permission (``reply`` once|always|reject) or question (``text``)."""
    if (reply is None) == (text is None):
        raise WorkerError("give exactly one of a permission reply or a question answer")
    worker = ctx.store.workers.get(bead_id)
    if worker is None:
        raise NotFoundError(f"bead {bead_id} has no worker")
    blocked = _last_event(ctx, bead_id, "worker_blocked")
    if worker.status != "blocked" or blocked is None or not blocked.request_id:
        raise WorkerError(f"worker {bead_id} is not waiting for an answer (status {worker.status})")
    if reply is not None and blocked.kind != "permission":
        raise WorkerError(f"worker {bead_id} asked a question; answer it with text")
    if text is not None and blocked.kind != "question":
        raise WorkerError(f"worker {bead_id} asked for a permission; reply once|always|reject")
    slot = ctx.instance(blocked.instance or worker.instance)
    client = ctx.client(slot)
    try:
        if reply is not None:
            client.reply_permission(blocked.request_id, reply, directory=worker.worktree or None)
        else:
            client.reply_question(
                blocked.request_id, [[text or ""]], directory=worker.worktree or None
            )
    finally:
        client.close()
    with ctx.lock(f"spawn-{bead_id}"):
        current = ctx.store.workers.get(bead_id)
        if current is not None and current.status == "blocked":
            ctx.store.append(
                WorkerProgress(
                    bead_id=bead_id,
                    epic_id=worker.epic_id,
                    session_id=worker.session_id,
                    attempt=worker.attempt,
                    progress_percent=current.progress_percent or 0,
                    message=f"resumed after {blocked.kind} reply",
                )
            )
    return {
        "bead_id": bead_id,
        "kind": blocked.kind,
        "request_id": blocked.request_id,
        "reply": reply,
        "answer": text,
    }
