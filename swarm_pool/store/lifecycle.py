"""The worker lifecycle: one status vocabulary, one transition table, attempt fencing.

Room: store.

Owns ``WorkerStatus`` (the only spelling of a worker's status), the sets every caller
derives from it (live, in flight, terminal, mergeable), and ``decide``: given a worker's
projected row and a worker event, is the event applied (and to which status), stale
(from an older attempt or another session of this attempt: recorded, never applied), or
illegal (``IllegalTransitionError``: the append's whole transaction is refused). The
projection calls ``decide`` inside the append's transaction, and so does a rebuild,
which therefore reproduces exactly what the appends did. Pure functions of the row and
the event, with no SQL, so every recorder inherits them.

The table (event -> status it leads to, from which statuses):

- ``worker_queued``: none/completed/needs_review/failed -> pending (a new attempt),
  pending/dispatching -> pending (the same attempt queued again; from dispatching when
  its session was never prompted and is gone);
- ``worker_retried``: failed -> pending (the next attempt);
- ``worker_claimed``: pending -> pending (a host takes the attempt; several hosts);
- ``worker_session_created``: pending -> dispatching (the session exists, not prompted);
- ``worker_spawned``: pending/dispatching -> running (this attempt), and
  none/completed/needs_review/failed -> running for a spawn recorded without a queue
  (a new attempt); stale once the attempt's own session has reported;
- ``worker_progress``: dispatching/running/blocked/needs_review -> running;
- ``worker_blocked``: dispatching/running/blocked -> blocked;
- ``worker_completed``: dispatching/running/blocked/needs_review -> completed | failed |
  blocked;
- ``worker_needs_review``: running -> needs_review;
- ``worker_failed``: pending/dispatching/running/blocked -> failed;
- and on a bead with no worker, ``worker_progress``/``worker_blocked``/
  ``worker_completed`` start one (an agent run by hand, not by the pool, reports in).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from swarm_pool.errors import IllegalTransitionError


class WorkerStatus(StrEnum):
    PENDING = "pending"
    DISPATCHING = "dispatching"
    RUNNING = "running"
    BLOCKED = "blocked"
    COMPLETED = "completed"
    NEEDS_REVIEW = "needs_review"
    FAILED = "failed"


S = WorkerStatus
# A worker in one of these owns its bead: a second spawn is refused.
LIVE = frozenset({S.PENDING, S.DISPATCHING, S.RUNNING, S.BLOCKED})
# ... in these it holds (or is creating) a session on an instance.
IN_FLIGHT = frozenset({S.DISPATCHING, S.RUNNING, S.BLOCKED})
# ... in these its session is prompted and working (or waiting for a human).
ACTIVE = frozenset({S.RUNNING, S.BLOCKED})
# Only a new attempt leaves these.
TERMINAL = frozenset({S.COMPLETED, S.NEEDS_REVIEW, S.FAILED})
# ... in these its session may still report progress or completion.
REPORTABLE = frozenset({S.DISPATCHING, S.RUNNING, S.BLOCKED, S.NEEDS_REVIEW})
# Work that review may look at and merge.
MERGEABLE = frozenset({S.COMPLETED, S.NEEDS_REVIEW})

# The events that act on a worker's row (session_status/session_error only annotate it).
WORKER_EVENTS = frozenset(
    {
        "worker_queued",
        "worker_retried",
        "worker_session_created",
        "worker_claimed",
        "worker_spawned",
        "worker_progress",
        "worker_blocked",
        "worker_completed",
        "worker_needs_review",
        "worker_failed",
    }
)

_NEW_ATTEMPT_FROM = frozenset({None, *TERMINAL})
# event type -> statuses it may act on within the worker's current attempt.
_SAME_ATTEMPT_FROM: dict[str, frozenset[WorkerStatus | None]] = {
    "worker_queued": frozenset({S.PENDING, S.DISPATCHING}),
    "worker_session_created": frozenset({S.PENDING}),
    "worker_claimed": frozenset({S.PENDING}),
    "worker_spawned": frozenset({S.PENDING, S.DISPATCHING}),
    "worker_progress": frozenset({S.DISPATCHING, S.RUNNING, S.BLOCKED, S.NEEDS_REVIEW}),
    "worker_blocked": frozenset({S.DISPATCHING, S.RUNNING, S.BLOCKED}),
    "worker_completed": frozenset({S.DISPATCHING, S.RUNNING, S.BLOCKED, S.NEEDS_REVIEW}),
    "worker_needs_review": frozenset({S.RUNNING}),
    "worker_failed": frozenset({S.PENDING, S.DISPATCHING, S.RUNNING, S.BLOCKED}),
}
# event type -> statuses from which it starts the next attempt (its attempt = current + 1).
_NEXT_ATTEMPT_FROM: dict[str, frozenset[WorkerStatus | None]] = {
    "worker_queued": _NEW_ATTEMPT_FROM,
    "worker_retried": frozenset({S.FAILED}),
    "worker_spawned": _NEW_ATTEMPT_FROM,
    # An agent started by hand (not by the pool) reports on a bead with no worker yet.
    "worker_progress": frozenset({None}),
    "worker_blocked": frozenset({None}),
    "worker_completed": frozenset({None}),
}
_COMPLETED_TO = {"success": S.COMPLETED, "failed": S.FAILED, "blocked": S.BLOCKED}
_TARGET = {
    "worker_queued": S.PENDING,
    "worker_retried": S.PENDING,
    "worker_session_created": S.DISPATCHING,
    "worker_claimed": S.PENDING,
    "worker_spawned": S.RUNNING,
    "worker_progress": S.RUNNING,
    "worker_blocked": S.BLOCKED,
    "worker_needs_review": S.NEEDS_REVIEW,
    "worker_failed": S.FAILED,
}


def target(event: Any) -> WorkerStatus:
    """The status a worker event leads to when it is applied."""
    if event.type == "worker_completed":
        return _COMPLETED_TO[event.status]
    return _TARGET[event.type]


def allowed(event_type: str, current: WorkerStatus | None, *, next_attempt: bool) -> bool:
    """Whether the table lets ``event_type`` act on a worker in ``current``."""
    table = _NEXT_ATTEMPT_FROM if next_attempt else _SAME_ATTEMPT_FROM
    return current in table.get(event_type, frozenset())


@dataclass(frozen=True)
class Decision:
    """``apply``: the event moves the worker to ``status``; ``stale``: it is recorded but
    acts on nothing."""

    stale: bool
    status: WorkerStatus | None = None
    reason: str = ""


def decide(row: dict[str, Any] | None, event: Any) -> Decision:
    """Judge a worker event against the worker's row (None: no worker yet).

    Raises IllegalTransitionError when the table forbids it. A stale event (an older
    attempt, or another session than the attempt's own) is never an error: news from
    the past arrives late by nature, and its only effect is to be kept in the log.
    """
    bead = event.bead_id
    if row is None:
        if not allowed(event.type, None, next_attempt=True):
            raise IllegalTransitionError(
                f"{event.type} for bead {bead}, which has no worker yet",
                bead_id=bead,
                current=None,
                event_type=event.type,
            )
        return Decision(False, target(event))
    current = WorkerStatus(row["status"])
    attempt = int(row["attempt"])
    if event.attempt < attempt:
        return Decision(True, reason=f"attempt {event.attempt} < current {attempt}")
    if event.attempt > attempt + 1 or (
        event.attempt == attempt + 1 and event.type not in _NEXT_ATTEMPT_FROM
    ):
        raise IllegalTransitionError(
            f"{event.type} of attempt {event.attempt} for bead {bead}, whose current "
            f"attempt is {attempt}",
            bead_id=bead,
            current=current,
            event_type=event.type,
        )
    next_attempt = event.attempt == attempt + 1
    session = row["session_id"]
    if (
        not next_attempt
        and event.type not in ("worker_session_created", "worker_spawned", "worker_queued")
        and event.session_id is not None
        and session is not None
        and event.session_id != session
    ):
        return Decision(True, reason=f"session {event.session_id} is not the attempt's {session}")
    if not next_attempt and event.type == "worker_spawned" and session is not None:
        if current == S.DISPATCHING and event.session_id != session:
            # The attempt's session was recorded before its prompt: no other may start it.
            return Decision(
                True, reason=f"session {event.session_id} is not the attempt's {session}"
            )
        if current not in (S.PENDING, S.DISPATCHING) and event.session_id == session:
            # The session reported (progress, completion) before its spawn was recorded.
            return Decision(True, reason=f"session {session} already reported ({current})")
    if not allowed(event.type, current, next_attempt=next_attempt):
        raise IllegalTransitionError(
            f"{event.type} cannot move bead {bead} from {current} to {target(event)}"
            f" (attempt {event.attempt})",
            bead_id=bead,
            current=current,
            event_type=event.type,
        )
    return Decision(False, target(event))
