"""Warm worktree slots: the reusable worktree directories each instance
keeps.

Room: swarm.worker.

OpenCode pays its per-directory set-up (config, project and VCS detection, tools, MCP
clients) on the first session in a directory, and keeps that state warm after. So,
unless ``[workers] worktrees = "fresh"`` or the routing is ``dedicated``, a worker does
not get a new path: at dispatch, once the router has chosen its instance, ``acquire``
gives it one of that instance's slots (``.swarm/slots/<instance>/<n>``), reset with git
to the bead's branch. Slots are made lazily, when none of the instance's is free, or
ahead of any bead with ``[workers] min_slots`` (``open_slots``: the engine makes them when
the instance is ready and has the instance open them, so a first bead is warm). A slot
is taken in the store first (a conditional append: two processes never put two beads in
one slot) and only then reset, so the loser of a race never touches the winner's files.
A bead keeps its slot across retries, and gives it back when it is merged, fails for
good (``finish.finish_events``, appended with that outcome) or is cleaned up (``cleanup``). A
slot found with uncommitted work is never reset: it is marked dirty and skipped. Free
slots beyond ``max_sessions_per_instance`` are removed and their directories disposed on
their instance (``trim``), so an instance serves a bounded set of directories.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from swarm_pool import faults
from swarm_pool.errors import (
    DirtyWorktreeError,
    GitError,
    OpenCodeError,
    SlotConflictError,
    SwarmPoolError,
    WorkerError,
)
from swarm_pool.pool.router import Routing
from swarm_pool.store.events import ReleaseReason, SlotReleased, SlotState, WorktreeMerged
from swarm_pool.store.lifecycle import LIVE, WorkerStatus
from swarm_pool.store.slots import SlotView
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.pool_view import grant_token

log = logging.getLogger(__name__)

# Races lost in a row before acquire gives up (each loss means another taker progressed).
_TRIES = 16


def uses_slots(ctx: SwarmContext, routing: str) -> bool:
    """Whether a worker with this routing runs in a slot (not a fresh worktree)."""
    dedicated: Routing = "dedicated"
    return ctx.config.workers.worktrees == "slots" and routing != dedicated


def is_slot_path(ctx: SwarmContext, path: str) -> bool:
    if not path:
        return False
    try:
        Path(path).resolve().relative_to(ctx.paths.slots_dir.resolve())
    except ValueError:
        return False
    return True


def _number(view: SlotView) -> int:
    try:
        return int(view.slot.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return -1


def _candidates(ctx: SwarmContext, instance: str, bead_id: str) -> list[SlotView]:
    """The slots to try, best first: the bead's own (a retry continues there), then the
    instance's free ones, then its dirty ones that are clean again."""
    own = ctx.store.slots.holding(bead_id)
    mine = ctx.store.slots.list(instance=instance)
    found = [own] if own is not None else []
    own_name = own.slot if own is not None else ""
    found += [s for s in mine if s.state == SlotState.FREE and s.slot != own_name]
    for s in mine:
        if s.state != SlotState.DIRTY or s.slot == own_name:
            continue
        try:
            if not ctx.git.diffs.uncommitted_files(Path(s.path)):
                found.append(s)
        except GitError:
            continue
    return found


def _new_slot(ctx: SwarmContext, instance: str) -> SlotView:
    used = {_number(s) for s in ctx.store.slots.list(instance=instance)}
    n = next(i for i in itertools.count() if i not in used)
    path = ctx.paths.slots_dir.resolve() / instance / str(n)
    return SlotView(f"{instance}/{n}", instance, str(path), SlotState.FREE, "", 0, "", 0, 0)


def acquire(ctx: SwarmContext, instance: str, bead_id: str, attempt: int) -> Path:
    """A slot of ``instance`` for the bead, on its branch: the directory to run it in.

    Raises WorkerError when every try lost a race, GitError when git fails.
    """
    base = ctx.config.workers.base_branch or None
    keep = ctx.config.workers.slot_keep_ignored
    for _ in range(_TRIES):
        lost = False
        for cand in [*_candidates(ctx, instance, bead_id), _new_slot(ctx, instance)]:
            faults.point("slots.before_take")
            try:
                taken = ctx.store.slots.take(
                    cand.slot,
                    instance=cand.instance,
                    path=cand.path,
                    bead_id=bead_id,
                    attempt=attempt,
                    expect_version=cand.version,
                )
            except SlotConflictError:
                lost = True
                break  # someone else moved: read the slots again
            try:
                ctx.git.slots.reset(Path(taken.path), bead_id, base, keep_ignored=keep)
            except DirtyWorktreeError as e:
                # Never reset: hand it back to the work it holds, shown as dirty.
                ctx.store.slots.mark_dirty(taken.slot, cand.bead_id or bead_id, list(e.files))
                continue
            except GitError:
                ctx.store.slots.mark_dirty(taken.slot, cand.bead_id, [])
                raise
            return Path(taken.path)
        if not lost:
            break
    raise WorkerError(f"could not take a worktree slot on {instance} for {bead_id}")


