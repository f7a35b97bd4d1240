"""The worktree slots' record: which reusable worktree directory holds which bead.

Room: store.

Owns the read side of the ``slots`` projection (migration 7) and its conditional
writes. ``take``: inside the append's transaction the slot must still be at the version
the caller read (and the projection refuses a slot busy with another bead, or still
opening), so two processes (the engine, a CLI, an MCP server) never put two beads in one
slot; ``open`` records a slot made ahead of any bead only if no such slot exists. The
loser gets ``SlotConflictError`` and reads again. ``release_events`` builds the release a
merge or a final failure appends in its own transaction. What a slot is on disk (a git
worktree under ``.swarm/slots/<instance>/<n>``) is ``swarm.slots``'s business.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from swarm_pool.errors import SlotConflictError
from swarm_pool.store.events import (
    ReleaseReason,
    SlotDirty,
    SlotOpened,
    SlotReleased,
    SlotRemoved,
    SlotState,
    SlotTaken,
)
from swarm_pool.store.recorder import Recorder
from swarm_pool.store.rows import RowView


@dataclass(frozen=True)
class SlotView(RowView):
    slot: str
    instance: str
    path: str
    state: str
    bead_id: str
    attempt: int
    reason: str
    version: int
    updated_at: int


class Slots:
    def __init__(self, recorder: Recorder) -> None:
        self._rec = recorder

    def list(self, *, instance: str | None = None) -> builtins.list[SlotView]:
        sql = "SELECT * FROM slots"
        params: tuple[str, ...] = ()
        if instance is not None:
            sql, params = sql + " WHERE instance = ?", (instance,)
        with self._rec.reading() as r:
            rows = r.query(sql + " ORDER BY instance, slot", params)
        return [SlotView.from_row(row) for row in rows]

    def get(self, slot: str) -> SlotView | None:
        with self._rec.reading() as r:
            row = r.query_one("SELECT * FROM slots WHERE slot = ?", (slot,))
        return None if row is None else SlotView.from_row(row)

    def holding(self, bead_id: str) -> SlotView | None:
        """The slot whose last bead is ``bead_id`` (busy, dirty or free), if any."""
        with self._rec.reading() as r:
            row = r.query_one(
                "SELECT * FROM slots WHERE bead_id = ? ORDER BY seq DESC LIMIT 1", (bead_id,)
            )
        return None if row is None else SlotView.from_row(row)

    def at_path(self, path: str) -> SlotView | None:
        with self._rec.reading() as r:
            row = r.query_one("SELECT * FROM slots WHERE path = ?", (path,))
        return None if row is None else SlotView.from_row(row)

    def take(
        self,
        slot: str,
        *,
        instance: str,
        path: str,
        bead_id: str,
        attempt: int,
        expect_version: int,
    ) -> SlotView:
        """Give ``slot`` to ``bead_id`` if it is still at ``expect_version`` (0: a new
        slot); SlotConflictError otherwise, and nothing is written."""
        with self._rec.writing() as w:
            row = w.query_one("SELECT version FROM slots WHERE slot = ?", (slot,))
            actual = int(row["version"]) if row is not None else 0
            if actual != expect_version:
                raise SlotConflictError(
                    f"slot {slot} changed since it was read (version {actual}, expected "
                    f"{expect_version})",
                    slot=slot,
                )
            w.append(
                SlotTaken(slot=slot, instance=instance, path=path, bead_id=bead_id, attempt=attempt)
            )
            taken = w.query_one("SELECT * FROM slots WHERE slot = ?", (slot,))
        assert taken is not None
        return SlotView.from_row(taken)

    def open(self, slot: str, *, instance: str, path: str) -> SlotView:
        """Record a new slot as ``opening`` (made ahead of any bead); SlotConflictError if
        the slot exists, and nothing is written."""
        with self._rec.writing() as w:
            w.append(SlotOpened(slot=slot, instance=instance, path=path))
            row = w.query_one("SELECT * FROM slots WHERE slot = ?", (slot,))
        assert row is not None
        return SlotView.from_row(row)

    def opened(self, slot: str) -> None:
        """An opening slot is ready: free, for any bead to take."""
        self._rec.append_one(SlotReleased(slot=slot, bead_id="", reason=ReleaseReason.OPENED))

    def remove(self, slot: str, *, path: str, expect_version: int, reason: str) -> None:
        """Forget a free slot still at ``expect_version``; SlotConflictError otherwise."""
        with self._rec.writing() as w:
            row = w.query_one("SELECT version, state FROM slots WHERE slot = ?", (slot,))
            if row is None or int(row["version"]) != expect_version or row["state"] != "free":
                raise SlotConflictError(f"slot {slot} changed since it was read", slot=slot)
            w.append(SlotRemoved(slot=slot, path=path, reason=reason))

    def mark_dirty(self, slot: str, bead_id: str, files: builtins.list[str]) -> None:
        self._rec.append_one(SlotDirty(slot=slot, bead_id=bead_id, files=files))

    def release_events(self, bead_id: str, reason: str) -> builtins.list[SlotReleased]:
        """The event freeing the slot ``bead_id`` is busy in (none if it holds none)."""
        held = self.holding(bead_id)
        if held is None or held.state != SlotState.BUSY:
            return []
        return [SlotReleased(slot=held.slot, bead_id=bead_id, reason=reason)]


class _HasState(Protocol):
    @property
    def instance(self) -> str: ...

    @property
    def state(self) -> str: ...


def counts_by_instance(slots: Iterable[_HasState]) -> dict[str, dict[str, int]]:
    """``{instance: {"free": n, "busy": n, "dirty": n}}`` for status and the dashboard."""
    out: dict[str, dict[str, int]] = {}
    for s in slots:
        row = out.setdefault(s.instance, {state.value: 0 for state in SlotState})
        row[s.state] = row.get(s.state, 0) + 1
    return out


def describe_counts(counts: dict[str, int]) -> str:
    """``"1 busy, 2 free, 1 dirty, 1 opening"`` (states with none left out; "-" when empty)."""
    order = (SlotState.BUSY, SlotState.FREE, SlotState.DIRTY, SlotState.OPENING)
    parts = [f"{counts[s]} {s.value}" for s in order if counts.get(s)]
    return ", ".join(parts) or "-"
