"""Spawning a worker without waiting: ``spawn_async``.

It checks the bead's dependencies and that no live spawn of it exists, creates (or
reuses) its git worktree (with warm slots, the default, the dispatcher gives it one of
the chosen instance's slots instead), saves its prompt spec, records ``worker_queued`` (with the
bead in progress, in one transaction) and returns: about a git worktree's worth of
milliseconds. The engine dispatches it (``dispatch``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from swarm_pool.errors import (
    DependencyBlockedError,
    DuplicateSpawnError,
    NotFoundError,
    WorkerError,
    WorkerStateError,
)
from swarm_pool.git.worktree import branch_name
from swarm_pool.pool.router import ROUTINGS, Routing
from swarm_pool.protocol import Contract
from swarm_pool.store.events import CellStatusChanged, WorkerQueued
from swarm_pool.store.lifecycle import IN_FLIGHT, LIVE
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker.checkout import uses_slots
from swarm_pool.swarm.worker.dedicated import request_instance
from swarm_pool.swarm.worker.prompt import prompt_hash
from swarm_pool.swarm.worker.spec import PromptSpec, save_spec

# Kept for callers of the old names; the vocabulary is store.lifecycle's.
LIVE_STATUSES = LIVE
IN_FLIGHT_STATUSES = IN_FLIGHT


@dataclass(frozen=True)
class SpawnResult:
    bead_id: str
    epic_id: str
    status: str  # "running" (a session was started) or "pending" (queued)
    attempt: int
    worktree: str
    instance: str = ""
    session_id: str = ""
    prompt_hash: str = ""
    routing: str = "least_busy"
    elapsed_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _blocked_by(ctx: SwarmContext, deps: Iterable[str]) -> list[str]:
    blocked = []
    for dep in deps:
        try:
            cell = ctx.store.hive.get_cell(dep)
        except NotFoundError:
            blocked.append(dep)
            continue
        if cell.status != "closed":
            blocked.append(dep)
    return sorted(set(blocked))


def _routing(ctx: SwarmContext, routing: str | None) -> Routing:
    value = routing or ctx.config.pool.routing
    for known in ROUTINGS:
        if value == known:
            return known
    raise WorkerError(f"unknown routing {value!r}: use {' or '.join(ROUTINGS)}")


def spawn_async(
    ctx: SwarmContext,
    bead_id: str,
    epic_id: str | None = None,
    title: str | None = None,
    description: str | None = None,
    files: Sequence[str] | None = None,
    dependencies: Sequence[str] = (),
    shared_context: str = "",
    routing: str | None = None,
    *,
    read_only: Sequence[str] = (),
    success_criteria: Sequence[str] = (),
    script: list[dict[str, Any]] | None = None,
    timeout_s: float | None = None,
) -> SpawnResult:
    """Start a worker for ``bead_id`` and return at once (never waits for the worker).

    Missing arguments come from the bead's cell in the hive; ``timeout_s`` overrides
    ``workers.timeout_s`` for this worker. Raises
    DependencyBlockedError (with ``blocked_by``) when a dependency is not closed, and
    DuplicateSpawnError when the bead already has a live worker.
    """
    started = time.perf_counter()
    cell = ctx.store.hive.get_cell(bead_id)
    if epic_id and epic_id != cell.epic_id:
        raise WorkerError(f"bead {bead_id} belongs to epic {cell.epic_id}, not {epic_id}")
    if cell.status == "closed":
        raise WorkerError(f"bead {bead_id} is already closed")
    blocked = _blocked_by(ctx, [*cell.depends_on, *dependencies])
    if blocked:
        raise DependencyBlockedError(
            f"bead {bead_id} is blocked by dependencies not closed yet: {', '.join(blocked)}",
            blocked_by=blocked,
        )
    policy = _routing(ctx, routing)
    owned = list(files if files is not None else cell.files)
    ctx.require_dispatcher(bead_id)
    with ctx.lock(f"spawn-{bead_id}"):
        current = ctx.store.workers.get(bead_id)
        if current is not None and current.status in LIVE_STATUSES:
            raise DuplicateSpawnError(
                f"bead {bead_id} already has a live worker (status {current.status}, "
                f"attempt {current.attempt})"
            )
        attempt = current.attempt + 1 if current is not None else 1
        base = ctx.config.workers.base_branch or None
        if uses_slots(ctx, policy):
            # The dispatcher puts it in a warm slot of the instance it picks.
            branch_name(bead_id)
            worktree = ""
        else:
            worktree = str(ctx.worktrees.create(bead_id, base=base).path)
        contract = Contract(
            bead_id=bead_id,
            epic_id=cell.epic_id,
            title=title or cell.title,
            worktree=worktree,
            files=owned,
            read_only=list(read_only),
            attempt=attempt,
            script=script if script is not None else cell.script,
        )
        spec = PromptSpec(
            contract=contract,
            description=description if description is not None else cell.description,
            shared_context=shared_context,
            success_criteria=tuple(success_criteria),
            timeout_s=timeout_s,
        )
        save_spec(ctx, bead_id, spec)
        text = spec.render()
        if policy == "dedicated":
            request_instance(ctx, bead_id)
        # One transaction: nobody sees a queued worker on a bead that is not in progress;
        # conditional on the worker read above (another process may spawn it too).
        try:
            ctx.store.append_many(
                [
                    WorkerQueued(
                        bead_id=bead_id,
                        epic_id=cell.epic_id,
                        attempt=attempt,
                        title=contract.title,
                        worktree=worktree,
                        files=owned,
                        prompt_hash=prompt_hash(text),
                        routing=policy,
                        reason="spawned",
                        spec=spec.to_json(),
                    ),
                    CellStatusChanged(
                        cell_id=bead_id,
                        epic_id=cell.epic_id,
                        status="in_progress",
                        reason=f"worker attempt {attempt}",
                    ),
                ],
                expect={bead_id: current.version if current is not None else 0},
            )
        except WorkerStateError as e:
            raise DuplicateSpawnError(
                f"bead {bead_id} changed while it was being spawned; see its status: {e}"
            ) from e
    return SpawnResult(
        bead_id=bead_id,
        epic_id=cell.epic_id,
        status="pending",
        attempt=attempt,
        worktree=worktree,
        prompt_hash=prompt_hash(text),
        routing=policy,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
    )
