"""The worker tools: registration, file reservations and mail, and the list
of every worker tool (``WORKER_SPECS``), progress and completion included.

Room: mcp.

Each handler validates what only the store can tell (the bead exists, the caller owns
it, the paths stay in the project) before it writes, and writes each logical change as
one append (``append_many`` when several events belong together), so a refused call
leaves the store untouched. Progress and completion (``swarm_progress``,
``swarm_complete``) live in ``mcp/reports.py``.
"""

from __future__ import annotations

import os
from typing import Any

from swarm_pool.mcp.identity import Identity, IdentityError, default_agent_name, to_project_path
from swarm_pool.mcp.registry import ToolCallError, ToolSpec
from swarm_pool.mcp.reports import swarm_complete, swarm_progress
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
from swarm_pool.store import Store
from swarm_pool.store.events import (
    AgentRegistered,
)

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
