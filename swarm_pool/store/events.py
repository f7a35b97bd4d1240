"""The store's vocabulary: one pydantic model per event type, discriminated by ``type``.

Every event carries ``timestamp`` (ms since the epoch, set at creation). The four worker
events keep the fields of the upstream ADR (``session_id``, ``bead_id``, ``epic_id``,
``files``, ``prompt_hash``, ``progress_percent``, ``summary``, ``files_touched``,
``duration_ms``, ``error``). Adding a type: add a class here and put it in ``Event``.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from swarm_pool.errors import EventValidationError


def now_ms() -> int:
    return int(time.time() * 1000)


class BaseEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timestamp: int = Field(default_factory=now_ms, ge=0)


# --- pool -----------------------------------------------------------------------------


class PoolStarted(BaseEvent):
    type: Literal["pool_started"] = "pool_started"
    supervisor_pid: int
    size: int


class PoolStopped(BaseEvent):
    type: Literal["pool_stopped"] = "pool_stopped"
    supervisor_pid: int
    reason: str = ""


class _InstanceEvent(BaseEvent):
    instance: str
    pid: int | None = None
    port: int | None = None


class InstanceStarted(_InstanceEvent):
    type: Literal["instance_started"] = "instance_started"


class InstanceReady(_InstanceEvent):
    type: Literal["instance_ready"] = "instance_ready"
    startup_ms: int | None = None


class InstanceUnhealthy(_InstanceEvent):
    type: Literal["instance_unhealthy"] = "instance_unhealthy"
    reason: str = ""


class InstanceExited(_InstanceEvent):
    type: Literal["instance_exited"] = "instance_exited"
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""


class RestartCause(StrEnum):
    """Why the supervisor restarted an instance (``instance_restarted.cause``)."""

    EXITED = "exited"  # the process died
    UNHEALTHY = "unhealthy"  # no answer and no event for the no-progress window
    MEMORY = "memory"  # over supervisor.max_rss_mb
    START_TIMEOUT = "start_timeout"  # never became ready
    ERROR = "error"  # the supervisor could not check or launch it
    MANUAL = "manual"  # `swarm-pool restart`


class InstanceRestarted(_InstanceEvent):
    type: Literal["instance_restarted"] = "instance_restarted"
    restarts: int = 0
    reason: str = ""
    cause: RestartCause | None = None
    backoff_s: float = 0.0


class InstanceFatal(_InstanceEvent):
    type: Literal["instance_fatal"] = "instance_fatal"
    reason: str = ""


class InstanceStopped(_InstanceEvent):
    type: Literal["instance_stopped"] = "instance_stopped"


class InstanceStats(_InstanceEvent):
    """A resource sample of an instance's process tree, kept for ``metrics`` (peak RSS,
    mean CPU across restarts)."""

    type: Literal["instance_stats"] = "instance_stats"
    rss_mb: float = Field(ge=0)
    cpu_percent: float | None = Field(None, ge=0)


# --- hive -----------------------------------------------------------------------------

CellStatus = Literal["open", "in_progress", "blocked", "closed"]


class SubtaskSpec(BaseModel):
    """A subtask as given to ``create_epic``; ``depends_on`` holds cell ids or indexes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = Field(min_length=1)
    description: str = ""
    files: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)
    script: list[dict[str, Any]] | None = None


class EpicCreated(BaseEvent):
    type: Literal["epic_created"] = "epic_created"
    epic_id: str
    title: str
    description: str = ""


class CellCreated(BaseEvent):
    type: Literal["cell_created"] = "cell_created"
    cell_id: str
    epic_id: str
    title: str
    description: str = ""
    files: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)
    script: list[dict[str, Any]] | None = None


class CellStatusChanged(BaseEvent):
    type: Literal["cell_status_changed"] = "cell_status_changed"
    cell_id: str
    epic_id: str
    status: CellStatus
    reason: str = ""


# --- workers --------------------------------------------------------------------------


class _WorkerEvent(BaseEvent):
    bead_id: str
    epic_id: str
    session_id: str | None = None
    attempt: int = Field(1, ge=1)


class WorkerSpawned(_WorkerEvent):
    type: Literal["worker_spawned"] = "worker_spawned"
    agent_name: str = ""
    instance: str = ""
    worktree: str = ""
    files: list[str] = Field(default_factory=list)
    prompt_hash: str = ""


class WorkerProgress(_WorkerEvent):
    type: Literal["worker_progress"] = "worker_progress"
    progress_percent: int = Field(ge=0, le=100)
    message: str = ""
    files_touched: list[str] = Field(default_factory=list)


