"""The contract shared by the worker prompt, the MCP server and the scripted model.

Room: base.

It owns two things: the MCP tool names (and the names the agent sees, which carry
OpenCode's ``<server>_`` prefix), and the machine-readable contract block embedded in
every worker prompt, from which the scripted model and tests learn the bead, its files
and its optional script without guessing at prose.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MCP_SERVER_NAME = "swarm"

WORKER_TOOLS = (
    "swarmmail_init",
    "swarmmail_reserve",
    "swarmmail_release",
    "swarmmail_send",
    "swarmmail_inbox",
    "swarmmail_read_message",
    "swarmmail_ack",
    "swarm_progress",
    "swarm_complete",
)
COORDINATOR_TOOLS = (
    "swarm_spawn_async",
    "swarm_poll_workers",
    "swarm_await_workers",
    "swarm_review",
    "swarm_worktree_merge",
    "hive_create_epic",
    "hive_query",
)


def agent_tool_name(tool: str) -> str:
    """The name an OpenCode agent sees for one of our MCP tools."""
    return f"{MCP_SERVER_NAME}_{tool}"


BEAD_ID_RE = re.compile(r"\bbd-[0-9a-z]{4,16}(?:\.\d+)?\b")
_CONTRACT_RE = re.compile(r"```swarm-contract\n(?P<body>.*?)\n```", re.DOTALL)


class Contract(BaseModel):
    """What a worker owns and must do; embedded in its prompt as a fenced JSON block."""

    model_config = ConfigDict(extra="forbid")

    bead_id: str
    epic_id: str
    title: str = ""
    worktree: str = ""
    files: list[str] = Field(default_factory=list, description="owned patterns")
    read_only: list[str] = Field(default_factory=list)
    attempt: int = 1
    # An inline scripted-model script (list of steps) for this bead, if the plan gave one.
    script: list[dict[str, Any]] | None = None


def render_contract(contract: Contract) -> str:
    return "```swarm-contract\n" + contract.model_dump_json(exclude_none=True) + "\n```"


def find_contract(text: str) -> Contract | None:
    """The last valid contract block in ``text`` (a prompt or a whole conversation)."""
    found: Contract | None = None
    for match in _CONTRACT_RE.finditer(text):
        try:
            found = Contract.model_validate(json.loads(match.group("body")))
        except (ValueError, ValidationError):
            continue
    return found


def find_bead_id(text: str) -> str | None:
    contract = find_contract(text)
    if contract is not None:
        return contract.bead_id
    match = BEAD_ID_RE.search(text)
    return match.group(0) if match else None
