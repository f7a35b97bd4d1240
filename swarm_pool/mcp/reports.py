"""The worker's reports on its bead: ``swarm_progress`` and ``swarm_complete``.

Room: mcp.

Each report is stamped with the attempt it belongs to: one about an older attempt is
kept in the log as stale and changes nothing else, and one about a finished worker is
refused. ``swarm_complete`` does its slow verification (git, the check command,
``mcp/verify.py``) off the store thread, then records the completion together with the
end of the bead's work (``swarm/worker/finish.py``: its reservations released, its cell
closed or blocked) in a single conditional transaction. The other worker tools are in
``mcp/worker_tools.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from swarm_pool import faults
from swarm_pool.config import Config, load_config
from swarm_pool.errors import WorkerStateError
from swarm_pool.mcp.identity import Identity, to_project_path
from swarm_pool.mcp.registry import ToolCallError
from swarm_pool.mcp.runtime import Runtime
from swarm_pool.mcp.schemas import CompleteArgs, ProgressArgs
from swarm_pool.mcp.verify import CheckCommand, Verification, verify
from swarm_pool.store import Store
from swarm_pool.store.events import (
    BaseEvent,
    CellStatusChanged,
    Event,
    FileReleased,
    WorkerCompleted,
    WorkerProgress,
    now_ms,
)
from swarm_pool.store.lifecycle import REPORTABLE
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.worker.finish import Finish, finish_events, released


def _stamp(worker: WorkerView | None, attempt: int | None) -> dict[str, Any]:
    """The attempt and session a report belongs to: the caller's attempt if it said so
    (an older one is recorded as stale), else the worker's current one."""
    if worker is None:
        return {"attempt": attempt or 1}
    if attempt is not None and attempt != worker.attempt:
        return {"attempt": attempt}
    return {"session_id": worker.session_id, "attempt": max(1, int(worker.attempt or 1))}


def _is_stale(worker: WorkerView | None, attempt: int | None) -> bool:
    return worker is not None and attempt is not None and attempt < worker.attempt


def _refuse_finished(worker: WorkerView | None, bead_id: str) -> None:
    if worker is not None and worker.status not in REPORTABLE:
        raise ToolCallError(
            f"bead {bead_id}'s worker is {worker.status} (attempt {worker.attempt}); "
            "nothing recorded"
        )


async def swarm_progress(rt: Runtime, args: ProgressArgs) -> dict[str, Any]:
    def run(store: Store) -> dict[str, Any]:
        me = rt.identity_for_bead(store, args.bead_id)
        assert me.epic_id is not None
        epic_id = me.epic_id
        cell = store.hive.get_cell(args.bead_id)
        if cell.status == "closed":
            raise ToolCallError(f"bead {args.bead_id} is already closed")
        files = [to_project_path(p, store, me.worktree) for p in args.files_touched]
        stale = False

        def build(worker: WorkerView | None) -> list[Event]:
            nonlocal stale
            stale = _is_stale(worker, args.attempt)
            if not stale:
                _refuse_finished(worker, args.bead_id)
            events: list[Event] = [
                WorkerProgress(
                    bead_id=args.bead_id,
                    epic_id=epic_id,
                    progress_percent=args.progress_percent,
                    message=args.message,
                    files_touched=files,
                    **_stamp(worker, args.attempt),
                )
            ]
            if cell.status != "in_progress" and not stale:
                events.append(
                    CellStatusChanged(
                        cell_id=args.bead_id,
                        epic_id=epic_id,
                        status="in_progress",
                        reason=f"progress reported by {me.agent}",
                    )
                )
            return events

        seqs = _change(store, args.bead_id, build)
        return {
            "recorded": not stale,
            "stale": stale,
            "bead_id": args.bead_id,
            "progress_percent": args.progress_percent,
            "seq": seqs[0],
        }

    return await rt.in_store(run)


def _change(
    store: Store, bead_id: str, build: Callable[[WorkerView | None], Sequence[BaseEvent]]
) -> list[int]:
    try:
        seqs = store.change_worker(bead_id, build)
    except WorkerStateError as e:
        raise ToolCallError(f"not recorded: {e}") from e
    assert seqs is not None
    return seqs


@dataclass(frozen=True)
class _Completion:
    """What swarm_complete learns from the store before it verifies (off the store thread)."""

    me: Identity
    epic_id: str
    owned: list[str]
    worktree: Path | None
    claimed: list[str]
    config: Config
    project_root: Path
    spawned_at: int | None


