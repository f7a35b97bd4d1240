"""Watching instances: OpenCode bus events -> store events, for worker sessions only.

It owns three layers. ``EventMapper`` is the pure mapping from one instance's bus events
(``session.status`` busy/idle/retry, ``session.idle``, ``session.error``,
``permission.asked``, ``question.asked`` and their replies) to our store events
(``session_status``, ``session_error``, ``worker_blocked``, and a ``worker_progress`` that
marks a blocked worker running again); it drops sessions that are not workers and
repeated statuses. ``InstanceWatcher`` is one thread per instance that keeps an SSE
stream open on ``/global/event``, reconnects with capped backoff after a drop, and polls
``GET /session/status`` while the stream is down so nothing is missed. ``WatchManager``
keeps one watcher per instance in step with the pool. ``idle_outcome`` is the second
opinion the engine asks before it believes an idle signal: the server no longer lists
the session as running and its last assistant message is complete.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from swarm_pool import faults
from swarm_pool.errors import OpenCodeStatusError, SwarmPoolError, WorkerStateError
from swarm_pool.opencode.client import OpenCodeClient
from swarm_pool.opencode.client import unwrap_event as unwrap
from swarm_pool.pool.router import InstanceView
from swarm_pool.store.events import (
    BaseEvent,
    SessionError,
    SessionStatus,
    WorkerBlocked,
    WorkerProgress,
)
from swarm_pool.store.lifecycle import IN_FLIGHT, WorkerStatus
from swarm_pool.swarm.context import default_client

log = logging.getLogger(__name__)

# Worker states in which its session exists on its instance (maybe not yet prompted).
LIVE_STATUSES = IN_FLIGHT


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


def _permission_reason(props: Mapping[str, Any]) -> str:
    what = props.get("permission") or props.get("action") or "tool"
    patterns = props.get("patterns") or props.get("resources") or []
    shown = ", ".join(str(p) for p in patterns[:5]) if isinstance(patterns, list) else ""
    return f"permission asked: {what}" + (f" ({shown})" if shown else "")


def _question_reason(props: Mapping[str, Any]) -> str:
    questions = props.get("questions")
    if isinstance(questions, list) and questions and isinstance(questions[0], dict):
        return f"question asked: {questions[0].get('question') or questions[0].get('header')}"
    return "question asked"


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
            return self.blocked(session_id, "permission", props, _permission_reason(props))
        if kind in _QUESTION_ASKED:
            return self.blocked(session_id, "question", props, _question_reason(props))
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

    def _status_change(self, session_id: str, state: str) -> list[BaseEvent]:
        if self._status.get(session_id) == state:
            return []
        ref = self._worker(session_id)
        if ref is None:
            return []
        self._status[session_id] = state
        return [
            SessionStatus(
                session_id=session_id,
                instance=self.instance,
                status=state,
                bead_id=ref.bead_id,
                epic_id=ref.epic_id,
            )
        ]

    def _session_error(self, session_id: str, error: str) -> list[BaseEvent]:
        # Read fresh: deleting a finished worker's session aborts it, and that error
        # must not be pinned on work that already completed.
        ref = self._worker(session_id, fresh=True)
        if ref is None or ref.status not in LIVE_STATUSES:
            return []
        return [
            SessionError(
                session_id=session_id,
                instance=self.instance,
                error=error,
                bead_id=ref.bead_id,
                epic_id=ref.epic_id,
            )
        ]

    def blocked(
        self, session_id: str, kind: str, props: Mapping[str, Any], reason: str
    ) -> list[BaseEvent]:
        ref = self._worker(session_id)
        if ref is None:
            return []
        request_id = props.get("id")
        return [
            WorkerBlocked(
                bead_id=ref.bead_id,
                epic_id=ref.epic_id,
                session_id=session_id,
                attempt=ref.attempt,
                reason=reason,
                kind="permission" if kind == "permission" else "question",
                request_id=request_id if isinstance(request_id, str) else None,
                instance=self.instance,
            )
        ]

    def _resumed(self, session_id: str, kind: str, props: Mapping[str, Any]) -> list[BaseEvent]:
        # The projection only knows "blocked -> running" through a progress event.
        ref = self._worker(session_id, fresh=True)
        if ref is None or ref.status != WorkerStatus.BLOCKED:
            return []
        reply = props.get("reply")
        how = f" ({reply})" if isinstance(reply, str) else ""
        return [
            WorkerProgress(
                bead_id=ref.bead_id,
                epic_id=ref.epic_id,
                session_id=session_id,
                attempt=ref.attempt,
                progress_percent=ref.progress_percent,
                message=f"resumed after {kind} reply{how}",
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
            r
            for r in self._by_session.values()
            if r.instance == instance and r.status in LIVE_STATUSES
        ]


def idle_outcome(client: OpenCodeClient, session_id: str, directory: str | None) -> str | None:
    """The server's own account of a session: None while it is not finished (listed as
    running, or no complete assistant answer yet), else the error its last answer ended
    with ("" if none: a session that stopped on a model error is idle like a finished
    one).

    A session is absent from ``/session/status`` both before its prompt starts and after
    it ends, so absence alone proves nothing; a completed last assistant message does.
    The status comes first: it is the cheap answer for a running session, which is what
    a periodic re-check mostly finds (every request costs OpenCode about 20 ms of CPU).
    """
    if session_id in client.session_status(directory=directory):
        return None
    messages = client.messages(session_id, directory=directory)
    info = messages[-1].get("info") if messages and isinstance(messages[-1], dict) else None
    if not isinstance(info, dict) or info.get("role") != "assistant":
        return None
    times = info.get("time")
    if not (isinstance(times, dict) and times.get("completed")):
        return None
    error = info.get("error")
    if not isinstance(error, dict):
        return ""
    data = error.get("data")
    detail = data.get("message") if isinstance(data, dict) else None
    return f"{error.get('name', 'error')}: {detail}" if detail else str(error.get("name", "error"))


def session_finished(client: OpenCodeClient, session_id: str, directory: str | None) -> bool:
    """True when the server agrees the session is done: not running, last answer complete."""
    return idle_outcome(client, session_id, directory) is not None


def record_watched(store: Any, events: list[BaseEvent]) -> None:
    """Record what a watcher saw. Session events go in as they are; a worker event only
    if its attempt's session is still the worker's and the change still applies, decided
    on a fresh read and appended conditionally on it (a repeat of the request the worker
    is already blocked on is dropped: the catch-up and the stream may both report it)."""
    plain = [e for e in events if not isinstance(e, WorkerBlocked | WorkerProgress)]
    if plain:
        store.append_many(plain)
    for event in events:
        if isinstance(event, WorkerBlocked | WorkerProgress):
            try:
                store.change_worker(event.bead_id, lambda w, e=event: _still_applies(store, w, e))
            except WorkerStateError as err:
                log.debug("watch: dropped %s for %s: %s", event.type, event.bead_id, err)


def _still_applies(store: Any, worker: Any, event: Any) -> list[BaseEvent] | None:
    if worker is None or worker.attempt != event.attempt:
        return None
    if worker.session_id != event.session_id:
        return None
    if isinstance(event, WorkerProgress):
        return [event] if worker.status == WorkerStatus.BLOCKED else None
    if worker.status not in IN_FLIGHT:
        return None
    if worker.status == WorkerStatus.BLOCKED and event.request_id:
        last = store.read(
            types=["worker_blocked"], bead_id=worker.bead_id, descending=True, limit=1
        )
        if last and getattr(last[0].event, "request_id", None) == event.request_id:
            return None
    return [event]


Sink = Callable[[list[BaseEvent]], None]
ClientFactory = Callable[[InstanceView], OpenCodeClient]


class InstanceWatcher:
    """One thread: SSE stream of one instance -> store, with reconnect and poll fallback."""

    def __init__(
        self,
        slot: InstanceView,
        *,
        make_lookup: Callable[[], tuple[WorkerLookup, Sink, Callable[[], None]]],
        client_factory: ClientFactory = default_client,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        read_timeout_s: float = 25.0,
        on_disconnect: Callable[[str], None] | None = None,
    ) -> None:
        self.slot = slot
        self._make_lookup = make_lookup
        self._client_factory = client_factory
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._read_timeout_s = read_timeout_s
        self._on_disconnect = on_disconnect
        self._stop = threading.Event()
        self._client: OpenCodeClient | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{slot.name}", daemon=True)
        self.connected = threading.Event()
        self.connects = 0
        self.polls = 0

    def start(self) -> InstanceWatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            # Closing the client breaks a blocked stream read in most cases; the read
            # timeout bounds the rest, and the thread is a daemon either way.
            with contextlib.suppress(Exception):
                client.close()
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        lookup, sink, close = self._make_lookup()
        mapper = EventMapper(self.slot.name, lookup)
        backoff = self._backoff_initial_s
        try:
            while not self._stop.is_set():
                client = self._client_factory(self.slot)
                self._client = client
                try:
                    for raw in client.events(read_timeout=self._read_timeout_s):
                        if self._stop.is_set():
                            break
                        if not self.connected.is_set():
                            # Subscribed (the first event is server.connected): now catch
                            # up on what happened while we were not listening.
                            faults.point("watch.before_catch_up")
                            self._catch_up(client, mapper, lookup, sink)
                            self.connected.set()
                            self.connects += 1
                            backoff = self._backoff_initial_s
                        events = mapper.map(raw)
                        if events:
                            sink(events)
                except (SwarmPoolError, OSError) as e:
                    log.debug("watch %s: stream down: %s", self.slot.name, e)
                except Exception:  # a bug must not kill the watcher for good
                    log.exception("watch %s: unexpected error", self.slot.name)
                finally:
                    self.connected.clear()
                    with contextlib.suppress(Exception):
                        client.close()
                if self._stop.is_set():
                    break
                if self._on_disconnect is not None:
                    with contextlib.suppress(Exception):
                        self._on_disconnect(self.slot.name)
                backoff = self._down(mapper, lookup, sink, backoff)
        finally:
            with contextlib.suppress(Exception):
                close()

    def _down(self, mapper: EventMapper, lookup: WorkerLookup, sink: Sink, backoff: float) -> float:
        """Wait ``backoff`` before reconnecting, polling the status meanwhile."""
        deadline = time.monotonic() + backoff
        client = self._client_factory(self.slot)
        try:
            while not self._stop.is_set():
                with contextlib.suppress(SwarmPoolError, OSError):
                    self._poll(client, mapper, lookup, sink)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._stop.wait(min(remaining, 1.0))
        finally:
            client.close()
        return min(backoff * 2, self._backoff_max_s)

    def _poll(
        self, client: OpenCodeClient, mapper: EventMapper, lookup: WorkerLookup, sink: Sink
    ) -> None:
        live = [ref.session_id for ref in lookup.live_on(self.slot.name)]
        if not live:
            return
        self.polls += 1
        events = mapper.snapshot(client.session_status(), live)
        if events:
            sink(events)

    def _catch_up(
        self, client: OpenCodeClient, mapper: EventMapper, lookup: WorkerLookup, sink: Sink
    ) -> None:
        """What happened while nobody listened, asked once the stream is subscribed (so
        nothing falls between the two): session status, then each live worktree's
        pending permission and question requests (the sink drops repeats by request id)."""
        self._poll(client, mapper, lookup, sink)
        events: list[BaseEvent] = []
        for ref in lookup.live_on(self.slot.name):
            directory = ref.worktree or None
            for kind, listing, describe in (
                ("permission", client.permissions, _permission_reason),
                ("question", client.questions, _question_reason),
            ):
                try:
                    pending = listing(directory=directory)
                except OpenCodeStatusError as e:  # answered, without a list: nothing to add
                    log.debug("watch %s: no %s list: %s", self.slot.name, kind, e)
                    continue
                for request in pending:
                    if request.get("sessionID") == ref.session_id:
                        events += mapper.blocked(ref.session_id, kind, request, describe(request))
        if events:
            sink(events)


class WatchManager:
    """Keeps exactly one watcher per instance of the pool, restarting dead ones."""

    def __init__(self, factory: Callable[[InstanceView], InstanceWatcher]) -> None:
        self._factory = factory
        self._watchers: dict[str, InstanceWatcher] = {}

    @property
    def watchers(self) -> dict[str, InstanceWatcher]:
        return dict(self._watchers)

    def sync(self, slots: Iterable[InstanceView]) -> None:
        wanted = {s.name: s for s in slots if s.url}
        for name in list(self._watchers):
            w = self._watchers[name]
            slot = wanted.get(name)
            if slot is None or slot.url != w.slot.url or slot.password != w.slot.password:
                w.stop(timeout=0.5)
                del self._watchers[name]
            elif not w.is_alive():
                del self._watchers[name]
        for name, slot in wanted.items():
            if name not in self._watchers:
                self._watchers[name] = self._factory(slot).start()

    def stop(self) -> None:
        for w in self._watchers.values():
            w.stop(timeout=0.5)
        self._watchers.clear()
