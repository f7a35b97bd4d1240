"""Bus events -> store events: the pure mapping of one instance's OpenCode events.

Room: swarm (the engine loop). ``EventMapper`` maps one instance's bus events
(``session.status`` busy/idle/retry, ``session.idle``, ``session.error``,
``permission.asked``, ``question.asked`` and their replies) to our store events
(``session_status``, ``session_error``, ``worker_blocked``, and a ``worker_progress`` that
marks a blocked worker running again); it drops sessions that are not workers and
repeated statuses, and turns a ``GET /session/status`` answer into the same events (the
polling fallback). ``WorkerRef`` is what it knows of the worker behind a session, found
through a ``WorkerLookup``; ``StoreLookup`` is the one over the store's workers
projection. The thread that feeds it is in ``watch.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from swarm_pool.opencode.client import unwrap_event as unwrap
from swarm_pool.store.events import (
    BaseEvent,
    SessionError,
    SessionStatus,
    WorkerBlocked,
    WorkerProgress,
)
from swarm_pool.store.lifecycle import IN_FLIGHT, WorkerStatus

__all__ = [
    "EventMapper",
    "StoreLookup",
    "WorkerLookup",
    "WorkerRef",
    "permission_reason",
    "question_reason",
    "unwrap",
]


@dataclass(frozen=True)
class WorkerRef:
    """What the mapper needs to know about the worker behind a session."""

    bead_id: str
    epic_id: str
    session_id: str
    attempt: int
    status: str
    instance: str = ""
    progress_percent: int = 0
    worktree: str = ""


class WorkerLookup(Protocol):
    def by_session(self, session_id: str, *, fresh: bool = False) -> WorkerRef | None: ...

    def live_on(self, instance: str) -> list[WorkerRef]: ...


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        name = str(error.get("name") or "error")
        data = error.get("data")
        message = data.get("message") if isinstance(data, dict) else None
        return f"{name}: {message}" if message else name
    return str(error) if error else "session error"


def permission_reason(props: Mapping[str, Any]) -> str:
    what = props.get("permission") or props.get("action") or "tool"
    patterns = props.get("patterns") or props.get("resources") or []
    shown = ", ".join(str(p) for p in patterns[:5]) if isinstance(patterns, list) else ""
    return f"permission asked: {what}" + (f" ({shown})" if shown else "")


def question_reason(props: Mapping[str, Any]) -> str:
    questions = props.get("questions")
    if isinstance(questions, list) and questions and isinstance(questions[0], dict):
        return f"question asked: {questions[0].get('question') or questions[0].get('header')}"
    return "question asked"


# The quoted type prefixes of every event ``EventMapper.map`` handles.
_MAPPED_PREFIXES = ('"session.', '"permission.', '"question.')


def may_map(data: str) -> bool:
    """Whether a raw SSE message could be one the mapper handles: most of a stream is
    message parts, which need neither parsing nor a place in the watcher's queue."""
    return any(prefix in data for prefix in _MAPPED_PREFIXES)


_PERMISSION_ASKED = {"permission.asked", "permission.v2.asked"}
_QUESTION_ASKED = {"question.asked", "question.v2.asked"}
_REPLIED = {
    "permission.replied": "permission",
    "permission.v2.replied": "permission",
    "question.replied": "question",
    "question.v2.replied": "question",
    "question.rejected": "question",
    "question.v2.rejected": "question",
}


