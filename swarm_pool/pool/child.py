"""One supervised child's process and port: launch, adopt, relaunch, terminate.

Room: pool. ``ChildProcess`` owns what one ``Program``'s run is made of and the
primitives that change it: its ``ChildRecord`` (every change under the pool's lock, then
the state file is marked dirty; each state change checked against ``InstanceState``'s
table), its port (the previous one when still free and in range, else a newly leased
one; the model's and the gateway's fixed ports), the launch (log rotated, a marker
line, lease handed to the child), adoption of a live child of a dead supervisor (pid,
``create_time`` and the readiness probe must all match), termination of its whole tree,
its ``Pulse`` (the event stream read as signs of life) and its lifecycle events.
``PoolContext`` is what every child shares with the supervisor. The thread that decides
when to do what is ``Watcher`` in ``watcher.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm_pool.config import Config
from swarm_pool.errors import (
    OpenCodeError,
    PortError,
    PortInUseError,
    ProcessError,
    SwarmPoolError,
)
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool import process
from swarm_pool.pool.instance import Program, rotate_log
from swarm_pool.pool.policy import ChildPolicy, Clock
from swarm_pool.pool.ports import Owner, PortLeases, port_is_free
from swarm_pool.pool.pulse import Pulse, Pulses
from swarm_pool.pool.sink import EventSink
from swarm_pool.pool.state import (
    SERVING,
    ChildRecord,
    ExitInfo,
    InstanceState,
    check_transition,
)
from swarm_pool.store import events as ev
from swarm_pool.store.events import RestartCause

log = logging.getLogger("swarm_pool.pool")


@dataclass
class PoolContext:
    """What every watcher shares with the supervisor."""

    paths: ProjectPaths
    config: Config
    clock: Clock
    leases: PortLeases
    me: Owner
    sink: EventSink | None
    rec_lock: threading.RLock
    dirty: threading.Event
    stop: threading.Event
    starting: Callable[[], bool]  # is the pool still in its first start-up?
    fail_startup: Callable[[SwarmPoolError], None]
    # Busy sessions of an instance as the work's own records say (None: unknown).
    busy_hint: Callable[[str], int | None] = lambda _name: None
    # The instances' pulses, where the worker engine of this process subscribes.
    pulses: Pulses = field(default_factory=Pulses)


class ChildProcess:
    """One child's run, port and record, and the primitives that change them."""

    def __init__(
        self, ctx: PoolContext, program: Program, adopt_from: ChildRecord | None = None
    ) -> None:
        self.ctx = ctx
        self.program = program
        self.record = ChildRecord(name=program.name, kind=program.kind, password=program.password)
        self.policy = ChildPolicy(ctx.config.supervisor, clock=ctx.clock)
        self.launched: process.Launched | None = None
        self.ref: process.ProcRef | None = None
        self.port: int | None = None
        self.launch_mono = 0.0
        self.probed_at: float | None = None  # last readiness probe while running
        self.restart_at = 0.0
        self.needs_launch = True
        self.new_port = False
        self.manual_restart = False
        self.removing = False
        self.finished = False
        self.adopt_from = adopt_from
        self.pulse: Pulse | None = None
        # Why the pending restart happens, for its instance_restarted event.
        self.restart_cause: RestartCause | None = None
        self.restart_reason = ""
        # Resource samples for `metrics`: the last sample's clock and tree CPU seconds.
        self._sample_at: float | None = None
        self._sample_cpu_s = 0.0
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        if adopt_from is not None and self._in_range(adopt_from.port):
            # A replaced child prefers its old port (kept by the lease if still ours).
            self.port = adopt_from.port

    @property
    def name(self) -> str:
        return self.program.name

    def live_record(self) -> ChildRecord:
        """A copy of the record with the live time of the last sign of life."""
        rec = self.record.model_copy(deep=True)
        if rec.pid is not None and rec.state in SERVING:
            rec.last_sign_at = time.time() - self.policy.silent_for()
        return rec

    def _start_pulse(self) -> None:
        self._stop_pulse()
        events, port = self.program.events, self.port
        if events is None or port is None:
            return
        self.pulse = Pulse(self.name, lambda: events(port), self.policy.note_life)
        self.ctx.pulses.publish(self.pulse)
        self.pulse.start()

    def _stop_pulse(self) -> None:
        if self.pulse is not None:
            self.pulse.stop()
            self.ctx.pulses.withdraw(self.pulse)
            self.pulse = None

    def _busy_now(self) -> int | None:
        """Busy sessions without asking the (unresponsive) instance: the most of what its
        stream showed and what the work's records say; None when neither knows."""
        if self.program.events is None:
            return 0  # no sessions at all (the model server)
        seen = self.pulse.busy if self.pulse is not None else None
        known = [n for n in (seen, self.ctx.busy_hint(self.name)) if n is not None]
        return max(known) if known else None

    def _set(self, **fields: Any) -> None:
        with self.ctx.rec_lock:
            if "state" in fields:
                check_transition(self.record.state, fields["state"])
            for key, value in fields.items():
                setattr(self.record, key, value)
        self.ctx.dirty.set()

    def _try_adopt(self, rec: ChildRecord) -> bool:
        ref = rec.ref
        if ref is None or rec.port is None or not ref.alive():
            return False
        try:
            self.program.probe(rec.port, self.ctx.config.supervisor.health_timeout_s)
        except OpenCodeError as e:
            log.info(
                "%s: pid %s is alive but not healthy (%s); replacing it", self.name, ref.pid, e
            )
            with contextlib.suppress(ProcessError):
                process.stop(ref, grace_s=self.ctx.config.pool.stop_grace_s, port=rec.port)
            return False
        try:
            self.ctx.leases.claim(
                rec.port, [self.ctx.me, Owner(ref.pid, ref.create_time)], label=self._label()
            )
        except PortInUseError as e:
            log.warning("%s: cannot re-lease port %s (%s); replacing it", self.name, rec.port, e)
            with contextlib.suppress(ProcessError):
                process.stop(ref, grace_s=self.ctx.config.pool.stop_grace_s, port=None)
            return False
        self.ref = ref
        self.launched = None
        self.port = rec.port
        self.policy.started()
        self._start_pulse()
        self._set(
            port=rec.port,
            pid=ref.pid,
            create_time=ref.create_time,
            state=InstanceState.READY,
            started_at=rec.started_at,
            ready_at=rec.ready_at,
            restarts=rec.restarts,
            reason="",
        )
        log.info("%s: adopted pid %s on port %s", self.name, ref.pid, rec.port)
        return True

    def _label(self) -> str:
        return f"{self.ctx.paths.root} {self.name}"

    def _lease_port(self, prefer: int | None) -> int:
        if self.program.kind == "model" and self.ctx.config.model.port:
            port = self.ctx.config.model.port
            self.ctx.leases.claim(port, [self.ctx.me], label=self._label())
            return port
        if self.program.kind == "gateway":
            port = self.ctx.config.gateway.port
            try:
                self.ctx.leases.claim(port, [self.ctx.me], label=self._label())
            except PortInUseError as e:
                raise PortInUseError(
                    f"the gateway's port {port} on 127.0.0.1 is taken ({e}); is another "
                    "`opencode serve` running? Stop it or set [gateway] port"
                ) from e
            return port
        return self.ctx.leases.acquire([self.ctx.me], prefer=prefer, label=self._label())

    def _in_range(self, port: int | None) -> bool:
        pool = self.ctx.config.pool
        return port is not None and pool.port_min <= port <= pool.port_max

    def _choose_port(self) -> int:
        """The child's previous port when it is still free, else a newly leased one."""
        if self.port is not None and not self.new_port and self._in_range(self.port):
            if port_is_free(self.port):
                try:
                    self.ctx.leases.claim(self.port, [self.ctx.me], label=self._label())
                    return self.port
                except PortInUseError:
                    pass
            log.warning("%s: port %s is taken; leasing another", self.name, self.port)
        if self.port is not None:
            self.ctx.leases.release(self.port, [self.ctx.me])
        self.new_port = False
        return self._lease_port(prefer=None)

    def _launch(self) -> None:
        self.port = self._choose_port()
        port = self.port
        program = self.program
        rotate_log(
            program.log_path,
            max_bytes=self.ctx.config.supervisor.log_max_bytes,
            backups=self.ctx.config.supervisor.log_backups,
            copy_truncate=False,
        )
        argv = program.command(port)
        env = program.env(port)
        _log_marker(program.log_path, f"swarm-pool: launching {' '.join(argv)}")
        launched = process.launch(argv, env=env, cwd=program.cwd, log_path=program.log_path)
        self.launched = launched
        self.ref = launched.ref
        self.launch_mono = self.ctx.clock()
        self.probed_at = None
        self._sample_at = None
        self.policy.started()
        owner = Owner(launched.ref.pid, launched.ref.create_time)
        self.ctx.leases.set_owners(port, [self.ctx.me, owner])
        self._set(
            port=port,
            pid=launched.ref.pid,
            create_time=launched.ref.create_time,
            state=InstanceState.STARTING,
            started_at=time.time(),
            ready_at=None,
            draining=False,
            reason="",
        )
        self._emit(
            ev.InstanceStarted(instance=self.name, pid=launched.ref.pid, port=port),
            f"{self.name}: started pid {launched.ref.pid} on port {port}",
        )

    def _relaunch(self) -> None:
        # Taken before the launch, which clears the record's reason.
        cause, reason = self.restart_cause, self.restart_reason or self.record.reason
        self.restart_cause, self.restart_reason = None, ""
        now, window = time.time(), self.ctx.config.supervisor.flap_window_s
        recent = [t for t in self.record.restarted_at if now - t < window]
        self._set(restarted_at=[*recent[-self.ctx.config.supervisor.flap_max_restarts :], now])
        self._launch()
        self._emit(
            ev.InstanceRestarted(
                instance=self.name,
                pid=self.record.pid,
                port=self.port,
                restarts=self.record.restarts,
                reason=reason,
                cause=cause,
            ),
            f"{self.name}: restarted (restart #{self.record.restarts}, "
            f"{cause.value if cause else 'unknown cause'}: {reason})",
        )

    def _alive(self) -> bool:
        if self.launched is not None and self.launched.popen.poll() is not None:
            return False
        return self.ref is not None and self.ref.alive()

    def _exit_status(self) -> process.ExitStatus:
        if self.launched is not None:
            return process.ExitStatus.from_returncode(self.launched.popen.poll())
        return process.ExitStatus(None, None)

    def _probe(self, timeout: float) -> str | None:
        """None when the probe answered healthy, else why not."""
        assert self.port is not None
        try:
            self.program.probe(self.port, timeout)
        except OpenCodeError as e:
            return str(e)
        return None

    def _terminate(self, *, reason: str) -> None:
        """Stop the child's tree if it runs; record how it ended."""
        ref = self.ref
        if ref is None:
            return
        popen = self.launched.popen if self.launched is not None else None
        was_alive = self._alive()
        try:
            status = process.stop(
                ref, grace_s=self.ctx.config.pool.stop_grace_s, port=self.port, popen=popen
            )
        except ProcessError as e:
            log.error("%s: %s", self.name, e)
            status = process.ExitStatus(None, None)
        self.launched = None
        self.ref = None
        self._stop_pulse()
        if was_alive:
            self._emit(
                ev.InstanceStopped(instance=self.name, pid=ref.pid, port=self.port),
                f"{self.name}: stopped pid {ref.pid} ({reason})",
            )
            self._set(last_exit=exit_info(status, reason), pid=None, create_time=None)

    def _release_port(self) -> None:
        if self.port is not None:
            with contextlib.suppress(PortError):
                self.ctx.leases.release(self.port, [self.ctx.me])

    def _emit(self, event: ev.BaseEvent, line: str, level: int = logging.INFO) -> None:
        if self.ctx.sink is not None:
            self.ctx.sink.emit(event, line, level)
        else:
            log.log(level, line)


def exit_info(status: process.ExitStatus | None, reason: str) -> ExitInfo:
    if status is None:
        return ExitInfo(reason=reason)
    return ExitInfo(code=status.code, signal=status.signal, reason=reason)


def _log_marker(path: Path, text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"--- {stamp} {text}\n".encode())
        finally:
            os.close(fd)
