"""The supervisor: starts, adopts, watches, restarts and stops the pool's children.

One ``Supervisor`` runs in the background daemon (``daemon.py``). It holds
``.swarm/supervisor.lock`` for its whole life, so two supervisors never run one project.
Start-up brings up the scripted model first (when configured), then the shared MCP
server (``[opencode] mcp = "shared"``: instances are configured with its URL), then the
gateway (when enabled; its fixed port taken by anything else fails the start before any instance
runs), then the opencode instances in parallel, each on its own ``Watcher`` thread
(``watcher.py`` holds the per-child checks and restart logic); children left running by
a supervisor that was SIGKILLed are adopted instead of replaced when their pid,
``create_time`` and probe match. Start-up fails as a whole (phase ``failed``, ``error``
in the state file, nothing left running) on a port error, a bad config, a fatal child or
a deadline.

The supervisor writes the state file on every change, serves the control socket
(``status``, ``restart``, ``scale``, ``stop``), and tells the router which instances are
draining (``draining()``, also the ``draining`` flag of each child in the state file).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import filelock

from swarm_pool.config import Config
from swarm_pool.errors import (
    InstanceStartError,
    PoolAlreadyRunningError,
    PoolError,
    ProcessError,
    SwarmPoolError,
    UnknownInstanceError,
)
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool import process
from swarm_pool.pool.control import ControlServer, socket_path_for
from swarm_pool.pool.instance import (
    GATEWAY_NAME,
    MCP_NAME,
    MODEL_NAME,
    Program,
    gateway_program,
    instance_names,
    mcp_program,
    model_program,
    opencode_program,
)
from swarm_pool.pool.orphans import POOL_TAG_ENV, OrphanReaper
from swarm_pool.pool.policy import Clock
from swarm_pool.pool.ports import Owner, PortLeases
from swarm_pool.pool.pulse import Pulses
from swarm_pool.pool.sink import EventSink
from swarm_pool.pool.state import (
    ChildRecord,
    ErrorInfo,
    Phase,
    PoolState,
    SupervisorRecord,
    public_dump,
    read_state,
    write_state,
)
from swarm_pool.pool.watcher import PoolContext, Watcher
from swarm_pool.store import events as ev
from swarm_pool.tokens import write_coordinator_token

log = logging.getLogger("swarm_pool.pool")

ProgramsFn = Callable[[str, Callable[[], str | None]], Program]


def lock_path(paths: ProjectPaths) -> Path:
    return paths.swarm_dir / "supervisor.lock"


class Supervisor:
    def __init__(
        self,
        paths: ProjectPaths,
        config: Config,
        *,
        size: int | None = None,
        binary: Path | None = None,
        clock: Clock = time.monotonic,
        program_factory: ProgramsFn | None = None,
        with_model: bool | None = None,
        reaper: OrphanReaper | None = None,
        with_mcp: bool | None = None,
    ) -> None:
        self.paths = paths
        self.config = config
        self.size = size if size is not None else config.pool.size
        self.clock = clock
        self.binary = binary
        self._program_factory = program_factory
        self.with_model = config.opencode.model == "scripted" if with_model is None else with_model
        self.leases = PortLeases(config.pool.port_min, config.pool.port_max)
        self.socket_path = socket_path_for(paths)
        self.tag = ""
        self.gateway_password = ""
        # The shared MCP server runs with [opencode] mcp = "shared"; a pool of stand-in
        # programs (program_factory) has no MCP client, so it runs none unless asked.
        oc = config.opencode
        shared = oc.mcp_enabled and oc.mcp == "shared" and program_factory is None
        self.with_mcp = shared if with_mcp is None else with_mcp
        self.mcp_secret = ""
        self.me: Owner | None = None
        self._children: dict[str, Watcher] = {}
        self._rec_lock = threading.RLock()
        self._ops_lock = threading.Lock()  # one restart/scale at a time
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._phase: Phase = "starting"
        self._startup_error: SwarmPoolError | None = None
        self._error: ErrorInfo | None = None
        self._sink: EventSink | None = None
        # The children instances reach by URL (the scripted model, the MCP server).
        self._upstreams: dict[str, Watcher] = {}
        self._ctx: PoolContext | None = None
        # Set by the daemon, which made itself the child subreaper (orphans.py).
        self.reaper = reaper
        # Set by the daemon: busy sessions per instance from the worker engine's records,
        # for the no-progress window when the instance's own stream cannot tell.
        self.busy_hint: Callable[[str], int | None] | None = None
        # Set by the daemon: runs once this supervisor holds the pool lock, before any
        # child starts (the worker engine joins here); a SwarmPoolError fails the start.
        self.on_locked: Callable[[], None] | None = None
        # The instances' event streams, one reader each, for the engine to subscribe to.
        self.pulses = Pulses()

    # --- public API (thread-safe; the control socket calls these) -------------------

    def request_stop(self) -> None:
        self._stop.set()

    def draining(self) -> set[str]:
        """Instances that get no new work: waiting for a memory restart or being removed."""
        with self._rec_lock:
            return {
                c.name
                for c in self._children.values()
                if c.record.draining or (c.removing and not c.finished)
            }

    def snapshot(self) -> PoolState:
        with self._rec_lock:
            assert self.me is not None
            return PoolState(
                project_root=str(self.paths.root),
                phase=self._phase,
                size=self.size,
                supervisor=SupervisorRecord(pid=self.me.pid, create_time=self.me.create_time),
                tag=self.tag,
                sandbox=self.config.workers.sandbox_label(),
                gateway_password=self.gateway_password,
                mcp_secret=self.mcp_secret,
                socket=str(self.socket_path),
                model_url=self._model_url(),
                instances=[c.live_record() for c in self._ordered()],
                error=self._error,
            )

    def restart(self, name: str | None = None, timeout: float | None = None) -> PoolState:
        """Restart one child (even a fatal one) or, with no name, each in turn."""
        with self._ops_lock:
            with self._rec_lock:
                if name is not None and name not in self._children:
                    raise UnknownInstanceError(f"no instance named {name!r} in the pool")
                targets = [self._children[name]] if name else self._ordered()
            for child in targets:
                old_pid = child.record.pid
                with child.lock:
                    child.manual_restart = True
                child.wake.set()
                self._wait_ready(
                    [child],
                    timeout or self.config.pool.start_timeout_s + self.config.pool.stop_grace_s,
                    not_pid=old_pid,
                )
            self._write_state()
            return self.snapshot()

    def scale(self, size: int, timeout: float | None = None) -> PoolState:
        if not 1 <= size <= 64:
            raise PoolError(f"bad pool size {size}: use 1..64")
        with self._ops_lock:
            wanted = instance_names(size)
            with self._rec_lock:
                current = [
                    c
                    for c in self._ordered()
                    if c.program.kind == "opencode" and not is_extra_name(c.name)
                ]
                removed = [c for c in current if c.name not in wanted]
                added = [self._new_child(n) for n in wanted if n not in self._children]
                self.size = size
            for child in removed:
                with child.lock:
                    child.removing = True
                    child.record.draining = True
                child.wake.set()
            for child in added:
                child.start()
            self._dirty.set()
            for child in removed:
                if child.thread is not None:
                    child.thread.join(self.config.pool.stop_grace_s + 15)
                with self._rec_lock:
                    self._children.pop(child.name, None)
            self._dirty.set()
            if added:
                self._wait_ready(added, timeout or self.config.pool.start_timeout_s + 5)
            self._write_state()
            return self.snapshot()

    def add_instance(
        self, name: str, *, wait: bool = False, timeout: float | None = None
    ) -> PoolState:
        """Start one extra named instance outside the sized pool (``scale`` leaves it
        alone), e.g. one dedicated to a single worker. Idempotent; with ``wait`` it
        returns once the instance is ready."""
        check_extra_name(name)
        with self._ops_lock:
            with self._rec_lock:
                child = self._children.get(name)
                created = child is None
                if child is None:
                    child = self._new_child(name)
            if created:
                child.start()
            self._dirty.set()
        if wait:
            self._wait_ready([child], timeout or self.config.pool.start_timeout_s + 5)
        return self.snapshot()

    def remove_instance(self, name: str, *, wait: bool = False) -> PoolState:
        """Stop and forget an extra instance added by ``add_instance``."""
        check_extra_name(name)
        with self._rec_lock:
            child = self._children.get(name)
        if child is None:
            raise UnknownInstanceError(f"no instance named {name!r} in the pool")
        with child.lock:
            child.removing = True
            child.record.draining = True
        child.wake.set()
        self._dirty.set()

        def finish() -> None:
            if child.thread is not None:
                child.thread.join(self.config.pool.stop_grace_s + 15)
            with self._rec_lock:
                if self._children.get(name) is child:
                    self._children.pop(name, None)
            self._dirty.set()

        if wait:
            finish()
        else:
            threading.Thread(target=finish, name=f"remove-{name}", daemon=True).start()
        return self.snapshot()

    # --- main -------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; 0 after a clean stop, 1 if start-up failed."""
        self.paths.ensure()
        lock = filelock.FileLock(str(lock_path(self.paths)), mode=0o600, thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout as e:
            raise PoolAlreadyRunningError(
                f"a supervisor is already running for {self.paths.root}"
            ) from e
        try:
            return self._run_locked()
        finally:
            lock.release()

    def _run_locked(self) -> int:
        self.me = Owner.me()
        previous = self._read_previous()
        self.tag = os.environ.get(POOL_TAG_ENV, "")
        self.gateway_password = self._choose_gateway_password(previous)
        if self.with_mcp:
            # Kept across restarts of the pool: tokens already written into worktrees
            # (and an adopted MCP child) stay valid.
            kept = previous.mcp_secret if previous is not None else ""
            self.mcp_secret = kept or secrets.token_urlsafe(32)
            write_coordinator_token(self.mcp_secret, self.paths.swarm_dir)
        self._sink = EventSink(self.paths, self.config)
        control = ControlServer(self.socket_path, self._handle_command)
        rc = 0
        try:
            self._write_state()
            control.start()
            self._write_state()
            self._sink.emit(
                ev.PoolStarted(supervisor_pid=self.me.pid, size=self.size),
                f"supervisor {self.me.pid} starting a pool of {self.size} in {self.paths.root}",
            )
            try:
                if self.on_locked is not None:
                    self.on_locked()
                self._start_up(previous)
            except SwarmPoolError as e:
                rc = 1
                self._fail(e)
            if rc == 0:
                self._loop()
        finally:
            with self._rec_lock:
                if self._phase != "failed":
                    self._phase = "stopping"
            self._write_state()
            self._shutdown()
            control.close()
            with self._rec_lock:
                if self._phase != "failed":
                    self._phase = "stopped"
            self._write_state()
            self._sink.emit(
                ev.PoolStopped(supervisor_pid=self.me.pid, reason=self._error_text()),
                f"supervisor {self.me.pid} stopped",
            )
            self._sink.close()
        return rc

    def _fail(self, error: SwarmPoolError) -> None:
        log.error("start-up failed: %s", error)
        with self._rec_lock:
            self._error = ErrorInfo(type=type(error).__name__, message=str(error))
            self._phase = "failed"
        self._write_state()

    def _error_text(self) -> str:
        return self._error.message if self._error else ""

    def _read_previous(self) -> PoolState | None:
        try:
            return read_state(self.paths.state_file)
        except PoolError as e:
            log.warning("ignoring the previous state file: %s", e)
            return None

    def _choose_gateway_password(self, previous: PoolState | None) -> str:
        if not self.config.gateway.enabled:
            return ""
        old = previous.gateway() if previous is not None else None
        if previous is not None and old is not None and old.ref is not None and old.ref.alive():
            return previous.gateway_password
        return secrets.token_urlsafe(24)

    def _start_up(self, previous: PoolState | None) -> None:
        adoptable = {rec.name: rec for rec in previous.instances} if previous else {}
        deadline = self.clock() + 2 * self.config.pool.start_timeout_s + 5
        if self.with_model:
            self._start_upstream(MODEL_NAME, adoptable, deadline)
        if self.with_mcp and not self._stop.is_set():
            self._start_upstream(MCP_NAME, adoptable, deadline)
        elif (old_mcp := adoptable.pop(MCP_NAME, None)) is not None:
            self._stop_stray(old_mcp)
        old_gateway = adoptable.pop(GATEWAY_NAME, None)
        if self.config.gateway.enabled and not self._stop.is_set():
            # Before any instance: a port taken by the user's own server fails the start
            # with nothing else launched.
            gateway = self._new_child(GATEWAY_NAME, adopt_from=old_gateway)
            gateway.start()
            self._await_startup([gateway], deadline)
        elif old_gateway is not None:
            self._stop_stray(old_gateway)
        if self._stop.is_set():
            return
        children = [self._new_child(n, adopt_from=adoptable.pop(n, None)) for n in self._names()]
        for child in children:
            child.start()
        # Leftovers of a bigger previous pool that still run: ours, so stop them.
        for rec in adoptable.values():
            self._stop_stray(rec)
        self._await_startup(children, deadline)
        if self._stop.is_set():
            return
        with self._rec_lock:
            self._phase = "running"
        self._write_state()
        log.info("pool ready: %s", ", ".join(f"{c.name}@{c.port}" for c in self._ordered()))

    def _start_upstream(
        self, name: str, adoptable: dict[str, ChildRecord], deadline: float
    ) -> None:
        """Start (or adopt) the model or the MCP server and wait until it is ready.

        Instances are configured with its URL, so when it comes back on another port
        than the previous supervisor's, the live instances in ``adoptable`` talk to the
        old URL: they are stopped (and ``adoptable`` emptied) to be started afresh.
        """
        old = adoptable.pop(name, None)
        child = self._new_child(name, adopt_from=old)
        # Registered before it starts, so the state written while waiting has its URL.
        self._upstreams[name] = child
        child.start()
        self._await_startup([child], deadline)
        if old is not None and old.port != child.port:
            for rec in adoptable.values():
                self._stop_stray(rec)
            adoptable.clear()

    def _names(self) -> list[str]:
        return instance_names(self.size)

    def _await_startup(self, children: list[Watcher], deadline: float) -> None:
        while True:
            if self._startup_error is not None:
                raise self._startup_error
            if self._stop.is_set():
                return
            states = {c.name: c.record.state for c in children}
            fatal = [c for c in children if c.record.state == "fatal"]
            if fatal:
                c = fatal[0]
                raise InstanceStartError(f"instance {c.name} failed to start: {c.record.reason}")
            if all(s == "ready" for s in states.values()):
                return
            if self.clock() > deadline:
                late = [c for c in children if c.record.state != "ready"]
                detail = "; ".join(
                    f"{c.name} {c.record.state}"
                    + (f" ({c.record.reason})" if c.record.reason else "")
                    for c in late
                )
                raise InstanceStartError(f"instances not ready in time: {detail}")
            self._flush_state()
            time.sleep(0.05)

    def _loop(self) -> None:
        next_reap = 0.0
        while not self._stop.is_set():
            self._flush_state()
            if self.reaper is not None and time.monotonic() >= next_reap:
                next_reap = time.monotonic() + self.config.supervisor.check_interval_s
                self.reaper.reap()
            self._stop.wait(0.1)

    def _shutdown(self) -> None:
        self._stop.set()
        with self._rec_lock:
            children = self._ordered()
        for child in children:
            child.wake.set()
        for child in children:
            if child.thread is not None:
                child.thread.join(self.config.pool.stop_grace_s + 20)
        # Children whose thread never ran (or died) are stopped here.
        with ThreadPoolExecutor(max_workers=max(1, len(children))) as pool:
            list(pool.map(lambda w: w.final_stop(), children))
        if self.reaper is not None:
            # What agents detached was re-parented to us: it goes with the pool.
            killed = self.reaper.kill_all(self.config.pool.stop_grace_s)
            if killed:
                log.info("stopped %d detached process(es): %s", len(killed), killed)

    def _stop_stray(self, rec: ChildRecord) -> None:
        ref = rec.ref
        if ref is None or not ref.alive():
            return
        log.info("stopping %s (pid %s): not part of the pool any more", rec.name, ref.pid)
        with contextlib.suppress(ProcessError):
            process.stop(ref, grace_s=self.config.pool.stop_grace_s, port=rec.port)
        if rec.port is not None:
            self.leases.release(rec.port, [Owner(ref.pid, ref.create_time)])

    # --- state ----------------------------------------------------------------------

    def _ordered(self) -> list[Watcher]:
        kids = list(self._children.values())
        order = {"model": 0, "mcp": 1, "gateway": 2}
        return sorted(kids, key=lambda c: (order.get(c.program.kind, 2), _name_key(c.name)))

    def _upstream_url(self, name: str) -> str | None:
        child = self._upstreams.get(name)
        if child is None or child.port is None:
            return None
        return child.program.url(child.port)

    def _model_url(self) -> str | None:
        return self._upstream_url(MODEL_NAME)

    def _mcp_url(self) -> str | None:
        return self._upstream_url(MCP_NAME)

    def _flush_state(self) -> None:
        if self._dirty.is_set():
            self._dirty.clear()
            self._write_state()

    def _write_state(self) -> None:
        try:
            with self._write_lock:
                write_state(self.paths.state_file, self.snapshot())
        except PoolError as e:
            log.error("%s", e)

    def _handle_command(self, request: dict[str, Any]) -> Any:
        cmd = request["cmd"]
        if cmd == "status":
            return public_dump(self.snapshot())
        if cmd == "stop":
            self.request_stop()
            return {"stopping": True}
        if self._phase != "running":
            raise PoolError(f"the pool is {self._phase}; try again when it is running")
        timeout = request.get("timeout")
        if cmd == "restart":
            state = self.restart(request.get("name"), timeout)
        elif cmd == "scale":
            state = self.scale(int(request["size"]), timeout)
        elif cmd == "add":
            state = self.add_instance(
                str(request["name"]), wait=bool(request.get("wait")), timeout=timeout
            )
        elif cmd == "remove":
            state = self.remove_instance(str(request["name"]), wait=bool(request.get("wait")))
        else:
            raise PoolError(f"unknown command {cmd!r}")
        return public_dump(state)

    # --- children -------------------------------------------------------------------

    def _new_child(self, name: str, adopt_from: ChildRecord | None = None) -> Watcher:
        # A live child of a dead supervisor was started with its old password; keep it
        # so the child can be adopted. Anything new gets a fresh secret of its own.
        password = adopt_from.password if adopt_from and adopt_from.password else ""
        child = Watcher(self._context(), self._make_program(name, password), adopt_from)
        with self._rec_lock:
            self._children[name] = child
        self._dirty.set()
        return child

    def _context(self) -> PoolContext:
        if self._ctx is None:
            assert self.me is not None
            self._ctx = PoolContext(
                paths=self.paths,
                config=self.config,
                clock=self.clock,
                leases=self.leases,
                me=self.me,
                sink=self._sink,
                rec_lock=self._rec_lock,
                dirty=self._dirty,
                stop=self._stop,
                starting=lambda: self._phase == "starting",
                fail_startup=self._fail_startup,
                busy_hint=self._busy_hint,
                pulses=self.pulses,
            )
        return self._ctx

    def _busy_hint(self, name: str) -> int | None:
        hint = self.busy_hint
        try:
            return hint(name) if hint is not None else None
        except Exception:  # a hint is advice: never let it break a health check
            log.exception("busy hint for %s failed", name)
            return None

    def _fail_startup(self, error: SwarmPoolError) -> None:
        if self._startup_error is None:
            self._startup_error = error

    def _make_program(self, name: str, password: str = "") -> Program:
        if self._program_factory is not None:
            return self._program_factory(name, self._model_url)
        if name == MODEL_NAME:
            return model_program(self.config, self.paths)
        if name == GATEWAY_NAME:
            return gateway_program(self.config, self.paths, self.gateway_password)
        if name == MCP_NAME:
            return mcp_program(self.paths)
        if self.binary is None:
            from swarm_pool.opencode.binary import find_opencode

            self.binary = find_opencode(self.config)
        return opencode_program(
            name,
            config=self.config,
            paths=self.paths,
            binary=self.binary,
            password=password or secrets.token_urlsafe(24),
            model_url=self._model_url,
            mcp_url=self._mcp_url,
        )

    def _wait_ready(
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
                if rec.state == "fatal":
                    raise InstanceStartError(f"instance {c.name} is fatal: {rec.reason}")
                if rec.state != "ready":
                    pending.append(c)
            if not pending:
                return
            time.sleep(0.05)
        names = ", ".join(c.name for c in kids)
        raise InstanceStartError(f"{names} not ready within {timeout:g}s")


def _name_key(name: str) -> tuple[str, int]:
    prefix, _, num = name.rpartition("-")
    return (prefix, int(num)) if num.isdigit() else (name, 0)


_POOL_NAME_RE = re.compile(r"^oc-\d+$")
_EXTRA_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def is_extra_name(name: str) -> bool:
    """An instance added by name (``add``), not one of the sized pool's ``oc-N``."""
    return name not in (MODEL_NAME, GATEWAY_NAME, MCP_NAME) and not _POOL_NAME_RE.match(name)


def check_extra_name(name: str) -> None:
    if not _EXTRA_NAME_RE.match(name) or not is_extra_name(name):
        raise PoolError(
            f"bad extra instance name {name!r}: lowercase letters, digits, - and _, "
            "not 'model', 'mcp' or 'gateway' and not the pool's own oc-N"
        )
