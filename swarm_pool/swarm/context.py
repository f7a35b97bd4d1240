"""The worker engine's dependencies in one object: project paths, config, store, pool.

Room: swarm (its base).

``SwarmContext`` is what the worker's steps (``swarm/worker/``), the engine loop
(``swarm/engine/``), ``status`` and the plans take instead of a long list of arguments.
It owns the lazily created git ``Repo``, the view of the pool's instances (read from the
supervisor's state file unless a test injects its own), and the factory of OpenCode
clients, so every piece can be swapped in tests; and it reads a bead's latest event of a
given class (``last_event``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import filelock

from swarm_pool.config import Config
from swarm_pool.errors import (
    EngineNotRunningError,
    PoolNotRunningError,
    StoreError,
    UnknownInstanceError,
    WorkerError,
)
from swarm_pool.git import Repo
from swarm_pool.opencode.client import OpenCodeClient
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.router import InstanceView
from swarm_pool.store import Store
from swarm_pool.store.dialect import Backend
from swarm_pool.store.events import BaseEvent
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.engine_state import engine_status
from swarm_pool.swarm.pool_view import pool_running, read_instances

InstancesFn = Callable[[], list[InstanceView]]
ClientFn = Callable[[InstanceView], OpenCodeClient]
E = TypeVar("E", bound=BaseEvent)

_thread_locks_guard = threading.Lock()
_thread_locks: dict[Path, threading.RLock] = {}


def _thread_lock(path: Path) -> threading.RLock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(path, threading.RLock())


@contextmanager
def file_lock(path: Path, timeout: float = 60.0) -> Iterator[None]:
    """A cross-process lock that also excludes threads of this process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tlock = _thread_lock(path.resolve())
    if not tlock.acquire(timeout=timeout):
        raise WorkerError(f"timed out waiting for {path}")
    try:
        flock = filelock.FileLock(str(path), thread_local=False)
        try:
            flock.acquire(timeout=timeout)
        except filelock.Timeout as e:
            raise WorkerError(f"timed out waiting for {path} (held by another process)") from e
        try:
            yield
        finally:
            flock.release()
    finally:
        tlock.release()


def default_client(instance: InstanceView) -> OpenCodeClient:
    """The one way the engine, its watchers and the workers reach an instance."""
    return OpenCodeClient(instance.url, instance.password, timeout=10.0)


@dataclass
class SwarmContext:
    paths: ProjectPaths
    config: Config
    store: Store
    instances_fn: InstancesFn | None = None
    client_fn: ClientFn = default_client
    _git: Repo | None = field(default=None, repr=False)

    @property
    def locks_dir(self) -> Path:
        return self.paths.swarm_dir / "locks"

    @property
    def prompts_dir(self) -> Path:
        return self.paths.swarm_dir / "prompts"

    @property
    def git(self) -> Repo:
        """The project's repository: worktrees, slots, diffs and merges."""
        if self._git is None:
            self._git = Repo.for_project(self.paths)
        return self._git

    @property
    def multi_host(self) -> bool:
        """Whether this store may be shared by several hosts (PostgreSQL)."""
        return bool(self.store.recorder.backend is Backend.POSTGRESQL)

    def mine(self, workers: Iterable[WorkerView]) -> list[WorkerView]:
        """The workers this host's engine looks after: all of them on one host, else the
        ones it claimed."""
        if not self.multi_host:
            return list(workers)
        host = self.config.pool.host
        return [w for w in workers if w.host == host]

    def instances(self) -> list[InstanceView]:
        if self.instances_fn is not None:
            return self.instances_fn()
        return read_instances(self.paths)

    def require_dispatcher(self, what: str) -> None:
        """Raise unless queued spawns will be dispatched: a supervisor runs the pool and
        its worker engine is alive (PoolNotRunningError, EngineNotRunningError). With
        injected instances (tests, embedding) the caller dispatches."""
        if self.instances_fn is not None:
            if not self.instances_fn():
                raise PoolNotRunningError(f"no instance to run {what} on")
            return
        if not pool_running(self.paths):
            raise PoolNotRunningError(
                f"no running pool to run {what} on; start it with `swarm-pool start`"
            )
        engine = engine_status(self.paths, self.config.workers.engine_stale_s)
        if not engine.alive:
            why = engine.error or (
                "no heartbeat" if engine.pid is None else f"last tick {engine.last_tick_s}s ago"
            )
            raise EngineNotRunningError(
                f"the pool runs but its worker engine does not ({why}), so {what} would "
                f"never start; see {self.paths.supervisor_log}, then `swarm-pool stop` and "
                "`swarm-pool start`"
            )

    def instance(self, name: str) -> InstanceView:
        for inst in self.instances():
            if inst.name == name:
                return inst
        raise UnknownInstanceError(f"no instance named {name!r} in the pool")

    def client(self, instance: InstanceView) -> OpenCodeClient:
        return self.client_fn(instance)

    def last_event(self, bead_id: str, kind: type[E]) -> E | None:
        """The bead's latest event of class ``kind``, or None; queried by the class's
        ``type`` literal, so the answer is that class (anything else is a store bug)."""
        name = kind.model_fields["type"].default
        events = self.store.read(types=[name], bead_id=bead_id, descending=True, limit=1)
        if not events:
            return None
        event = events[0].event
        if not isinstance(event, kind):
            raise StoreError(f"event {events[0].seq} of type {name!r} is not a {kind.__name__}")
        return event

    @contextmanager
    def lock(self, name: str, timeout: float = 60.0) -> Iterator[None]:
        with file_lock(self.locks_dir / f"{name}.lock", timeout):
            yield
