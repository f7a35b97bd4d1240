"""Answering a blocked worker's permission or question request:
``answer``.

Room: swarm.worker.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any

from swarm_pool.errors import NotFoundError, WorkerError, WorkerStateError
from swarm_pool.store.events import WorkerBlocked, WorkerProgress
from swarm_pool.store.lifecycle import WorkerStatus
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.context import SwarmContext


@dataclass(frozen=True)
class Answered:
    """The request answered: its kind and id, and the reply or the answer text."""

    bead_id: str
    kind: str
    request_id: str
    reply: str | None
    answer: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def answer(
    ctx: SwarmContext,
    bead_id: str,
    *,
    reply: str | None = None,
    text: str | None = None,
) -> Answered:
    """Reply to the permission (``reply`` once|always|reject) or question (``text``)."""
    if (reply is None) == (text is None):
        raise WorkerError("give exactly one of a permission reply or a question answer")
    worker = ctx.store.workers.get(bead_id)
    if worker is None:
        raise NotFoundError(f"bead {bead_id} has no worker")
    blocked = ctx.last_event(bead_id, WorkerBlocked)
    if (
        worker.status != WorkerStatus.BLOCKED
        or blocked is None
        or not blocked.request_id
        or blocked.attempt != worker.attempt
        or (blocked.session_id and blocked.session_id != worker.session_id)
    ):
        raise WorkerError(f"worker {bead_id} is not waiting for an answer (status {worker.status})")
    if reply is not None and blocked.kind != "permission":
        raise WorkerError(f"worker {bead_id} asked a question; answer it with text")
    if text is not None and blocked.kind != "question":
        raise WorkerError(f"worker {bead_id} asked for a permission; reply once|always|reject")
    request_id = blocked.request_id
    client = ctx.client(ctx.instance(blocked.instance or worker.instance))
    try:
        if reply is not None:
            client.reply_permission(request_id, reply, directory=worker.worktree or None)
        else:
            client.reply_question(request_id, [[text or ""]], directory=worker.worktree or None)
    finally:
        client.close()

    def build(current: WorkerView | None) -> list[WorkerProgress] | None:
        # Only the attempt that asked is resumed; the watcher may have seen the reply first.
        if current is None or current.status != WorkerStatus.BLOCKED:
            return None
        if current.attempt != worker.attempt or current.session_id != worker.session_id:
            return None
        return [
            WorkerProgress(
                bead_id=bead_id,
                epic_id=worker.epic_id,
                session_id=worker.session_id,
                attempt=worker.attempt,
                progress_percent=current.progress_percent or 0,
                message=f"resumed after {blocked.kind} reply",
            )
        ]

    with contextlib.suppress(WorkerStateError):
        ctx.store.change_worker(bead_id, build)
    return Answered(
        bead_id=bead_id,
        kind=blocked.kind,
        request_id=request_id,
        reply=reply,
        answer=text,
    )
