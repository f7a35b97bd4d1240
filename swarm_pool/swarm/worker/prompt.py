"""The worker prompt: what one worker is told, in prose for a model and
as a contract block.

Room: swarm.worker.

``build_worker_prompt`` turns a ``Contract`` (bead, worktree, owned and read-only files,
attempt, optional script) plus the task text into the prompt sent to the worker's
session. The prose names the worktree to stay in, the files it may edit, the success
criteria, and the protocol with the exact tool names the agent sees (OpenCode prefixes
our MCP tools with ``swarm_``). The machine-readable contract block at the end is what
the scripted model and tests read back with ``protocol.find_contract``. ``prompt_hash``
is the short digest recorded in ``worker_spawned``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from swarm_pool.protocol import Contract, agent_tool_name, render_contract

COORDINATOR = "coordinator"
BLOCKED_PREFIX = "BLOCKED"
DEFAULT_RETRY_NOTE = (
    "An earlier attempt at this task was interrupted before it completed (its instance "
    "stopped or it failed). Your worktree may already hold part of that work: inspect it "
    "first and build on it rather than starting over."
)

INIT = agent_tool_name("swarmmail_init")
RESERVE = agent_tool_name("swarmmail_reserve")
SEND = agent_tool_name("swarmmail_send")
PROGRESS = agent_tool_name("swarm_progress")
COMPLETE = agent_tool_name("swarm_complete")
PROTOCOL_TOOLS = (INIT, RESERVE, PROGRESS, COMPLETE, SEND)


def prompt_hash(text: str) -> str:
    """A short, stable digest of a prompt (16 hex chars of its sha256)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- `{item}`" for item in items)


def build_worker_prompt(
    contract: Contract,
    *,
    title: str | None = None,
    description: str = "",
    shared_context: str = "",
    success_criteria: Sequence[str] | None = None,
    retry_note: str | None = None,
) -> str:
    """The full prompt for the worker of ``contract.bead_id``.

    ``title`` defaults to the contract's. On a retry (``contract.attempt > 1``) a note
    says the earlier attempt was interrupted; ``retry_note`` replaces its text.
    """
    bead = contract.bead_id
    heading = title or contract.title or bead
    parts = [
        f"You are a swarm worker. Your bead (subtask) is `{bead}` of epic "
        f"`{contract.epic_id}`, attempt {contract.attempt}.",
        f"## Task: {heading}\n\n{description.strip() or heading}",
    ]
    if shared_context.strip():
        parts.append(f"## Shared context (the whole epic)\n\n{shared_context.strip()}")
    if contract.attempt > 1 or retry_note:
        parts.append(f"## Retry\n\n{(retry_note or DEFAULT_RETRY_NOTE).strip()}")

    where = contract.worktree or "(the session's directory)"
    files = [
        f"## Where and what\n\nYour git worktree is `{where}`. Work only there: read, write "
        "and run commands inside it and nowhere else. File paths below are relative to it "
        "(it is a checkout of the project root). You need not commit; never push or switch "
        "branches: the coordinator commits, reviews and merges your branch."
    ]
    if contract.files:
        files.append(f"Files you own (edit only these):\n{_bullets(contract.files)}")
    else:
        files.append("You own no files: change nothing, report your findings instead.")
    if contract.read_only:
        files.append(f"Read-only (read them, never edit them):\n{_bullets(contract.read_only)}")
    parts.append("\n\n".join(files))

    criteria = list(success_criteria or [])
    criteria.append("Nothing outside the files you own is changed.")
    parts.append("## Success criteria\n\n" + "\n".join(f"- {c}" for c in criteria))

    owned = ", ".join(f'"{f}"' for f in contract.files)
    reserve = (
        f"2. `{RESERVE}` with paths=[{owned}]: reserve the files you own before editing. "
        "If it is refused, do not edit them; report as blocked (below).\n"
        if contract.files
        else f"2. (`{RESERVE}` is not needed: you own no files.)\n"
    )
    parts.append(
        "## Protocol (use these exact tools)\n\n"
        f'1. `{INIT}` with bead_id="{bead}": your first call.\n'
        f"{reserve}"
        "3. Do the work.\n"
        f'4. `{PROGRESS}` with bead_id="{bead}", attempt={contract.attempt}, '
        "progress_percent (0-100) and a short message, at each milestone.\n"
        f'5. `{COMPLETE}` with bead_id="{bead}", attempt={contract.attempt}, a summary of '
        "what you did, and files_touched (every path you created, changed or deleted): "
        "your last call.\n\n"
        f'If you are stuck, call `{SEND}` with to=["{COORDINATOR}"], a subject starting '
        f'"{BLOCKED_PREFIX}: " and the reason in the body, then stop.'
    )
    parts.append("## Contract (machine-readable)\n\n" + render_contract(contract))
    return "\n\n".join(parts) + "\n"