def _prepare_completion(rt: Runtime, store: Store, args: CompleteArgs) -> _Completion:
    me = rt.identity_for_bead(store, args.bead_id)
    cell = store.hive.get_cell(args.bead_id)
    if cell.status == "closed":
        raise ToolCallError(f"bead {args.bead_id} is already closed")
    worker = store.workers.get(args.bead_id)
    worktree = me.worktree
    if worktree is None and worker is not None and worker.worktree:
        worktree = Path(worker.worktree)
    return _Completion(
        me=me,
        epic_id=cell.epic_id,
        owned=list(cell.files),
        worktree=worktree,
        claimed=sorted({to_project_path(p, store, worktree) for p in args.files_touched}),
        config=load_config(project_root=store.project_root),
        project_root=store.project_root,
        spawned_at=worker.spawned_at if worker is not None else None,
    )


def _record_completion(
    store: Store, args: CompleteArgs, prep: _Completion, result: Verification
) -> dict[str, Any]:
    # Re-checked: another process may have closed the bead while we verified.
    if store.hive.get_cell(args.bead_id).status == "closed":
        raise ToolCallError(f"bead {args.bead_id} is already closed")
    status: Literal["success", "failed"] = "failed" if result.check_failed else "success"
    error = None
    if result.check is not None and result.check_failed:
        error = (
            "check command timed out"
            if result.check.get("timed_out")
            else f"check command failed (exit code {result.check.get('exit_code')})"
        )
    duration_ms = max(0, now_ms() - int(prep.spawned_at)) if prep.spawned_at else None
    cell_status: Literal["closed", "blocked"] = "closed" if status == "success" else "blocked"
    stale = False
    held: list[FileReleased] = []
    agent = prep.me.agent
    finish = Finish(
        bead_id=args.bead_id,
        epic_id=prep.epic_id,
        holder=agent,
        released_reason=f"swarm_complete by {agent}",
        status=cell_status,
        status_reason=f"worker completed: {status}",
    )

    def build(worker: WorkerView | None) -> list[BaseEvent]:
        nonlocal stale, held
        stale = _is_stale(worker, args.attempt)
        completed = WorkerCompleted(
            bead_id=args.bead_id,
            epic_id=prep.epic_id,
            status=status,
            summary=args.summary,
            files_touched=prep.claimed,
            duration_ms=duration_ms,
            error=error,
            violations=result.violations(),
            verification=result.to_dict(),
            **_stamp(worker, args.attempt),
        )
        if stale:
            # Kept in the log as stale; the newer attempt, its files and bead are untouched.
            held = []
            return [completed]
        _refuse_finished(worker, args.bead_id)
        # The slot stays held: review and merge still read the worktree.
        finished = finish_events(store, finish)
        held = released(finished)
        return [completed, *finished]

    # One transaction: the completion, the releases and the cell status land together,
    # and only if the worker is still what was read (a timeout may race it).
    seqs = _change(store, args.bead_id, build)
    if stale:
        return {
            "accepted": False,
            "stale": True,
            "status": status,
            "bead_id": args.bead_id,
            "error": f"attempt {args.attempt} is not the bead's current attempt; recorded as stale",
            "seq": seqs[0],
        }
    return {
        "accepted": status == "success",
        "status": status,
        "bead_id": args.bead_id,
        "cell_status": cell_status,
        "violations": result.violations(),
        "error": error,
        "check": result.check,
        "changed_files": result.changed,
        "released": [r.pattern for r in held],
        "stale": False,
        "seq": seqs[0],
    }


async def swarm_complete(rt: Runtime, args: CompleteArgs) -> dict[str, Any]:
    prep = await rt.in_store(lambda store: _prepare_completion(rt, store, args))
    workers = prep.config.workers
    result = await rt.in_thread(
        lambda: verify(
            worktree=prep.worktree,
            project_root=prep.project_root,
            bead_id=args.bead_id,
            base_branch=workers.base_branch,
            claimed=prep.claimed,
            owned=prep.owned,
            check=CheckCommand(workers.check_command, workers.check_timeout_s),
        )
    )
    await rt.in_thread(lambda: faults.point("complete.before_record"))
    return await rt.in_store(lambda store: _record_completion(store, args, prep, result))
