"""Where the branches of several hosts meet: the shared git remote.

Room: swarm.worker.

With a PostgreSQL store each host runs in its own clone, so a worker's branch exists
only where its host ran it. When this is on (``remote_of``: a multi-host store and a
clone that has ``[workers] remote``, ``origin`` by default), the host that ran a worker
pushes its finished branch (``push_branch``, leftovers committed first, recorded as
``branch_pushed``); whoever reviews or merges on another host fetches it into a local
worktree first (``fetch_branch``); and ``merge`` runs on the shared base
(``sync_base`` fast-forwards the local base to the remote's, the merge is the usual
local one, ``publish_base`` pushes it). A merge conflict raises before anything is
pushed, so the remote's base is untouched; a push the remote refuses because its base
moved meanwhile is ``RemoteMovedError``, and the local base goes back to the remote's.
A single host, or a clone without the remote, is left exactly as before.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from swarm_pool.errors import GitError, RemoteMovedError, WorkerError
from swarm_pool.git import branch_name
from swarm_pool.store.events import BranchPushed
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker.spec import PromptSpec

log = logging.getLogger(__name__)


def remote_of(ctx: SwarmContext) -> str | None:
    """The shared remote's name, or None when branches stay local (one host)."""
    name = ctx.config.workers.remote
    if not name or not ctx.multi_host:
        return None
    status = ctx.git.runner.run("remote", "get-url", name, ok=(0, 2, 128)).status
    return name if status == 0 else None


def pushed(ctx: SwarmContext, worker: WorkerView) -> BranchPushed | None:
    """The push of the worker's current attempt, if it happened."""
    for stored in ctx.store.read(types=["branch_pushed"], bead_id=worker.bead_id, descending=True):
        event = stored.event
        if isinstance(event, BranchPushed) and event.attempt == worker.attempt:
            return event
    return None


def _wait_for_push(ctx: SwarmContext, worker: WorkerView) -> BranchPushed | None:
    # The host that ran it pushes on its engine's next tick after the worker finished.
    deadline = time.monotonic() + ctx.config.workers.push_wait_s
    seq = ctx.store.last_seq()
    while True:
        push = pushed(ctx, worker)
        left = deadline - time.monotonic()
        if push is not None or left <= 0:
            return push
        seq = ctx.store.wait_for_change(seq, min(left, 1.0))


def push_branch(ctx: SwarmContext, worker: WorkerView) -> str | None:
    """Push the finished worker's branch (its leftovers committed first) to the remote
    and record it; the commit pushed (None when there is no remote)."""
    remote = remote_of(ctx)
    if remote is None:
        return None
    repo = ctx.git
    git = repo.runner
    repo.worktrees.commit_all(worker.bead_id, f"swarm-pool: uncommitted work of {worker.bead_id}")
    branch = branch_name(worker.bead_id)
    with git.lock.hold():
        # --force: the branch belongs to the bead's current attempt, which may have
        # started over from the base on another host.
        git.run("push", "--quiet", "--force", remote, f"refs/heads/{branch}:refs/heads/{branch}")
        commit = git.rev(f"refs/heads/{branch}")
    if commit is None:
        raise GitError(f"branch {branch} vanished while it was pushed")
    ctx.store.append(
        BranchPushed(
            bead_id=worker.bead_id,
            epic_id=worker.epic_id,
            attempt=worker.attempt,
            host=ctx.config.pool.host,
            remote=remote,
            branch=branch,
            commit=commit,
        )
    )
    log.info("remote: pushed %s at %s to %s", branch, commit[:12], remote)
    return commit


