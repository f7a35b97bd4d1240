"""One supervised child and the thread that watches it (circus-style watchers).

A ``Watcher`` owns one ``Program``'s process: it launches it on a leased port (its
previous one when still free), or adopts it from a dead supervisor (pid, ``create_time``
and the readiness probe must all match), then checks it every ``check_interval_s`` on its
own thread, so a slow stop or start of one child never delays the checks of another:
liveness (psutil; a dead child's leftover group members are reaped), readiness (probed
every ``health_interval_s`` while healthy, every check once not; ``health_failures``
failed probes in a row and no sign of life for the policy's
no-progress window -> restart; a late answer and every event on the instance's stream,
read by its ``Pulse``, are signs of life) and memory (``ChildPolicy`` decides: fine,
draining, or restart). Failures restart after the policy's backoff, or
make the child ``fatal``. A port taken between allocation and bind fails the pool's
start (``PortInUseError``); later the child just gets a new port. Every change goes to
the child's ``ChildRecord`` (under the pool's lock) and every lifecycle event to the log
and the store; each restart records its cause and reason.
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

import psutil

from swarm_pool.config import Config
from swarm_pool.errors import (
    ConfigError,
    OpenCodeError,
    PortError,
    PortInUseError,
    ProcessError,
    SwarmPoolError,
)
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool import process
from swarm_pool.pool.instance import Program, log_tail, rotate_log
from swarm_pool.pool.policy import ChildPolicy, Clock, MemoryVerdict
from swarm_pool.pool.ports import Owner, PortLeases, port_is_free
from swarm_pool.pool.pulse import Pulse, Pulses
from swarm_pool.pool.sink import EventSink
from swarm_pool.pool.state import ChildRecord, ExitInfo
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


class Watcher:
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

    def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name=f"watch-{self.name}", daemon=True)
        self.thread.start()

    def live_record(self) -> ChildRecord:
        """A copy of the record with the live time of the last sign of life."""
        rec = self.record.model_copy(deep=True)
        if rec.pid is not None and rec.state in ("ready", "unhealthy"):
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
            for key, value in fields.items():
                setattr(self.record, key, value)
        self.ctx.dirty.set()

    def final_stop(self) -> None:
        """Stop the child for good unless its thread already did (pool shutdown)."""
        with self.lock:
            if not self.finished:
                self._terminate(reason="pool stopped")
                self._release_port()
                self._set(state="stopped", pid=None, create_time=None, draining=False)
                self.finished = True

    def _main(self) -> None:
        interval = self.ctx.config.supervisor.check_interval_s
        while True:
            with self.lock:
                if self.ctx.stop.is_set() or self.removing:
                    self._retire()
                    return
                try:
                    self._step()
                except (PortError, ConfigError) as e:
                    self._startup_fatal(e)
                except SwarmPoolError as e:
                    log.error("%s: %s", self.name, e)
                    self._on_failure(str(e), None)
                except Exception:  # a bug in one child's step must not kill its watcher
                    log.exception("%s: unexpected error in the supervisor step", self.name)
                starting = self.record.state == "starting"
            # Poll fast while starting so `start` returns soon after the child is ready.
            self.wake.wait(min(interval, 0.1) if starting else interval)
            self.wake.clear()

    def _retire(self) -> None:
        if self.removing and not self.ctx.stop.is_set():
            self._terminate(reason="removed by scale")
        else:
            self._terminate(reason="pool stopped")
        self._release_port()
        self._set(state="stopped", pid=None, create_time=None, draining=False)
        self.finished = True

    def _step(self) -> None:
        if self.manual_restart:
            # Cleared only once the new run is launched: `restart` waits on this flag,
            # and must not see the old (maybe fatal) state in between.
            try:
                self._manual_restart()
            finally:
                self.manual_restart = False
            return
        if self.needs_launch:
            self.needs_launch = False
            if self.adopt_from is not None and self._try_adopt(self.adopt_from):
                return
            self.adopt_from = None
            self._launch()
            return
        state = self.record.state
        if state == "starting":
            self._check_starting()
        elif state in ("ready", "unhealthy"):
            self._check_running()
        elif state == "backoff" and self.ctx.clock() >= self.restart_at:
            self._relaunch()

    def _manual_restart(self) -> None:
        if self._alive():
            self._terminate(reason="manual restart")
        self.policy.reset()
        self._set(restarts=self.record.restarts + 1, reason="")
        self.restart_cause, self.restart_reason = RestartCause.MANUAL, "manual restart"
        self._relaunch()

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
            state="ready",
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
            state="starting",
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

    def _check_starting(self) -> None:
        if not self._alive():
            status = self._exit_status()
            self._died(status, during_start=True)
            return
        if self._probe(min(1.0, self.ctx.config.supervisor.health_timeout_s)) is None:
            self.probed_at = self.ctx.clock()
            startup_ms = int((self.ctx.clock() - self.launch_mono) * 1000)
            self._set(state="ready", ready_at=time.time(), reason="")
            self._start_pulse()
            self._emit(
                ev.InstanceReady(
                    instance=self.name,
                    pid=self.record.pid,
                    port=self.port,
                    startup_ms=startup_ms,
                ),
                f"{self.name}: ready in {startup_ms} ms",
            )
            return
        if self.ctx.clock() - self.launch_mono > self.ctx.config.pool.start_timeout_s:
            reason = f"not ready within {self.ctx.config.pool.start_timeout_s:g}s"
            self._terminate(reason=reason)
            self._on_failure(reason, None, RestartCause.START_TIMEOUT)

    def _check_running(self) -> None:
        if not self._alive():
            self._died(self._exit_status(), during_start=False)
            return
        sup = self.ctx.config.supervisor
        asked = self.ctx.clock()
        if (
            self.record.state == "ready"
            and self.probed_at is not None
            and asked - self.probed_at < sup.health_interval_s
        ):
            # A healthy child is probed every health_interval_s, not every check: each
            # request costs an OpenCode instance about 20 ms of CPU, 2% of a core at 1/s.
            # Liveness (psutil) and memory are still checked every check_interval_s.
            self._check_memory()
            return
        self.probed_at = asked
        # Waits up to slow_answer_s: a late answer is a busy instance, not a dead one.
        problem = self._probe(max(sup.slow_answer_s, sup.health_timeout_s))
        if problem is not None:
            if self.record.state != "unhealthy":
                self._emit(
                    ev.InstanceUnhealthy(
                        instance=self.name, pid=self.record.pid, port=self.port, reason=problem
                    ),
                    f"{self.name}: unhealthy: {problem}",
                    logging.WARNING,
                )
            self._set(state="unhealthy", reason=problem)
            busy = self._busy_now()
            if self.policy.on_health(False, busy=busy):
                reason = (
                    f"unhealthy with no progress for {self.policy.silent_for():.0f}s "
                    f"({self.policy.health_failures} failed health checks in a row, "
                    f"no event; {'?' if busy is None else busy} busy sessions)"
                )
                self._terminate(reason=reason)
                self._on_failure(reason, None, RestartCause.UNHEALTHY)
            return
        took = self.ctx.clock() - asked
        if took > sup.health_timeout_s:
            log.info("%s: slow health answer (%.1fs): busy, alive", self.name, took)
        self.policy.on_health(True)
        if self.record.state == "unhealthy":
            log.info("%s: healthy again", self.name)
            self._set(state="ready", reason="")
        self._check_memory()
        rotate_log(
            self.program.log_path,
            max_bytes=sup.log_max_bytes,
            backups=sup.log_backups,
            copy_truncate=True,
        )

    def _check_memory(self) -> None:
        if self.ref is None:
            return
        stats = process.tree_stats(self.ref)
        if stats is None:
            return
        rss_mb = stats[0]
        self._sample(rss_mb, stats[1])
        busy_fn = self.program.busy
        port = self.port

        def busy() -> int | None:
            if busy_fn is None or port is None:
                return 0
            return busy_fn(port, self.ctx.config.supervisor.health_timeout_s)

        verdict = self.policy.on_memory(rss_mb, busy)
        if verdict is MemoryVerdict.OK:
            return
        if verdict is MemoryVerdict.DRAINING:
            if not self.record.draining:
                log.warning(
                    "%s: RSS %.0f MB over the %d MB limit; draining (no new work) until idle",
                    self.name,
                    rss_mb,
                    self.ctx.config.supervisor.max_rss_mb,
                )
                self._set(draining=True)
            return
        reason = f"RSS {rss_mb:.0f} MB over the {self.ctx.config.supervisor.max_rss_mb} MB limit"
        self._set(draining=True)
        self._terminate(reason=reason)
        self._on_failure(reason, None, RestartCause.MEMORY)

    def _sample(self, rss_mb: float, procs: list[psutil.Process]) -> None:
        """Record an ``instance_stats`` event every ``stats_interval_s``, so peak RSS and
        mean CPU survive restarts (live psutil only knows the current run)."""
        interval = self.ctx.config.supervisor.stats_interval_s
        if interval <= 0:
            return
        now = self.ctx.clock()
        if self._sample_at is not None and now - self._sample_at < interval:
            return
        cpu_s = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                cpu_s += times.user + times.system
        cpu_percent: float | None = None
        if self._sample_at is not None and now > self._sample_at:
            # Children that exited take their CPU time with them: clamp at zero.
            cpu_percent = round(
                max(0.0, (cpu_s - self._sample_cpu_s) / (now - self._sample_at)) * 100, 1
            )
        self._sample_at, self._sample_cpu_s = now, cpu_s
        self._emit(
            ev.InstanceStats(
                instance=self.name,
                pid=self.ref.pid if self.ref else None,
                port=self.port,
                rss_mb=round(rss_mb, 1),
                cpu_percent=cpu_percent,
            ),
            f"{self.name}: rss {rss_mb:.0f} MB, cpu {cpu_percent}%",
            logging.DEBUG,
        )

    def _died(self, status: process.ExitStatus, *, during_start: bool) -> None:
        reason = status.describe()
        tail = log_tail(self.program.log_path)
        if during_start and tail:
            reason = f"{reason} during start-up: {tail}"
        self._emit(
            ev.InstanceExited(
                instance=self.name,
                pid=self.record.pid,
                port=self.port,
                exit_code=status.code,
                signal=status.signal,
                reason=reason,
            ),
            f"{self.name}: pid {self.record.pid} {reason}",
            logging.WARNING,
        )
        if self.ref is not None:
            orphans = process.reap_orphans(self.ref, grace_s=0.5)
            if orphans:
                log.info("%s: killed %d orphaned processes of its group", self.name, orphans)
        self.launched = None
        self.ref = None
        exit_info = _exit(status, reason)
        if during_start and self.port is not None and not port_is_free(self.port):
            # Nothing of ours is left in the tree, so a foreign process holds the port.
            error = PortInUseError(
                f"port {self.port} was taken by another process between allocation and "
                f"bind ({self.name} exited: {status.describe()})"
            )
            if self.ctx.starting():
                self.ctx.fail_startup(error)
                self._set(state="fatal", reason=str(error), last_exit=exit_info, pid=None)
                return
            log.warning("%s: %s; it gets a new port", self.name, error)
            self.new_port = True
        self._on_failure(reason, exit_info, RestartCause.EXITED)

    def _on_failure(
        self,
        reason: str,
        exit_info: ExitInfo | None,
        cause: RestartCause = RestartCause.ERROR,
    ) -> None:
        self._stop_pulse()
        self.restart_cause, self.restart_reason = cause, reason
        if exit_info is not None:
            self._set(last_exit=exit_info)
        decision = self.policy.on_failure(reason)
        if decision.fatal:
            self._set(state="fatal", reason=decision.reason, pid=None, create_time=None)
            self._emit(
                ev.InstanceFatal(instance=self.name, port=self.port, reason=decision.reason),
                f"{self.name}: fatal: {decision.reason}; `swarm-pool restart {self.name}` "
                "to try again",
                logging.ERROR,
            )
            return
        self.restart_at = self.ctx.clock() + decision.delay_s
        self._set(
            state="backoff",
            reason=reason,
            restarts=self.record.restarts + 1,
            pid=None,
            create_time=None,
            draining=False,
        )
        log.info("%s: restarting in %.2fs (%s)", self.name, decision.delay_s, reason)

    def _startup_fatal(self, error: SwarmPoolError) -> None:
        """Errors that fail a start outright (no port, bad config); later, a failure."""
        if self.ctx.starting():
            self.ctx.fail_startup(error)
            self._set(state="fatal", reason=str(error))
            return
        log.error("%s: %s", self.name, error)
        self._on_failure(str(error), None)

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
            self._set(last_exit=_exit(status, reason), pid=None, create_time=None)

    def _release_port(self) -> None:
        if self.port is not None:
            with contextlib.suppress(PortError):
                self.ctx.leases.release(self.port, [self.ctx.me])

    def _emit(self, event: ev.BaseEvent, line: str, level: int = logging.INFO) -> None:
        if self.ctx.sink is not None:
            self.ctx.sink.emit(event, line, level)
        else:
            log.log(level, line)


def _exit(status: process.ExitStatus | None, reason: str) -> ExitInfo:
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
