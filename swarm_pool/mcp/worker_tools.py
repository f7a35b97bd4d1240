"""The worker tools: registration, file reservations, mail, progress and completion.

Each handler validates what only the store can tell (the bead exists, the caller owns
it, the paths stay in the project) before it writes, and writes each logical change as
one append (``append_many`` when several events belong together), so a refused call
leaves the store untouched. ``swarm_complete`` does its slow verification (git, the check
command) off the store thread, then records completion, releases the worker's
reservations and sets the cell status in a single transaction.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from swarm_pool import faults
from swarm_pool.config import Config, load_config
from swarm_pool.errors import WorkerStateError
from swarm_pool.mcp.identity import Identity, IdentityError, default_agent_name, to_project_path
from swarm_pool.mcp.registry import ToolCallError, ToolSpec
from swarm_pool.mcp.runtime import Runtime
from swarm_pool.mcp.schemas import (
    CompleteArgs,
    InboxArgs,
    InitArgs,
    MessageArgs,
    ProgressArgs,
    ReleaseArgs,
    ReserveArgs,
    SendArgs,
)
from swarm_pool.mcp.verify import Verification, verify
from swarm_pool.store import Store
from swarm_pool.store.events import (
    AgentRegistered,
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

_PREVIEW_CHARS = 200


def _dump(view: Any) -> dict[str, Any]:
    out: dict[str, Any] = view.to_dict()
    return out


# --- swarmmail_init -------------------------------------------------------------------


async def swarmmail_init(rt: Runtime, args: InitArgs) -> dict[str, Any]:
    def run(store: Store) -> dict[str, Any]:
        implied = rt.require_identity(store) if rt.fixed else rt.identity(store)
        if rt.fixed and args.agent_name and implied and args.agent_name != implied.agent:
            raise IdentityError(
                f"your capability token makes you {implied.agent} (bead {implied.bead_id}); "
                f"you cannot register as {args.agent_name}"
            )
        bead_id = args.bead_id or (implied.bead_id if implied else None)
        in_worktree = implied is not None and implied.worktree is not None
        if in_worktree and implied and args.bead_id and args.bead_id != implied.bead_id:
            raise IdentityError(
                f"this MCP server serves the worktree of bead {implied.bead_id}; "
                f"it cannot register you for bead {args.bead_id}"
            )
        epic_id: str | None = None
        files: list[str] = []
        if bead_id:
            cell = store.hive.get_cell(bead_id)
            epic_id, files = cell.epic_id, list(cell.files)
            if args.epic_id and args.epic_id != epic_id:
                raise ToolCallError(
                    f"bead {bead_id} belongs to epic {epic_id}, not to epic {args.epic_id}"
                )
        elif args.epic_id:
            epic_id = store.hive.get_epic(args.epic_id).id
        agent = args.agent_name or (
            implied.agent if implied else (default_agent_name(bead_id) if bead_id else "")
        )
        if not agent:
            raise ToolCallError(
                "outside a worktree, swarmmail_init needs agent_name (and bead_id if you "
                "work on a bead)"
            )
        identity = Identity(
            agent=agent,
            bead_id=bead_id,
            epic_id=epic_id,
            worktree=implied.worktree if implied else None,
        )
        seq = store.append(
            AgentRegistered(
                agent=agent,
                bead_id=bead_id,
                epic_id=epic_id,
                worktree=str(identity.worktree or ""),
                pid=os.getpid(),
            )
        )
        rt.register(identity)
        return {
            **identity.with_registered().to_dict(),
            "project_root": str(store.project_root),
            "owned_files": files,
            "seq": seq,
        }

    return await rt.in_store(run)


# --- reservations ---------------------------------------------------------------------


def _conflict_text(conflicts: list[dict[str, Any]]) -> str:
    parts = [
        f"{c.get('requested')} overlaps {c.get('pattern')} held by {c.get('holder')}"
        for c in conflicts
    ]
    return "denied: " + "; ".join(parts)


async def swarmmail_reserve(rt: Runtime, args: ReserveArgs) -> dict[str, Any]:
    def run(store: Store) -> dict[str, Any]:
        me = rt.require_identity(store)
        patterns = [to_project_path(p, store, me.worktree) for p in args.paths]
        result = store.reservations.reserve(
            me.agent,
            patterns,
            exclusive=args.exclusive,
            ttl_s=float(args.ttl_seconds),
            reason=args.reason,
            bead_id=me.bead_id,
            epic_id=me.epic_id,
        )
        conflicts = [_dump(c) for c in result.conflicts]
        out: dict[str, Any] = {
            "granted": result.granted,
            "holder": me.agent,
            "reservations": [_dump(r) for r in result.reservations],
            "conflicts": conflicts,
        }
        if not result.granted:
            out["message"] = _conflict_text(conflicts)
            out["holders"] = sorted({str(c.get("holder")) for c in conflicts})
        return out

    return await rt.in_store(run)


async def swarmmail_release(rt: Runtime, args: ReleaseArgs) -> dict[str, Any]:
    def run(store: Store) -> dict[str, Any]:
        me = rt.require_identity(store)
        held = store.reservations.active(me.agent)
        held_ids = {r.id for r in held}
        unknown = [i for i in args.reservation_ids if i not in held_ids]
        if unknown:
            raise ToolCallError(
                f"reservation {unknown[0]} is not held by {me.agent} "
                f"(you hold: {', '.join(sorted(held_ids)) or 'nothing'})"
            )
        patterns = [to_project_path(p, store, me.worktree) for p in args.paths]
        held_patterns = {r.pattern for r in held}
        missing = [p for p in patterns if p not in held_patterns]
        if missing:
            raise ToolCallError(
                f"{missing[0]} is not reserved by {me.agent} "
                f"(you hold: {', '.join(sorted(held_patterns)) or 'nothing'})"
            )
        released = store.reservations.release(
            me.agent,
            ids=args.reservation_ids or None,
            patterns=patterns or None,
        )
        return {"holder": me.agent, "released": [_dump(r) for r in released]}

    return await rt.in_store(run)


# --- mail -----------------------------------------------------------------------------


async def swarmmail_send(rt: Runtime, args: SendArgs) -> dict[str, Any]:
    def run(store: Store) -> dict[str, Any]:
        me = rt.require_identity(store)
        msg = store.mail.send(
            me.agent,
            args.to,
            args.subject,
            args.body,
            importance=args.importance,
            thread_id=args.thread_id or None,
            ack_required=args.ack_required,
            bead_id=me.bead_id,
            epic_id=me.epic_id,
        )
        return {"sent": True, "message": _dump(msg)}

    return await rt.in_store(run)


def _preview(message: dict[str, Any]) -> dict[str, Any]:
    body = str(message.get("body") or "")
    out = {k: v for k, v in message.items() if k != "body"}
    out["body_preview"] = body[:_PREVIEW_CHARS] + ("..." if len(body) > _PREVIEW_CHARS else "")
    return out


async def swarmmail_inbox(rt: Runtime, args: InboxArgs) -> dict[str, Any]:
    def run(store: Store) -> dict[str, Any]:
        me = rt.require_identity(store)
        messages = store.mail.inbox(me.agent, unread_only=args.unread_only, limit=args.limit)
        return {
            "agent": me.agent,
            "count": len(messages),
            "messages": [_preview(_dump(m)) for m in messages],
        }

    return await rt.in_store(run)


async def swarmmail_read_message(rt: Runtime, args: MessageArgs) -> dict[str, Any]:
    def run(store: Store) -> dict[str, Any]:
        me = rt.require_identity(store)
        return {"message": _dump(store.mail.read(me.agent, args.message_id))}

    return await rt.in_store(run)


async def swarmmail_ack(rt: Runtime, args: MessageArgs) -> dict[str, Any]:
    def run(store: Store) -> dict[str, Any]:
        me = rt.require_identity(store)
        return {"acked": True, "message": _dump(store.mail.ack(me.agent, args.message_id))}

    return await rt.in_store(run)


# --- progress and completion ----------------------------------------------------------


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
            check_command=workers.check_command,
            check_timeout_s=workers.check_timeout_s,
        )
    )
    await rt.in_thread(lambda: faults.point("complete.before_record"))
    return await rt.in_store(lambda store: _record_completion(store, args, prep, result))


WORKER_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "swarmmail_init",
        "Register yourself as the agent working on a bead. Call it first. In your worktree "
        "everything is optional; returns your agent name, bead, epic and owned files.",
        InitArgs,
        swarmmail_init,
    ),
    ToolSpec(
        "swarmmail_reserve",
        "Reserve files or glob patterns (relative to the project root) before editing "
        "them. All-or-nothing: if another agent holds an overlapping pattern, nothing is "
        "reserved and 'conflicts' names the holder.",
        ReserveArgs,
        swarmmail_reserve,
    ),
    ToolSpec(
        "swarmmail_release",
        "Release your reservations (given paths or reservation_ids; none: all of them).",
        ReleaseArgs,
        swarmmail_release,
    ),
    ToolSpec(
        "swarmmail_send",
        "Send a message to other agents (e.g. 'coordinator'). Start the subject with "
        "BLOCKED if you cannot continue.",
        SendArgs,
        swarmmail_send,
    ),
    ToolSpec(
        "swarmmail_inbox",
        "List your messages, newest first, with a body preview.",
        InboxArgs,
        swarmmail_inbox,
    ),
    ToolSpec(
        "swarmmail_read_message",
        "Read one message in full (marks it read).",
        MessageArgs,
        swarmmail_read_message,
    ),
    ToolSpec(
        "swarmmail_ack",
        "Acknowledge a message that asked for it.",
        MessageArgs,
        swarmmail_ack,
    ),
    ToolSpec(
        "swarm_progress",
        "Report progress on your bead (0-100) with a short message.",
        ProgressArgs,
        swarm_progress,
    ),
    ToolSpec(
        "swarm_complete",
        "Finish your bead. Give a summary and every file you changed. Your worktree's real "
        "changes are compared with files_touched and your owned patterns, the project's "
        "check command runs, your reservations are released and the bead is closed (or "
        "blocked if the check fails).",
        CompleteArgs,
        swarm_complete,
    ),
)