class EventMapper:
    """Maps one instance's bus events to store events; remembers statuses to dedupe."""

    def __init__(self, instance: str, lookup: WorkerLookup) -> None:
        self.instance = instance
        self.lookup = lookup
        self._status: dict[str, str] = {}

    def last_status(self, session_id: str) -> str | None:
        return self._status.get(session_id)

    def map(self, raw: Any) -> list[BaseEvent]:
        parsed = unwrap(raw)
        if parsed is None:
            return []
        kind, props = parsed
        session_id = props.get("sessionID")
        if not isinstance(session_id, str):
            return []
        if kind == "session.status":
            status = props.get("status")
            state = status.get("type") if isinstance(status, dict) else None
            return self._status_change(session_id, state) if isinstance(state, str) else []
        if kind == "session.idle":
            return self._status_change(session_id, "idle")
        if kind == "session.error":
            return self._session_error(session_id, _error_text(props.get("error")))
        if kind in _PERMISSION_ASKED:
            return self.blocked(session_id, "permission", props, permission_reason(props))
        if kind in _QUESTION_ASKED:
            return self.blocked(session_id, "question", props, question_reason(props))
        if kind in _REPLIED:
            return self._resumed(session_id, _REPLIED[kind], props)
        return []

    def snapshot(self, statuses: Mapping[str, Any], sessions: Iterable[str]) -> list[BaseEvent]:
        """Events implied by a ``GET /session/status`` answer (the polling fallback).

        A session absent from the answer is idle, but only if we saw it running before:
        right after ``prompt_async`` a session is briefly absent although it will run.
        """
        out: list[BaseEvent] = []
        for session_id in sessions:
            entry = statuses.get(session_id)
            if isinstance(entry, dict) and isinstance(entry.get("type"), str):
                out.extend(self._status_change(session_id, entry["type"]))
            elif self._status.get(session_id) in ("busy", "retry"):
                out.extend(self._status_change(session_id, "idle"))
        return out

    # --- one case each -------------------------------------------------------------

    def _worker(self, session_id: str, *, fresh: bool = False) -> WorkerRef | None:
        return self.lookup.by_session(session_id, fresh=fresh)

    def _about(self, ref: WorkerRef) -> dict[str, str]:
        """The fields every event about a worker's session carries: whose session, on
        which instance."""
        return {
            "session_id": ref.session_id,
            "instance": self.instance,
            "bead_id": ref.bead_id,
            "epic_id": ref.epic_id,
        }

    def _status_change(self, session_id: str, state: str) -> list[BaseEvent]:
        if self._status.get(session_id) == state:
            return []
        ref = self._worker(session_id)
        if ref is None:
            return []
        self._status[session_id] = state
        return [SessionStatus(status=state, **self._about(ref))]

    def _session_error(self, session_id: str, error: str) -> list[BaseEvent]:
        # Read fresh: deleting a finished worker's session aborts it, and that error
        # must not be pinned on work that already completed.
        ref = self._worker(session_id, fresh=True)
        if ref is None or ref.status not in IN_FLIGHT:
            return []
        return [SessionError(error=error, **self._about(ref))]

    def blocked(
        self, session_id: str, kind: str, props: Mapping[str, Any], reason: str
    ) -> list[BaseEvent]:
        ref = self._worker(session_id)
        if ref is None:
            return []
        request_id = props.get("id")
        return [
            WorkerBlocked(
                attempt=ref.attempt,
                reason=reason,
                kind="permission" if kind == "permission" else "question",
                request_id=request_id if isinstance(request_id, str) else None,
                **self._about(ref),
            )
        ]

    def _resumed(self, session_id: str, kind: str, props: Mapping[str, Any]) -> list[BaseEvent]:
        # The projection only knows "blocked -> running" through a progress event.
        ref = self._worker(session_id, fresh=True)
        if ref is None or ref.status != WorkerStatus.BLOCKED:
            return []
        reply = props.get("reply")
        how = f" ({reply})" if isinstance(reply, str) else ""
        about = self._about(ref)
        del about["instance"]  # a progress event names no instance
        return [
            WorkerProgress(
                attempt=ref.attempt,
                progress_percent=ref.progress_percent,
                message=f"resumed after {kind} reply{how}",
                **about,
            )
        ]


class StoreLookup:
    """Session -> worker, from the store's workers projection, cached.

    The cache is refreshed when an unknown session shows up (a worker spawned after the
    last refresh), at most every ``min_refresh_s``, so foreign sessions cost little.
    """

    def __init__(self, store: Any, *, min_refresh_s: float = 0.2) -> None:
        self._store = store
        self._min_refresh_s = min_refresh_s
        self._by_session: dict[str, WorkerRef] = {}
        self._refreshed = 0.0

    def refresh(self) -> None:
        refs: dict[str, WorkerRef] = {}
        for w in self._store.workers.list():
            if not w.session_id:
                continue
            refs[w.session_id] = WorkerRef(
                bead_id=w.bead_id,
                epic_id=w.epic_id,
                session_id=w.session_id,
                attempt=w.attempt,
                status=w.status,
                instance=w.instance or "",
                progress_percent=w.progress_percent or 0,
                worktree=w.worktree or "",
            )
        self._by_session = refs
        self._refreshed = time.monotonic()

    def by_session(self, session_id: str, *, fresh: bool = False) -> WorkerRef | None:
        ref = self._by_session.get(session_id)
        stale = time.monotonic() - self._refreshed >= self._min_refresh_s
        if fresh or (ref is None and stale):
            self.refresh()
            ref = self._by_session.get(session_id)
        return ref

    def live_on(self, instance: str) -> list[WorkerRef]:
        self.refresh()
        return [
            r for r in self._by_session.values() if r.instance == instance and r.status in IN_FLIGHT
        ]
