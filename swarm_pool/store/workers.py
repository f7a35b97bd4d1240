"""The read side of the workers projection: one row per bead, its latest attempt.

Room: store.

Owns ``WorkerView`` and the queries ``poll``-style callers make ("status of every worker
in epic E" is one indexed query). The rows are written by ``projections.apply`` from the
worker and session events, under the transition table of ``lifecycle``; ``version``
counts the changes applied, for conditional appends. ``session_status`` is the last
``session_status`` event's status for the bead's current session.
"""

from __future__ import annotations

import builtins
import os
from dataclasses import dataclass
from typing import Any

from swarm_pool.store.lifecycle import TERMINAL
from swarm_pool.store.recorder import Recorder
from swarm_pool.store.rows import RowView, json_list


@dataclass(frozen=True)
class WorkerView(RowView):
    bead_id: str
    epic_id: str
    status: str
    attempt: int
    session_id: str | None
    instance: str
    worktree: str
    agent_name: str
    files: list[str]
    progress_percent: int
    last_message: str
    summary: str
    files_touched: list[str]
    violations: list[str]
    error: str | None
    blocked_reason: str | None
    session_status: str | None
    spawned_at: int | None
    updated_at: int
    completed_at: int | None
    duration_ms: int | None
    # Changes applied so far: what a conditional append passes as ``expect``.
    version: int = 0
    # Time blocked on a human: finished spells, and the start of the current one.
    blocked_ms: int = 0
    blocked_since: int | None = None
    # The host that claimed the current attempt ('' unclaimed; always '' on one host).
    host: str = ""

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    DECODE = {
        "files": json_list,
        "files_touched": json_list,
        "violations": json_list,
    }

    def running_ms(self, now: int) -> int:
        """Time since the spawn minus time blocked on a human (what a timeout counts)."""
        if self.spawned_at is None:
            return 0
        blocked = self.blocked_ms + (now - self.blocked_since if self.blocked_since else 0)
        return max(0, now - self.spawned_at - blocked)


class Workers:
    def __init__(self, recorder: Recorder) -> None:
        self._rec = recorder

    def list(
        self,
        *,
        epic_id: str | None = None,
        bead_id: str | None = None,
        status: str | None = None,
        session_id: str | None = None,
    ) -> builtins.list[WorkerView]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("epic_id", epic_id),
            ("bead_id", bead_id),
            ("status", status),
            ("session_id", session_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT * FROM workers"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY epic_id, bead_id"
        with self._rec.reading() as r:
            rows = r.query(sql, params)
        return [WorkerView.from_row(row) for row in rows]

    def get(self, bead_id: str) -> WorkerView | None:
        with self._rec.reading() as r:
            row = r.query_one("SELECT * FROM workers WHERE bead_id = ?", (bead_id,))
        return None if row is None else WorkerView.from_row(row)

    def in_directory(self, directory: str) -> WorkerView | None:
        """The worker ``directory`` (a worktree or a reused slot) holds now: the one not
        yet finished, else the latest to have used it; None when no worker ever did."""
        candidates = {directory, os.path.realpath(directory)}
        marks = ", ".join("?" for _ in candidates)
        with self._rec.reading() as r:
            rows = r.query(f"SELECT * FROM workers WHERE worktree IN ({marks})", list(candidates))
        found = [WorkerView.from_row(row) for row in rows]
        if not found:
            return None
        live = [w for w in found if not w.done]
        return max(live or found, key=lambda w: (w.spawned_at or 0, w.attempt or 0))

    def by_session(self, session_id: str) -> WorkerView | None:
        """The worker whose current session this is, if any."""
        found = self.list(session_id=session_id)
        return found[0] if found else None

    def stale(self, bead_id: str | None = None) -> builtins.list[dict[str, Any]]:
        """Worker events recorded but not applied (older attempt, other session), by seq."""
        sql = "SELECT seq, bead_id, type, attempt, session_id, reason FROM worker_stale"
        params: tuple[Any, ...] = ()
        if bead_id is not None:
            sql += " WHERE bead_id = ?"
            params = (bead_id,)
        with self._rec.reading() as r:
            return [dict(row) for row in r.query(sql + " ORDER BY seq", params)]
