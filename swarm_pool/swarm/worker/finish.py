"""What ends a bead's work, as events to append in one transaction.

Room: swarm.worker.

Three outcomes end a bead's work: ``swarm_complete`` (mcp/reports.py), the merge
(``review.merge``) and a final failure (``failure.fail``). Each releases the bead's file
reservations, changes its cell status and (merge and failure) frees its warm slot, and
each appends those events together with its own outcome event, so an observer never
sees a finished bead that still holds files or a slot. ``finish_events`` is that bundle;
it only reads the store, the caller appends.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarm_pool.store import Store
from swarm_pool.store.events import (
    BaseEvent,
    CellStatus,
    CellStatusChanged,
    FileReleased,
    ReleaseReason,
)
from swarm_pool.store.workers import WorkerView


def holder_of(worker: WorkerView) -> str:
    """The agent name the worker's reservations are held under."""
    return worker.agent_name or f"worker-{worker.bead_id}"


@dataclass(frozen=True)
class Finish:
    """How a bead's work ends: whose reservations go (and why), the cell's new status
    (None: left as it is) and the reason its slot is freed (None: the slot stays held,
    as after ``swarm_complete``, whose worktree review still reads)."""

    bead_id: str
    epic_id: str
    holder: str
    released_reason: str
    status: CellStatus | None = None
    status_reason: str = ""
    slot: ReleaseReason | None = None


def finish_events(store: Store, finish: Finish) -> list[BaseEvent]:
    """The releases and the status change that end the bead's work, in this order:
    reservations, cell status, slot. Append them with the outcome event."""
    events: list[BaseEvent] = [
        *store.reservations.release_events(finish.bead_id, finish.holder, finish.released_reason)
    ]
    if finish.status is not None:
        events.append(
            CellStatusChanged(
                cell_id=finish.bead_id,
                epic_id=finish.epic_id,
                status=finish.status,
                reason=finish.status_reason,
            )
        )
    if finish.slot is not None:
        events += store.slots.release_events(finish.bead_id, finish.slot)
    return events


def released(events: list[BaseEvent]) -> list[FileReleased]:
    """The reservation releases among ``events``."""
    return [e for e in events if isinstance(e, FileReleased)]
