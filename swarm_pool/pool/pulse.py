"""An instance's pulse: the one reader of its SSE event stream, fanned out to subscribers.

Room: pool. A loaded ``opencode serve`` may answer ``/global/health`` late, yet it keeps
streaming events (``server.heartbeat``, session status, message parts) as long as its
event loop turns. ``Pulse`` keeps one stream open on its own thread for one run of one
instance and hands every message to its subscribers (``Subscriber``: told when a stream
delivers its first message, of each message, and when a stream ends), so one process
opens one stream per instance however many parts of it listen. Built in are the
supervisor's two: every message calls ``on_life`` (the policy notes it, so an instance
that streams is never restarted for slow answers), and ``BusyCount`` keeps the set of
busy sessions from ``session.status``/``session.idle``, which sizes the no-progress
window without asking the (maybe slow) instance. The count is only trusted while the
stream has been up without a break since its first message: a gap may have hidden a
session going busy, so after one it is None (unknown). A broken stream is reopened after
a pause that doubles from ``REOPEN_S`` up to ``REOPEN_MAX_S`` and starts again once a
stream delivers, until ``stop()``; the stream of a dead process just breaks. ``Pulses``
is a process's registry of pulses by instance name: the supervisor's watchers publish
theirs there (a stream opened during start-up may hang, so only once the instance is
ready) and the worker engine subscribes by name, across restarts of the instance.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from swarm_pool.errors import OpenCodeError
from swarm_pool.opencode.client import unwrap_event

log = logging.getLogger("swarm_pool.pool")

Stream = Callable[[], Iterator[str]]
# The first pause before reopening a broken stream: short, so a restarted stream soon
# counts again and a watcher soon hears again; it doubles while reopening fails.
REOPEN_S = 0.2
REOPEN_MAX_S = 5.0
_BUSY_TYPES = ("busy", "retry")


class Subscriber(Protocol):
    """A listener of a pulse; called on the reader's thread, so each call must be quick
    (a subscriber with slow work queues it for a thread of its own)."""

    def opened(self) -> None:
        """A stream delivered its first message (or was up when this subscribed)."""

    def message(self, data: str) -> None:
        """The raw ``data`` of one SSE message."""

    def closed(self) -> None:
        """A stream attempt ended, opened or not: messages may be missed until reopened."""


class BusyCount:
    """The busy sessions an instance's stream showed; None while that cannot be trusted."""

    def __init__(self) -> None:
        self._busy: set[str] = set()
        self._up = False  # the current stream delivered a message
        self._broken = False  # a stream broke after delivering: statuses may be missed
        self._lock = threading.Lock()

    @property
    def count(self) -> int | None:
        with self._lock:
            if not self._up or self._broken:
                return None
            return len(self._busy)

    def opened(self) -> None:
        with self._lock:
            self._up = True

    def closed(self) -> None:
        with self._lock:
            if self._up:
                self._broken = True
            self._up = False

    def message(self, data: str) -> None:
        # Only these two kinds are parsed: the stream carries many message parts.
        if '"session.status"' not in data and '"session.idle"' not in data:
            return
        try:
            parsed = unwrap_event(json.loads(data))
        except ValueError:
            return
        if parsed is None:
            return
        kind, props = parsed
        session = props.get("sessionID")
        if not isinstance(session, str):
            return
        status = props.get("status")
        busy = (
            kind == "session.status"
            and isinstance(status, dict)
            and status.get("type") in _BUSY_TYPES
        )
        with self._lock:
            if busy:
                self._busy.add(session)
            else:
                self._busy.discard(session)


