"""Review and merge of a finished worker, and the release of what it
held.

Room: swarm.worker.

``review`` compares what the worker really changed in its worktree (committed and not)
with the patterns it owns, reads the verification that ``swarm_complete`` recorded, the
state of its file reservations, and records ``review_completed`` with a verdict.
The review records what it saw: the branch's head commit and the tree of the worktree's
whole content. ``merge`` refuses (``ReviewRequiredError``, before touching anything)
unless the bead's latest ``review_completed`` approved exactly that head and content;
then it commits what the worker left uncommitted, merges ``swarm/<bead>`` into the base
branch under the git lock (``Merger.merge``), records ``worktree_merged`` (or
``merge_conflict``, with the base left untouched), closes the bead and releases its
files and slot in the same transaction (``finish.py``), and releases the worker's
OpenCode session: its transcript is saved, the session is deleted and (unless
it is a warm slot, given back in the merge's own transaction) its directory disposed on
its instance. ``cleanup`` removes merged worktrees and never one with uncommitted
changes.
With several hosts (``remote.py``) both first fetch a branch another host ran, and
``merge`` fast-forwards the base to the shared remote's before merging and pushes it
after.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swarm_pool.errors import (
    MergeConflictError,
    NotFoundError,
    ReviewRequiredError,
    WorkerError,
)
from swarm_pool.git import BRANCH_PREFIX
from swarm_pool.store.events import (
    MergeConflict,
    ReleaseReason,
    ReviewCompleted,
    WorkerCompleted,
    WorktreeMerged,
)
from swarm_pool.store.globs import matches
from swarm_pool.store.lifecycle import MERGEABLE
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker.checkout import cleanup as cleanup_slots
from swarm_pool.swarm.worker.finish import Finish, finish_events, holder_of
from swarm_pool.swarm.worker.release import release_session
from swarm_pool.swarm.worker.remote import fetch_branch, publish_base, sync_base


@dataclass(frozen=True)
class ReviewResult:
    bead_id: str
    epic_id: str
    status: str
    approved: bool
    files_touched: list[str]
    outside_owned: list[str]
    uncommitted: list[str]
    diffstat: str
    verification: dict[str, Any] | None
    violations: list[str]
    reservations_held: list[str]
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MergeOutcome:
    bead_id: str
    epic_id: str
    branch: str
    base: str
    commit: str
    files: list[str]
    leftovers_commit: str | None
    up_to_date: bool
    session_released: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _owned(path: str, patterns: list[str]) -> bool:
    return any(matches(p, path) or path == p for p in patterns)


def _escaping_links(worktree: Path, files: list[str]) -> list[str]:
    """The changed files that are symlinks resolving outside the worktree."""
    root = worktree.resolve()
    out = []
    for name in files:
        path = worktree / name
        if path.is_symlink():
            target = path.resolve()
            if target != root and root not in target.parents:
                out.append(name)
    return out


def check_passed(verification: dict[str, Any] | None) -> bool:
    check = (verification or {}).get("check")
    return not isinstance(check, dict) or bool(check.get("passed", True))


def check_recorded(verification: dict[str, Any] | None) -> bool:
    return isinstance((verification or {}).get("check"), dict)


def review(ctx: SwarmContext, bead_id: str) -> ReviewResult:
    """Judge the worker's work against its contract; records ``review_completed``."""
    worker = ctx.store.workers.get(bead_id)
    if worker is None:
        raise NotFoundError(f"bead {bead_id} has no worker")
    # Several hosts: the work of a worker another host ran is on the shared remote.
    fetch_branch(ctx, worker)
    cell = ctx.store.hive.get_cell(bead_id)
    owned = list(worker.files or cell.files)
    diff = ctx.git.diffs.diff(bead_id)
    tree = ctx.git.diffs.content_tree(bead_id)
    touched = sorted({*diff.files, *diff.uncommitted})
    outside = [f for f in touched if not _owned(f, owned)]
    completed = ctx.last_event(bead_id, WorkerCompleted)
    verification = completed.verification if completed is not None else None
    violations = list(completed.violations) if completed is not None else []
    held = [
        r.pattern
        for r in ctx.store.reservations.active()
        if r.bead_id == bead_id or (worker.agent_name and r.holder == worker.agent_name)
    ]
    problems = []
    if worker.status not in MERGEABLE:
        problems.append(f"worker status is {worker.status}")
    if not touched:
        problems.append("no changes")
    if outside:
        problems.append(f"changes outside the owned patterns: {', '.join(outside)}")
    if not check_passed(verification):
        problems.append("the check command failed")
    elif ctx.config.workers.check_command and not check_recorded(verification):
        # Fail closed: a configured check that never ran proves nothing.
        problems.append("no check result recorded (workers.check_command is configured)")
    escaping = _escaping_links(Path(worker.worktree), touched) if worker.worktree else []
    if escaping:
        # OpenCode's file tools follow links out of the worktree; never merge one.
        problems.append(f"symlinks leaving the worktree: {', '.join(escaping)}")
    approved = not problems
    notes = "; ".join(problems) if problems else "ok"
    if worker.status == "needs_review":
        notes += " (the worker went idle without swarm_complete)"
    ctx.store.append(
        ReviewCompleted(
            bead_id=bead_id,
            epic_id=worker.epic_id,
            approved=approved,
            files_touched=touched,
            outside_owned=outside,
            diffstat=diff.stat,
            verification=verification,
            notes=notes,
            head_commit=diff.head,
            tree=tree,
        )
    )
    return ReviewResult(
        bead_id=bead_id,
        epic_id=worker.epic_id,
        status=worker.status,
        approved=approved,
        files_touched=touched,
        outside_owned=outside,
        uncommitted=list(diff.uncommitted),
        diffstat=diff.stat,
        verification=verification,
        violations=violations,
        reservations_held=held,
        problems=problems,
    )


