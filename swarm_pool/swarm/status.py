"""The coordinator's view of an epic's workers: ``poll`` and
``await_workers``.

Room: swarm.status.

``poll`` is one indexed query on the store's workers projection plus three small event
reads (BLOCKED mail to the coordinator, merges, retries). It sorts workers into the
groups completed, completed_needs_review, in_progress, pending, blocked and failed, each
with its progress, last message, instance, duration, attempt and retries by cause.
``await_workers`` returns as soon as nothing is in progress or pending, woken by
``store.wait_for_change`` rather than a fixed sleep."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from swarm_pool.errors import PoolNotRunningError
from swarm_pool.store.events import MessageSent, WorktreeMerged, now_ms
from swarm_pool.store.lifecycle import WorkerStatus
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker.failure import RETRY_TYPES, RetryUse, count_retries


class PollGroup(StrEnum):
    """The coordinator's groups of workers, in the order they are shown."""

    COMPLETED = "completed"
    COMPLETED_NEEDS_REVIEW = "completed_needs_review"
    IN_PROGRESS = "in_progress"
    PENDING = "pending"
    BLOCKED = "blocked"
    FAILED = "failed"

    @classmethod
    def of(cls, status: str) -> PollGroup:
        """The group of a worker status (an unknown one counts as in progress)."""
        return _BY_STATUS.get(status, cls.IN_PROGRESS)

    @property
    def active(self) -> bool:
        """Whether work in this group still changes without anybody's help."""
        return self in (PollGroup.IN_PROGRESS, PollGroup.PENDING)

    @property
    def finished(self) -> bool:
        return self in (PollGroup.COMPLETED, PollGroup.COMPLETED_NEEDS_REVIEW, PollGroup.FAILED)


_BY_STATUS: dict[str, PollGroup] = {
    WorkerStatus.PENDING: PollGroup.PENDING,
    WorkerStatus.DISPATCHING: PollGroup.IN_PROGRESS,
    WorkerStatus.RUNNING: PollGroup.IN_PROGRESS,
    WorkerStatus.BLOCKED: PollGroup.BLOCKED,
    WorkerStatus.COMPLETED: PollGroup.COMPLETED,
    WorkerStatus.NEEDS_REVIEW: PollGroup.COMPLETED_NEEDS_REVIEW,
    WorkerStatus.FAILED: PollGroup.FAILED,
}


def is_blocked_subject(subject: str) -> bool:
    return subject.strip().upper().startswith("BLOCKED")


@dataclass(frozen=True)
class WorkerInfo:
    bead_id: str
    epic_id: str
    status: str
    group: PollGroup
    attempt: int
    progress_percent: int
    last_message: str
    instance: str
    session_id: str
    worktree: str
    duration_ms: int | None
    session_status: str = ""
    blocked_reason: str = ""
    error: str = ""
    summary: str = ""
    files_touched: list[str] = field(default_factory=list)
    merged: bool = False
    # Retries since the caller's spawn: the task's own (under workers.max_retries) and
    # its instance's failures (under workers.infra_retry_window_s).
    retries_task: int = 0
    retries_infra: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PollResult:
    epic_id: str | None
    # Keyed by PollGroup (a str, so a group's name looks it up too).
    groups: dict[str, list[WorkerInfo]]
    seq: int
    timed_out: bool = False
    # Why nothing can move the work still pending or in progress (empty: something can).
    stalled: str = ""

    @property
    def counts(self) -> dict[str, int]:
        return {str(g): len(ws) for g, ws in self.groups.items()}

    @property
    def active(self) -> int:
        return sum(len(self.groups[g]) for g in PollGroup if g.active)

    def workers(self) -> list[WorkerInfo]:
        return [w for g in PollGroup for w in self.groups[g]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "epic_id": self.epic_id,
            "seq": self.seq,
            "timed_out": self.timed_out,
            "stalled": self.stalled,
            "counts": self.counts,
            "groups": {str(g): [w.to_dict() for w in ws] for g, ws in self.groups.items()},
        }


