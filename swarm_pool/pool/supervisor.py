"""The supervisor: starts, adopts, watches, restarts and stops the pool's children.

One ``Supervisor`` runs in the background daemon (``daemon.py``). It holds
``.swarm/supervisor.lock`` for its whole life, so two supervisors never run one project.
Start-up brings up the scripted model first (when configured), then the shared MCP
server (``[opencode] mcp = "shared"``: instances are configured with its URL), then the
gateway (when enabled; its fixed port taken by anything else fails the start before
any instance runs), then the opencode instances in parallel, each on its own ``Watcher`` thread
(``watcher.py`` holds the per-child checks and restart logic); children left running by
a supervisor that was SIGKILLed are adopted instead of replaced when their pid,
``create_time`` and probe match. Start-up fails as a whole (phase ``failed``, ``error``
in the state file, nothing left running) on a port error, a bad config, a fatal child or
a deadline.

The supervisor writes the state file on every change, serves the control socket
(``status``, ``restart``, ``scale``, ``stop``; ``control.handle`` maps each request to a
method here), and tells the router which instances are draining (``draining()``, also
the ``draining`` flag of each child in the state file). The set of children and the
operations on it live in ``children.py``; ``SupervisorOptions`` says how one supervisor
departs from its config. Room: pool.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import filelock

from swarm_pool.config import Config
from swarm_pool.errors import (
    PoolAlreadyRunningError,
    PoolError,
    ProcessError,
    SwarmPoolError,
)
from swarm_pool.opencode.binary import find_opencode
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool import process
from swarm_pool.pool.children import Children, check_extra_name
from swarm_pool.pool.control import ControlServer, handle, socket_path_for
from swarm_pool.pool.instance import (
    GATEWAY_NAME,
    MCP_NAME,
    MODEL_NAME,
    Program,
    gateway_program,
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
    PoolPhase,
    PoolState,
    SupervisorRecord,
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


@dataclass(frozen=True)
class SupervisorOptions:
    """How one supervisor departs from its config (the daemon's ``--size``, tests).

    ``program_factory`` runs stand-in programs instead of the real children (such a pool
    has no MCP client, so it runs no MCP server unless ``with_mcp``); ``with_model``
    and ``with_mcp`` default to what the config says; ``reaper`` is set by the daemon,
    which made itself the child subreaper (``orphans.py``).
    """

    size: int | None = None
    binary: Path | None = None
    clock: Clock = time.monotonic
    program_factory: ProgramsFn | None = None
    with_model: bool | None = None
    reaper: OrphanReaper | None = None
    with_mcp: bool | None = None


class Supervisor:
    def __init__(
        self, paths: ProjectPaths, config: Config, options: SupervisorOptions | None = None
    ) -> None:
        opts = options if options is not None else SupervisorOptions()
        size, with_model, with_mcp = opts.size, opts.with_model, opts.with_mcp
        program_factory = opts.program_factory
        self.paths = paths
        self.config = config
        self.clock = opts.clock
        self.binary = opts.binary
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
        self._rec_lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self.children = Children(
            config.pool,
            size=size if size is not None else config.pool.size,
            new_child=self._new_child,
            rec_lock=self._rec_lock,
            dirty=self._dirty,
            stop=self._stop,
        )
        self._phase = PoolPhase.STARTING
        self._startup_error: SwarmPoolError | None = None
        self._error: ErrorInfo | None = None
        self._sink: EventSink | None = None
        self._ctx: PoolContext | None = None
        self.reaper = opts.reaper
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

    @property
    def size(self) -> int:
        return self.children.size

    @property
    def phase(self) -> PoolPhase:
        return self._phase

    def draining(self) -> set[str]:
        """Instances that get no new work: waiting for a memory restart or being removed."""
        return self.children.draining()

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
                instances=[c.live_record() for c in self.children.ordered()],
                error=self._error,
            )

    def restart(self, name: str | None = None, timeout: float | None = None) -> PoolState:
        """Restart one child (even a fatal one) or, with no name, each in turn."""
        with self.children.ops_lock:
            self.children.restart(name, timeout)
            self._write_state()
            return self.snapshot()

    def scale(self, size: int, timeout: float | None = None) -> PoolState:
        if not 1 <= size <= 64:
            raise PoolError(f"bad pool size {size}: use 1..64")
        with self.children.ops_lock:
            self.children.scale(size, timeout)
            self._write_state()
            return self.snapshot()

    def add_instance(
        self, name: str, *, wait: bool = False, timeout: float | None = None
    ) -> PoolState:
        """Start one extra named instance outside the sized pool (``scale`` leaves it
        alone), e.g. one dedicated to a single worker. Idempotent; with ``wait`` it
        returns once the instance is ready."""
        check_extra_name(name)
        with self.children.ops_lock:
            child = self.children.add_extra(name)
        if wait:
            self.children.wait_ready([child], timeout or self.config.pool.start_timeout_s + 5)
        return self.snapshot()

    def remove_instance(self, name: str, *, wait: bool = False) -> PoolState:
        """Stop and forget an extra instance added by ``add_instance``."""
        self.children.remove_extra(name, wait=wait)
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
        control = ControlServer(self.socket_path, lambda request: handle(self, request))
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
                if self._phase != PoolPhase.FAILED:
                    self._phase = PoolPhase.STOPPING
            self._write_state()
            self._shutdown()
            control.close()
            with self._rec_lock:
                if self._phase != PoolPhase.FAILED:
                    self._phase = PoolPhase.STOPPED
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
            self._phase = PoolPhase.FAILED
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
        children = [
            self._new_child(n, adopt_from=adoptable.pop(n, None)) for n in self.children.names()
        ]
        for child in children:
            child.start()
        # Leftovers of a bigger previous pool that still run: ours, so stop them.
        for rec in adoptable.values():
            self._stop_stray(rec)
        self._await_startup(children, deadline)
        if self._stop.is_set():
            return
        with self._rec_lock:
            self._phase = PoolPhase.RUNNING
        self._write_state()
        ready = ", ".join(f"{c.name}@{c.port}" for c in self.children.ordered())
        log.info("pool ready: %s", ready)

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
        self.children.upstreams[name] = child
        child.start()
        self._await_startup([child], deadline)
        if old is not None and old.port != child.port:
            for rec in adoptable.values():
                self._stop_stray(rec)
            adoptable.clear()

    def _await_startup(self, children: list[Watcher], deadline: float) -> None:
        self.children.await_startup(
            children,
            deadline,
            clock=self.clock,
            failed=lambda: self._startup_error,
            tick=self._flush_state,
        )

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
            children = self.children.ordered()
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

    def _model_url(self) -> str | None:
        return self.children.upstream_url(MODEL_NAME)

    def _mcp_url(self) -> str | None:
        return self.children.upstream_url(MCP_NAME)

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

    # --- children -------------------------------------------------------------------

    def _new_child(self, name: str, adopt_from: ChildRecord | None = None) -> Watcher:
        # A live child of a dead supervisor was started with its old password; keep it
        # so the child can be adopted. Anything new gets a fresh secret of its own.
        password = adopt_from.password if adopt_from and adopt_from.password else ""
        child = Watcher(self._context(), self._make_program(name, password), adopt_from)
        self.children.add(child)
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
                starting=lambda: self._phase == PoolPhase.STARTING,
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
