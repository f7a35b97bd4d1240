"""The workers projection: one row per bead's worker, kept from the worker
events through the lifecycle's ``decide``.

Room: store.

Owns the ``workers`` rows and ``worker_stale`` (events recorded but not applied: an older
attempt's, another session's), the time spent blocked, the session annotations
(``session_status``/``session_error`` on the current session's row), and
``check_versions``, the test a conditional append runs inside its transaction. Called by
``projections.apply``; every value comes from the events, never the clock, so a rebuild
reproduces the rows.
"""

from __future__ import annotations

from typing import Any

from swarm_pool.errors import VersionConflictError
from swarm_pool.store import events as ev
from swarm_pool.store.lifecycle import WorkerStatus, decide
from swarm_pool.store.schema import dump_json
from swarm_pool.store.tx import Reader, Writer

_WORKER_COLUMNS = (
    "bead_id",
    "epic_id",
    "status",
    "attempt",
    "session_id",
    "instance",
    "worktree",
    "agent_name",
    "files",
    "progress_percent",
    "last_message",
    "summary",
    "files_touched",
    "violations",
    "error",
    "blocked_reason",
    "session_status",
    "spawned_at",
    "updated_at",
    "completed_at",
    "duration_ms",
    "last_seq",
    "version",
    "blocked_since",
    "blocked_ms",
    "host",
)
_UPSERT_WORKER = (
    f"INSERT INTO workers ({', '.join(_WORKER_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_WORKER_COLUMNS))})"
    " ON CONFLICT (bead_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _WORKER_COLUMNS[1:])
)


def _fresh_worker(e: ev.Event) -> dict[str, Any]:
    return {
        "bead_id": getattr(e, "bead_id", None),
        "epic_id": getattr(e, "epic_id", None),
        "status": "running",
        "attempt": getattr(e, "attempt", 1),
        "session_id": getattr(e, "session_id", None),
        "instance": "",
        "worktree": "",
        "agent_name": "",
        "files": "[]",
        "progress_percent": 0,
        "last_message": "",
        "summary": "",
        "files_touched": "[]",
        "violations": "[]",
        "error": None,
        "blocked_reason": None,
        "session_status": None,
        "spawned_at": None,
        "updated_at": e.timestamp,
        "completed_at": None,
        "duration_ms": None,
        "last_seq": 0,
        "version": 0,
        "blocked_since": None,
        "blocked_ms": 0,
        "host": "",
    }


def _save_worker(w: Writer, row: dict[str, Any]) -> None:
    w.execute(_UPSERT_WORKER, tuple(row[c] for c in _WORKER_COLUMNS))


def worker_event(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.WorkerEvent)
    current = w.query_one("SELECT * FROM workers WHERE bead_id = ?", (e.bead_id,))
    prev = dict(current) if current is not None else None
    decision = decide(prev, e)  # raises IllegalTransitionError: the transaction rolls back
    if decision.stale:
        w.execute(
            "INSERT INTO worker_stale (seq, bead_id, type, attempt, session_id, reason)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (seq, e.bead_id, e.type, e.attempt, e.session_id, decision.reason),
        )
        return
    assert decision.status is not None
    if prev is None or isinstance(e, ev.WorkerSpawned | ev.WorkerQueued):
        row = _fresh_worker(e)
        if isinstance(e, ev.WorkerSpawned) and prev is not None and prev["attempt"] == e.attempt:
            row["host"] = prev["host"]  # the claiming host's attempt, now running
    else:
        row = dict(prev)
        row["epic_id"] = e.epic_id
        row["updated_at"] = e.timestamp
        if e.session_id is not None:
            row["session_id"] = e.session_id
    _track_blocked_time(row, decision.status.value, e.timestamp)
    row["status"] = decision.status.value
    _apply_worker_change(row, e)
    row["attempt"] = max(e.attempt, row["attempt"])
    row["last_seq"] = seq
    row["version"] = (prev["version"] if prev is not None else 0) + 1
    _save_worker(w, row)


def _track_blocked_time(row: dict[str, Any], status: str, now: int) -> None:
    blocked = WorkerStatus.BLOCKED.value
    if row["status"] == blocked and status != blocked and row["blocked_since"] is not None:
        row["blocked_ms"] += max(0, now - int(row["blocked_since"]))
        row["blocked_since"] = None
    elif status == blocked and row["blocked_since"] is None:
        row["blocked_since"] = now