def open_slots(ctx: SwarmContext, instance: str) -> list[str]:
    """Give ``instance`` its first ``[workers] min_slots`` slots ahead of any bead, and
    have the instance open every free slot of its own (after a restart, its directories
    are cold again): the first beads then skip OpenCode's per-directory set-up. Returns
    the slots the instance opened.

    Only the engine calls this (one per pool), so a slot still ``opening`` is one it left
    when it stopped, and is finished here. A slot is free as soon as its worktree exists
    (a slot git fails to make is free all the same: a bead that takes it makes it), so a
    bead dispatched meanwhile takes it rather than making another. Raises OpenCodeError
    when the instance does not answer, UnknownInstanceError when it left the pool.
    """
    left = [s for s in ctx.store.slots.list(instance=instance) if s.state == SlotState.OPENING]
    for s in left:
        _make(ctx, s)
    have = {_number(s) for s in ctx.store.slots.list(instance=instance)}
    for n in range(ctx.config.workers.min_slots):
        if n in have:
            continue
        path = ctx.paths.slots_dir.resolve() / instance / str(n)
        try:
            view = ctx.store.slots.open(f"{instance}/{n}", instance=instance, path=str(path))
        except SlotConflictError:
            continue  # made meanwhile by a dispatch
        # One at a time: a bead dispatched meanwhile finds each slot free as soon as it
        # is made, rather than all of them opening, and making one more.
        _make(ctx, view)
    free = [s for s in ctx.store.slots.list(instance=instance) if s.state == SlotState.FREE]
    opened: list[str] = []
    client = ctx.client(ctx.instance(instance))
    try:
        for s in free:
            if Path(s.path).is_dir():
                client.open_directory(s.path)
                opened.append(s.slot)
    finally:
        client.close()
    return opened


def _make(ctx: SwarmContext, view: SlotView) -> None:
    """Make an opening slot's worktree and token, and release it as free."""
    try:
        ctx.git.slots.open(Path(view.path), ctx.config.workers.base_branch or None)
    except GitError as e:
        # Free all the same: a dispatch that takes it makes its worktree then.
        log.warning("slot %s: worktree not made ahead: %s", view.slot, e)
    else:
        grant_token(ctx.paths, ctx.config, view.path)
    ctx.store.slots.opened(view.slot)


@dataclass(frozen=True)
class SlotCleanup:
    """What ``cleanup`` did: the slots given back, the ones kept (and why), and the
    ones removed beyond the instance's bound (``trim``)."""

    released: list[str]
    kept: dict[str, str]
    removed: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cleanup(ctx: SwarmContext) -> SlotCleanup:
    """Give back the slots of beads that are no longer worked on and hold nothing
    uncommitted; mark the ones with uncommitted work dirty. Unmerged finished work stays
    (like a fresh worktree's), reported under ``kept``."""
    released: list[str] = []
    kept: dict[str, str] = {}
    for s in ctx.store.slots.list():
        if s.state == SlotState.OPENING:
            continue  # the engine's, being made
        worker = ctx.store.workers.get(s.bead_id) if s.bead_id else None
        if s.state == SlotState.BUSY and worker is not None and worker.status in LIVE:
            continue
        try:
            dirty = ctx.git.diffs.uncommitted_files(Path(s.path))
        except GitError as e:
            kept[s.slot] = str(e)
            continue
        if dirty:
            if s.state != SlotState.DIRTY:
                ctx.store.slots.mark_dirty(s.slot, s.bead_id, dirty)
            kept[s.slot] = f"uncommitted changes: {', '.join(dirty[:10])}"
            continue
        if s.state == SlotState.FREE:
            continue
        merged = ctx.last_event(s.bead_id, WorktreeMerged) if s.bead_id else None
        failed = worker is not None and worker.status == WorkerStatus.FAILED
        if worker is not None and merged is None and not failed:
            kept[s.slot] = f"{s.bead_id} is not merged"
            continue
        ctx.store.append_many(
            [SlotReleased(slot=s.slot, bead_id=s.bead_id, reason=ReleaseReason.CLEANED)]
        )
        released.append(s.slot)
    return SlotCleanup(released=released, kept=kept, removed=trim(ctx))


def trim(ctx: SwarmContext) -> list[str]:
    """Remove the free slots an instance has beyond ``max_sessions_per_instance`` (made
    while others were held by unmerged or dirty work), and dispose their directories on
    the instance: the set of directories an instance serves stays bounded."""
    limit = ctx.config.pool.max_sessions_per_instance
    removed: list[str] = []
    for s in ctx.store.slots.list():
        if s.state != SlotState.FREE or _number(s) < limit:
            continue
        try:
            ctx.store.slots.remove(
                s.slot, path=s.path, expect_version=s.version, reason="beyond the limit"
            )
        except SlotConflictError:
            continue  # taken meanwhile: it is in use again
        try:
            ctx.git.slots.remove(Path(s.path))
        except GitError as e:
            log.warning("slot %s: worktree %s kept: %s", s.slot, s.path, e)
        dispose(ctx, s.instance, s.path)
        removed.append(s.slot)
    return removed


def dispose(ctx: SwarmContext, instance: str, directory: str) -> bool:
    """Dispose ``directory``'s state on ``instance`` (best effort: False if unreachable)."""
    try:
        client = ctx.client(ctx.instance(instance))
    except SwarmPoolError:
        return False
    try:
        client.dispose_directory(directory)
        return True
    except OpenCodeError:
        return False
    finally:
        client.close()
