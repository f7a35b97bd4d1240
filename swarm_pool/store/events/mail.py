"""The mail events: messages between agents (sent, read, acked) and an agent's
registration.

Room: store.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from swarm_pool.store.events.base import BaseEvent


class MessageSent(BaseEvent):
    type: Literal["message_sent"] = "message_sent"
    message_id: str
    sender: str
    to: list[str] = Field(min_length=1)
    subject: str
    body: str = ""
    importance: Literal["low", "normal", "high", "urgent"] = "normal"
    thread_id: str | None = None
    ack_required: bool = False
    bead_id: str | None = None
    epic_id: str | None = None


class MessageRead(BaseEvent):
    type: Literal["message_read"] = "message_read"
    message_id: str
    agent: str


class MessageAcked(BaseEvent):
    type: Literal["message_acked"] = "message_acked"
    message_id: str
    agent: str


class AgentRegistered(BaseEvent):
    type: Literal["agent_registered"] = "agent_registered"
    agent: str
    bead_id: str | None = None
    epic_id: str | None = None
    worktree: str = ""
    pid: int | None = None