def merge(ctx: SwarmContext, bead_id: str, *, base: str | None = None) -> MergeOutcome:
    """Merge the bead's branch into its base; MergeConflictError (recorded) on conflict."""
    worker = ctx.store.workers.get(bead_id)
    if worker is None:
        raise NotFoundError(f"bead {bead_id} has no worker")
    if worker.status not in MERGEABLE:
        raise WorkerError(f"worker {bead_id} is {worker.status}; only finished work is merged")
    repo = ctx.git
    fetch_branch(ctx, worker)
    require_approval(ctx, bead_id)
    leftovers = repo.worktrees.commit_all(bead_id, f"swarm-pool: uncommitted work of {bead_id}")
    # Several hosts: merge onto the remote's base, and publish it only if all went well
    # (a conflict raises below and leaves the remote's base as it was).
    before = sync_base(ctx, repo.branches.base_of(bead_id, base))
    try:
        result = repo.merger.merge(bead_id, base)
        publish_base(ctx, result.base, before)
    except MergeConflictError as e:
        ctx.store.append(
            MergeConflict(
                bead_id=bead_id,
                epic_id=worker.epic_id,
                branch=e.branch or BRANCH_PREFIX + bead_id,
                base_branch=e.base or (base or ""),
                files=list(e.files),
            )
        )
        raise
    # Work that went idle without swarm_complete is closed by its merge; its slot (if it
    # ran in one) is free for the next bead from the same moment.
    closed = ctx.store.hive.get_cell(bead_id).status == "closed"
    finish = Finish(
        bead_id=bead_id,
        epic_id=worker.epic_id,
        holder=holder_of(worker),
        released_reason="merged",
        status=None if closed else "closed",
        status_reason="merged",
        slot=ReleaseReason.MERGED,
    )
    merged = WorktreeMerged(
        bead_id=bead_id,
        epic_id=worker.epic_id,
        branch=result.branch,
        base_branch=result.base,
        commit=result.commit,
    )
    # The merge, the bead's closing and the release of its files are one outcome; and it
    # is recorded for the worker read above only (not a newer attempt spawned meanwhile).
    ctx.store.append_many(
        [merged, *finish_events(ctx.store, finish)], expect={bead_id: worker.version}
    )
    released = release_session(ctx, bead_id)
    return MergeOutcome(
        bead_id=bead_id,
        epic_id=worker.epic_id,
        branch=result.branch,
        base=result.base,
        commit=result.commit,
        files=list(result.files),
        leftovers_commit=leftovers,
        up_to_date=result.up_to_date,
        session_released=released,
    )


def require_approval(ctx: SwarmContext, bead_id: str) -> None:
    """ReviewRequiredError unless the bead's latest review approved its current work.

    "Current" is the branch's head commit and the worktree's whole content, so neither a
    commit nor an uncommitted edit made after the review slips into the merge.
    """
    branch = BRANCH_PREFIX + bead_id
    head = ctx.git.worktrees.head(bead_id)
    last = ctx.last_event(bead_id, ReviewCompleted)
    fix = f"run `swarm-pool review {bead_id}` (or swarm_review) and merge once it approves"
    if last is None:
        raise ReviewRequiredError(
            f"merge of {bead_id} refused: no review_completed for {branch} at {head[:12]}; {fix}"
        )
    if not last.approved:
        raise ReviewRequiredError(
            f"merge of {bead_id} refused: its last review rejected {branch} "
            f"({last.notes}); no approving review_completed for {head[:12]}"
        )
    if last.head_commit != head or last.tree != ctx.git.diffs.content_tree(bead_id):
        seen = last.head_commit[:12] or "an unknown commit"
        raise ReviewRequiredError(
            f"merge of {bead_id} refused: the approving review saw {branch} at {seen}, "
            f"but it is now at {head[:12]} (or its uncommitted work changed); {fix}"
        )


def cleanup(ctx: SwarmContext) -> dict[str, Any]:
    """Remove merged worktrees and give back idle clean slots; anything with uncommitted
    changes is kept (and said why)."""
    result = ctx.git.worktrees.cleanup().to_dict()
    result["slots"] = cleanup_slots(ctx).to_dict()
    return result
