"""The gateway's session map: which pool instance holds which OpenCode session.

Room: store.

Owns the read and write side of the ``session_instances`` projection (migration 6), kept
from ``session_routed`` events. ``route`` appends an event only when the map changes
(checked inside the append's transaction, so two processes learning the same session
record it once); ``all`` and ``get`` read it back. The gateway loads the whole map at
start, so a gateway restart loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from swarm_pool.store.db import Row
from swarm_pool.store.events import SessionRouted
from swarm_pool.store.recorder import Recorder

Origin = Literal["gateway", "learned"]


@dataclass(frozen=True)
class SessionPlace:
    session_id: str
    instance: str
    directory: str
    origin: str
    updated_at: int


def _place(row: Row) -> SessionPlace:
    return SessionPlace(
        session_id=row["session_id"],
        instance=row["instance"],
        directory=row["directory"],
        origin=row["origin"],
        updated_at=row["updated_at"],
    )


class SessionMap:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def route(
        self, session_id: str, instance: str, *, directory: str = "", origin: Origin = "learned"
    ) -> bool:
        """Record that ``session_id`` lives on ``instance``; False when already known so."""
        with self._recorder.writing() as w:
            row = w.query_one(
                "SELECT instance, directory FROM session_instances WHERE session_id = ?",
                (session_id,),
            )
            if (
                row is not None
                and row["instance"] == instance
                and (row["directory"] == directory or not directory)
            ):
                return False
            w.append(
                SessionRouted(
                    session_id=session_id,
                    instance=instance,
                    directory=directory or (row["directory"] if row else ""),
                    origin=origin,
                )
            )
            return True

    def get(self, session_id: str) -> SessionPlace | None:
        with self._recorder.reading() as r:
            row = r.query_one("SELECT * FROM session_instances WHERE session_id = ?", (session_id,))
        return _place(row) if row is not None else None

    def all(self) -> list[SessionPlace]:
        with self._recorder.reading() as r:
            rows = r.query("SELECT * FROM session_instances ORDER BY seq")
        return [_place(row) for row in rows]