class WorkerCompleted(_WorkerEvent):
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


class WorkerFailed(_WorkerEvent):
    type: Literal["worker_failed"] = "worker_failed"
    error: str
    reason: str = ""
    duration_ms: int | None = None
    cause: FailureCause = FailureCause.TASK


class WorkerBlocked(_WorkerEvent):
    type: Literal["worker_blocked"] = "worker_blocked"
    reason: str = ""
    kind: Literal["permission", "question", "mail", "other"] = "other"
    request_id: str | None = None
    instance: str = ""


class WorkerRetried(_WorkerEvent):
    type: Literal["worker_retried"] = "worker_retried"
    reason: str = ""
    cause: FailureCause = FailureCause.TASK


class WorkerQueued(_WorkerEvent):
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


class WorkerClaimed(_WorkerEvent):
    """A host's engine takes a queued attempt (several hosts on one store): only that
    host dispatches it; its worktree is the one on that host (``from_host``: the stale
    host it was taken over from)."""

    type: Literal["worker_claimed"] = "worker_claimed"
    host: str
    worktree: str = ""
    from_host: str = ""


class WorkerSessionCreated(_WorkerEvent):
    """The intent recorded before ``prompt_async``: this attempt's session exists on
    ``instance`` and only it may be prompted for the attempt."""

    type: Literal["worker_session_created"] = "worker_session_created"
    instance: str = ""
    worktree: str = ""


class WorkerNeedsReview(_WorkerEvent):
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


class SessionStatus(BaseEvent):
    """A raw session status change seen on an instance's event stream."""

    type: Literal["session_status"] = "session_status"
    session_id: str
    instance: str
    status: str
    bead_id: str | None = None
    epic_id: str | None = None


class SessionRouted(BaseEvent):
    """The gateway's session map: ``session_id`` lives on ``instance``. ``origin`` says
    whether the gateway placed it (``gateway``) or learned it from an instance's events or
    session list (``learned``)."""

    type: Literal["session_routed"] = "session_routed"
    session_id: str = Field(min_length=1)
    instance: str = Field(min_length=1)
    directory: str = ""
    origin: Literal["gateway", "learned"] = "learned"


class SessionError(BaseEvent):
    type: Literal["session_error"] = "session_error"
    session_id: str
    instance: str
    error: str
    bead_id: str | None = None
    epic_id: str | None = None


# --- files ----------------------------------------------------------------------------


class FileReserved(BaseEvent):
    type: Literal["file_reserved"] = "file_reserved"
    reservation_id: str
    holder: str
    pattern: str
    exclusive: bool = True
    expires_at: int
    reason: str = ""
    bead_id: str | None = None
    epic_id: str | None = None


class FileReleased(BaseEvent):
    type: Literal["file_released"] = "file_released"
    reservation_id: str
    holder: str
    pattern: str
    reason: str = ""


class FileRenewed(BaseEvent):
    type: Literal["file_renewed"] = "file_renewed"
    reservation_id: str
    holder: str
    expires_at: int


class FileConflict(BaseEvent):
    type: Literal["file_conflict"] = "file_conflict"
    holder: str
    requested: list[str]
    conflicts: list[dict[str, str]] = Field(
        default_factory=list, description="[{holder, pattern, requested}]"
    )
    bead_id: str | None = None
    epic_id: str | None = None


# --- mail -----------------------------------------------------------------------------


class MessageSent(BaseEvent):
    type: Literal["message_sent"] = "message_sent"
    message_id: str
    sender: str
    to: list[str] = Field(min_length=1)
    subject: str
    body: str = ""
    importance: Literal["low", "normal", "high", "urgent"] = "normal"
    thread_id: str | None = None
    ack_required: bool = False
    bead_id: str | None = None
    epic_id: str | None = None


class MessageRead(BaseEvent):
    type: Literal["message_read"] = "message_read"
    message_id: str
    agent: str


class MessageAcked(BaseEvent):
    type: Literal["message_acked"] = "message_acked"
    message_id: str
    agent: str


class AgentRegistered(BaseEvent):
    type: Literal["agent_registered"] = "agent_registered"
    agent: str
    bead_id: str | None = None
    epic_id: str | None = None
    worktree: str = ""
    pid: int | None = None


# --- review ---------------------------------------------------------------------------


