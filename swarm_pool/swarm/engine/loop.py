"""The background engine: the loop that keeps workers moving without anyone polling.

It runs inside the supervisor daemon (started from ``swarm_pool/daemon.py``, the
composition root, so ``pool/`` never imports ``swarm/``), acting only while that
supervisor's pool is running. Each tick, woken by store changes or every ``tick_s``, it:

- first of all, once per start (after a crash and adoption too), reconciles the
  instances' sessions with the store (``reconcile``), again for each instance that comes
  back from a restart (a kill can leave a session created but never recorded or
  prompted), and on later ticks settles session intents left unprompted past a grace
  period and, every ``workers.session_sweep_s``, deletes sessions unknown to the store;
- keeps one SSE watcher per pool instance (``watch``), which records session status,
  errors and permission/question requests into the store;
- dispatches queued spawns (every spawn is queued first) when an instance has room,
  several at once on a small thread pool;
- fails the in-flight workers of an instance that exited (a store ``instance_exited`` /
  ``instance_started`` event, a new pid, or a dead state in the pool state) and retries
  them elsewhere under the infra budget (``workers.infra_retry_window_s``, not
  ``max_retries``: the instance's death is not the task's fault);
- fails and retries a worker whose session reported ``session.error``;
- aborts and fails a running worker past ``workers.timeout_s`` (or its spawn's own
  ``timeout_s``) of running time, without retry: a hung model would hang again (time
  blocked on a human's answer does not count: it waits for ``swarm-pool answer``);
- turns an idle session without ``swarm_complete`` into ``worker_needs_review``, but only
  when the SSE idle, ``/session/status``, the last assistant message and the instance's
  health all agree (never one signal alone). Sessions whose idle event was missed are
  re-checked every ``recheck_s``.

On a PostgreSQL store the engine is one host among several (``swarm/hosts.py``): each
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
from typing import Any

import psutil

from swarm_pool import faults
from swarm_pool.config import Config
from swarm_pool.errors import EngineStartError, OpenCodeError, SwarmPoolError, WorkerStateError
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.router import InstanceView, active_instances
from swarm_pool.store.events import FailureCause, WorkerNeedsReview, now_ms
from swarm_pool.store.lifecycle import ACTIVE, IN_FLIGHT, MERGEABLE, WorkerStatus
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.context import ClientFn, InstancesFn, SwarmContext, default_client
from swarm_pool.swarm.engine.host_duty import HostDuty
from swarm_pool.swarm.engine.reconcile import reconcile, reconcile_dispatching, sweep_unknown
from swarm_pool.swarm.engine.watch import (
    InstanceWatcher,
    StoreLookup,
    WatchManager,
    idle_outcome,
    record_watched,
)
from swarm_pool.swarm.engine_state import EngineBeat, write_beat
from swarm_pool.swarm.worker.checkout import open_slots
from swarm_pool.swarm.worker.dispatch import dispatch
from swarm_pool.swarm.worker.failure import AttemptTarget, Failure, fail
from swarm_pool.swarm.worker.remote import push_branch, pushed
from swarm_pool.swarm.worker.spec import load_spec

log = logging.getLogger(__name__)

# Instance states in which its process is gone (or replaced), so its sessions are lost.
_GONE_STATES = frozenset({"backoff", "fatal", "stopped", "exited", "starting"})
_INSTANCE_EVENTS = ["instance_exited", "instance_started", "instance_fatal", "instance_stopped"]


def _open_store(paths: ProjectPaths, config: Config) -> Any:
    from swarm_pool.store import open_project_store

    return open_project_store(paths, config)


class Engine:
    def __init__(
        self,
        paths: ProjectPaths,
        config: Config,
        *,
        instances_fn: InstancesFn | None = None,
        client_fn: ClientFn = default_client,
        open_store: Callable[[], Any] | None = None,
        tick_s: float = 0.5,
        recheck_s: float = 5.0,
        watch: bool = True,
        owner_pid: int | None = None,
        dispatch_threads: int = 8,
    ) -> None:
        self.paths = paths
        self.config = config
        self._instances_fn = instances_fn
        self._client_fn = client_fn
        self._open_store = open_store or (lambda: _open_store(paths, config))
        self.tick_s = tick_s
        self.recheck_s = recheck_s
        self._watch_enabled = watch
        # In the daemon: act only while the pool is running under this supervisor, so a
        # second daemon that lost the race, or a pool shutting down, never fails workers.
        self._owner_pid = owner_pid
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: SwarmContext | None = None
        self._watch: WatchManager | None = None
        # Instance name -> ms of the last time its process went away or was replaced.
        self._gone_at: dict[str, int] = {}
        self._pids: dict[str, int | None] = {}
        self._instance_seq = 0
        self._last_check: dict[str, float] = {}
        self._dispatching: set[str] = set()
        self._futures: list[concurrent.futures.Future[None]] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=dispatch_threads, thread_name_prefix="swarm-dispatch"
        )
        self._timeouts: dict[str, float] = {}
        self._reconciled = False
        # Instances restarted (or gone) since their sessions were last reconciled: a kill
        # can leave a session that was created but never recorded or prompted.
        self._unreconciled: set[str] = set()
        self._swept = time.monotonic()
        self._sweep: concurrent.futures.Future[list[str]] | None = None
        self._acting = False
        self._hosts: HostDuty | None = None
        # (bead, attempt) whose finished branch was pushed or is being pushed.
        self._pushed: set[tuple[str, int]] = set()
        # Instance name -> the pid its min_slots slots were made and opened for.
        self._slots_opened: dict[str, int | None] = {}
        self.ticks = 0
        self.errors = 0
        self.last_tick_ms: int | None = None

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
        if self._owner_pid is None:
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
                    ticks=self.ticks,
                    errors=self.errors,
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
        if self._watch_enabled:
            self._watch = WatchManager(self._make_watcher)
        seq = 0
        try:
            while not self._stop.is_set():
                try:
                    self.tick()
                except Exception:  # the engine must outlive any one bad tick
                    self.errors += 1
                    log.exception("engine tick failed")
                self._beat(acting=self._acting)
                self._wake.clear()
                deadline = time.monotonic() + self.tick_s
                while not self._stop.is_set() and not self._wake.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    new = ctx.store.wait_for_change(seq, min(remaining, 0.25))
                    if new != seq:
                        seq = new
                        break
        finally:
            if self._watch is not None:
                self._watch.stop()
            self._pool.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(Exception):
                ctx.store.close()

    def _make_watcher(self, slot: InstanceView) -> InstanceWatcher:
        def make_lookup() -> tuple[StoreLookup, Callable[[list[Any]], None], Callable[[], None]]:
            store = self._open_store()  # the watcher thread's own connection

            def sink(events: list[Any]) -> None:
                record_watched(store, events)
                self._wake.set()

            return StoreLookup(store), sink, store.close

        return InstanceWatcher(
            slot, make_lookup=make_lookup, client_factory=self._client_fn, on_disconnect=self.wake
        )

    # --- one pass -------------------------------------------------------------------

    def _pool_is_ours(self) -> bool:
        if self._owner_pid is None:
            return True
        from swarm_pool.swarm.pool_view import pool_owner

        phase, pid = pool_owner(self.paths)
        return phase == "running" and pid == self._owner_pid

    def tick(self, wait: bool = False) -> None:
        """One pass; ``wait`` also waits for the dispatches it started (tests)."""
        ctx = self._context()
        self._acting = self._pool_is_ours()
        if not self._acting:
            return
        self.ticks += 1
        self.last_tick_ms = now_ms()
        slots = ctx.instances()
        ready = [s for s in slots if s.state in ("ready", "unhealthy")]
        if ctx.multi_host:
            if self._hosts is None:
                self._hosts = HostDuty(ctx)
            # Beat, take over from dead hosts, claim: before anything looks at "mine".
            self._hosts.step(slots)
        if not self._reconciled:
            # Before anything is dispatched or watched: what did a crash leave behind?
            report = reconcile(ctx, ready)
            log.info("engine: reconciled sessions with the store: %s", report)
            self._reconciled = True
            self._unreconciled.clear()
        else:
            back = [s for s in ready if s.name in self._unreconciled]
            if back:
                # The same reconciliation as at start, for the instances that came back.
                report = reconcile(ctx, back, skip=frozenset(self._dispatching))
                log.info("engine: reconciled restarted %s: %s", [s.name for s in back], report)
                self._unreconciled.difference_update(
                    s.name for s in back if s.name not in report.unreachable
                )
            reconcile_dispatching(ctx, ready, self.config.workers.intent_grace_s)
            if time.monotonic() - self._swept >= self.config.workers.session_sweep_s and (
                self._sweep is None or self._sweep.done()
            ):
                # On a dispatcher thread: a slow instance's session list must not hold
                # up the tick (dispatch, failures, timeouts).
                self._swept = time.monotonic()
                self._sweep = self._pool.submit(
                    sweep_unknown, ctx, ready, self.config.workers.intent_grace_s
                )
        if self._watch is not None:
            self._watch.sync(ready)
        self._track_instances(ctx, slots)
        self._open_slots(ctx, ready)
        by_name = {s.name: s for s in slots}
        workers = ctx.mine(ctx.store.workers.list())
        now = now_ms()
        for w in workers:
            if w.status not in ACTIVE:
                continue
            try:
                self._check_worker(ctx, w, by_name, now)
            except SwarmPoolError as e:
                log.warning("engine: checking %s failed: %s", w.bead_id, e)
        if self._hosts is not None:
            self._push_finished(ctx, workers)
        pending = sorted(
            (w for w in workers if w.status == WorkerStatus.PENDING),
            key=lambda w: w.updated_at or 0,
        )
        for w in pending:
            if w.bead_id not in self._dispatching:
                self._dispatching.add(w.bead_id)
                self._futures.append(self._pool.submit(self._dispatch, w.bead_id))
        if wait:
            self.drain()

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
        eligible = [s for s in ready if s.accepts_work and s.dedicated_to is None]
        for slot in eligible[: active_instances(self.config)]:
            if self._slots_opened.get(slot.name) == slot.pid:
                continue
            self._slots_opened[slot.name] = slot.pid
            self._futures.append(self._pool.submit(self._open_on, slot.name))

    def _open_on(self, name: str) -> None:
        try:
            opened = open_slots(self._context(), name)
            log.info("engine: %s opened slots %s", name, opened)
        except SwarmPoolError as e:
            # Not retried until the instance restarts: beads make or warm slots anyway.
            log.warning("engine: opening %s's slots failed: %s", name, e)
        except Exception:
            log.exception("engine: opening %s's slots crashed", name)

    def _push_finished(self, ctx: SwarmContext, workers: list[WorkerView]) -> None:
        """Several hosts: push this host's finished branches to the shared remote, on a
        dispatcher thread (a push to a slow remote must not hold up the tick)."""
        for w in workers:
            key = (w.bead_id, w.attempt)
            if w.status not in MERGEABLE or key in self._pushed:
                continue
            self._pushed.add(key)
            self._futures.append(self._pool.submit(self._push, w))

    def _push(self, worker: WorkerView) -> None:
        ctx = self._context()
        try:
            if pushed(ctx, worker) is None:
                push_branch(ctx, worker)
        except SwarmPoolError as e:
            log.warning("engine: pushing %s failed, will retry: %s", worker.bead_id, e)
            self._pushed.discard((worker.bead_id, worker.attempt))
        except Exception:
            log.exception("engine: pushing %s crashed", worker.bead_id)
            self._pushed.discard((worker.bead_id, worker.attempt))

    def drain(self, timeout: float = 60.0) -> None:
        """Wait for the dispatches in flight (tests, shutdown)."""
        futures, self._futures = self._futures, []
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
            self._dispatching.discard(bead_id)
            self._wake.set()

    def _track_instances(self, ctx: SwarmContext, slots: list[InstanceView]) -> None:
        now = now_ms()
        # Several hosts: instance names repeat from host to host, so another host's
        # instance events say nothing about ours; the pool state's pids and states do.
        instance_events = [] if ctx.multi_host else _INSTANCE_EVENTS
        for stored in ctx.store.read(types=instance_events, after_seq=self._instance_seq):
            self._instance_seq = max(self._instance_seq, stored.seq)
            name = getattr(stored.event, "instance", "")
            self._gone_at[name] = max(self._gone_at.get(name, 0), stored.timestamp)
        seen = set()
        for slot in slots:
            seen.add(slot.name)
            old = self._pids.get(slot.name)
            if slot.name in self._pids and old is not None and slot.pid != old:
                self._gone_at[slot.name] = now
                self._unreconciled.add(slot.name)
            if slot.state in _GONE_STATES:
                self._gone_at[slot.name] = now
                self._unreconciled.add(slot.name)
            self._pids[slot.name] = slot.pid
        for name in list(self._pids):
            if name not in seen:  # removed from the pool (scale down)
                self._gone_at[name] = now
                del self._pids[name]

    def _check_worker(
        self, ctx: SwarmContext, w: Any, by_name: dict[str, InstanceView], now: int
    ) -> None:
        spawned = w.spawned_at or 0
        gone = self._gone_at.get(w.instance, 0)
        # An empty view means the state file could not be read: that proves nothing.
        missing = bool(by_name) and w.instance not in by_name
        if missing or gone >= spawned:
            fail(
                ctx,
                w.bead_id,
                Failure(
                    f"instance {w.instance} exited while the worker was running",
                    "instance_exited",
                    cause=FailureCause.INFRA,
                ),
                target=AttemptTarget.of(w),
            )
            return
        errors = [
            s
            for s in ctx.store.read(types=["session_error"], session_id=w.session_id)
            if s.timestamp >= spawned
        ]
        if errors:
            fail(
                ctx,
                w.bead_id,
                Failure(getattr(errors[-1].event, "error", "session error"), "session_error"),
                target=AttemptTarget.of(w),
            )
            return
        limit = self._timeout_of(ctx, w)
        # Running time only: time blocked on a human's answer does not count.
        if w.status == WorkerStatus.RUNNING and w.running_ms(now) > limit * 1000:
            fail(
                ctx,
                w.bead_id,
                Failure(f"no completion after {limit:g}s", "timeout"),
                retry=False,
                abort=True,
                target=AttemptTarget.of(w),
            )
            return
        if w.status != WorkerStatus.RUNNING or w.instance not in by_name:
            return
        last = self._last_check.get(w.session_id, 0.0)
        due = time.monotonic() - last >= self.recheck_s
        if w.session_status == "idle" or due:
            self._last_check[w.session_id] = time.monotonic()
            self._confirm_idle(ctx, w, by_name[w.instance])

    def _timeout_of(self, ctx: SwarmContext, w: Any) -> float:
        key = w.session_id or w.bead_id
        if key not in self._timeouts:
            try:
                override = load_spec(ctx, w.bead_id).timeout_s
            except SwarmPoolError:
                override = None
            self._timeouts[key] = override or self.config.workers.timeout_s
        return self._timeouts[key]

    def _confirm_idle(self, ctx: SwarmContext, w: Any, slot: InstanceView) -> None:
        client = ctx.client(slot)
        try:
            # Its SSE session.error may not be recorded yet (a warm directory answers
            # fast): an idle session whose last answer failed is a session error.
            error = idle_outcome(client, w.session_id, w.worktree or None)
            if error is None:
                return
            # The instance's health must agree too; asked last, as a running session
            # (what the periodic re-check mostly finds) needs no more than its status.
            client.health(timeout=2.0)
        except OpenCodeError:
            return  # an unhealthy instance proves nothing; the supervisor handles it
        finally:
            client.close()

        if error:
            fail(
                ctx,
                w.bead_id,
                Failure(error, "session_error"),
                target=AttemptTarget.of(w),
            )
            return

        def build(current: WorkerView | None) -> list[WorkerNeedsReview] | None:
            # swarm_complete, a failure or a retry may have landed meanwhile.
            if current is None or current.status != WorkerStatus.RUNNING:
                return None
            if current.session_id != w.session_id or current.attempt != w.attempt:
                return None
            return [
                WorkerNeedsReview(
                    bead_id=w.bead_id,
                    epic_id=w.epic_id,
                    session_id=w.session_id,
                    attempt=w.attempt,
                    instance=w.instance,
                    reason="the session went idle without swarm_complete",
                )
            ]

        with contextlib.suppress(WorkerStateError):
            ctx.store.change_worker(w.bead_id, build)
