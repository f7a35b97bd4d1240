"""Watching instances: each instance's event stream -> the store, for worker sessions.

Room: swarm (the engine loop). ``InstanceWatcher`` is one thread per instance that
subscribes to the instance's one event stream reader (``pool/pulse.py``: in the daemon,
the pulse the supervisor's watcher publishes in ``Pulses``; with no supervisor in the
process, a pulse of its own over the same reader class), maps what it hears through an
``EventMapper`` (``mapper.py``) into the store, catches up on what happened while nobody
listened each time the stream opens (session status, pending permission and question
requests), and polls ``GET /session/status`` while the stream is down so nothing is
missed. ``WatchManager`` keeps one watcher per instance in step with the pool.
``record_watched`` writes what a watcher saw, conditionally on the worker still being
where the event says. ``idle_outcome`` is the second opinion the engine asks before it
believes an idle signal: the server no longer lists the session as running and its last
assistant message is complete.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from swarm_pool import faults
from swarm_pool.errors import OpenCodeStatusError, SwarmPoolError, WorkerStateError
from swarm_pool.opencode.client import OpenCodeClient
from swarm_pool.pool.pulse import Pulse, Pulses
from swarm_pool.pool.router import InstanceView
from swarm_pool.store.events import BaseEvent, WorkerBlocked, WorkerProgress
from swarm_pool.store.lifecycle import IN_FLIGHT, WorkerStatus
from swarm_pool.swarm.context import default_client
from swarm_pool.swarm.engine.mapper import (
    EventMapper,
    WorkerLookup,
    may_map,
    permission_reason,
    question_reason,
)

log = logging.getLogger(__name__)

# A stream that sends nothing for this long is dead (the server sends heartbeats).
READ_TIMEOUT_S = 25.0
# While the stream is down (or its catch-up failed), the status is polled this often.
DOWN_POLL_S = 1.0


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
        if (
            last
            and isinstance(last[0].event, WorkerBlocked)
            and (last[0].event.request_id == event.request_id)
        ):
            return None
    return [event]


Sink = Callable[[list[BaseEvent]], None]
ClientFactory = Callable[[InstanceView], OpenCodeClient]
MakeLookup = Callable[[], tuple[WorkerLookup, Sink, Callable[[], None]]]


class _Signal(enum.Enum):
    """What the stream reader tells the watcher's thread besides messages."""

    OPENED = "opened"
    CLOSED = "closed"
    STOP = "stop"