def _blocked_mail(ctx: SwarmContext, epic_id: str | None) -> dict[str, tuple[int, str]]:
    """bead -> (timestamp, subject) of its latest mail whose subject starts BLOCKED."""
    found: dict[str, tuple[int, str]] = {}
    for stored in ctx.store.read(types=["message_sent"], epic_id=epic_id):
        ev = stored.event
        if isinstance(ev, MessageSent) and ev.bead_id and is_blocked_subject(ev.subject):
            found[ev.bead_id] = (stored.timestamp, ev.subject)
    return found


def poll(ctx: SwarmContext, epic_id: str | None = None) -> PollResult:
    """The workers of ``epic_id`` (default: all) by group; NotFoundError for an unknown
    epic, so a typo is never mistaken for an epic with nothing left to do."""
    if epic_id is not None:
        ctx.store.hive.get_epic(epic_id)
    seq = ctx.store.last_seq()
    groups: dict[str, list[WorkerInfo]] = {g: [] for g in PollGroup}
    mail = _blocked_mail(ctx, epic_id)
    merged = {
        s.event.bead_id
        for s in ctx.store.read(types=["worktree_merged"], epic_id=epic_id)
        if isinstance(s.event, WorktreeMerged)
    }
    retries = count_retries(ctx.store.read(types=RETRY_TYPES, epic_id=epic_id))
    now = now_ms()
    for w in ctx.store.workers.list(epic_id=epic_id):
        used = retries.get(w.bead_id, RetryUse())
        group = PollGroup.of(w.status)
        blocked_reason = w.blocked_reason or ""
        hit = mail.get(w.bead_id)
        if group == PollGroup.IN_PROGRESS and hit is not None and hit[0] >= (w.spawned_at or 0):
            group = PollGroup.BLOCKED
            blocked_reason = f"mail: {hit[1]}"
        if w.duration_ms is not None:
            duration: int | None = w.duration_ms
        elif w.spawned_at and not group.finished:
            duration = now - w.spawned_at
        elif w.spawned_at:
            duration = (w.completed_at or w.updated_at or now) - w.spawned_at
        else:
            duration = None
        progress = 100 if group == PollGroup.COMPLETED else (w.progress_percent or 0)
        groups[group].append(
            WorkerInfo(
                bead_id=w.bead_id,
                epic_id=w.epic_id,
                status=w.status,
                group=group,
                attempt=w.attempt,
                progress_percent=progress,
                last_message=w.last_message or "",
                instance=w.instance or "",
                session_id=w.session_id or "",
                worktree=w.worktree or "",
                duration_ms=duration,
                session_status=w.session_status or "",
                blocked_reason=blocked_reason,
                error=w.error or "",
                summary=w.summary or "",
                files_touched=list(w.files_touched or []),
                merged=w.bead_id in merged,
                retries_task=used.task,
                retries_infra=used.infra,
            )
        )
    return PollResult(epic_id=epic_id, groups=groups, seq=seq)


def await_workers(
    ctx: SwarmContext, epic_id: str | None, timeout: float, *, stall_check: bool = False
) -> PollResult:
    """Poll until no worker of the epic is in progress or pending, or ``timeout``.

    With ``stall_check`` it returns at once (``stalled`` says why) when such work
    remains and no supervisor with a live worker engine would move it: waiting could
    only end in the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = poll(ctx, epic_id)
        if result.active == 0:
            return result
        if stall_check:
            try:
                ctx.require_dispatcher(f"the {result.active} pending or running workers")
            except PoolNotRunningError as e:
                return PollResult(result.epic_id, result.groups, result.seq, stalled=str(e))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return PollResult(result.epic_id, result.groups, result.seq, timed_out=True)
        # Wakes on the next append by any process; the cap re-checks durations.
        ctx.store.wait_for_change(result.seq, min(remaining, 5.0))