class Pulse:
    """One thread reading one instance's stream, for every subscriber (module docstring)."""

    def __init__(
        self,
        name: str,
        stream: Stream,
        on_life: Callable[[], None] | None = None,
        *,
        backoff_s: tuple[float, float] | None = None,
    ) -> None:
        self.name = name
        self._stream = stream
        self._on_life = on_life
        self._backoff_s = backoff_s  # (first, most); None: REOPEN_S, REOPEN_MAX_S
        self._count = BusyCount()
        self._subscribers: list[Subscriber] = [self._count]
        self._open = False  # the current stream delivered a message
        self._fanout = threading.Lock()  # one message reaches all subscribers in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"pulse-{name}", daemon=True)
        self.opens = 0  # streams that delivered a message

    def start(self) -> Pulse:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reopening the stream and tell the subscribers it is down; the thread
        ends at its next message or error, delivering nothing more."""
        self._stop.set()
        self._end_stream()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def busy(self) -> int | None:
        """Busy sessions seen on the stream; None while that count cannot be trusted."""
        return self._count.count

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._fanout:
            if subscriber in self._subscribers:
                return
            self._subscribers.append(subscriber)
            if self._open:
                _call(self.name, subscriber.opened)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._fanout:
            if subscriber not in self._subscribers:
                return
            self._subscribers.remove(subscriber)
            if self._open:
                _call(self.name, subscriber.closed)

    def _first_pause(self) -> float:
        return self._backoff_s[0] if self._backoff_s is not None else REOPEN_S

    def _next_pause(self, pause: float) -> float:
        most = self._backoff_s[1] if self._backoff_s is not None else REOPEN_MAX_S
        return min(pause * 2, most)

    def _main(self) -> None:
        pause = self._first_pause()
        while not self._stop.is_set():
            try:
                for data in self._stream():
                    if not self._deliver(data):
                        return
                    pause = self._first_pause()  # this stream delivers: start over
            except OpenCodeError as e:
                log.debug("%s: event stream: %s", self.name, e)
            except Exception:  # a bug here must not look like a dead instance
                log.exception("%s: event stream reader failed", self.name)
            self._end_stream()
            self._stop.wait(pause)
            pause = self._next_pause(pause)

    def _deliver(self, data: str) -> bool:
        with self._fanout:
            if self._stop.is_set():
                return False
            if self._on_life is not None:
                self._on_life()
            if not self._open:
                self._open = True
                self.opens += 1
                for subscriber in self._subscribers:
                    _call(self.name, subscriber.opened)
            for subscriber in self._subscribers:
                _call(self.name, subscriber.message, data)
        return True

    def _end_stream(self) -> None:
        with self._fanout:
            was_open, self._open = self._open, False
            if self._stop.is_set() and not was_open:
                return  # stopped: the subscribers heard the end already
            for subscriber in self._subscribers:
                _call(self.name, subscriber.closed)


def _call(name: str, fn: Callable[..., None], *args: str) -> None:
    try:
        fn(*args)
    except Exception:  # one subscriber's bug must not starve the others
        log.exception("%s: an event stream subscriber failed", name)


class Pulses:
    """A process's pulses by instance name, and the subscribers of each name: a
    subscriber stays subscribed to whichever pulse the name has now (a restarted
    instance gets a new pulse)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pulses: dict[str, Pulse] = {}
        self._subscribers: dict[str, list[Subscriber]] = {}

    def get(self, name: str) -> Pulse | None:
        with self._lock:
            return self._pulses.get(name)

    def publish(self, pulse: Pulse) -> None:
        with self._lock:
            old = self._pulses.get(pulse.name)
            self._pulses[pulse.name] = pulse
            for subscriber in self._subscribers.get(pulse.name, []):
                if old is not None:
                    old.unsubscribe(subscriber)
                pulse.subscribe(subscriber)

    def withdraw(self, pulse: Pulse) -> None:
        with self._lock:
            if self._pulses.get(pulse.name) is pulse:
                del self._pulses[pulse.name]
            for subscriber in self._subscribers.get(pulse.name, []):
                pulse.unsubscribe(subscriber)

    def subscribe(self, name: str, subscriber: Subscriber) -> None:
        with self._lock:
            listening = self._subscribers.setdefault(name, [])
            if subscriber not in listening:  # as Pulse.subscribe: once, however often asked
                listening.append(subscriber)
            pulse = self._pulses.get(name)
            if pulse is not None:
                pulse.subscribe(subscriber)

    def unsubscribe(self, name: str, subscriber: Subscriber) -> None:
        with self._lock:
            listening = self._subscribers.get(name, [])
            if subscriber in listening:
                listening.remove(subscriber)
            pulse = self._pulses.get(name)
            if pulse is not None:
                pulse.unsubscribe(subscriber)
