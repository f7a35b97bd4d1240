"""The thread that watches one supervised child (circus-style watchers).

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
and the store; each restart records its cause and reason. Room: pool. The primitives
it acts with (launch, adopt, terminate, ports, the record) are ``ChildProcess`` in
``child.py``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import psutil

from swarm_pool.errors import (
    ConfigError,
    PortError,
    PortInUseError,
    SwarmPoolError,
)
from swarm_pool.pool import process
from swarm_pool.pool.child import ChildProcess, PoolContext, exit_info
from swarm_pool.pool.instance import log_tail, rotate_log
from swarm_pool.pool.policy import MemoryVerdict
from swarm_pool.pool.ports import port_is_free
from swarm_pool.pool.state import (
    SERVING,
    ExitInfo,
    InstanceState,
)
from swarm_pool.store import events as ev
from swarm_pool.store.events import RestartCause

log = logging.getLogger("swarm_pool.pool")

__all__ = ["PoolContext", "Watcher"]


class Watcher(ChildProcess):
    """The thread that watches one child: checks, failures, restarts and retirement."""

    def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name=f"watch-{self.name}", daemon=True)
        self.thread.start()

    def final_stop(self) -> None:
        """Stop the child for good unless its thread already did (pool shutdown)."""
        with self.lock:
            if not self.finished:
                self._terminate(reason="pool stopped")
                self._release_port()
                self._set(state=InstanceState.STOPPED, pid=None, create_time=None, draining=False)
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
                starting = self.record.state == InstanceState.STARTING
            # Poll fast while starting so `start` returns soon after the child is ready.
            self.wake.wait(min(interval, 0.1) if starting else interval)
            self.wake.clear()

    def _retire(self) -> None:
        if self.removing and not self.ctx.stop.is_set():
            self._terminate(reason="removed by scale")
        else:
            self._terminate(reason="pool stopped")
        self._release_port()
        self._set(state=InstanceState.STOPPED, pid=None, create_time=None, draining=False)
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
        if state == InstanceState.STARTING:
            self._check_starting()
        elif state in SERVING:
            self._check_running()
        elif state == InstanceState.BACKOFF and self.ctx.clock() >= self.restart_at:
            self._relaunch()

    def _manual_restart(self) -> None:
        if self._alive():
            self._terminate(reason="manual restart")
        self.policy.reset()
        self._set(restarts=self.record.restarts + 1, reason="")
        self.restart_cause, self.restart_reason = RestartCause.MANUAL, "manual restart"
        self._relaunch()

    def _check_starting(self) -> None:
        if not self._alive():
            status = self._exit_status()
            self._died(status, during_start=True)
            return
        if self._probe(min(1.0, self.ctx.config.supervisor.health_timeout_s)) is None:
            self.probed_at = self.ctx.clock()
            startup_ms = int((self.ctx.clock() - self.launch_mono) * 1000)
            self._set(state=InstanceState.READY, ready_at=time.time(), reason="")
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
            self.record.state == InstanceState.READY
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
            if self.record.state != InstanceState.UNHEALTHY:
                self._emit(
                    ev.InstanceUnhealthy(
                        instance=self.name, pid=self.record.pid, port=self.port, reason=problem
                    ),
                    f"{self.name}: unhealthy: {problem}",
                    logging.WARNING,
                )
            self._set(state=InstanceState.UNHEALTHY, reason=problem)
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
        if self.record.state == InstanceState.UNHEALTHY:
            log.info("%s: healthy again", self.name)
            self._set(state=InstanceState.READY, reason="")
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
        ended = exit_info(status, reason)
        if during_start and self.port is not None and not port_is_free(self.port):
            # Nothing of ours is left in the tree, so a foreign process holds the port.
            error = PortInUseError(
                f"port {self.port} was taken by another process between allocation and "
                f"bind ({self.name} exited: {status.describe()})"
            )
            if self.ctx.starting():
                self.ctx.fail_startup(error)
                self._set(state=InstanceState.FATAL, reason=str(error), last_exit=ended, pid=None)
                return
            log.warning("%s: %s; it gets a new port", self.name, error)
            self.new_port = True
        self._on_failure(reason, ended, RestartCause.EXITED)

    def _on_failure(
        self,
        reason: str,
        ended: ExitInfo | None,
        cause: RestartCause = RestartCause.ERROR,
    ) -> None:
        self._stop_pulse()
        self.restart_cause, self.restart_reason = cause, reason
        if ended is not None:
            self._set(last_exit=ended)
        decision = self.policy.on_failure(reason)
        if decision.fatal:
            self._set(state=InstanceState.FATAL, reason=decision.reason, pid=None, create_time=None)
            self._emit(
                ev.InstanceFatal(instance=self.name, port=self.port, reason=decision.reason),
                f"{self.name}: fatal: {decision.reason}; `swarm-pool restart {self.name}` "
                "to try again",
                logging.ERROR,
            )
            return
        self.restart_at = self.ctx.clock() + decision.delay_s
        self._set(
            state=InstanceState.BACKOFF,
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
            self._set(state=InstanceState.FATAL, reason=str(error))
            return
        log.error("%s: %s", self.name, error)
        self._on_failure(str(error), None)
