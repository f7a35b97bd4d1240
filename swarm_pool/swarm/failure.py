"""Failing a worker's attempt, and retrying it under ``workers.max_retries``.

``fail`` records ``worker_failed`` and, while retries are left, queues the worker again
in the same worktree (``worker_retried`` + ``worker_queued``, one transaction) with a note
that the earlier attempt was interrupted; the dispatcher then prefers another instance.
Without a retry the bead is blocked and its reservations released in the same
transaction. The retry budget is one function (``retry_allowed``), so a second budget
(instance deaths not counted against ``max_retries``) fits in one place.
"""

from __future__ import annotations

import contextlib

from swarm_pool import faults
from swarm_pool.errors import OpenCodeError, SwarmPoolError, WorkerStateError
from swarm_pool.store.events import (
    BaseEvent,
    CellStatusChanged,
    WorkerFailed,
    WorkerQueued,
    WorkerRetried,
    now_ms,
)
from swarm_pool.store.lifecycle import LIVE
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.context import SwarmContext


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


def retry_allowed(ctx: SwarmContext, worker: WorkerView, reason: str) -> bool:
    """Whether the retry budget lets this failure be retried (one budget today:
    ``workers.max_retries`` over the retries since the caller's last spawn)."""
    return retries_used(ctx, worker.bead_id) < ctx.config.workers.max_retries


def fail(
    ctx: SwarmContext,
    bead_id: str,
    *,
    error: str,
    reason: str,
    retry: bool = True,
    abort: bool = False,
    session_id: str | None = None,
    attempt: int | None = None,
) -> str:
    """Fail the bead's current attempt; retry it under the policy.

    The attempt failed is the one read first (or the one named by ``session_id`` and
    ``attempt``): news about an older attempt never fails a newer one. The failure is
    recorded only if that attempt is still live when it is written (a conditional
    append), so a completion that lands meanwhile, during the abort say, wins and the
    failure is dropped. Returns "retried" (queued again for the dispatcher), "failed" (no
    retry left: the bead is blocked and its reservations released in the same
    transaction) or "ignored" (nothing live to fail).
    """
    with ctx.lock(f"spawn-{bead_id}"):
        worker = ctx.store.workers.get(bead_id)
        if not _is_target(worker, session_id, attempt):
            return "ignored"
        assert worker is not None
        session_id, attempt = worker.session_id, worker.attempt
        if abort and worker.session_id and worker.instance:
            _abort(ctx, worker.instance, worker.session_id, worker.worktree)
        faults.point("fail.before_record")
        outcome = "ignored"

        def build(current: WorkerView | None) -> list[BaseEvent] | None:
            nonlocal outcome
            outcome = "ignored"
            if current is None or not _is_target(current, session_id, attempt):
                return None
            if retry and retry_allowed(ctx, current, reason):
                outcome = "retried"
                return _retry_events(ctx, current, error=error, reason=reason)
            outcome = "failed"
            return _final_events(ctx, current, error=error, reason=reason)

        try:
            ctx.store.change_worker(bead_id, build)
        except WorkerStateError:
            return "ignored"
        if outcome == "failed":
            queued = ctx.last_event(bead_id, "worker_queued")
            if getattr(queued, "routing", "") == "dedicated":
                from swarm_pool.swarm.dedicated import release_instance

                with contextlib.suppress(SwarmPoolError):
                    release_instance(ctx, bead_id)
        return outcome


def _is_target(worker: WorkerView | None, session_id: str | None, attempt: int | None) -> bool:
    if worker is None or worker.status not in LIVE:
        return False
    if session_id is not None and worker.session_id != session_id:
        return False
    return attempt is None or worker.attempt == attempt


def _failed_event(worker: WorkerView, *, error: str, reason: str) -> WorkerFailed:
    return WorkerFailed(
        bead_id=worker.bead_id,
        epic_id=worker.epic_id,
        session_id=worker.session_id,
        attempt=worker.attempt,
        error=error,
        reason=reason,
        duration_ms=now_ms() - worker.spawned_at if worker.spawned_at else None,
    )


def _final_events(
    ctx: SwarmContext, worker: WorkerView, *, error: str, reason: str
) -> list[BaseEvent]:
    # One transaction: an observer never sees a failed worker whose bead is still "in
    # progress", or whose files are still reserved.
    return [
        _failed_event(worker, error=error, reason=reason),
        *ctx.store.reservations.release_events(
            worker.bead_id, worker.agent_name or f"worker-{worker.bead_id}", f"failed: {reason}"
        ),
        CellStatusChanged(
            cell_id=worker.bead_id,
            epic_id=worker.epic_id,
            status="blocked",
            reason=f"worker failed: {reason}",
        ),
    ]


def _retry_events(
    ctx: SwarmContext, worker: WorkerView, *, error: str, reason: str
) -> list[BaseEvent]:
    # Failed, then straight to pending with the next attempt: queued for the dispatcher,
    # which prefers another instance than the one that failed it.
    queued = ctx.last_event(worker.bead_id, "worker_queued")
    attempt = worker.attempt + 1
    return [
        _failed_event(worker, error=error, reason=reason),
        WorkerRetried(
            bead_id=worker.bead_id,
            epic_id=worker.epic_id,
            session_id=worker.session_id,
            attempt=attempt,
            reason=reason,
        ),
        WorkerQueued(
            bead_id=worker.bead_id,
            epic_id=worker.epic_id,
            attempt=attempt,
            title=getattr(queued, "title", ""),
            worktree=worker.worktree,
            files=list(worker.files),
            prompt_hash=getattr(queued, "prompt_hash", ""),
            routing=getattr(queued, "routing", "least_busy"),
            reason=f"retry after {reason}",
        ),
    ]


def _abort(ctx: SwarmContext, instance: str, session_id: str, worktree: str) -> None:
    try:
        slot = ctx.instance(instance)
    except SwarmPoolError:
        return
    client = ctx.client(slot)
    try:
        client.abort(session_id, directory=worktree or None)
    except OpenCodeError:
        pass  # the instance may be gone; the failure is recorded either way
    finally:
        client.close()
