"""Where lifecycle events go: the supervisor log at once, the project's store if it can.

The store is optional for the pool: if it cannot be imported, opened or written, the
failure is logged once and the pool carries on. Events are written by one thread that
owns the store's connection, so watchers never block on the store's locks.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Any

from swarm_pool.config import Config
from swarm_pool.paths import ProjectPaths
from swarm_pool.store import events as ev

log = logging.getLogger("swarm_pool.pool")


class EventSink:
    """Lifecycle events to the log now, and to the store from one writer thread.

    The store is optional for the pool: if it cannot be imported, opened or written, the
    failure is logged once and the pool carries on.
    """

    def __init__(self, paths: ProjectPaths, config: Config) -> None:
        self.paths = paths
        self.config = config
        self._queue: queue.Queue[ev.BaseEvent | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="event-sink", daemon=True)
        self._thread.start()

    def emit(self, event: ev.BaseEvent, line: str, level: int = logging.INFO) -> None:
        log.log(level, line)
        self._queue.put(event)

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        store: Any = None
        broken = False
        while True:
            event = self._queue.get()
            if event is None:
                break
            if broken:
                continue
            try:
                if store is None:
                    from swarm_pool.store import open_project_store

                    store = open_project_store(self.paths, self.config)
                store.append(event)
            except Exception as e:  # the store is optional; never let it stop the pool
                log.warning("event store unavailable, events go to this log only: %s", e)
                broken = True
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()
