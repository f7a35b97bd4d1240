"""Several hosts on one store: their heartbeats, and who takes which queued worker.

Room: store.

Owns the ``hosts`` projection's read side (``HostView``: a host's last ``host_beat``,
with its capacity, instances and load) and the claim: a host's engine takes up to
``limit`` queued, unclaimed workers in one write transaction, selecting them with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL (on SQLite the transaction's write lock alone
serializes claimers) and appending one ``worker_claimed`` per worker, each conditional
on the version it read, so two hosts never both take one worker. ``take_over`` moves a
queued worker claimed by a host presumed dead to a live one, again conditionally, so
when several live hosts race for it exactly one wins. Failing a dead host's in-flight
workers is the engine's (``swarm/engine/host_duty.py``), through the usual
conditional failure.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any

from swarm_pool.errors import VersionConflictError
from swarm_pool.store.dialect import Backend
from swarm_pool.store.events import WorkerClaimed, now_ms
from swarm_pool.store.lifecycle import LIVE, WorkerStatus
from swarm_pool.store.recorder import Recorder
from swarm_pool.store.rows import RowView, json_list
from swarm_pool.store.worker_projection import check_versions

_QUEUED = (
    "SELECT bead_id, epic_id, attempt, worktree, version FROM workers"
    " WHERE status = ? AND host = '' ORDER BY updated_at, bead_id LIMIT ?"
)


@dataclass(frozen=True)
class HostView(RowView):
    name: str
    pid: int
    capacity: int
    in_flight: int
    load: float
    instances: list[dict[str, Any]]
    first_beat: int
    last_beat: int

    def stale(self, now_ms: int, stale_ms: int) -> bool:
        """Silent for longer than ``stale_ms``: presumed dead."""
        return now_ms - self.last_beat > stale_ms

    DECODE = {"load": float, "instances": json_list}


def hosts_overview(store: Any, stale_s: float) -> builtins.list[dict[str, Any]]:
    """``Hosts.overview`` now, for a store that may be shared by several hosts (a
    PostgreSQL one); [] for SQLite, which has one host and no heartbeats."""
    if store.recorder.backend is not Backend.POSTGRESQL:
        return []
    return list(store.hosts.overview(now_ms(), int(stale_s * 1000)))


class Hosts:
    def __init__(self, recorder: Recorder) -> None:
        self._rec = recorder

    def list(self) -> builtins.list[HostView]:
        with self._rec.reading() as r:
            rows = r.query("SELECT * FROM hosts ORDER BY name")
        return [HostView.from_row(row) for row in rows]

    def get(self, name: str) -> HostView | None:
        with self._rec.reading() as r:
            row = r.query_one("SELECT * FROM hosts WHERE name = ?", (name,))
        return None if row is None else HostView.from_row(row)

    def overview(self, now_ms: int, stale_ms: int) -> builtins.list[dict[str, Any]]:
        """Every host as ``status``, the dashboard and ``metrics`` show it: its last beat
        (and seconds since), whether it is presumed dead, its capacity, load and
        instances, and the live workers it holds by status (from the workers)."""
        with self._rec.reading() as r:
            rows = r.query("SELECT * FROM hosts ORDER BY name")
            held = r.query(
                "SELECT host, status, count(*) AS n FROM workers WHERE host <> ''"
                " GROUP BY host, status"
            )
        workers: dict[str, dict[str, int]] = {}
        for row in held:
            if row["status"] in LIVE:  # a StrEnum set: plain status strings match
                workers.setdefault(row["host"], {})[row["status"]] = int(row["n"])
        out = []
        for row in rows:
            host = HostView.from_row(row)
            out.append(
                {
                    **host.to_dict(),
                    "last_beat_s": round(max(0, now_ms - host.last_beat) / 1000, 1),
                    "stale": host.stale(now_ms, stale_ms),
                    "workers": workers.get(host.name, {}),
                }
            )
        return out

    def claim(self, host: str, limit: int, *, worktree: str | None = None) -> builtins.list[str]:
        """Claim up to ``limit`` queued, unclaimed workers for ``host``, oldest first;
        returns their bead ids. ``worktree`` (a format string with ``{bead_id}``): where
        the claimed attempt's worktree lives on ``host`` (None: as queued)."""
        if limit <= 0:
            return []
        sql = _QUEUED
        if self._rec.backend is Backend.POSTGRESQL:
            # Rows another transaction holds are skipped, not waited for.
            sql += " FOR UPDATE SKIP LOCKED"
        with self._rec.writing() as w:
            rows = w.query(sql, (WorkerStatus.PENDING.value, limit))
            check_versions(w, {row["bead_id"]: int(row["version"]) for row in rows})
            for row in rows:
                w.append(
                    WorkerClaimed(
                        bead_id=row["bead_id"],
                        epic_id=row["epic_id"],
                        attempt=row["attempt"],
                        host=host,
                        worktree=(
                            worktree.format(bead_id=row["bead_id"])
                            if worktree is not None
                            else row["worktree"]
                        ),
                    )
                )
        return [row["bead_id"] for row in rows]

    def take_over(
        self, bead_id: str, *, host: str, from_host: str, version: int, worktree: str | None = None
    ) -> bool:
        """Move a queued worker claimed by ``from_host`` (presumed dead) to ``host``, if
        it is still queued there at ``version``; False when someone else moved it first."""
        with self._rec.writing() as w:
            row = w.query_one(
                "SELECT epic_id, attempt, worktree, status, host FROM workers WHERE bead_id = ?",
                (bead_id,),
            )
            if row is None or row["status"] != WorkerStatus.PENDING or row["host"] != from_host:
                return False
            try:
                check_versions(w, {bead_id: version})
            except VersionConflictError:
                return False
            w.append(
                WorkerClaimed(
                    bead_id=bead_id,
                    epic_id=row["epic_id"],
                    attempt=row["attempt"],
                    host=host,
                    from_host=from_host,
                    worktree=worktree.format(bead_id=bead_id) if worktree else row["worktree"],
                )
            )
        return True