class InstanceWatcher:
    """One thread: one instance's stream -> store, with catch-up and a poll fallback.

    It subscribes to the instance's pulse (``streams``, by name) or, without one, runs a
    pulse of its own; the reader's calls only queue, so a slow store or catch-up never
    holds up the stream, and what arrives meanwhile waits in order."""

    def __init__(
        self,
        instance: InstanceView,
        *,
        make_lookup: MakeLookup,
        client_factory: ClientFactory = default_client,
        streams: Pulses | None = None,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        on_disconnect: Callable[[str], None] | None = None,
    ) -> None:
        self.instance = instance
        self._make_lookup = make_lookup
        self._client_factory = client_factory
        self._streams = streams
        self._backoff_s = (backoff_initial_s, backoff_max_s)
        self._on_disconnect = on_disconnect
        self._inbox: queue.SimpleQueue[str | _Signal] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._own: Pulse | None = None  # the pulse it runs when no process pulse exists
        self._stream_client: OpenCodeClient | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"watch-{instance.name}", daemon=True
        )
        self.connected = threading.Event()  # subscribed and caught up
        self.connects = 0
        self.polls = 0

    def start(self) -> InstanceWatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._inbox.put(_Signal.STOP)
        self._stop_own()
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # --- the reader's side (its thread: queue only) ---------------------------------

    def opened(self) -> None:
        self._inbox.put(_Signal.OPENED)

    def message(self, data: str) -> None:
        # The shared reader cannot be slowed by this queue, so keep only what may map.
        if may_map(data):
            self._inbox.put(data)

    def closed(self) -> None:
        self._inbox.put(_Signal.CLOSED)

    def _own_stream(self) -> Iterator[str]:
        client = self._client_factory(self.instance)
        self._stream_client = client
        try:
            yield from client.event_data(read_timeout=READ_TIMEOUT_S)
        finally:
            client.close()

    def _subscribe(self) -> None:
        if self._streams is not None:
            self._streams.subscribe(self.instance.name, self)
            return
        self._own = Pulse(self.instance.name, self._own_stream, backoff_s=self._backoff_s)
        self._own.subscribe(self)
        self._own.start()

    def _stop_own(self) -> None:
        own, client = self._own, self._stream_client
        if own is not None:
            own.stop()
        if client is not None:
            # Closing the client breaks a blocked stream read in most cases; the read
            # timeout bounds the rest, and the reader is a daemon thread either way.
            with contextlib.suppress(Exception):
                client.close()

    # --- the watcher's thread -------------------------------------------------------

    def _run(self) -> None:
        lookup, sink, close = self._make_lookup()
        feed = _Feed(EventMapper(self.instance.name, lookup), lookup, sink)
        client = self._client_factory(self.instance)
        self._subscribe()
        try:
            self._follow(feed, client)
        finally:
            if self._streams is not None:
                self._streams.unsubscribe(self.instance.name, self)
            self._stop_own()
            with contextlib.suppress(Exception):
                client.close()
            with contextlib.suppress(Exception):
                close()

    def _follow(self, feed: _Feed, client: OpenCodeClient) -> None:
        """Take the reader's news in order; catch up once the stream opens, poll while
        it is down (first at once, then every ``DOWN_POLL_S``)."""
        opened = False
        ask_at = time.monotonic() + DOWN_POLL_S
        while not self._stop.is_set():
            wait = None if self.connected.is_set() else max(0.0, ask_at - time.monotonic())
            try:
                item = self._inbox.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _Signal.STOP or self._stop.is_set():
                return
            if item is _Signal.OPENED or item is _Signal.CLOSED:
                opened = item is _Signal.OPENED
                self._lost(item)
                ask_at = 0.0
            elif isinstance(item, str):
                self._take(feed, item)
            if self.connected.is_set() or time.monotonic() < ask_at:
                continue
            ask_at = time.monotonic() + DOWN_POLL_S
            if opened:
                self._catch_up_now(client, feed)
            else:
                with contextlib.suppress(SwarmPoolError, OSError):
                    self._poll(client, feed)

    def _lost(self, signal: _Signal) -> None:
        """A stream opened or ended: until caught up, events may have been missed."""
        self.connected.clear()
        if signal is _Signal.CLOSED and self._on_disconnect is not None:
            with contextlib.suppress(Exception):
                self._on_disconnect(self.instance.name)

    def _take(self, feed: _Feed, data: str) -> None:
        try:
            raw = json.loads(data)
        except ValueError:
            return
        try:
            events = feed.mapper.map(raw)
            if events:
                feed.sink(events)
        except (SwarmPoolError, OSError) as e:  # the store is down: catch up once it is back
            log.debug("watch %s: recording an event failed: %s", self.instance.name, e)
            self.connected.clear()
        except Exception:  # a bug: catch up again rather than lose the event
            log.exception("watch %s: recording an event failed", self.instance.name)
            self.connected.clear()

    def _catch_up_now(self, client: OpenCodeClient, feed: _Feed) -> None:
        try:
            faults.point("watch.before_catch_up")
            self._catch_up(client, feed)
        except (SwarmPoolError, OSError) as e:
            log.debug("watch %s: catch-up failed: %s", self.instance.name, e)
            return
        except Exception:  # a bug must not kill the watcher for good
            log.exception("watch %s: unexpected error", self.instance.name)
            return
        self.connected.set()
        self.connects += 1

    def _poll(self, client: OpenCodeClient, feed: _Feed) -> None:
        live = [ref.session_id for ref in feed.lookup.live_on(self.instance.name)]
        if not live:
            return
        self.polls += 1
        events = feed.mapper.snapshot(client.session_status(), live)
        if events:
            feed.sink(events)

    def _catch_up(self, client: OpenCodeClient, feed: _Feed) -> None:
        """What happened while nobody listened, asked once the stream is subscribed (so
        nothing falls between the two): session status, then each live worktree's
        pending permission and question requests (the sink drops repeats by request id)."""
        self._poll(client, feed)
        events: list[BaseEvent] = []
        for ref in feed.lookup.live_on(self.instance.name):
            directory = ref.worktree or None
            for kind, listing, describe in (
                ("permission", client.permissions, permission_reason),
                ("question", client.questions, question_reason),
            ):
                try:
                    pending = listing(directory=directory)
                except OpenCodeStatusError as e:  # answered, without a list: nothing to add
                    log.debug("watch %s: no %s list: %s", self.instance.name, kind, e)
                    continue
                for request in pending:
                    if request.get("sessionID") == ref.session_id:
                        reason = describe(request)
                        events += feed.mapper.blocked(ref.session_id, kind, request, reason)
        if events:
            feed.sink(events)


@dataclass(frozen=True)
class _Feed:
    """A watcher thread's mapper, its lookup and where the events go."""

    mapper: EventMapper
    lookup: WorkerLookup
    sink: Sink


class WatchManager:
    """Keeps exactly one watcher per instance of the pool, restarting dead ones."""

    def __init__(self, factory: Callable[[InstanceView], InstanceWatcher]) -> None:
        self._factory = factory
        self._watchers: dict[str, InstanceWatcher] = {}

    @property
    def watchers(self) -> dict[str, InstanceWatcher]:
        return dict(self._watchers)

    def sync(self, instances: Iterable[InstanceView]) -> None:
        wanted = {inst.name: inst for inst in instances if inst.url}
        for name in list(self._watchers):
            w = self._watchers[name]
            inst = wanted.get(name)
            if inst is None or inst.url != w.instance.url or inst.password != w.instance.password:
                w.stop(timeout=0.5)
                del self._watchers[name]
            elif not w.is_alive():
                del self._watchers[name]
        for name, inst in wanted.items():
            if name not in self._watchers:
                self._watchers[name] = self._factory(inst).start()

    def stop(self) -> None:
        for w in self._watchers.values():
            w.stop(timeout=0.5)
        self._watchers.clear()
