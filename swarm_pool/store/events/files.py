"""The files events: file reservations (reserved, released, renewed, refused
as a conflict).

Room: store.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from swarm_pool.store.events.base import BaseEvent


class FileReserved(BaseEvent):
    type: Literal["file_reserved"] = "file_reserved"
    reservation_id: str
    holder: str
    pattern: str
    exclusive: bool = True
    expires_at: int
    reason: str = ""
    bead_id: str | None = None
    epic_id: str | None = None


class FileReleased(BaseEvent):
    type: Literal["file_released"] = "file_released"
    reservation_id: str
    holder: str
    pattern: str
    reason: str = ""


class FileRenewed(BaseEvent):
    type: Literal["file_renewed"] = "file_renewed"
    reservation_id: str
    holder: str
    expires_at: int


class FileConflict(BaseEvent):
    type: Literal["file_conflict"] = "file_conflict"
    holder: str
    requested: list[str]
    conflicts: list[dict[str, str]] = Field(
        default_factory=list, description="[{holder, pattern, requested}]"
    )
    bead_id: str | None = None
    epic_id: str | None = None
