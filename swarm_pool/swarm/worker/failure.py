"""Failing a worker's attempt, and retrying it under
``workers.max_retries``.

Room: swarm.worker.

``fail`` records ``worker_failed`` and, while retries are left, queues the worker again
in the same worktree (``worker_retried`` + ``worker_queued``, one transaction) with a
note that the earlier attempt was interrupted; the dispatcher then prefers another
instance. Without a retry the bead is blocked and its reservations and slot released in
the same transaction (``finish.py``). What happened is a ``FailOutcome``. Two budgets,
chosen by the failure's ``FailureCause`` (``retry_allowed``): the task's own failures
count against ``workers.max_retries``; failures of its instance (death, restart, drain)
are retried for as long as ``workers.infra_retry_window_s`` from the first of them, each
after a doubling backoff (``infra_backoff_until``, which the dispatcher honours), and
never use up ``max_retries``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from swarm_pool import faults
from swarm_pool.errors import OpenCodeError, SwarmPoolError, WorkerStateError
from swarm_pool.store.events import (
    BaseEvent,
    FailureCause,
    ReleaseReason,
    WorkerFailed,
    WorkerQueued,
    WorkerRetried,
    WorkerSpawned,
    now_ms,
)
from swarm_pool.store.lifecycle import LIVE
from swarm_pool.store.recorder import StoredEvent
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker.checkout import is_slot_path
from swarm_pool.swarm.worker.dedicated import release_instance
from swarm_pool.swarm.worker.finish import Finish, finish_events, holder_of
from swarm_pool.swarm.worker.release import release_session
from swarm_pool.swarm.worker.spec import queue_again


@dataclass(frozen=True)
class RetryUse:
    """Retries since the caller's last spawn of a bead, by cause; ``infra_since_ms`` is
    the time of the first infra retry among them, ``last_infra_ms`` of the latest one
    when it is the retry that started the current attempt (None otherwise)."""

    task: int = 0
    infra: int = 0
    infra_since_ms: int | None = None
    last_infra_ms: int | None = None

    def to_dict(self) -> dict[str, int]:
        return {"task": self.task, "infra": self.infra}


RETRY_TYPES = ["worker_spawned", "worker_queued", "worker_retried"]


def count_retries(events: Iterable[StoredEvent]) -> dict[str, RetryUse]:
    """Per bead, the retries since the caller's last spawn (not counting the engine's
    own retries), from its spawn/queue/retry events in log order."""
    task: dict[str, int] = {}
    infra: dict[str, int] = {}
    since: dict[str, int | None] = {}
    last_infra: dict[str, int | None] = {}
    previous: dict[str, int] = {}
    for stored in events:
        event = stored.event
        if not isinstance(event, WorkerSpawned | WorkerQueued | WorkerRetried):
            continue
        bead, attempt = event.bead_id, event.attempt
        if isinstance(event, WorkerRetried):
            if event.cause == FailureCause.INFRA:
                infra[bead] = infra.get(bead, 0) + 1
                if since.get(bead) is None:
                    since[bead] = stored.timestamp
                last_infra[bead] = stored.timestamp
            else:
                task[bead] = task.get(bead, 0) + 1
                last_infra[bead] = None
        elif attempt != previous.get(bead):
            # A new attempt number not announced by a retry: a caller's spawn.
            task[bead], infra[bead], since[bead], last_infra[bead] = 0, 0, None, None
        previous[bead] = attempt
    return {
        bead: RetryUse(task.get(bead, 0), infra.get(bead, 0), since.get(bead), last_infra.get(bead))
        for bead in previous
    }


def retry_use(ctx: SwarmContext, bead_id: str) -> RetryUse:
    return count_retries(ctx.store.read(types=RETRY_TYPES, bead_id=bead_id)).get(
        bead_id, RetryUse()
    )


def retries_used(ctx: SwarmContext, bead_id: str) -> int:
    """The task's own retries since the last spawn a caller asked for."""
    return retry_use(ctx, bead_id).task


def retry_allowed(ctx: SwarmContext, worker: WorkerView, cause: FailureCause) -> bool:
    """Whether the budget of ``cause`` lets this failure be retried."""
    use = retry_use(ctx, worker.bead_id)
    workers = ctx.config.workers
    if cause == FailureCause.INFRA:
        since = use.infra_since_ms
        return since is None or now_ms() - since < workers.infra_retry_window_s * 1000
    return use.task < workers.max_retries


def infra_backoff_until(ctx: SwarmContext, bead_id: str) -> int | None:
    """When (ms) the current attempt, queued by an infra retry, may be dispatched: the
    n-th infra retry waits ``infra_retry_backoff_s * 2**(n-1)``, capped; None if the
    attempt was not queued by an infra retry."""
    use = retry_use(ctx, bead_id)
    if use.last_infra_ms is None or use.infra == 0:
        return None
    workers = ctx.config.workers
    delay = min(
        workers.infra_retry_backoff_s * 2 ** (use.infra - 1), workers.infra_retry_backoff_max_s
    )
    return use.last_infra_ms + int(delay * 1000)


class FailOutcome(StrEnum):
    """What ``fail`` did with the attempt."""

    RETRIED = "retried"  # queued again for the dispatcher
    FAILED = "failed"  # no retry left: the bead is blocked, its files and slot released
    IGNORED = "ignored"  # nothing live to fail (or a completion won the race)