def _apply_worker_change(row: dict[str, Any], e: ev.Event) -> None:
    """The details an applied event writes (its status is already in ``row``)."""
    if isinstance(e, ev.WorkerSpawned):
        row.update(
            instance=e.instance,
            worktree=e.worktree,
            agent_name=e.agent_name,
            files=dump_json(e.files),
            spawned_at=e.timestamp,
        )
    elif isinstance(e, ev.WorkerQueued):
        row.update(worktree=e.worktree, files=dump_json(e.files), last_message=e.reason)
    elif isinstance(e, ev.WorkerSessionCreated):
        # The intent's time stands for the spawn's until worker_spawned confirms it.
        row.update(
            instance=e.instance or row["instance"],
            worktree=e.worktree or row["worktree"],
            spawned_at=e.timestamp,
        )
    elif isinstance(e, ev.WorkerClaimed):
        row.update(host=e.host, worktree=e.worktree or row["worktree"])
    elif isinstance(e, ev.WorkerRetried):
        row.update(
            host="",
            error=None,
            blocked_reason=None,
            completed_at=None,
            duration_ms=None,
            session_status=None,
            last_message=e.reason or row["last_message"],
        )
    elif isinstance(e, ev.WorkerProgress):
        row["blocked_reason"] = None
        row["completed_at"] = None
        row["duration_ms"] = None
        row["progress_percent"] = e.progress_percent
        if e.message:
            row["last_message"] = e.message
        if e.files_touched:
            row["files_touched"] = dump_json(e.files_touched)
    elif isinstance(e, ev.WorkerCompleted):
        row["summary"] = e.summary
        row["files_touched"] = dump_json(e.files_touched)
        row["violations"] = dump_json(e.violations)
        row["error"] = e.error
        row["completed_at"] = e.timestamp
        if e.status == "success":
            row["progress_percent"] = 100
        if e.status == "blocked":
            row["blocked_reason"] = e.error or e.summary
        row["duration_ms"] = _duration(row, e.duration_ms, e.timestamp)
    elif isinstance(e, ev.WorkerFailed):
        row["error"] = e.error
        if e.reason:
            row["last_message"] = e.reason
        row["completed_at"] = e.timestamp
        row["duration_ms"] = _duration(row, e.duration_ms, e.timestamp)
    elif isinstance(e, ev.WorkerNeedsReview):
        # The session went idle without swarm_complete: done, pending a human look.
        row["completed_at"] = e.timestamp
        row["duration_ms"] = _duration(row, None, e.timestamp)
        if e.reason:
            row["last_message"] = e.reason
        if e.instance:
            row["instance"] = e.instance
    elif isinstance(e, ev.WorkerBlocked):
        row["blocked_reason"] = e.reason or e.kind
        if e.instance:
            row["instance"] = e.instance


def check_versions(r: Reader, expected: dict[str, int]) -> None:
    """Raise VersionConflictError unless each bead's worker is at the version given
    (0: no worker yet). Called inside the append's write transaction."""
    for bead_id, version in expected.items():
        row = r.query_one("SELECT version FROM workers WHERE bead_id = ?", (bead_id,))
        actual = int(row["version"]) if row is not None else 0
        if actual != version:
            raise VersionConflictError(
                f"bead {bead_id} changed since it was read (version {actual}, expected "
                f"{version}); read it again",
                bead_id=bead_id,
                expected=version,
                actual=actual,
            )


def _duration(row: dict[str, Any], given: int | None, now: int) -> int | None:
    if given is not None:
        return given
    if row["spawned_at"] is not None:
        return max(0, now - int(row["spawned_at"]))
    return None


def session_event(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.SessionStatus | ev.SessionError)
    # The status belongs to the bead's current session only: an old attempt's session
    # going idle says nothing about the new one.
    if e.bead_id is not None:
        current = w.query_one(
            "SELECT * FROM workers WHERE bead_id = ? AND (session_id = ? OR session_id IS NULL)",
            (e.bead_id, e.session_id),
        )
        rows = [] if current is None else [current]
    else:
        rows = w.query("SELECT * FROM workers WHERE session_id = ?", (e.session_id,))
    for current in rows:
        row = dict(current)
        if isinstance(e, ev.SessionStatus):
            row["session_status"] = e.status
        else:
            row["session_status"] = "error"
            row["error"] = e.error
        row["session_id"] = e.session_id
        row["updated_at"] = e.timestamp
        row["last_seq"] = seq
        _save_worker(w, row)
