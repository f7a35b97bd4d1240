"""The supervisor: starts, adopts, watches, restarts and stops the pool's children.

One ``Supervisor`` runs in the background daemon. It holds ``.swarm/supervisor.lock`` for
its whole life (so two supervisors never run one project), leases ports, and runs one
thread per child (circus-style watchers), so a slow stop or start of one child never
delays the checks of another. Each check period a child thread checks liveness (psutil:
pid alive, not a zombie, same ``create_time``), readiness (HTTP probe with a timeout;
``health_failures`` failures in a row -> restart) and memory (the tree's RSS over
``max_rss_mb`` for ``memory_checks`` checks -> draining, restart once idle or after
``memory_grace_s``); ``policy.ChildPolicy`` makes every decision. Failures restart with
jittered exponential backoff; flapping makes a child ``fatal`` until a manual restart.

A port taken by a foreign process between allocation and bind makes the child exit at
once. During start-up that fails the whole start with ``PortInUseError`` (the CLI reports
it and nothing is left running); later, in the loop, the child simply gets a new port.

Every change is written to the state file, and lifecycle events go to the supervisor log
and, through ``EventSink``, to the project's store when it is available.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock

from swarm_pool.config import Config
from swarm_pool.errors import (
    InstanceStartError,
    OpenCodeError,
    PoolAlreadyRunningError,
    PoolError,
    PortError,
    PortInUseError,
    ProcessError,
    SwarmPoolError,
    UnknownInstanceError,
)
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool import process
from swarm_pool.pool.control import ControlServer, socket_path_for
from swarm_pool.pool.instance import (
    MODEL_NAME,
    Program,
    instance_names,
    log_tail,
    model_program,
    opencode_program,
    rotate_log,
)
from swarm_pool.pool.policy import ChildPolicy, Clock, MemoryVerdict
from swarm_pool.pool.ports import Owner, PortLeases, port_is_free
from swarm_pool.pool.state import (
    ChildRecord,
    ErrorInfo,
    ExitInfo,
    Phase,
    PoolState,
    SupervisorRecord,
    read_state,
    write_state,
)
from swarm_pool.store import events as ev

log = logging.getLogger("swarm_pool.pool")

ProgramsFn = Callable[[str, Callable[[], str | None]], Program]


def lock_path(paths: ProjectPaths) -> Path:
    return paths.swarm_dir / "supervisor.lock"


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


@dataclass(eq=False)
class Child:
    program: Program
    record: ChildRecord
    policy: ChildPolicy
    launched: process.Launched | None = None
    ref: process.ProcRef | None = None
    port: int | None = None
    launch_mono: float = 0.0
    restart_at: float = 0.0
    needs_launch: bool = True
    new_port: bool = False
    manual_restart: bool = False
    removing: bool = False
    finished: bool = False
    adopt_from: ChildRecord | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.program.name


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
        self.password = ""
        self.me: Owner | None = None
        self._children: dict[str, Child] = {}
        self._rec_lock = threading.RLock()
        self._ops_lock = threading.Lock()  # one restart/scale at a time
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._phase: Phase = "starting"
        self._startup_error: SwarmPoolError | None = None
        self._error: ErrorInfo | None = None
        self._sink: EventSink | None = None
        self._model: Child | None = None

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
                password=self.password,
                socket=str(self.socket_path),
                model_url=self._model_url(),
                instances=[c.record.model_copy(deep=True) for c in self._ordered()],
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
                current = [c for c in self._ordered() if c.program.kind == "opencode"]
                removed = [c for c in current if c.name not in wanted]
                added = [self._new_child(n) for n in wanted if n not in self._children]
                self.size = size
            for child in removed:
                with child.lock:
                    child.removing = True
                    child.record.draining = True
                child.wake.set()
            for child in added:
                self._start_thread(child)
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

    # --- main -------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; 0 after a clean stop, 1 if start-up failed."""
        self.paths.ensure()
        lock = filelock.FileLock(str(lock_path(self.paths)), thread_local=False)
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
        self.password = self._choose_password(previous)
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

    def _choose_password(self, previous: PoolState | None) -> str:
        # Live children of a dead supervisor were started with the old password; keep it
        # so they can be adopted. A fresh pool gets a fresh secret.
        if previous is not None and any(
            rec.ref is not None and rec.ref.alive() for rec in previous.instances
        ):
            return previous.password
        return secrets.token_urlsafe(24)

    def _start_up(self, previous: PoolState | None) -> None:
        adoptable = {rec.name: rec for rec in previous.instances} if previous else {}
        deadline = self.clock() + 2 * self.config.pool.start_timeout_s + 5
        if self.with_model:
            old_model = adoptable.pop(MODEL_NAME, None)
            model = self._new_child(MODEL_NAME, adopt_from=old_model)
            self._model = model
            self._start_thread(model)
            self._await_startup([model], deadline)
            if old_model is not None and old_model.port != model.port:
                # Live instances talk to the old model URL: replace rather than adopt them.
                for rec in adoptable.values():
                    self._stop_stray(rec)
                adoptable = {}
        if self._stop.is_set():
            return
        children = [self._new_child(n, adopt_from=adoptable.pop(n, None)) for n in self._names()]
        for child in children:
            self._start_thread(child)
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

    def _names(self) -> list[str]:
        return instance_names(self.size)

    def _await_startup(self, children: list[Child], deadline: float) -> None:
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
        while not self._stop.is_set():
            self._flush_state()
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
            list(pool.map(self._final_stop, children))

    def _final_stop(self, child: Child) -> None:
        with child.lock:
            if not child.finished:
                self._terminate(child, reason="pool stopped")
                self._release_port(child)
                self._set(child, state="stopped", pid=None, create_time=None, draining=False)
                child.finished = True

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

    def _ordered(self) -> list[Child]:
        kids = list(self._children.values())
        return sorted(kids, key=lambda c: (c.program.kind != "model", _name_key(c.name)))

    def _model_url(self) -> str | None:
        model = self._model
        if model is None or model.port is None:
            return None
        return model.program.url(model.port)

    def _set(self, child: Child, **fields: Any) -> None:
        with self._rec_lock:
            for key, value in fields.items():
                setattr(child.record, key, value)
        self._dirty.set()

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
            return self.snapshot().model_dump(mode="json", exclude={"password"})
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
        else:
            raise PoolError(f"unknown command {cmd!r}")
        return state.model_dump(mode="json", exclude={"password"})

    # --- children -------------------------------------------------------------------

    def _new_child(self, name: str, adopt_from: ChildRecord | None = None) -> Child:
        program = self._make_program(name)
        child = Child(
            program=program,
            record=ChildRecord(name=name, kind=program.kind),
            policy=ChildPolicy(self.config.supervisor, clock=self.clock),
            adopt_from=adopt_from,
        )
        if adopt_from is not None and self._in_range(adopt_from.port):
            # A replaced child prefers its old port (kept by the lease if still ours).
            child.port = adopt_from.port
        with self._rec_lock:
            self._children[name] = child
        self._dirty.set()
        return child

    def _make_program(self, name: str) -> Program:
        if self._program_factory is not None:
            return self._program_factory(name, self._model_url)
        if name == MODEL_NAME:
            return model_program(self.config, self.paths)
        if self.binary is None:
            from swarm_pool.opencode.binary import find_opencode

            self.binary = find_opencode(self.config)
        return opencode_program(
            name,
            config=self.config,
            paths=self.paths,
            binary=self.binary,
            password=self.password,
            model_url=self._model_url,
        )

    def _start_thread(self, child: Child) -> None:
        child.thread = threading.Thread(
            target=self._child_main, args=(child,), name=f"child-{child.name}", daemon=True
        )
        child.thread.start()

    def _child_main(self, child: Child) -> None:
        interval = self.config.supervisor.check_interval_s
        while True:
            with child.lock:
                if self._stop.is_set() or child.removing:
                    self._retire(child)
                    return
                try:
                    self._step(child)
                except PortError as e:
                    self._port_failure(child, e)
                except SwarmPoolError as e:
                    log.error("%s: %s", child.name, e)
                    self._on_failure(child, str(e), None)
                except Exception:  # a bug in one child's step must not kill its watcher
                    log.exception("%s: unexpected error in the supervisor step", child.name)
                starting = child.record.state == "starting"
            # Poll fast while starting so `start` returns soon after the child is ready.
            child.wake.wait(min(interval, 0.1) if starting else interval)
            child.wake.clear()

    def _retire(self, child: Child) -> None:
        if child.removing and not self._stop.is_set():
            self._terminate(child, reason="removed by scale")
        else:
            self._terminate(child, reason="pool stopped")
        self._release_port(child)
        self._set(child, state="stopped", pid=None, create_time=None, draining=False)
        child.finished = True

    def _step(self, child: Child) -> None:
        if child.manual_restart:
            child.manual_restart = False
            self._manual_restart(child)
            return
        if child.needs_launch:
            child.needs_launch = False
            if child.adopt_from is not None and self._try_adopt(child, child.adopt_from):
                return
            child.adopt_from = None
            self._launch(child)
            return
        state = child.record.state
        if state == "starting":
            self._check_starting(child)
        elif state in ("ready", "unhealthy"):
            self._check_running(child)
        elif state == "backoff" and self.clock() >= child.restart_at:
            self._relaunch(child)

    def _manual_restart(self, child: Child) -> None:
        if self._alive(child):
            self._terminate(child, reason="manual restart")
        child.policy.reset()
        self._set(child, restarts=child.record.restarts + 1, reason="")
        self._relaunch(child, reason="manual restart")

    def _try_adopt(self, child: Child, rec: ChildRecord) -> bool:
        ref = rec.ref
        if ref is None or rec.port is None or not ref.alive():
            return False
        try:
            child.program.probe(rec.port, self.config.supervisor.health_timeout_s)
        except OpenCodeError as e:
            log.info(
                "%s: pid %s is alive but not healthy (%s); replacing it", child.name, ref.pid, e
            )
            with contextlib.suppress(ProcessError):
                process.stop(ref, grace_s=self.config.pool.stop_grace_s, port=rec.port)
            return False
        assert self.me is not None
        try:
            self.leases.claim(
                rec.port, [self.me, Owner(ref.pid, ref.create_time)], label=self._label(child)
            )
        except PortInUseError as e:
            log.warning("%s: cannot re-lease port %s (%s); replacing it", child.name, rec.port, e)
            with contextlib.suppress(ProcessError):
                process.stop(ref, grace_s=self.config.pool.stop_grace_s, port=None)
            return False
        child.ref = ref
        child.launched = None
        child.port = rec.port
        child.policy.started()
        self._set(
            child,
            port=rec.port,
            pid=ref.pid,
            create_time=ref.create_time,
            state="ready",
            started_at=rec.started_at,
            ready_at=rec.ready_at,
            restarts=rec.restarts,
            reason="",
        )
        log.info("%s: adopted pid %s on port %s", child.name, ref.pid, rec.port)
        return True

    def _label(self, child: Child) -> str:
        return f"{self.paths.root} {child.name}"

    def _lease_port(self, child: Child, prefer: int | None) -> int:
        assert self.me is not None
        if child.program.kind == "model" and self.config.model.port:
            port = self.config.model.port
            self.leases.claim(port, [self.me], label=self._label(child))
            return port
        return self.leases.acquire([self.me], prefer=prefer, label=self._label(child))

    def _in_range(self, port: int | None) -> bool:
        pool = self.config.pool
        return port is not None and pool.port_min <= port <= pool.port_max

    def _choose_port(self, child: Child) -> int:
        """The child's previous port when it is still free, else a newly leased one."""
        assert self.me is not None
        if child.port is not None and not child.new_port and self._in_range(child.port):
            if port_is_free(child.port):
                try:
                    self.leases.claim(child.port, [self.me], label=self._label(child))
                    return child.port
                except PortInUseError:
                    pass
            log.warning("%s: port %s is taken; leasing another", child.name, child.port)
        if child.port is not None:
            self.leases.release(child.port, [self.me])
        child.new_port = False
        return self._lease_port(child, prefer=None)

    def _launch(self, child: Child) -> None:
        assert self.me is not None
        child.port = self._choose_port(child)
        port = child.port
        program = child.program
        rotate_log(
            program.log_path,
            max_bytes=self.config.supervisor.log_max_bytes,
            backups=self.config.supervisor.log_backups,
            copy_truncate=False,
        )
        argv = program.command(port)
        env = program.env(port)
        _log_marker(program.log_path, f"swarm-pool: launching {' '.join(argv)}")
        launched = process.launch(argv, env=env, cwd=program.cwd, log_path=program.log_path)
        child.launched = launched
        child.ref = launched.ref
        child.launch_mono = self.clock()
        child.policy.started()
        self.leases.set_owners(port, [self.me, Owner(launched.ref.pid, launched.ref.create_time)])
        self._set(
            child,
            port=port,
            pid=launched.ref.pid,
            create_time=launched.ref.create_time,
            state="starting",
            started_at=time.time(),
            ready_at=None,
            draining=False,
            reason="",
        )
        self._emit(
            child,
            ev.InstanceStarted(instance=child.name, pid=launched.ref.pid, port=port),
            f"{child.name}: started pid {launched.ref.pid} on port {port}",
        )

    def _relaunch(self, child: Child, reason: str = "") -> None:
        self._launch(child)
        self._emit(
            child,
            ev.InstanceRestarted(
                instance=child.name,
                pid=child.record.pid,
                port=child.port,
                restarts=child.record.restarts,
                reason=reason or child.record.reason,
            ),
            f"{child.name}: restarted (restart #{child.record.restarts})",
        )

    def _alive(self, child: Child) -> bool:
        if child.launched is not None and child.launched.popen.poll() is not None:
            return False
        return child.ref is not None and child.ref.alive()

    def _exit_status(self, child: Child) -> process.ExitStatus:
        if child.launched is not None:
            return process.ExitStatus.from_returncode(child.launched.popen.poll())
        return process.ExitStatus(None, None)

    def _probe(self, child: Child, timeout: float) -> str | None:
        """None when the probe answered healthy, else why not."""
        assert child.port is not None
        try:
            child.program.probe(child.port, timeout)
        except OpenCodeError as e:
            return str(e)
        return None

    def _check_starting(self, child: Child) -> None:
        if not self._alive(child):
            status = self._exit_status(child)
            self._died(child, status, during_start=True)
            return
        if self._probe(child, min(1.0, self.config.supervisor.health_timeout_s)) is None:
            startup_ms = int((self.clock() - child.launch_mono) * 1000)
            self._set(child, state="ready", ready_at=time.time(), reason="")
            self._emit(
                child,
                ev.InstanceReady(
                    instance=child.name,
                    pid=child.record.pid,
                    port=child.port,
                    startup_ms=startup_ms,
                ),
                f"{child.name}: ready in {startup_ms} ms",
            )
            return
        if self.clock() - child.launch_mono > self.config.pool.start_timeout_s:
            reason = f"not ready within {self.config.pool.start_timeout_s:g}s"
            self._terminate(child, reason=reason)
            self._on_failure(child, reason, None)

    def _check_running(self, child: Child) -> None:
        if not self._alive(child):
            self._died(child, self._exit_status(child), during_start=False)
            return
        sup = self.config.supervisor
        problem = self._probe(child, sup.health_timeout_s)
        if problem is not None:
            if child.record.state != "unhealthy":
                self._emit(
                    child,
                    ev.InstanceUnhealthy(
                        instance=child.name, pid=child.record.pid, port=child.port, reason=problem
                    ),
                    f"{child.name}: unhealthy: {problem}",
                    logging.WARNING,
                )
            self._set(child, state="unhealthy", reason=problem)
            if child.policy.on_health(False):
                reason = f"{child.policy.health_failures} failed health checks in a row"
                self._terminate(child, reason=reason)
                self._on_failure(child, reason, None)
            return
        child.policy.on_health(True)
        if child.record.state == "unhealthy":
            log.info("%s: healthy again", child.name)
            self._set(child, state="ready", reason="")
        self._check_memory(child)
        rotate_log(
            child.program.log_path,
            max_bytes=sup.log_max_bytes,
            backups=sup.log_backups,
            copy_truncate=True,
        )

    def _check_memory(self, child: Child) -> None:
        if child.ref is None:
            return
        stats = process.tree_stats(child.ref)
        if stats is None:
            return
        rss_mb = stats[0]
        busy_fn = child.program.busy
        port = child.port

        def busy() -> int | None:
            if busy_fn is None or port is None:
                return 0
            return busy_fn(port, self.config.supervisor.health_timeout_s)

        verdict = child.policy.on_memory(rss_mb, busy)
        if verdict is MemoryVerdict.OK:
            return
        if verdict is MemoryVerdict.DRAINING:
            if not child.record.draining:
                log.warning(
                    "%s: RSS %.0f MB over the %d MB limit; draining (no new work) until idle",
                    child.name,
                    rss_mb,
                    self.config.supervisor.max_rss_mb,
                )
                self._set(child, draining=True)
            return
        reason = f"RSS {rss_mb:.0f} MB over the {self.config.supervisor.max_rss_mb} MB limit"
        self._set(child, draining=True)
        self._terminate(child, reason=reason)
        self._on_failure(child, reason, None)

    def _died(self, child: Child, status: process.ExitStatus, *, during_start: bool) -> None:
        reason = status.describe()
        tail = log_tail(child.program.log_path)
        if during_start and tail:
            reason = f"{reason} during start-up: {tail}"
        self._emit(
            child,
            ev.InstanceExited(
                instance=child.name,
                pid=child.record.pid,
                port=child.port,
                exit_code=status.code,
                signal=status.signal,
                reason=reason,
            ),
            f"{child.name}: pid {child.record.pid} {reason}",
            logging.WARNING,
        )
        if child.ref is not None:
            orphans = process.reap_orphans(child.ref)
            if orphans:
                log.info("%s: killed %d orphaned processes of its group", child.name, orphans)
        child.launched = None
        child.ref = None
        exit_info = _exit(status, reason)
        if during_start and child.port is not None and not port_is_free(child.port):
            # Nothing of ours is left in the tree, so a foreign process holds the port.
            error = PortInUseError(
                f"port {child.port} was taken by another process between allocation and "
                f"bind ({child.name} exited: {status.describe()})"
            )
            if self._phase == "starting":
                self._startup_error = error
                self._set(child, state="fatal", reason=str(error), last_exit=exit_info, pid=None)
                return
            log.warning("%s: %s; it gets a new port", child.name, error)
            child.new_port = True
        self._on_failure(child, reason, exit_info)

    def _on_failure(self, child: Child, reason: str, exit_info: ExitInfo | None) -> None:
        if exit_info is not None:
            self._set(child, last_exit=exit_info)
        decision = child.policy.on_failure(reason)
        if decision.fatal:
            self._set(child, state="fatal", reason=decision.reason, pid=None, create_time=None)
            self._emit(
                child,
                ev.InstanceFatal(instance=child.name, port=child.port, reason=decision.reason),
                f"{child.name}: fatal: {decision.reason}; `swarm-pool restart {child.name}` "
                "to try again",
                logging.ERROR,
            )
            return
        child.restart_at = self.clock() + decision.delay_s
        self._set(
            child,
            state="backoff",
            reason=reason,
            restarts=child.record.restarts + 1,
            pid=None,
            create_time=None,
            draining=False,
        )
        log.info("%s: restarting in %.2fs (%s)", child.name, decision.delay_s, reason)

    def _port_failure(self, child: Child, error: PortError) -> None:
        if self._phase == "starting":
            self._startup_error = error
            self._set(child, state="fatal", reason=str(error))
            return
        log.error("%s: %s", child.name, error)
        self._on_failure(child, str(error), None)

    def _terminate(self, child: Child, *, reason: str) -> None:
        """Stop the child's tree if it runs; record how it ended."""
        ref = child.ref
        if ref is None:
            return
        popen = child.launched.popen if child.launched is not None else None
        was_alive = self._alive(child)
        try:
            status = process.stop(
                ref, grace_s=self.config.pool.stop_grace_s, port=child.port, popen=popen
            )
        except ProcessError as e:
            log.error("%s: %s", child.name, e)
            status = process.ExitStatus(None, None)
        child.launched = None
        child.ref = None
        if was_alive:
            self._emit(
                child,
                ev.InstanceStopped(instance=child.name, pid=ref.pid, port=child.port),
                f"{child.name}: stopped pid {ref.pid} ({reason})",
            )
            self._set(child, last_exit=_exit(status, reason), pid=None, create_time=None)

    def _release_port(self, child: Child) -> None:
        if child.port is not None and self.me is not None:
            with contextlib.suppress(PortError):
                self.leases.release(child.port, [self.me])

    def _emit(
        self, child: Child, event: ev.BaseEvent, line: str, level: int = logging.INFO
    ) -> None:
        if self._sink is not None:
            self._sink.emit(event, line, level)
        else:
            log.log(level, line)

    def _wait_ready(
        self, children: Iterable[Child], timeout: float, *, not_pid: int | None = None
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


def _exit(status: process.ExitStatus | None, reason: str) -> ExitInfo:
    if status is None:
        return ExitInfo(reason=reason)
    return ExitInfo(code=status.code, signal=status.signal, reason=reason)


def _name_key(name: str) -> tuple[str, int]:
    prefix, _, num = name.rpartition("-")
    return (prefix, int(num)) if num.isdigit() else (name, 0)


def _log_marker(path: Path, text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"--- {stamp} {text}\n".encode())
        finally:
            os.close(fd)
