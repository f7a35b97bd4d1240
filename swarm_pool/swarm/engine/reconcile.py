"""Reconciling the instances' sessions with the store, after a crash or a lost answer.

Room: swarm.engine.

The dispatcher records a session (``worker_session_created``) before it prompts it, so
whatever a supervisor SIGKILL or an unanswered request leaves behind is one of:

- a worker ``dispatching`` whose session was never prompted: prompt it now (the intent
  that never was) and record the spawn; if the session is gone, queue the attempt again;
- a worker ``dispatching`` whose session was prompted (it has a user message): record
  the spawn, and the watcher takes it from there;
- a session in a worker's worktree that is not the worker's current attempt's (created
  before the intent was recorded, or left by an older attempt): abort and delete it, so
  a bead never has two live sessions.

``reconcile`` runs when the engine starts (after adoption too) before it dispatches
anything, and again for an instance that comes back from a restart;
``reconcile_dispatching`` runs on every tick for intents older than a grace period (a
prompt whose answer never came); ``sweep_unknown`` runs every ``workers.session_sweep_s``
and deletes the sessions in any worker's worktree that no ``worker_session_created``
names and that are older than the grace period (a creation whose answer was lost, or
an instance killed between the creation and its record): no session leaks.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field, replace

from swarm_pool.errors import OpenCodeError, OpenCodeStatusError, SwarmPoolError
from swarm_pool.pool.router import InstanceView
from swarm_pool.store.events import SlotState, WorkerEvent, now_ms
from swarm_pool.store.lifecycle import LIVE, WorkerStatus
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker.dispatch import record_spawn, render_prompt, requeue
from swarm_pool.swarm.worker.spec import load_spec

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    prompted: list[str] = field(default_factory=list)  # intents that never were
    adopted: list[str] = field(default_factory=list)  # prompted, spawn not recorded
    requeued: list[str] = field(default_factory=list)  # the recorded session is gone
    removed: list[str] = field(default_factory=list)  # sessions of nobody's attempt
    unreachable: list[str] = field(default_factory=list)  # instances to try again


def reconcile(
    ctx: SwarmContext, slots: list[InstanceView], *, skip: frozenset[str] = frozenset()
) -> ReconcileReport:
    """Match every live worker's worktree on every reachable instance with the store
    (but the beads in ``skip``: being dispatched right now, their new session may not
    be recorded yet)."""
    report = ReconcileReport()
    workers = [
        w
        for w in (_with_slot(ctx, w) for w in ctx.mine(ctx.store.workers.list()))
        if w.status in LIVE and w.worktree and w.bead_id not in skip
    ]
    for slot in slots:
        try:
            _reconcile_instance(ctx, slot, workers, report)
        except OpenCodeError as e:
            report.unreachable.append(slot.name)
            log.warning("reconcile: instance %s unreachable: %s", slot.name, e)
    return report


def _with_slot(ctx: SwarmContext, w: WorkerView) -> WorkerView:
    """A queued worker names no directory yet; the slot it holds (taken by a dispatcher
    that then died) is its directory all the same."""
    if w.worktree or w.status not in LIVE:
        return w
    held = ctx.store.slots.holding(w.bead_id)
    if held is None or held.state != SlotState.BUSY:
        return w
    return replace(w, worktree=held.path)


def sweep_unknown(ctx: SwarmContext, slots: list[InstanceView], grace_s: float) -> list[str]:
    """Delete sessions in the workers' worktrees that the store has never heard of and
    that are older than ``grace_s`` (a dispatcher records its session within that)."""
    known = {
        s.event.session_id or ""
        for s in ctx.store.read(types=["worker_session_created", "worker_spawned"])
        if isinstance(s.event, WorkerEvent)
    }
    worktrees = {w.worktree for w in ctx.store.workers.list() if w.worktree} | {
        # A slot is taken before its session is created, so a dispatcher that died in
        # between left its session in a busy slot its worker does not name yet.
        s.path
        for s in ctx.store.slots.list()
        if s.state == SlotState.BUSY
    }
    cutoff = now_ms() - int(grace_s * 1000)
    removed: list[str] = []
    for slot in slots:
        client = ctx.client(slot)
        try:
            # One listing per instance: asking per worktree would make every instance
            # set up every worktree it never served (every 30 s, for the whole history).
            for session in client.all_sessions():
                sid = str(session.get("id", ""))
                worktree = str(session.get("directory", ""))
                created = (session.get("time") or {}).get("created")
                if not sid or sid in known or worktree not in worktrees:
                    continue
                if not isinstance(created, int | float) or created > cutoff:
                    continue
                with contextlib.suppress(OpenCodeError):
                    client.abort(sid, directory=worktree)
                with contextlib.suppress(OpenCodeError):
                    client.delete_session(sid, directory=worktree)
                removed.append(sid)
                log.info(
                    "reconcile: removed session %s in %s (unknown to the store)", sid, worktree
                )
        except OpenCodeError as e:
            log.warning("reconcile: sweeping %s failed: %s", slot.name, e)
        finally:
            client.close()
    return removed


def _reconcile_instance(
    ctx: SwarmContext, slot: InstanceView, workers: list[WorkerView], report: ReconcileReport
) -> None:
    client = ctx.client(slot)
    try:
        for w in workers:
            for session in client.sessions(directory=w.worktree):
                sid = str(session.get("id", ""))
                if not sid or session.get("directory") != w.worktree:
                    continue
                if sid == w.session_id and w.instance == slot.name:
                    continue
                with contextlib.suppress(OpenCodeError):
                    client.abort(sid, directory=w.worktree)
                with contextlib.suppress(OpenCodeError):
                    client.delete_session(sid, directory=w.worktree)
                report.removed.append(sid)
                log.info("reconcile: removed session %s in %s (not its attempt's)", sid, w.bead_id)
    finally:
        client.close()
    for w in workers:
        if w.status == WorkerStatus.DISPATCHING and w.instance == slot.name:
            settle_intent(ctx, w, slot, report)


def reconcile_dispatching(ctx: SwarmContext, slots: list[InstanceView], grace_s: float) -> None:
    """Settle intents older than ``grace_s`` (their dispatcher died or got no answer)."""
    by_name = {s.name: s for s in slots}
    now = now_ms()
    report = ReconcileReport()
    for w in ctx.mine(ctx.store.workers.list(status=WorkerStatus.DISPATCHING.value)):
        slot = by_name.get(w.instance)
        if slot is not None and now - (w.updated_at or 0) >= grace_s * 1000:
            with contextlib.suppress(OpenCodeError):
                settle_intent(ctx, w, slot, report)


def settle_intent(
    ctx: SwarmContext, w: WorkerView, slot: InstanceView, report: ReconcileReport
) -> None:
    """A recorded session that may or may not have been prompted: find out and finish."""
    assert w.session_id is not None
    with ctx.lock(f"spawn-{w.bead_id}"):
        current = ctx.store.workers.get(w.bead_id)
        if current is None or current.status != WorkerStatus.DISPATCHING:
            return
        if current.session_id != w.session_id:
            return
        client = ctx.client(slot)
        try:
            try:
                messages = client.messages(w.session_id, directory=w.worktree)
            except OpenCodeStatusError as e:
                if e.status_code == 404:
                    requeue(ctx, w.bead_id, w.attempt, w.session_id)
                    report.requeued.append(w.bead_id)
                return
            try:
                spec = load_spec(ctx, w.bead_id)
            except SwarmPoolError:
                return
            prompt = render_prompt(ctx, w.bead_id, w.attempt, spec, w.worktree)
            if not any(_is_user(m) for m in messages):
                client.prompt_async(w.session_id, prompt, directory=w.worktree)
                report.prompted.append(w.bead_id)
            else:
                report.adopted.append(w.bead_id)
        finally:
            client.close()
        record_spawn(ctx, w.bead_id, w.session_id, slot.name, prompt)


def _is_user(message: object) -> bool:
    info = message.get("info") if isinstance(message, dict) else None
    return isinstance(info, dict) and info.get("role") == "user"
