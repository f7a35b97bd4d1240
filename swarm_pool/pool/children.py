"""The pool's set of children: watchers by name, their order, and what changes the set.

Room: pool. ``Children`` holds one ``Watcher`` per child (the scripted model, the MCP
server, the gateway and the opencode instances) under the pool's record lock: their
order in the state file (model, MCP server, gateway, then instances by number), which
instances are draining (the router sends them no new work), the upstreams instances
reach by URL, and the operations the control socket asks for: restart
one child or each in turn, scale the sized pool, add or remove an extra named
instance, and wait until the children concerned are ready. It also owns the names: the
sized pool's ``oc-N`` and the rules for extra names. The supervisor (``supervisor.py``)
creates each watcher (``new_child``) and writes the state file after each operation.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable

from swarm_pool.config import PoolSection
from swarm_pool.errors import InstanceStartError, PoolError, SwarmPoolError, UnknownInstanceError
from swarm_pool.pool.instance import GATEWAY_NAME, MCP_NAME, MODEL_NAME, instance_names
from swarm_pool.pool.policy import Clock
from swarm_pool.pool.state import InstanceState
from swarm_pool.pool.watcher import Watcher

_POOL_NAME_RE = re.compile(r"^oc-\d+$")
_EXTRA_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_KIND_ORDER = {"model": 0, "mcp": 1, "gateway": 2}


class Children:
    """The supervisor's children and the restart/scale/add/remove operations on them."""

    def __init__(
        self,
        pool: PoolSection,
        *,
        size: int,
        new_child: Callable[[str], Watcher],
        rec_lock: threading.RLock,
        dirty: threading.Event,
        stop: threading.Event,
    ) -> None:
        self.pool = pool
        self.size = size
        self._new_child = new_child
        self.by_name: dict[str, Watcher] = {}
        # The children instances reach by URL (the scripted model, the MCP server).
        self.upstreams: dict[str, Watcher] = {}
        self._rec_lock = rec_lock
        self._dirty = dirty
        self._stop = stop
        # One restart/scale/add at a time; the supervisor holds it around each (and its
        # state write), so the operations here never take it themselves.
        self.ops_lock = threading.Lock()

    def names(self) -> list[str]:
        return instance_names(self.size)

    def add(self, child: Watcher) -> None:
        with self._rec_lock:
            self.by_name[child.name] = child
        self._dirty.set()

    def ordered(self) -> list[Watcher]:
        kids = list(self.by_name.values())
        return sorted(kids, key=lambda c: (_KIND_ORDER.get(c.program.kind, 2), _name_key(c.name)))

    def draining(self) -> set[str]:
        """Instances that get no new work: waiting for a memory restart or being removed."""
        with self._rec_lock:
            return {
                c.name
                for c in self.by_name.values()
                if c.record.draining or (c.removing and not c.finished)
            }

    def upstream_url(self, name: str) -> str | None:
        child = self.upstreams.get(name)
        if child is None or child.port is None:
            return None
        return child.program.url(child.port)

    def restart(self, name: str | None, timeout: float | None) -> None:
        """Restart one child (even a fatal one) or, with no name, each in turn."""
        with self._rec_lock:
            if name is not None and name not in self.by_name:
                raise UnknownInstanceError(f"no instance named {name!r} in the pool")
            targets = [self.by_name[name]] if name else self.ordered()
        for child in targets:
            old_pid = child.record.pid
            with child.lock:
                child.manual_restart = True
            child.wake.set()
            self.wait_ready(
                [child],
                timeout or self.pool.start_timeout_s + self.pool.stop_grace_s,
                not_pid=old_pid,
            )

    def scale(self, size: int, timeout: float | None) -> None:
        wanted = instance_names(size)
        with self._rec_lock:
            current = [
                c
                for c in self.ordered()
                if c.program.kind == "opencode" and not is_extra_name(c.name)
            ]
            removed = [c for c in current if c.name not in wanted]
            added = [self._new_child(n) for n in wanted if n not in self.by_name]
            self.size = size
        for child in removed:
            _mark_removing(child)
        for child in added:
            child.start()
        self._dirty.set()
        for child in removed:
            if child.thread is not None:
                child.thread.join(self.pool.stop_grace_s + 15)
            with self._rec_lock:
                self.by_name.pop(child.name, None)
        self._dirty.set()
        if added:
            self.wait_ready(added, timeout or self.pool.start_timeout_s + 5)

    def add_extra(self, name: str) -> Watcher:
        """Start one extra named instance outside the sized pool (``scale`` leaves it
        alone), e.g. one dedicated to a single worker; idempotent."""
        check_extra_name(name)
        with self._rec_lock:
            child = self.by_name.get(name)
            created = child is None
            if child is None:
                child = self._new_child(name)
        if created:
            child.start()
        self._dirty.set()
        return child

    def remove_extra(self, name: str, *, wait: bool) -> None:
        """Stop and forget an extra instance added by ``add_extra``."""
        check_extra_name(name)
        with self._rec_lock:
            child = self.by_name.get(name)
        if child is None:
            raise UnknownInstanceError(f"no instance named {name!r} in the pool")
        _mark_removing(child)
        self._dirty.set()

        def finish() -> None:
            if child.thread is not None:
                child.thread.join(self.pool.stop_grace_s + 15)
            with self._rec_lock:
                if self.by_name.get(name) is child:
                    self.by_name.pop(name, None)
            self._dirty.set()

        if wait:
            finish()
        else:
            threading.Thread(target=finish, name=f"remove-{name}", daemon=True).start()

    def await_startup(
        self,
        children: list[Watcher],
        deadline: float,
        *,
        clock: Clock,
        failed: Callable[[], SwarmPoolError | None],
        tick: Callable[[], None],
    ) -> None:
        """Wait for the pool's first start of ``children``: return once all are ready
        (or the pool stops); raise what ``failed`` reports, a fatal child's failure, or
        InstanceStartError at ``deadline``. ``tick`` runs on every round (state writes)."""
        while True:
            if (error := failed()) is not None:
                raise error
            if self._stop.is_set():
                return
            states = {c.name: c.record.state for c in children}
            fatal = [c for c in children if c.record.state == InstanceState.FATAL]
            if fatal:
                c = fatal[0]
                raise InstanceStartError(f"instance {c.name} failed to start: {c.record.reason}")
            if all(s == InstanceState.READY for s in states.values()):
                return
            if clock() > deadline:
                late = [c for c in children if c.record.state != InstanceState.READY]
                detail = "; ".join(
                    f"{c.name} {c.record.state}"
                    + (f" ({c.record.reason})" if c.record.reason else "")
                    for c in late
                )
                raise InstanceStartError(f"instances not ready in time: {detail}")
            tick()
            time.sleep(0.05)

    def wait_ready(
        self, children: Iterable[Watcher], timeout: float, *, not_pid: int | None = None
    ) -> None:
        kids = list(children)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._stop.is_set():
                raise PoolError("the pool is stopping")
            pending = []
            for c in kids:
                rec = c.record
                if c.manual_restart or (not_pid is not None and rec.pid == not_pid):
                    pending.append(c)
                    continue
                if rec.state == InstanceState.FATAL:
                    raise InstanceStartError(f"instance {c.name} is fatal: {rec.reason}")
                if rec.state != InstanceState.READY:
                    pending.append(c)
            if not pending:
                return
            time.sleep(0.05)
        names = ", ".join(c.name for c in kids)
        raise InstanceStartError(f"{names} not ready within {timeout:g}s")


def _mark_removing(child: Watcher) -> None:
    with child.lock:
        child.removing = True
        child.record.draining = True
    child.wake.set()


def _name_key(name: str) -> tuple[str, int]:
    prefix, _, num = name.rpartition("-")
    return (prefix, int(num)) if num.isdigit() else (name, 0)


def is_extra_name(name: str) -> bool:
    """An instance added by name (``add``), not one of the sized pool's ``oc-N``."""
    return name not in (MODEL_NAME, GATEWAY_NAME, MCP_NAME) and not _POOL_NAME_RE.match(name)


def check_extra_name(name: str) -> None:
    if not _EXTRA_NAME_RE.match(name) or not is_extra_name(name):
        raise PoolError(
            f"bad extra instance name {name!r}: lowercase letters, digits, - and _, "
            "not 'model', 'mcp' or 'gateway' and not the pool's own oc-N"
        )
