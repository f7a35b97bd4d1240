"""An instance's pulse: its SSE event stream, read as a sign of life.

A loaded ``opencode serve`` may answer ``/global/health`` late, yet it keeps streaming
events (``server.heartbeat``, session status, message parts) as long as its event loop
turns. ``Pulse`` keeps one stream open on its own thread for one run of one instance:
every message calls ``on_life`` (the supervisor's policy notes it, so an instance that
streams is never restarted for slow answers), and ``session.status``/``session.idle``
messages keep the set of busy sessions, which sizes the no-progress window without
asking the (maybe slow) instance. Only those two kinds are parsed. The count is only
trusted while the stream has been up without a break since its first message: a gap may
have hidden a session going busy, so after one ``busy`` is None (unknown). A broken
stream is reopened after a short pause until ``stop()``; the stream of a dead process
just breaks. The watcher starts a pulse once its instance is ready (a stream opened
during start-up may hang until the server is up).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator

from swarm_pool.errors import OpenCodeError
from swarm_pool.opencode.client import unwrap_event

log = logging.getLogger("swarm_pool.pool")

Stream = Callable[[], Iterator[str]]
# Pause before reopening a broken stream: short, so a restarted stream soon counts again.
REOPEN_S = 1.0
_BUSY_TYPES = ("busy", "retry")


class Pulse:
    def __init__(self, name: str, stream: Stream, on_life: Callable[[], None]) -> None:
        self.name = name
        self._stream = stream
        self._on_life = on_life
        self._busy: set[str] = set()
        self._up = False  # the current stream delivered a message
        self._broken = False  # a stream broke after delivering: statuses may be missed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"pulse-{name}", daemon=True)

    def start(self) -> Pulse:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reopening the stream; the thread ends at its next message or error."""
        self._stop.set()

    @property
    def busy(self) -> int | None:
        """Busy sessions seen on the stream; None while that count cannot be trusted."""
        with self._lock:
            if not self._up or self._broken:
                return None
            return len(self._busy)

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                for data in self._stream():
                    if self._stop.is_set():
                        return
                    self._on_life()
                    self._up = True
                    if '"session.status"' in data or '"session.idle"' in data:
                        self._track(data)
            except OpenCodeError as e:
                log.debug("%s: event stream: %s", self.name, e)
            except Exception:  # a bug here must not look like a dead instance
                log.exception("%s: event stream reader failed", self.name)
            with self._lock:
                if self._up:
                    self._broken = True
                self._up = False
            self._stop.wait(REOPEN_S)

    def _track(self, data: str) -> None:
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
