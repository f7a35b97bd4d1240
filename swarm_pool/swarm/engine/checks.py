"""The engine's checks of one active worker, each tick.

Room: swarm (the engine loop). ``WorkerChecks.check`` fails the worker's attempt when
its instance exited or was replaced (cause infra: retried under the infra budget, the
instance's death is not the task's fault), when its session reported ``session.error``,
or when it ran past ``workers.timeout_s`` (or its spawn's own ``timeout_s``) of running
time (aborted, not retried: a hung model would hang again; time blocked on a human's
answer does not count). A running session that went idle without ``swarm_complete``
becomes ``worker_needs_review``, but only when the SSE idle, ``/session/status``, the
last assistant message and the instance's health all agree (never one signal alone);
sessions whose idle event was missed are re-checked every ``recheck_s``. It remembers
each worker's timeout and when each session was last re-checked. ``fail_attempt`` fails
the attempt a worker view shows, never a newer one (the host duty uses it too).
"""

from __future__ import annotations

import contextlib
import time

from swarm_pool.errors import OpenCodeError, SwarmPoolError, WorkerStateError
from swarm_pool.pool.router import InstanceView
from swarm_pool.store.events import FailureCause, SessionError, WorkerNeedsReview
from swarm_pool.store.lifecycle import WorkerStatus
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.engine.watch import idle_outcome
from swarm_pool.swarm.worker.failure import AttemptTarget, FailOutcome, Failure, fail
from swarm_pool.swarm.worker.spec import load_spec


def fail_attempt(
    ctx: SwarmContext,
    w: WorkerView,
    *,
    error: str,
    reason: str,
    cause: FailureCause = FailureCause.TASK,
    retry: bool = True,
    abort: bool = False,
) -> FailOutcome:
    """Fail the attempt ``w`` shows, never a newer one (``fail``'s target)."""
    return fail(
        ctx,
        w.bead_id,
        Failure(error, reason, cause),
        retry=retry,
        abort=abort,
        target=AttemptTarget.of(w),
    )


class WorkerChecks:
    """One worker's checks (module docstring), with what they remember across ticks."""

    def __init__(self, recheck_s: float) -> None:
        self.recheck_s = recheck_s
        self._last_check: dict[str, float] = {}  # session -> monotonic of its re-check
        self._timeouts: dict[str, float] = {}  # session (or bead) -> its timeout

    def check(
        self,
        ctx: SwarmContext,
        w: WorkerView,
        by_name: dict[str, InstanceView],
        *,
        gone: int,
        now: int,
    ) -> None:
        """``gone``: ms when the worker's instance last went away (0: never); ``now``:
        this tick's time (ms)."""
        spawned = w.spawned_at or 0
        # An empty view means the state file could not be read: that proves nothing.
        missing = bool(by_name) and w.instance not in by_name
        if missing or gone >= spawned:
            error = f"instance {w.instance} exited while the worker was running"
            fail_attempt(ctx, w, error=error, reason="instance_exited", cause=FailureCause.INFRA)
            return
        errors = [
            s
            for s in ctx.store.read(types=["session_error"], session_id=w.session_id)
            if s.timestamp >= spawned
        ]
        if errors:
            latest = errors[-1].event
            error = latest.error if isinstance(latest, SessionError) else "session error"
            fail_attempt(ctx, w, error=error, reason="session_error")
            return
        limit = self._timeout_of(ctx, w)
        # Running time only: time blocked on a human's answer does not count.
        if w.status == WorkerStatus.RUNNING and w.running_ms(now) > limit * 1000:
            error = f"no completion after {limit:g}s"
            fail_attempt(ctx, w, error=error, reason="timeout", retry=False, abort=True)
            return
        if w.status != WorkerStatus.RUNNING or w.instance not in by_name:
            return
        session = w.session_id or ""  # a running worker has its session
        last = self._last_check.get(session, 0.0)
        due = time.monotonic() - last >= self.recheck_s
        if w.session_status == "idle" or due:
            self._last_check[session] = time.monotonic()
            self._confirm_idle(ctx, w, by_name[w.instance])

    def _timeout_of(self, ctx: SwarmContext, w: WorkerView) -> float:
        key = w.session_id or w.bead_id
        if key not in self._timeouts:
            try:
                override = load_spec(ctx, w.bead_id).timeout_s
            except SwarmPoolError:
                override = None
            self._timeouts[key] = override or ctx.config.workers.timeout_s
        return self._timeouts[key]

    def _confirm_idle(self, ctx: SwarmContext, w: WorkerView, instance: InstanceView) -> None:
        client = ctx.client(instance)
        try:
            # Its SSE session.error may not be recorded yet (a warm directory answers
            # fast): an idle session whose last answer failed is a session error.
            error = idle_outcome(client, w.session_id or "", w.worktree or None)
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
            fail_attempt(ctx, w, error=error, reason="session_error")
            return
        with contextlib.suppress(WorkerStateError):
            ctx.store.change_worker(w.bead_id, lambda current: _needs_review(w, current))


def _needs_review(w: WorkerView, current: WorkerView | None) -> list[WorkerNeedsReview] | None:
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