class ReviewCompleted(BaseEvent):
    type: Literal["review_completed"] = "review_completed"
    bead_id: str
    epic_id: str
    approved: bool
    files_touched: list[str] = Field(default_factory=list)
    outside_owned: list[str] = Field(default_factory=list)
    diffstat: str = ""
    verification: dict[str, Any] | None = None
    notes: str = ""
    # What was reviewed: the branch's head commit and the tree of the worktree's whole
    # content (uncommitted work included). A merge needs an approving review of both.
    head_commit: str = ""
    tree: str = ""


class WorktreeMerged(BaseEvent):
    type: Literal["worktree_merged"] = "worktree_merged"
    bead_id: str
    epic_id: str
    branch: str
    base_branch: str
    commit: str


# --- worktree slots -------------------------------------------------------------------


class SlotState(StrEnum):
    """A worktree slot's state (the ``slots`` projection's ``state``)."""

    FREE = "free"  # its last bead is merged, failed for good or cleaned: reusable
    BUSY = "busy"  # a bead works in it (or finished, not merged yet)
    DIRTY = "dirty"  # uncommitted work of a finished bead: never reset, skipped
    # Being made and opened on its instance ahead of any bead (``[workers] min_slots``):
    # nobody takes it until it is released as free.
    OPENING = "opening"


class ReleaseReason(StrEnum):
    """Why a slot was given back (``slot_released.reason``)."""

    MERGED = "merged"
    FAILED = "failed"
    CLEANED = "cleaned"
    OPENED = "opened"  # a slot made ahead of any bead is ready (no bead)


class SlotOpened(BaseEvent):
    """A slot is made ahead of any bead (``[workers] min_slots``): it is ``opening``
    until its worktree exists and its instance has opened the directory, then released
    (``slot_released`` with no bead) as free."""

    type: Literal["slot_opened"] = "slot_opened"
    slot: str  # "<instance>/<n>"
    instance: str
    path: str


class SlotTaken(BaseEvent):
    """A bead takes a slot (a reusable worktree directory owned by an instance)."""

    type: Literal["slot_taken"] = "slot_taken"
    slot: str  # "<instance>/<n>"
    instance: str
    path: str
    bead_id: str
    attempt: int = 1


class SlotReleased(BaseEvent):
    type: Literal["slot_released"] = "slot_released"
    slot: str
    bead_id: str
    reason: str = ""  # a ReleaseReason


class SlotRemoved(BaseEvent):
    """A free slot's worktree was removed (more slots than the instance needs)."""

    type: Literal["slot_removed"] = "slot_removed"
    slot: str
    path: str
    reason: str = ""


class SlotDirty(BaseEvent):
    """A slot found holding uncommitted work when it was to be reset: left as it is."""

    type: Literal["slot_dirty"] = "slot_dirty"
    slot: str
    bead_id: str = ""  # the bead whose work it holds
    files: list[str] = Field(default_factory=list)


class MergeConflict(BaseEvent):
    type: Literal["merge_conflict"] = "merge_conflict"
    bead_id: str
    epic_id: str
    branch: str
    base_branch: str
    files: list[str] = Field(default_factory=list)


Event = Annotated[
    PoolStarted
    | PoolStopped
    | InstanceStarted
    | InstanceReady
    | InstanceUnhealthy
    | InstanceExited
    | InstanceRestarted
    | InstanceFatal
    | InstanceStopped
    | InstanceStats
    | EpicCreated
    | CellCreated
    | CellStatusChanged
    | WorkerSpawned
    | WorkerProgress
    | WorkerCompleted
    | WorkerFailed
    | WorkerBlocked
    | WorkerRetried
    | WorkerQueued
    | WorkerNeedsReview
    | WorkerSessionCreated
    | WorkerClaimed
    | HostBeat
    | BranchPushed
    | SessionStatus
    | SessionError
    | SessionRouted
    | FileReserved
    | FileReleased
    | FileRenewed
    | FileConflict
    | MessageSent
    | MessageRead
    | MessageAcked
    | AgentRegistered
    | ReviewCompleted
    | WorktreeMerged
    | MergeConflict
    | SlotOpened
    | SlotTaken
    | SlotReleased
    | SlotRemoved
    | SlotDirty,
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
EVENT_CLASSES: tuple[type[BaseEvent], ...] = get_args(get_args(Event)[0])
EVENT_TYPES: frozenset[str] = frozenset(c.model_fields["type"].default for c in EVENT_CLASSES)


def parse_event(data: dict[str, Any] | str | bytes) -> Event:
    """Validate raw data (a dict or JSON) into a typed event; EventValidationError if bad."""
    try:
        if isinstance(data, str | bytes):
            return _ADAPTER.validate_json(data)
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "event"
        raise EventValidationError(f"invalid event at {loc}: {first['msg']}") from e
