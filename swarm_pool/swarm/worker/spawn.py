"""Spawning a worker without waiting: ``spawn_async``.

Room: swarm.worker.

The caller asks with a ``SpawnRequest``. It checks the bead's dependencies and that no
live spawn of it exists, creates (or reuses) its git worktree (with warm slots, the
default, the dispatcher gives it one of the chosen instance's slots instead), saves its
prompt spec, records ``worker_queued`` (with the bead in progress, in one transaction)
and returns: about a git worktree's worth of milliseconds. The engine dispatches it
(``dispatch``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from swarm_pool.errors import (
    DependencyBlockedError,
    DuplicateSpawnError,
    NotFoundError,
    WorkerError,
    WorkerStateError,
)
from swarm_pool.git import branch_name
from swarm_pool.pool.router import ROUTINGS, Routing
from swarm_pool.protocol import Contract
from swarm_pool.store.events import CellStatusChanged, WorkerQueued
from swarm_pool.store.hive import CellView
from swarm_pool.store.lifecycle import LIVE
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker.checkout import uses_slots
from swarm_pool.swarm.worker.dedicated import request_instance
from swarm_pool.swarm.worker.prompt import prompt_hash
from swarm_pool.swarm.worker.spec import PromptSpec, save_spec


@dataclass(frozen=True)
class SpawnRequest:
    """What a caller asks a worker for. Unset fields come from the bead's cell in the
    hive; ``timeout_s`` overrides ``workers.timeout_s`` for this worker, ``routing``
    the pool's ``routing``, and ``dependencies`` adds to the cell's own."""

    bead_id: str
    epic_id: str | None = None
    title: str | None = None
    description: str | None = None
    files: Sequence[str] | None = None
    dependencies: Sequence[str] = ()
    shared_context: str = ""
    routing: str | None = None
    read_only: Sequence[str] = ()
    success_criteria: Sequence[str] = ()
    script: list[dict[str, Any]] | None = None
    timeout_s: float | None = None


class SpawnStatus(StrEnum):
    RUNNING = "running"  # a session was started
    PENDING = "pending"  # queued for the engine's dispatcher (what spawn_async returns)


@dataclass(frozen=True)
class SpawnResult:
    bead_id: str
    epic_id: str
    status: SpawnStatus
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


def spawn_async(ctx: SwarmContext, request: SpawnRequest | str) -> SpawnResult:
    """Start a worker for the bead and return at once (never waits for the worker).

    A bare bead id asks with every default. Raises DependencyBlockedError (with
    ``blocked_by``) when a dependency is not closed, and DuplicateSpawnError when the
    bead already has a live worker.
    """
    started = time.perf_counter()
    req = SpawnRequest(request) if isinstance(request, str) else request
    bead_id = req.bead_id
    cell = _spawnable_cell(ctx, req)
    policy = _routing(ctx, req.routing)
    ctx.require_dispatcher(bead_id)
    with ctx.lock(f"spawn-{bead_id}"):
        current = ctx.store.workers.get(bead_id)
        if current is not None and current.status in LIVE:
            raise DuplicateSpawnError(
                f"bead {bead_id} already has a live worker (status {current.status}, "
                f"attempt {current.attempt})"
            )
        attempt = current.attempt + 1 if current is not None else 1
        if uses_slots(ctx, policy):
            # The dispatcher puts it in a warm slot of the instance it picks.
            branch_name(bead_id)
            worktree = ""
        else:
            base = ctx.config.workers.base_branch or None
            worktree = str(ctx.git.worktrees.create(bead_id, base=base).path)
        spec = _spec(req, cell, worktree, attempt)
        save_spec(ctx, bead_id, spec)
        hashed = prompt_hash(spec.render())
        if policy == "dedicated":
            request_instance(ctx, bead_id)
        queued = WorkerQueued(
            bead_id=bead_id,
            epic_id=cell.epic_id,
            attempt=attempt,
            title=spec.contract.title,
            worktree=worktree,
            files=list(spec.contract.files),
            prompt_hash=hashed,
            routing=policy,
            reason="spawned",
            spec=spec.to_json(),
        )
        _record(ctx, queued, current.version if current is not None else 0)
    return SpawnResult(
        bead_id=bead_id,
        epic_id=cell.epic_id,
        status=SpawnStatus.PENDING,
        attempt=attempt,
        worktree=worktree,
        prompt_hash=hashed,
        routing=policy,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
    )


def _spawnable_cell(ctx: SwarmContext, req: SpawnRequest) -> CellView:
    """The bead's cell, if it may get a worker: in the epic named, open, unblocked."""
    cell = ctx.store.hive.get_cell(req.bead_id)
    if req.epic_id and req.epic_id != cell.epic_id:
        raise WorkerError(f"bead {req.bead_id} belongs to epic {cell.epic_id}, not {req.epic_id}")
    if cell.status == "closed":
        raise WorkerError(f"bead {req.bead_id} is already closed")
    blocked = _blocked_by(ctx, [*cell.depends_on, *req.dependencies])
    if blocked:
        raise DependencyBlockedError(
            f"bead {req.bead_id} is blocked by dependencies not closed yet: {', '.join(blocked)}",
            blocked_by=blocked,
        )
    return cell


def _spec(req: SpawnRequest, cell: CellView, worktree: str, attempt: int) -> PromptSpec:
    contract = Contract(
        bead_id=req.bead_id,
        epic_id=cell.epic_id,
        title=req.title or cell.title,
        worktree=worktree,
        files=list(req.files if req.files is not None else cell.files),
        read_only=list(req.read_only),
        attempt=attempt,
        script=req.script if req.script is not None else cell.script,
    )
    return PromptSpec(
        contract=contract,
        description=req.description if req.description is not None else cell.description,
        shared_context=req.shared_context,
        success_criteria=tuple(req.success_criteria),
        timeout_s=req.timeout_s,
    )


def _record(ctx: SwarmContext, queued: WorkerQueued, version: int) -> None:
    # One transaction: nobody sees a queued worker on a bead that is not in progress;
    # conditional on the worker read above (another process may spawn it too).
    bead_id = queued.bead_id
    try:
        ctx.store.append_many(
            [
                queued,
                CellStatusChanged(
                    cell_id=bead_id,
                    epic_id=queued.epic_id,
                    status="in_progress",
                    reason=f"worker attempt {queued.attempt}",
                ),
            ],
            expect={bead_id: version},
        )
    except WorkerStateError as e:
        raise DuplicateSpawnError(
            f"bead {bead_id} changed while it was being spawned; see its status: {e}"
        ) from e
