"""The slots events: the warm worktree slots' events, ``SlotState`` and
``ReleaseReason``.

Room: store.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from swarm_pool.store.events.base import BaseEvent


class SlotState(StrEnum):
    """A worktree slot's state (the ``slots`` projection's ``state``)."""

    FREE = "free"  # its last bead is merged, failed for good or cleaned: reusable
    BUSY = "busy"  # a bead works in it (or finished, not merged yet)
    DIRTY = "dirty"  # uncommitted work of a finished bead: never reset, skipped
    # Being made and opened on its instance ahead of any bead (``[workers] min_slots``):
    # nobody takes it until it is released as free.
    OPENING = "opening"


class ReleaseReason(StrEnum):
    """Why a slot was given back (``slot_released.reason``)."""

    MERGED = "merged"
    FAILED = "failed"
    CLEANED = "cleaned"
    OPENED = "opened"  # a slot made ahead of any bead is ready (no bead)


class SlotOpened(BaseEvent):
    """A slot is made ahead of any bead (``[workers] min_slots``): it is ``opening``
    until its worktree exists and its instance has opened the directory, then released
    (``slot_released`` with no bead) as free."""

    type: Literal["slot_opened"] = "slot_opened"
    slot: str  # "<instance>/<n>"
    instance: str
    path: str


class SlotTaken(BaseEvent):
    """A bead takes a slot (a reusable worktree directory owned by an instance)."""

    type: Literal["slot_taken"] = "slot_taken"
    slot: str  # "<instance>/<n>"
    instance: str
    path: str
    bead_id: str
    attempt: int = 1


class SlotReleased(BaseEvent):
    type: Literal["slot_released"] = "slot_released"
    slot: str
    bead_id: str
    reason: str = ""  # a ReleaseReason


class SlotRemoved(BaseEvent):
    """A free slot's worktree was removed (more slots than the instance needs)."""

    type: Literal["slot_removed"] = "slot_removed"
    slot: str
    path: str
    reason: str = ""


class SlotDirty(BaseEvent):
    """A slot found holding uncommitted work when it was to be reset: left as it is."""

    type: Literal["slot_dirty"] = "slot_dirty"
    slot: str
    bead_id: str = ""  # the bead whose work it holds
    files: list[str] = Field(default_factory=list)