@dataclass(frozen=True)
class Failure:
    """Why an attempt fails: the error shown, the machine reason, and the budget."""

    error: str
    reason: str
    cause: FailureCause = FailureCause.TASK


@dataclass(frozen=True)
class AttemptTarget:
    """The attempt news is about: a failure for another session or attempt (an older
    one) never fails the current one."""

    session_id: str | None = None
    attempt: int | None = None

    @classmethod
    def of(cls, worker: WorkerView) -> AttemptTarget:
        return cls(worker.session_id, worker.attempt)


def fail(
    ctx: SwarmContext,
    bead_id: str,
    failure: Failure,
    *,
    retry: bool = True,
    abort: bool = False,
    target: AttemptTarget | None = None,
) -> FailOutcome:
    """Fail the bead's current attempt; retry it under the policy.

    The attempt failed is the one read first (or ``target``): news about an older
    attempt never fails a newer one. The failure is recorded only if that attempt is
    still live when it is written (a conditional append), so a completion that lands
    meanwhile, during the abort say, wins and the failure is dropped. ``failure.cause``
    picks the retry budget. See ``FailOutcome`` for what it returns.
    """
    with ctx.lock(f"spawn-{bead_id}"):
        worker = ctx.store.workers.get(bead_id)
        if worker is None or not _is_target(worker, target):
            return FailOutcome.IGNORED
        target = AttemptTarget.of(worker)
        if abort and worker.session_id and worker.instance:
            _abort(ctx, worker.instance, worker.session_id, worker.worktree)
        faults.point("fail.before_record")
        outcome = FailOutcome.IGNORED

        def build(current: WorkerView | None) -> list[BaseEvent] | None:
            nonlocal outcome
            outcome = FailOutcome.IGNORED
            if current is None or not _is_target(current, target):
                return None
            if retry and retry_allowed(ctx, current, failure.cause):
                outcome = FailOutcome.RETRIED
                return _retry_events(ctx, current, failure)
            outcome = FailOutcome.FAILED
            return _final_events(ctx, current, failure)

        try:
            ctx.store.change_worker(bead_id, build)
        except WorkerStateError:
            return FailOutcome.IGNORED
        if outcome == FailOutcome.FAILED:
            _after_final(ctx, worker)
        return outcome


def _after_final(ctx: SwarmContext, worker: WorkerView) -> None:
    if is_slot_path(ctx, worker.worktree):
        # Its slot serves the next bead: the session goes now, its transcript kept.
        release_session(ctx, worker.bead_id)
    queued = ctx.last_event(worker.bead_id, WorkerQueued)
    if queued is not None and queued.routing == "dedicated":
        with contextlib.suppress(SwarmPoolError):
            release_instance(ctx, worker.bead_id)


def _is_target(worker: WorkerView, target: AttemptTarget | None) -> bool:
    if worker.status not in LIVE:
        return False
    if target is None:
        return True
    if target.session_id is not None and worker.session_id != target.session_id:
        return False
    return target.attempt is None or worker.attempt == target.attempt


def _failed_event(worker: WorkerView, failure: Failure) -> WorkerFailed:
    return WorkerFailed(
        bead_id=worker.bead_id,
        epic_id=worker.epic_id,
        session_id=worker.session_id,
        attempt=worker.attempt,
        error=failure.error,
        reason=failure.reason,
        duration_ms=now_ms() - worker.spawned_at if worker.spawned_at else None,
        cause=failure.cause,
    )


def _final_events(ctx: SwarmContext, worker: WorkerView, failure: Failure) -> list[BaseEvent]:
    # One transaction: an observer never sees a failed worker whose bead is still "in
    # progress", or whose files are still reserved. Failed for good, its slot may serve
    # another bead (not if it holds uncommitted work: that is checked before any reset).
    finish = Finish(
        bead_id=worker.bead_id,
        epic_id=worker.epic_id,
        holder=holder_of(worker),
        released_reason=f"failed: {failure.reason}",
        status="blocked",
        status_reason=f"worker failed: {failure.reason}",
        slot=ReleaseReason.FAILED,
    )
    return [_failed_event(worker, failure), *finish_events(ctx.store, finish)]


def _retry_events(ctx: SwarmContext, worker: WorkerView, failure: Failure) -> list[BaseEvent]:
    # Failed, then straight to pending with the next attempt: queued for the dispatcher,
    # which prefers another instance than the one that failed it.
    attempt = worker.attempt + 1
    return [
        _failed_event(worker, failure),
        WorkerRetried(
            bead_id=worker.bead_id,
            epic_id=worker.epic_id,
            session_id=worker.session_id,
            attempt=attempt,
            reason=failure.reason,
            cause=failure.cause,
        ),
        queue_again(ctx, worker, attempt, f"retry after {failure.reason}"),
    ]


def _abort(ctx: SwarmContext, instance: str, session_id: str, worktree: str) -> None:
    try:
        inst = ctx.instance(instance)
    except SwarmPoolError:
        return
    client = ctx.client(inst)
    try:
        client.abort(session_id, directory=worktree or None)
    except OpenCodeError:
        pass  # the instance may be gone; the failure is recorded either way
    finally:
        client.close()
