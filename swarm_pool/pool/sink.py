"""Where lifecycle events go: the supervisor log at once, the project's store if it can.

The store is optional for the pool: if it cannot be imported, opened or written, the pool
carries on. Events are written by one thread that owns the store's connection, so
watchers never block on the store's locks. A failed write is retried with backoff
(reopening the store), never given up for good: an outage is logged when it starts and
when it ends, and only a backlog beyond ``MAX_BACKLOG`` events drops its oldest.
Room: pool.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from swarm_pool.config import Config
from swarm_pool.paths import ProjectPaths
from swarm_pool.store import events as ev
from swarm_pool.store import open_project_store

log = logging.getLogger("swarm_pool.pool")


MAX_BACKLOG = 10_000
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0


class EventSink:
    """Lifecycle events to the log now, and to the store from one writer thread."""

    def __init__(
        self,
        paths: ProjectPaths,
        config: Config,
        *,
        open_store: Callable[[], Any] | None = None,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.paths = paths
        self.config = config
        self._open = open_store or self._open_project_store
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._queue: queue.Queue[ev.BaseEvent | None] = queue.Queue()
        self._closing = threading.Event()
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="event-sink", daemon=True)
        self._thread.start()

    def emit(self, event: ev.BaseEvent, line: str, level: int = logging.INFO) -> None:
        log.log(level, line)
        self._queue.put(event)

    def close(self, timeout: float = 5.0) -> None:
        self._closing.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _open_project_store(self) -> Any:
        return open_project_store(self.paths, self.config)

    def _run(self) -> None:
        store: Any = None
        backlog: collections.deque[ev.BaseEvent] = collections.deque()
        backoff = self._backoff_initial_s
        next_try = 0.0
        outage = False
        done = False
        while True:
            if not done:
                wait = None if not backlog else max(0.0, next_try - time.monotonic())
                done = self._collect(backlog, wait)
            while len(backlog) > MAX_BACKLOG:
                backlog.popleft()
                self.dropped += 1
            if not backlog:
                if done:
                    break
                continue
            if not done and time.monotonic() < next_try:
                continue
            try:
                if store is None:
                    store = self._open()
                while backlog:
                    store.append(backlog[0])
                    backlog.popleft()
                    self.written += 1
            except Exception as e:  # the store is optional; never let it stop the pool
                self.failures += 1
                if not outage:
                    log.warning("event store unavailable (retrying with backoff): %s", e)
                outage = True
                if store is not None:
                    with contextlib.suppress(Exception):
                        store.close()
                    store = None
                if done:
                    log.warning("%d events not written to the store at exit", len(backlog))
                    break
                next_try = time.monotonic() + backoff
                backoff = min(backoff * 2, self._backoff_max_s)
                continue
            if outage:
                log.info("event store available again; the backlog is written")
            outage = False
            backoff = self._backoff_initial_s
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    def _collect(self, backlog: collections.deque[ev.BaseEvent], wait: float | None) -> bool:
        """Move queued events to ``backlog`` (waiting up to ``wait`` for the first);
        True once ``close`` was called."""
        try:
            item = self._queue.get(timeout=wait)
        except queue.Empty:
            return False
        while True:
            if item is None:
                return True
            backlog.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