def fetch_branch(ctx: SwarmContext, worker: WorkerView) -> None:
    """Bring a worker's branch that another host ran into this clone's worktree of the
    bead (WorkerError while that host has not pushed it yet). No-op on one host, and
    for this host's own workers."""
    remote = remote_of(ctx)
    if remote is None or not worker.host or worker.host == ctx.config.pool.host:
        return
    push = _wait_for_push(ctx, worker)
    if push is None:
        raise WorkerError(
            f"the branch of {worker.bead_id} is not on the remote yet: host {worker.host} "
            "pushes it when the worker finishes"
        )
    repo = ctx.git
    git = repo.runner
    branch = branch_name(worker.bead_id)
    tracking = f"refs/remotes/{remote}/{branch}"
    with git.lock.hold():
        git.run("fetch", "--quiet", remote, f"+refs/heads/{branch}:{tracking}")
    if git.rev(tracking) != push.commit:
        raise WorkerError(f"{remote} has another commit on {branch} than the one pushed")
    path = repo.worktrees.path_for(worker.bead_id)
    if repo.worktrees.get(worker.bead_id) is None:
        with git.lock.hold():
            git.run("branch", "--force", branch, tracking)
        repo.worktrees.create(worker.bead_id, base=ctx.config.workers.base_branch or None)
    else:
        with git.lock.hold():
            git.run("reset", "--quiet", "--hard", tracking, cwd=path)


def sync_base(ctx: SwarmContext, base: str) -> str | None:
    """Fast-forward the local ``base`` to the remote's; the remote's commit (None when
    there is no remote). GitError when the local base has commits the remote lacks."""
    remote = remote_of(ctx)
    if remote is None:
        return None
    repo = ctx.git
    git = repo.runner
    tracking = f"refs/remotes/{remote}/{base}"
    with git.lock.hold():
        git.run("fetch", "--quiet", remote, f"+refs/heads/{base}:{tracking}")
        theirs = git.rev(tracking)
        ours = git.rev(f"refs/heads/{base}")
        if theirs is None or ours == theirs:
            return theirs
        if not git.is_ancestor(f"refs/heads/{base}", tracking):
            raise GitError(
                f"local {base} has commits that {remote}/{base} lacks; push or reset it first"
            )
        checkout = repo.worktrees.checkout_of(base)
        if checkout is not None:
            git.run("merge", "--quiet", "--ff-only", tracking, cwd=checkout)
        else:
            git.run("update-ref", f"refs/heads/{base}", theirs, ours or "")
    return theirs


def publish_base(ctx: SwarmContext, base: str, before: str | None) -> None:
    """Push the merged local ``base``; on refusal (the remote moved since ``before``)
    put the local base back to ``before`` and raise RemoteMovedError."""
    remote = remote_of(ctx)
    if remote is None:
        return
    repo = ctx.git
    git = repo.runner
    with git.lock.hold():
        out = git.run("push", "--quiet", remote, f"refs/heads/{base}:refs/heads/{base}", ok=(0, 1))
        if out.status == 0:
            return
        if before is not None:
            checkout = repo.worktrees.checkout_of(base)
            if checkout is not None:
                git.run("reset", "--quiet", "--keep", before, cwd=checkout)
            else:
                git.run("update-ref", f"refs/heads/{base}", before)
    raise RemoteMovedError(f"{remote}/{base} moved while merging; merge again")


def local_worktree(ctx: SwarmContext, worker: WorkerView) -> WorkerView:
    """Make sure the claimed worker's worktree exists in this host's clone (a worker
    queued on another host has none here yet); the worker as it stands."""
    if not worker.worktree or Path(worker.worktree).is_dir():
        return worker
    base = ctx.config.workers.base_branch or None
    info = ctx.git.worktrees.create(worker.bead_id, base=base)
    return dataclasses.replace(worker, worktree=str(info.path))


def local_spec(spec: PromptSpec, worktree: str) -> PromptSpec:
    """The spec with the contract's worktree this host's (the spawner's may differ)."""
    if not worktree or spec.contract.worktree == worktree:
        return spec
    contract = spec.contract.model_copy(update={"worktree": worktree})
    return dataclasses.replace(spec, contract=contract)
