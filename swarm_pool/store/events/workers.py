"""The workers events: a worker's attempt from queue to outcome (the events
the lifecycle in ``lifecycle.py`` decides on), ``FailureCause``, a pushed branch, and
the hosts' heartbeats.

Room: store.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from swarm_pool.store.events.base import BaseEvent


class WorkerEvent(BaseEvent):
    bead_id: str
    epic_id: str
    session_id: str | None = None
    attempt: int = Field(1, ge=1)


class WorkerSpawned(WorkerEvent):
    type: Literal["worker_spawned"] = "worker_spawned"
    agent_name: str = ""
    instance: str = ""
    worktree: str = ""
    files: list[str] = Field(default_factory=list)
    prompt_hash: str = ""


class WorkerProgress(WorkerEvent):
    type: Literal["worker_progress"] = "worker_progress"
    progress_percent: int = Field(ge=0, le=100)
    message: str = ""
    files_touched: list[str] = Field(default_factory=list)


class WorkerCompleted(WorkerEvent):
    type: Literal["worker_completed"] = "worker_completed"
    status: Literal["success", "failed", "blocked"] = "success"
    summary: str = ""
    files_touched: list[str] = Field(default_factory=list)
    duration_ms: int | None = None
    error: str | None = None
    # Files changed in the worktree outside the owned patterns, and claimed-vs-real diffs.
    violations: list[str] = Field(default_factory=list)
    verification: dict[str, Any] | None = None


class FailureCause(StrEnum):
    """Whose fault a worker's failure is (``worker_failed.cause``, ``worker_retried.cause``):
    the task's own (session error, timeout, failed check), retried under
    ``workers.max_retries``, or the infrastructure's (its instance died, restarted or was
    drained), retried within ``workers.infra_retry_window_s``."""

    TASK = "task"
    INFRA = "infra"


class WorkerFailed(WorkerEvent):
    type: Literal["worker_failed"] = "worker_failed"
    error: str
    reason: str = ""
    duration_ms: int | None = None
    cause: FailureCause = FailureCause.TASK


class WorkerBlocked(WorkerEvent):
    type: Literal["worker_blocked"] = "worker_blocked"
    reason: str = ""
    kind: Literal["permission", "question", "mail", "other"] = "other"
    request_id: str | None = None
    instance: str = ""


class WorkerRetried(WorkerEvent):
    type: Literal["worker_retried"] = "worker_retried"
    reason: str = ""
    cause: FailureCause = FailureCause.TASK


class WorkerQueued(WorkerEvent):
    """A spawn (or a retry) that waits for a free instance; the engine dispatches it."""

    type: Literal["worker_queued"] = "worker_queued"
    title: str = ""
    worktree: str = ""
    files: list[str] = Field(default_factory=list)
    prompt_hash: str = ""
    routing: str = "least_busy"
    reason: str = ""
    # The prompt's spec (JSON), for an engine on another host, which has no copy of the
    # spawner's .swarm/prompts/ ("" on a retry: the attempt's first queue event has it).
    spec: str = ""


class WorkerClaimed(WorkerEvent):
    """A host's engine takes a queued attempt (several hosts on one store): only that
    host dispatches it; its worktree is the one on that host (``from_host``: the stale
    host it was taken over from)."""

    type: Literal["worker_claimed"] = "worker_claimed"
    host: str
    worktree: str = ""
    from_host: str = ""


class WorkerSessionCreated(WorkerEvent):
    """The intent recorded before ``prompt_async``: this attempt's session exists on
    ``instance`` and only it may be prompted for the attempt."""

    type: Literal["worker_session_created"] = "worker_session_created"
    instance: str = ""
    worktree: str = ""


class WorkerNeedsReview(WorkerEvent):
    """The session went idle without ``swarm_complete`` (confirmed, not one signal alone)."""

    type: Literal["worker_needs_review"] = "worker_needs_review"
    instance: str = ""
    reason: str = ""


class BranchPushed(BaseEvent):
    """A worker's finished branch reached the shared git remote (several hosts): review
    and merge may run on another host now."""

    type: Literal["branch_pushed"] = "branch_pushed"
    bead_id: str
    epic_id: str
    attempt: int = Field(1, ge=1)
    host: str
    remote: str
    branch: str
    commit: str


class HostInstance(BaseModel):
    """One instance as its host reports it in a heartbeat."""

    name: str
    state: str
    busy: int = 0


class HostBeat(BaseEvent):
    """A host's heartbeat (several hosts on one store): who it is, what it can take and
    how loaded it is. A host whose last beat is older than ``pool.hosts_stale_s`` is
    presumed dead, and its in-flight workers are failed and retried elsewhere."""

    type: Literal["host_beat"] = "host_beat"
    host: str
    pid: int
    capacity: int = Field(ge=0)
    in_flight: int = Field(0, ge=0)
    load: float = Field(0.0, ge=0)
    instances: list[HostInstance] = Field(default_factory=list)
