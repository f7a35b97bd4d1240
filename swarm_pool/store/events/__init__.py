"""The store's vocabulary: one pydantic model per event type, discriminated
by ``type``, grouped by domain in this package's modules (``pool``, ``hive``,
``workers``, ``sessions``, ``files``, ``mail``, ``review``, ``slots``, all on
``base.BaseEvent``), and the one union of them all, ``Event``, kept here with its
parser and the checks every append runs (``validate_event``: known type, well-formed
epic id).

Room: store.

Every event carries ``timestamp`` (ms since the epoch, set at creation). The four worker
events keep the fields of the upstream ADR (``session_id``, ``bead_id``, ``epic_id``,
``files``, ``prompt_hash``, ``progress_percent``, ``summary``, ``files_touched``,
``duration_ms``, ``error``). Adding a type: add a class to its domain's module and put it
in ``Event``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, get_args

from pydantic import Field, TypeAdapter, ValidationError

from swarm_pool.errors import EventValidationError
from swarm_pool.store.events.base import BaseEvent, now_ms
from swarm_pool.store.events.files import (
    FileConflict,
    FileReleased,
    FileRenewed,
    FileReserved,
)
from swarm_pool.store.events.hive import (
    BeadSpec,
    CellCreated,
    CellStatus,
    CellStatusChanged,
    EpicCreated,
)
from swarm_pool.store.events.mail import (
    AgentRegistered,
    MessageAcked,
    MessageRead,
    MessageSent,
)
from swarm_pool.store.events.pool import (
    InstanceEvent,
    InstanceExited,
    InstanceFatal,
    InstanceReady,
    InstanceRestarted,
    InstanceStarted,
    InstanceStats,
    InstanceStopped,
    InstanceUnhealthy,
    PoolStarted,
    PoolStopped,
    RestartCause,
)
from swarm_pool.store.events.review import (
    MergeConflict,
    ReviewCompleted,
    WorktreeMerged,
)
from swarm_pool.store.events.sessions import (
    SessionError,
    SessionRouted,
    SessionStatus,
)
from swarm_pool.store.events.slots import (
    ReleaseReason,
    SlotDirty,
    SlotOpened,
    SlotReleased,
    SlotRemoved,
    SlotState,
    SlotTaken,
)
from swarm_pool.store.events.workers import (
    BranchPushed,
    FailureCause,
    HostBeat,
    HostInstance,
    WorkerBlocked,
    WorkerClaimed,
    WorkerCompleted,
    WorkerEvent,
    WorkerFailed,
    WorkerNeedsReview,
    WorkerProgress,
    WorkerQueued,
    WorkerRetried,
    WorkerSessionCreated,
    WorkerSpawned,
)

__all__ = [
    "CELL_ID_RE",
    "EPIC_ID_RE",
    "EVENT_CLASSES",
    "EVENT_TYPES",
    "AgentRegistered",
    "BaseEvent",
    "BeadSpec",
    "BranchPushed",
    "CellCreated",
    "CellStatus",
    "CellStatusChanged",
    "EpicCreated",
    "Event",
    "FailureCause",
    "FileConflict",
    "FileReleased",
    "FileRenewed",
    "FileReserved",
    "HostBeat",
    "HostInstance",
    "InstanceEvent",
    "InstanceExited",
    "InstanceFatal",
    "InstanceReady",
    "InstanceRestarted",
    "InstanceStarted",
    "InstanceStats",
    "InstanceStopped",
    "InstanceUnhealthy",
    "MergeConflict",
    "MessageAcked",
    "MessageRead",
    "MessageSent",
    "PoolStarted",
    "PoolStopped",
    "ReleaseReason",
    "RestartCause",
    "ReviewCompleted",
    "SessionError",
    "SessionRouted",
    "SessionStatus",
    "SlotDirty",
    "SlotOpened",
    "SlotReleased",
    "SlotRemoved",
    "SlotState",
    "SlotTaken",
    "WorkerBlocked",
    "WorkerClaimed",
    "WorkerCompleted",
    "WorkerEvent",
    "WorkerFailed",
    "WorkerNeedsReview",
    "WorkerProgress",
    "WorkerQueued",
    "WorkerRetried",
    "WorkerSessionCreated",
    "WorkerSpawned",
    "WorktreeMerged",
    "now_ms",
    "parse_event",
    "validate_event",
]

EPIC_ID_RE = re.compile(r"^bd-[0-9a-z]{3,40}$")
CELL_ID_RE = re.compile(r"^bd-[0-9a-z]{3,40}(\.[0-9]+)+$")

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


def validate_event(event: BaseEvent | dict[str, Any]) -> Event:
    """Turn a dict or model into a checked event; EventValidationError if bad."""
    if isinstance(event, dict):
        etype = event.get("type")
        if etype is None:
            raise EventValidationError("invalid event: missing field 'type'")
        if etype not in EVENT_TYPES:
            raise EventValidationError(f"unknown event type {etype!r}")
        parsed = parse_event(event)
    elif isinstance(event, BaseEvent):
        etype = getattr(event, "type", None)
        if etype not in EVENT_TYPES:
            raise EventValidationError(f"unknown event type {etype!r}")
        parsed = event  # type: ignore[assignment]
    else:
        raise EventValidationError(f"an event must be a dict or an event model, not {event!r}")
    epic_id = getattr(parsed, "epic_id", None)
    if epic_id is not None and not EPIC_ID_RE.match(epic_id):
        raise EventValidationError(
            f"bad epic id {epic_id!r} in {parsed.type} event: epic ids look like bd-<hash>"
        )
    return parsed
