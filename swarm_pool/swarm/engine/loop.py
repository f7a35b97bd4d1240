"""The background engine: the loop that keeps workers moving without anyone polling.

Room: swarm (the engine loop, above the worker steps). It runs inside the supervisor
daemon (started from ``swarm_pool/daemon.py``, the composition root, so ``pool/`` never
imports ``swarm/``), acting only while that supervisor's pool is running. Each tick,
woken by store changes or every ``tick_s``, it:

- first of all, once per start (after a crash and adoption too), reconciles the
  instances' sessions with the store (``reconcile``), again for each instance that comes
  back from a restart (a kill can leave a session created but never recorded or
  prompted), and on later ticks settles session intents left unprompted past a grace
  period and, every ``workers.session_sweep_s``, deletes sessions unknown to the store;
- keeps one watcher per pool instance (``watch.py``), which records session status,
  errors and permission/question requests into the store; in the daemon it listens to
  the supervisor's one stream reader per instance (``streams``), else it opens its own;
- dispatches queued spawns (every spawn is queued first) when an instance has room,
  several at once on a small thread pool;
- remembers the instances between ticks (``instances.py``) and fails the in-flight
  workers of an instance that exited (a store ``instance_exited`` /
  ``instance_started`` event, a new pid, or a dead state in the pool state) and retries
  them elsewhere under the infra budget (``workers.infra_retry_window_s``, not
  ``max_retries``: the instance's death is not the task's fault);
- checks each active worker (``checks.py``): fails and retries one whose session
  reported ``session.error``;
- aborts and fails a running worker past ``workers.timeout_s`` (or its spawn's own
  ``timeout_s``) of running time, without retry: a hung model would hang again (time
  blocked on a human's answer does not count: it waits for ``swarm-pool answer``);
- turns an idle session without ``swarm_complete`` into ``worker_needs_review``, but only
  when the SSE idle, ``/session/status``, the last assistant message and the instance's
  health all agree (never one signal alone). Sessions whose idle event was missed are
  re-checked every ``recheck_s``.

On a PostgreSQL store the engine is one host among several (``host_duty.py``): each
tick it first heartbeats, takes over from dead hosts and claims queued workers, and
from then on it looks only at the workers it claimed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from swarm_pool import faults
from swarm_pool.config import Config
from swarm_pool.errors import EngineStartError, SwarmPoolError
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.pulse import Pulses
from swarm_pool.pool.router import InstanceView, active_instances
from swarm_pool.pool.state import SERVING, PoolPhase
from swarm_pool.store import open_project_store
from swarm_pool.store.events import BaseEvent, now_ms
from swarm_pool.store.lifecycle import ACTIVE, IN_FLIGHT, MERGEABLE, WorkerStatus
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.context import ClientFn, InstancesFn, SwarmContext, default_client
from swarm_pool.swarm.engine.checks import WorkerChecks
from swarm_pool.swarm.engine.host_duty import HostDuty
from swarm_pool.swarm.engine.instances import InstanceMemory
from swarm_pool.swarm.engine.mapper import StoreLookup
from swarm_pool.swarm.engine.reconcile import reconcile, reconcile_dispatching, sweep_unknown
from swarm_pool.swarm.engine.watch import InstanceWatcher, Sink, WatchManager, record_watched
from swarm_pool.swarm.engine_state import EngineBeat, write_beat
from swarm_pool.swarm.pool_view import pool_owner
from swarm_pool.swarm.worker.checkout import open_slots
from swarm_pool.swarm.worker.dispatch import dispatch
from swarm_pool.swarm.worker.remote import push_branch, pushed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """How the engine runs: its pace, whether it watches streams, whom it acts for."""

    tick_s: float = 0.5
    recheck_s: float = 5.0  # re-check a running session whose idle event may be missed
    watch: bool = True
    # In the daemon: act only while the pool is running under this supervisor, so a
    # second daemon that lost the race, or a pool shutting down, never fails workers.
    owner_pid: int | None = None
    dispatch_threads: int = 8


@dataclass
class _Jobs:
    """What runs on the dispatcher threads, so a tick never waits for it."""

    dispatching: set[str] = field(default_factory=set)  # beads being dispatched
    futures: list[concurrent.futures.Future[None]] = field(default_factory=list)
    # (bead, attempt) whose finished branch was pushed or is being pushed.
    pushed: set[tuple[str, int]] = field(default_factory=set)
    swept: float = field(default_factory=time.monotonic)  # when the last sweep began
    sweep: concurrent.futures.Future[list[str]] | None = None


@dataclass
class _Counters:
    """The engine's own numbers, for its heartbeat."""

    ticks: int = 0
    errors: int = 0
    last_tick_ms: int | None = None
    acting: bool = False  # the pool runs under this engine's supervisor


