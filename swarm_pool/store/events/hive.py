"""The hive events: the epics and cells (beads) of the hive: ``EpicCreated``,
``CellCreated``, ``CellStatusChanged``, the ``CellStatus`` values and ``BeadSpec``, a
bead as ``create_epic`` takes it.

Room: store.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from swarm_pool.store.events.base import BaseEvent

CellStatus = Literal["open", "in_progress", "blocked", "closed"]


class BeadSpec(BaseModel):
    """A bead as given to ``create_epic`` (the MCP tool's ``subtasks``); ``depends_on``
    holds cell ids or 1-based indexes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = Field(min_length=1)
    description: str = ""
    files: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)
    script: list[dict[str, Any]] | None = None


class EpicCreated(BaseEvent):
    type: Literal["epic_created"] = "epic_created"
    epic_id: str
    title: str
    description: str = ""


class CellCreated(BaseEvent):
    type: Literal["cell_created"] = "cell_created"
    cell_id: str
    epic_id: str
    title: str
    description: str = ""
    files: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)
    script: list[dict[str, Any]] | None = None


class CellStatusChanged(BaseEvent):
    type: Literal["cell_status_changed"] = "cell_status_changed"
    cell_id: str
    epic_id: str
    status: CellStatus
    reason: str = ""
