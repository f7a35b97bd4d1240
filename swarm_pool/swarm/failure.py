"""Failing a worker's attempt, and retrying it under ``workers.max_retries``.

``fail`` records ``worker_failed`` and, while retries are left, queues the worker again
in the same worktree (``worker_retried`` + ``worker_queued``, one transaction) with a note
that the earlier attempt was interrupted; the dispatcher then prefers another instance.
Without a retry the bead is blocked in the same transaction.
"""

from __future__ import annotations

import contextlib

from swarm_pool.errors import OpenCodeError, SwarmPoolError, WorkerError
from swarm_pool.store.events import (
    CellStatusChanged,
    WorkerFailed,
    WorkerQueued,
    WorkerRetried,
    now_ms,
)
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.spawn import LIVE_STATUSES


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
        queued = ctx.last_event(bead_id, "worker_queued")
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