class Engine:
    def __init__(
        self,
        paths: ProjectPaths,
        config: Config,
        *,
        instances_fn: InstancesFn | None = None,
        client_fn: ClientFn = default_client,
        open_store: Callable[[], Any] | None = None,
        streams: Pulses | None = None,
        settings: EngineSettings | None = None,
    ) -> None:
        self.paths = paths
        self.config = config
        self.settings = settings or EngineSettings()
        self._instances_fn = instances_fn
        self._client_fn = client_fn
        self._open_store = open_store or (lambda: open_project_store(paths, config))
        self._streams = streams
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: SwarmContext | None = None
        self._watch: WatchManager | None = None
        self._hosts: HostDuty | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.settings.dispatch_threads, thread_name_prefix="swarm-dispatch"
        )
        self._instances = InstanceMemory()
        self._jobs = _Jobs()
        self._checks = WorkerChecks(self.settings.recheck_s)
        self.counters = _Counters()

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="swarm-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self, *_: object) -> None:
        self._wake.set()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def busy_on(self, instance: str) -> int | None:
        """Workers in flight on ``instance`` per the store (None before the store is
        open or when it cannot be read): the supervisor's busy hint."""
        ctx = self._ctx
        if ctx is None:
            return None
        try:
            workers = ctx.mine(ctx.store.workers.list())
        except SwarmPoolError:
            return None
        return sum(1 for w in workers if w.instance == instance and w.status in IN_FLIGHT)

    def _context(self) -> SwarmContext:
        if self._ctx is None:
            self._ctx = SwarmContext(
                paths=self.paths,
                config=self.config,
                store=self._open_store(),
                instances_fn=self._instances_fn,
                client_fn=self._client_fn,
            )
        return self._ctx

    def open(self) -> Engine:
        """Open the store now, so a daemon whose engine cannot work fails its start with
        the reason instead of running a pool whose workers never move."""
        try:
            faults.point("engine.open")
            self._context()
        except Exception as e:
            self._beat(error=f"cannot open the store: {e}")
            raise EngineStartError(f"the worker engine cannot start: {e}") from e
        return self

    def _beat(self, *, acting: bool = False, error: str = "") -> None:
        if self.settings.owner_pid is None:
            return  # tests and embedding: no daemon to report for
        queue = 0
        if self._ctx is not None and not error:
            with contextlib.suppress(Exception):
                queue = len(self._ctx.store.workers.list(status=WorkerStatus.PENDING.value))
        me = psutil.Process(os.getpid())
        with contextlib.suppress(OSError):
            write_beat(
                self.paths,
                EngineBeat(
                    pid=me.pid,
                    create_time=me.create_time(),
                    last_tick_ms=now_ms(),
                    queue=queue,
                    ticks=self.counters.ticks,
                    errors=self.counters.errors,
                    acting=acting,
                    error=error,
                    host=self.config.pool.host,
                ),
            )

    def _run(self) -> None:
        try:
            ctx = self._context()
        except Exception as e:
            log.exception("engine: cannot open the store; workers are not watched")
            self._beat(error=f"cannot open the store: {e}")
            return
        if self.settings.watch:
            self._watch = WatchManager(self._make_watcher)
        seq = 0
        try:
            while not self._stop.is_set():
                try:
                    self.tick()
                except Exception:  # the engine must outlive any one bad tick
                    self.counters.errors += 1
                    log.exception("engine tick failed")
                self._beat(acting=self.counters.acting)
                self._wake.clear()
                seq = self._wait(ctx, seq)
        finally:
            if self._watch is not None:
                self._watch.stop()
            self._pool.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(Exception):
                ctx.store.close()

    def _wait(self, ctx: SwarmContext, seq: int) -> int:
        """Until ``tick_s`` passed, a wake or a store change; the store's new sequence."""
        deadline = time.monotonic() + self.settings.tick_s
        while not self._stop.is_set() and not self._wake.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            new: int = ctx.store.wait_for_change(seq, min(remaining, 0.25))
            if new != seq:
                return new
        return seq

    def _make_watcher(self, instance: InstanceView) -> InstanceWatcher:
        def make_lookup() -> tuple[StoreLookup, Sink, Callable[[], None]]:
            store = self._open_store()  # the watcher thread's own connection

            def sink(events: list[BaseEvent]) -> None:
                record_watched(store, events)
                self._wake.set()

            return StoreLookup(store), sink, store.close

        return InstanceWatcher(
            instance,
            make_lookup=make_lookup,
            client_factory=self._client_fn,
            streams=self._streams,
            on_disconnect=self.wake,
        )

    # --- one pass -------------------------------------------------------------------

    def _pool_is_ours(self) -> bool:
        if self.settings.owner_pid is None:
            return True
        phase, pid = pool_owner(self.paths)
        return phase == PoolPhase.RUNNING and pid == self.settings.owner_pid

    def tick(self, wait: bool = False) -> None:
        """One pass; ``wait`` also waits for the dispatches it started (tests)."""
        ctx = self._context()
        self.counters.acting = self._pool_is_ours()
        if not self.counters.acting:
            return
        self.counters.ticks += 1
        self.counters.last_tick_ms = now_ms()
        instances = ctx.instances()
        ready = [inst for inst in instances if inst.state in SERVING]
        if ctx.multi_host:
            if self._hosts is None:
                self._hosts = HostDuty(ctx)
            # Beat, take over from dead hosts, claim: before anything looks at "mine".
            self._hosts.step(instances)
        self._reconcile(ctx, ready)
        if self._watch is not None:
            self._watch.sync(ready)
        self._instances.track(ctx, instances)
        self._open_slots(ctx, ready)
        workers = ctx.mine(ctx.store.workers.list())
        self._check_workers(ctx, workers, {inst.name: inst for inst in instances})
        if self._hosts is not None:
            self._push_finished(workers)
        self._dispatch_pending(workers)
        if wait:
            self.drain()

    def _reconcile(self, ctx: SwarmContext, ready: list[InstanceView]) -> None:
        memory, grace = self._instances, self.config.workers.intent_grace_s
        if not memory.reconciled:
            # Before anything is dispatched or watched: what did a crash leave behind?
            report = reconcile(ctx, ready)
            log.info("engine: reconciled sessions with the store: %s", report)
            memory.reconciled = True
            memory.unreconciled.clear()
            return
        back = [inst for inst in ready if inst.name in memory.unreconciled]
        if back:
            # The same reconciliation as at start, for the instances that came back.
            report = reconcile(ctx, back, skip=frozenset(self._jobs.dispatching))
            log.info("engine: reconciled restarted %s: %s", [i.name for i in back], report)
            memory.unreconciled.difference_update(
                inst.name for inst in back if inst.name not in report.unreachable
            )
        reconcile_dispatching(ctx, ready, grace)
        jobs = self._jobs
        if time.monotonic() - jobs.swept >= self.config.workers.session_sweep_s and (
            jobs.sweep is None or jobs.sweep.done()
        ):
            # On a dispatcher thread: a slow instance's session list must not hold
            # up the tick (dispatch, failures, timeouts).
            jobs.swept = time.monotonic()
            jobs.sweep = self._pool.submit(sweep_unknown, ctx, ready, grace)

    def _check_workers(
        self, ctx: SwarmContext, workers: list[WorkerView], by_name: dict[str, InstanceView]
    ) -> None:
        now = now_ms()
        for w in workers:
            if w.status not in ACTIVE:
                continue
            gone = self._instances.gone_at.get(w.instance, 0)
            try:
                self._checks.check(ctx, w, by_name, gone=gone, now=now)
            except SwarmPoolError as e:
                log.warning("engine: checking %s failed: %s", w.bead_id, e)

    def _dispatch_pending(self, workers: list[WorkerView]) -> None:
        pending = sorted(
            (w for w in workers if w.status == WorkerStatus.PENDING),
            key=lambda w: w.updated_at or 0,
        )
        for w in pending:
            if w.bead_id not in self._jobs.dispatching:
                self._jobs.dispatching.add(w.bead_id)
                self._jobs.futures.append(self._pool.submit(self._dispatch, w.bead_id))

    def _open_slots(self, ctx: SwarmContext, ready: list[InstanceView]) -> None:
        """Once per instance process: make and open its ``min_slots`` slots, on a
        dispatcher thread (submitted before this tick's dispatches, which may then take
        them). Active instances only: an overflow one gets work only when they are
        full, and would hold its open directories idle; it is opened once it becomes
        active (an active one went away). One host only: several hosts' instances share
        names, not directories."""
        if (
            not self.config.workers.min_slots
            or self.config.workers.worktrees != "slots"
            or ctx.multi_host
        ):
            return
        eligible = [inst for inst in ready if inst.accepts_work and inst.dedicated_to is None]
        opened = self._instances.slots_opened
        for inst in eligible[: active_instances(self.config)]:
            if opened.get(inst.name) == inst.pid:
                continue
            opened[inst.name] = inst.pid
            self._jobs.futures.append(self._pool.submit(self._open_on, inst.name))

    def _open_on(self, name: str) -> None:
        try:
            opened = open_slots(self._context(), name)
            log.info("engine: %s opened slots %s", name, opened)
        except SwarmPoolError as e:
            # Not retried until the instance restarts: beads make or warm slots anyway.
            log.warning("engine: opening %s's slots failed: %s", name, e)
        except Exception:
            log.exception("engine: opening %s's slots crashed", name)

    def _push_finished(self, workers: list[WorkerView]) -> None:
        """Several hosts: push this host's finished branches to the shared remote, on a
        dispatcher thread (a push to a slow remote must not hold up the tick)."""
        for w in workers:
            key = (w.bead_id, w.attempt)
            if w.status not in MERGEABLE or key in self._jobs.pushed:
                continue
            self._jobs.pushed.add(key)
            self._jobs.futures.append(self._pool.submit(self._push, w))

    def _push(self, worker: WorkerView) -> None:
        ctx = self._context()
        try:
            if pushed(ctx, worker) is None:
                push_branch(ctx, worker)
        except SwarmPoolError as e:
            log.warning("engine: pushing %s failed, will retry: %s", worker.bead_id, e)
            self._jobs.pushed.discard((worker.bead_id, worker.attempt))
        except Exception:
            log.exception("engine: pushing %s crashed", worker.bead_id)
            self._jobs.pushed.discard((worker.bead_id, worker.attempt))

    def drain(self, timeout: float = 60.0) -> None:
        """Wait for the dispatches in flight (tests, shutdown)."""
        futures, self._jobs.futures = self._jobs.futures, []
        concurrent.futures.wait(futures, timeout=timeout)

    def _dispatch(self, bead_id: str) -> None:
        # Runs on a dispatcher thread (the store is thread-safe): OpenCode takes a second
        # or more to bootstrap a session's new directory, and dispatches to different
        # instances should overlap rather than queue behind each other.
        try:
            dispatch(self._context(), bead_id)
        except SwarmPoolError as e:
            log.warning("engine: dispatching %s failed: %s", bead_id, e)
        except Exception:
            log.exception("engine: dispatching %s crashed", bead_id)
        finally:
            self._jobs.dispatching.discard(bead_id)
            self._wake.set()
