"""The sessions events: what the instances' event streams say about sessions
(status, error) and the gateway's session routing.

Room: store.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from swarm_pool.store.events.base import BaseEvent


class SessionStatus(BaseEvent):
    """A raw session status change seen on an instance's event stream."""

    type: Literal["session_status"] = "session_status"
    session_id: str
    instance: str
    status: str
    bead_id: str | None = None
    epic_id: str | None = None


class SessionRouted(BaseEvent):
    """The gateway's session map: ``session_id`` lives on ``instance``. ``origin`` says
    whether the gateway placed it (``gateway``) or learned it from an instance's events or
    session list (``learned``)."""

    type: Literal["session_routed"] = "session_routed"
    session_id: str = Field(min_length=1)
    instance: str = Field(min_length=1)
    directory: str = ""
    origin: Literal["gateway", "learned"] = "learned"


class SessionError(BaseEvent):
    type: Literal["session_error"] = "session_error"
    session_id: str
    instance: str
    error: str
    bead_id: str | None = None
    epic_id: str | None = None
