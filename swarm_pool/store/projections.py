"""The projections: workers, epics/cells, reservations, messages and worktree slots,
kept from events.

Owns the projection tables and ``apply(writer, seq, event)``, which the recorder calls
inside the append's own transaction, so a reader never sees an event without its effect
(or the reverse). Every value written here comes from the events alone (timestamps
included, never the clock), which is what lets ``rebuild`` replay the log into empty
tables and get exactly the same rows. ``apply`` also enforces the hive's invariants
(unique ids, cells of a known epic, status changes of a known cell): a bad event raises
and its whole transaction is rolled back.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from swarm_pool.errors import (
    HiveError,
    MailError,
    NotFoundError,
    SlotConflictError,
    VersionConflictError,
)
from swarm_pool.store import events as ev
from swarm_pool.store.globs import has_magic
from swarm_pool.store.lifecycle import WORKER_EVENTS, WorkerStatus, decide

if TYPE_CHECKING:
    from swarm_pool.store.recorder import Reader, Writer

SCHEMA = (
    """CREATE TABLE workers (
        bead_id TEXT PRIMARY KEY,
        epic_id TEXT NOT NULL,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        session_id TEXT,
        instance TEXT NOT NULL DEFAULT '',
        worktree TEXT NOT NULL DEFAULT '',
        agent_name TEXT NOT NULL DEFAULT '',
        files TEXT NOT NULL DEFAULT '[]',
        progress_percent INTEGER NOT NULL DEFAULT 0,
        last_message TEXT NOT NULL DEFAULT '',
        summary TEXT NOT NULL DEFAULT '',
        files_touched TEXT NOT NULL DEFAULT '[]',
        violations TEXT NOT NULL DEFAULT '[]',
        error TEXT,
        blocked_reason TEXT,
        session_status TEXT,
        spawned_at INTEGER,
        updated_at INTEGER NOT NULL,
        completed_at INTEGER,
        duration_ms INTEGER,
        last_seq INTEGER NOT NULL
    )""",
    "CREATE INDEX workers_epic ON workers (epic_id, bead_id)",
    "CREATE INDEX workers_session ON workers (session_id)",
    """CREATE TABLE epics (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        seq INTEGER NOT NULL
    )""",
    """CREATE TABLE cells (
        id TEXT PRIMARY KEY,
        epic_id TEXT NOT NULL,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        files TEXT NOT NULL,
        depends_on TEXT NOT NULL,
        status TEXT NOT NULL,
        script TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        seq INTEGER NOT NULL
    )""",
    "CREATE INDEX cells_epic ON cells (epic_id, seq)",
    "CREATE INDEX cells_status ON cells (status, seq)",
    """CREATE TABLE cell_deps (
        cell_id TEXT NOT NULL,
        depends_on TEXT NOT NULL,
        PRIMARY KEY (cell_id, depends_on)
    )""",
    "CREATE INDEX cell_deps_reverse ON cell_deps (depends_on)",
    """CREATE TABLE reservations (
        id TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        pattern TEXT NOT NULL,
        exclusive INTEGER NOT NULL,
        reason TEXT NOT NULL,
        bead_id TEXT,
        epic_id TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        seq INTEGER NOT NULL
    )""",
    "CREATE INDEX reservations_holder ON reservations (holder, expires_at)",
    "CREATE INDEX reservations_expiry ON reservations (expires_at)",
    """CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,
        recipients TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        importance TEXT NOT NULL,
        thread_id TEXT,
        ack_required INTEGER NOT NULL,
        bead_id TEXT,
        epic_id TEXT,
        created_at INTEGER NOT NULL,
        seq INTEGER NOT NULL
    )""",
    "CREATE INDEX messages_thread ON messages (thread_id, seq) WHERE thread_id IS NOT NULL",
    """CREATE TABLE message_recipients (
        message_id TEXT NOT NULL,
        agent TEXT NOT NULL,
        seq INTEGER NOT NULL,
        read_at INTEGER,
        acked_at INTEGER,
        PRIMARY KEY (message_id, agent)
    )""",
    "CREATE INDEX message_recipients_agent ON message_recipients (agent, seq)",
)

# Reservations get the literal head of their pattern (the segments before the first
# wildcard: "src/auth" for "src/auth/*.py", "" for "**/x"), so a conflict check reads only
# the holdings whose head is an ancestor or a descendant of the request's: no other
# pattern can match a path the request can. Rows from before this migration get "",
# which every check reads (correct, only slower) until the next rebuild.
RESERVATION_PREFIX = (
    "ALTER TABLE reservations ADD COLUMN prefix TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX reservations_prefix ON reservations (prefix)",
)


# The worker lifecycle (migration 4): ``version`` counts the changes applied to a
# worker's row, which conditional appends compare with the version their caller read;
# ``worker_stale`` keeps the worker events recorded but not applied (an older attempt's,
# another session's), so a late report is visible without ever moving the worker.
WORKER_LIFECYCLE = (
    "ALTER TABLE workers ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
    """CREATE TABLE worker_stale (
        seq INTEGER PRIMARY KEY,
        bead_id TEXT NOT NULL,
        type TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        session_id TEXT,
        reason TEXT NOT NULL
    )""",
    "CREATE INDEX worker_stale_bead ON worker_stale (bead_id, seq)",
)

# Migration 6: the gateway's session -> instance map (one row per session, last routing).
SESSION_INSTANCES = (
    """CREATE TABLE session_instances (
        session_id TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        directory TEXT NOT NULL DEFAULT '',
        origin TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        seq INTEGER NOT NULL
    )""",
    "CREATE INDEX session_instances_directory ON session_instances (directory, seq)",
)


# Migration 7: the worktree slots, one row per slot directory. ``bead_id`` is the bead
# that last took it (kept once the slot is free, so the bead's next attempt finds its own
# branch there); ``version`` counts the slot events applied, for conditional takes.
SLOTS = (
    """CREATE TABLE slots (
        slot TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        path TEXT NOT NULL,
        state TEXT NOT NULL,
        bead_id TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        version INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL,
        seq INTEGER NOT NULL
    )""",
    "CREATE INDEX slots_instance ON slots (instance, slot)",
    "CREATE INDEX slots_bead ON slots (bead_id)",
    "CREATE INDEX slots_path ON slots (path)",
)


# Time spent blocked (waiting for a human), migration 5: a worker's timeout counts its
# running time only. ``blocked_since`` is set while blocked, ``blocked_ms`` sums the
# attempt's finished blocked spells.
WORKER_BLOCKED_TIME = (
    "ALTER TABLE workers ADD COLUMN blocked_since INTEGER",
    "ALTER TABLE workers ADD COLUMN blocked_ms INTEGER NOT NULL DEFAULT 0",
)


# Several hosts on one store (migration 8): the host that claimed a worker's current
# attempt ('' while unclaimed, and always on a single host), and each host's last
# heartbeat.
HOSTS = (
    "ALTER TABLE workers ADD COLUMN host TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX workers_host ON workers (host, status)",
    """CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        capacity INTEGER NOT NULL,
        in_flight INTEGER NOT NULL,
        load REAL NOT NULL,
        instances TEXT NOT NULL DEFAULT '[]',
        first_beat INTEGER NOT NULL,
        last_beat INTEGER NOT NULL,
        seq INTEGER NOT NULL
    )""",
)


def pattern_prefix(pattern: str) -> str:
    """The literal leading segments of a normalized pattern ("" if it starts with glob
    syntax)."""
    head: list[str] = []
    for seg in pattern.split("/"):
        if has_magic(seg):
            break
        head.append(seg)
    return "/".join(head)


# Tables holding derived state, in the order they are cleared and dumped.
TABLES: dict[str, str] = {
    "workers": "bead_id",
    "epics": "id",
    "cells": "id",
    "cell_deps": "cell_id, depends_on",
    "reservations": "id",
    "messages": "id",
    "message_recipients": "message_id, agent",
    "worker_stale": "seq",
    "session_instances": "session_id",
    "slots": "slot",
    "hosts": "name",
}

# Worker events plus the session events that annotate a worker's row.
WORKER_EVENT_TYPES = WORKER_EVENTS | {"session_status", "session_error"}


def dump_json(value: Any) -> str:
    """JSON text for projection columns (sorted keys, so rebuilds compare equal)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_json(text: str | None, default: Any = None) -> Any:
    return default if text is None else json.loads(text)


def clear(w: Writer) -> None:
    for table in TABLES:
        w.execute(f"DELETE FROM {table}")


def dump(r: Reader) -> dict[str, list[dict[str, Any]]]:
    """Every projection row, ordered by key: what ``rebuild`` must reproduce."""
    return {t: r.query(f"SELECT * FROM {t} ORDER BY {key}") for t, key in TABLES.items()}


def touches(event: ev.Event) -> bool:
    """Whether ``apply`` would change anything for this event (a recorder may record an
    event that touches nothing by a shorter path)."""
    return event.type in _HANDLERS


def apply(w: Writer, seq: int, event: ev.Event) -> None:
    """Apply one event to the projections it touches (most touch none)."""
    handler = _HANDLERS.get(event.type)
    if handler is not None:
        handler(w, seq, event)


# --- hive -----------------------------------------------------------------------------


def _epic_created(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.EpicCreated)
    if w.query_one("SELECT 1 AS x FROM epics WHERE id = ?", (e.epic_id,)):
        raise HiveError(f"epic {e.epic_id} already exists")
    w.execute(
        "INSERT INTO epics (id, title, description, created_at, seq) VALUES (?, ?, ?, ?, ?)",
        (e.epic_id, e.title, e.description, e.timestamp, seq),
    )


def _cell_created(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.CellCreated)
    if not e.cell_id.startswith(e.epic_id + "."):
        raise HiveError(f"cell id {e.cell_id} does not belong to epic {e.epic_id}")
    if not w.query_one("SELECT 1 AS x FROM epics WHERE id = ?", (e.epic_id,)):
        raise NotFoundError(f"epic {e.epic_id} does not exist")
    if w.query_one("SELECT 1 AS x FROM cells WHERE id = ?", (e.cell_id,)):
        raise HiveError(f"bead {e.cell_id} already exists")
    for dep in e.depends_on:
        if dep == e.cell_id:
            raise HiveError(f"bead {e.cell_id} cannot depend on itself")
        if not w.query_one("SELECT 1 AS x FROM cells WHERE id = ?", (dep,)):
            raise HiveError(f"bead {e.cell_id} depends on unknown bead {dep}")
    w.execute(
        "INSERT INTO cells (id, epic_id, title, description, files, depends_on, status,"
        " script, created_at, updated_at, seq) VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?)",
        (
            e.cell_id,
            e.epic_id,
            e.title,
            e.description,
            dump_json(e.files),
            dump_json(e.depends_on),
            None if e.script is None else dump_json(e.script),
            e.timestamp,
            e.timestamp,
            seq,
        ),
    )
    for dep in dict.fromkeys(e.depends_on):
        w.execute("INSERT INTO cell_deps (cell_id, depends_on) VALUES (?, ?)", (e.cell_id, dep))


def _cell_status_changed(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.CellStatusChanged)
    row = w.query_one("SELECT epic_id FROM cells WHERE id = ?", (e.cell_id,))
    if row is None:
        raise NotFoundError(f"bead {e.cell_id} does not exist")
    if row["epic_id"] != e.epic_id:
        raise HiveError(f"bead {e.cell_id} belongs to epic {row['epic_id']}, not {e.epic_id}")
    w.execute(
        "UPDATE cells SET status = ?, updated_at = ? WHERE id = ?",
        (e.status, e.timestamp, e.cell_id),
    )


# --- workers --------------------------------------------------------------------------

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


def _worker_event(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev._WorkerEvent)
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


def _session_event(w: Writer, seq: int, e: ev.Event) -> None:
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


# --- reservations ---------------------------------------------------------------------


def _file_reserved(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.FileReserved)
    w.execute(
        "INSERT INTO reservations (id, holder, pattern, prefix, exclusive, reason, bead_id,"
        " epic_id, created_at, expires_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO NOTHING",
        (
            e.reservation_id,
            e.holder,
            e.pattern,
            pattern_prefix(e.pattern),
            int(e.exclusive),
            e.reason,
            e.bead_id,
            e.epic_id,
            e.timestamp,
            e.expires_at,
            seq,
        ),
    )


def _file_released(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.FileReleased)
    w.execute("DELETE FROM reservations WHERE id = ?", (e.reservation_id,))


def _file_renewed(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.FileRenewed)
    w.execute(
        "UPDATE reservations SET expires_at = ? WHERE id = ?", (e.expires_at, e.reservation_id)
    )


# --- mail -----------------------------------------------------------------------------


def _message_sent(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.MessageSent)
    if w.query_one("SELECT 1 AS x FROM messages WHERE id = ?", (e.message_id,)):
        raise MailError(f"message {e.message_id} already exists")
    recipients = list(dict.fromkeys(e.to))
    w.execute(
        "INSERT INTO messages (id, sender, recipients, subject, body, importance, thread_id,"
        " ack_required, bead_id, epic_id, created_at, seq)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            e.message_id,
            e.sender,
            dump_json(recipients),
            e.subject,
            e.body,
            e.importance,
            e.thread_id,
            int(e.ack_required),
            e.bead_id,
            e.epic_id,
            e.timestamp,
            seq,
        ),
    )
    for agent in recipients:
        w.execute(
            "INSERT INTO message_recipients (message_id, agent, seq) VALUES (?, ?, ?)",
            (e.message_id, agent, seq),
        )


def _message_read(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.MessageRead)
    w.execute(
        "UPDATE message_recipients SET read_at = coalesce(read_at, ?)"
        " WHERE message_id = ? AND agent = ?",
        (e.timestamp, e.message_id, e.agent),
    )


def _message_acked(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.MessageAcked)
    w.execute(
        "UPDATE message_recipients SET read_at = coalesce(read_at, ?),"
        " acked_at = coalesce(acked_at, ?) WHERE message_id = ? AND agent = ?",
        (e.timestamp, e.timestamp, e.message_id, e.agent),
    )


def _session_routed(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.SessionRouted)
    w.execute(
        "INSERT INTO session_instances (session_id, instance, directory, origin, updated_at, seq)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET"
        " instance = excluded.instance, directory = excluded.directory,"
        " origin = excluded.origin, updated_at = excluded.updated_at, seq = excluded.seq",
        (e.session_id, e.instance, e.directory, e.origin, e.timestamp, seq),
    )


# --- worktree slots -------------------------------------------------------------------


def _slot_opened(w: Writer, seq: int, e: ev.Event) -> None:
    """A new slot, opening: refused (SlotConflictError) if the slot exists."""
    assert isinstance(e, ev.SlotOpened)
    if w.query_one("SELECT slot FROM slots WHERE slot = ?", (e.slot,)) is not None:
        raise SlotConflictError(f"slot {e.slot} exists already", slot=e.slot)
    w.execute(
        "INSERT INTO slots (slot, instance, path, state, bead_id, attempt, reason, version,"
        " updated_at, seq) VALUES (?, ?, ?, ?, '', 0, '', 1, ?, ?)",
        (e.slot, e.instance, e.path, ev.SlotState.OPENING, e.timestamp, seq),
    )


def _slot_taken(w: Writer, seq: int, e: ev.Event) -> None:
    """Take a slot: refused (SlotConflictError, the append rolls back) unless it is new,
    free, dirty (its taker checked it is clean now) or already the same bead's."""
    assert isinstance(e, ev.SlotTaken)
    row = w.query_one("SELECT state, bead_id, path FROM slots WHERE slot = ?", (e.slot,))
    if row is not None:
        if row["state"] == ev.SlotState.OPENING:
            raise SlotConflictError(f"slot {e.slot} is still opening", slot=e.slot)
        if row["state"] == ev.SlotState.BUSY and row["bead_id"] != e.bead_id:
            raise SlotConflictError(
                f"slot {e.slot} is busy with bead {row['bead_id']}", slot=e.slot
            )
        if row["path"] != e.path:
            raise SlotConflictError(f"slot {e.slot} is at {row['path']}, not {e.path}", slot=e.slot)
    w.execute(
        "INSERT INTO slots (slot, instance, path, state, bead_id, attempt, reason, version,"
        " updated_at, seq) VALUES (?, ?, ?, ?, ?, ?, '', 1, ?, ?) ON CONFLICT (slot) DO UPDATE"
        " SET state = excluded.state, bead_id = excluded.bead_id, attempt = excluded.attempt,"
        " reason = '', version = slots.version + 1, updated_at = excluded.updated_at,"
        " seq = excluded.seq",
        (e.slot, e.instance, e.path, ev.SlotState.BUSY, e.bead_id, e.attempt, e.timestamp, seq),
    )


def _slot_released(w: Writer, seq: int, e: ev.Event) -> None:
    # Only the bead holding the slot releases it: a late release of an earlier bead is a
    # no-op (recorded, never applied).
    assert isinstance(e, ev.SlotReleased)
    w.execute(
        "UPDATE slots SET state = ?, reason = ?, version = version + 1, updated_at = ?, seq = ?"
        " WHERE slot = ? AND bead_id = ? AND state <> ?",
        (ev.SlotState.FREE, e.reason, e.timestamp, seq, e.slot, e.bead_id, ev.SlotState.FREE),
    )


def _slot_removed(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.SlotRemoved)
    w.execute("DELETE FROM slots WHERE slot = ? AND state = ?", (e.slot, ev.SlotState.FREE))


def _slot_dirty(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.SlotDirty)
    reason = "uncommitted: " + ", ".join(e.files[:5]) if e.files else "uncommitted work"
    w.execute(
        "UPDATE slots SET state = ?, bead_id = CASE WHEN ? = '' THEN bead_id ELSE ? END,"
        " reason = ?, version = version + 1, updated_at = ?, seq = ? WHERE slot = ?",
        (ev.SlotState.DIRTY, e.bead_id, e.bead_id, reason, e.timestamp, seq, e.slot),
    )


def _host_beat(w: Writer, seq: int, e: ev.Event) -> None:
    assert isinstance(e, ev.HostBeat)
    instances = dump_json([i.model_dump() for i in e.instances])
    w.execute(
        "INSERT INTO hosts (name, pid, capacity, in_flight, load, instances, first_beat,"
        " last_beat, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
        " pid = excluded.pid, capacity = excluded.capacity, in_flight = excluded.in_flight,"
        " load = excluded.load, instances = excluded.instances,"
        " first_beat = CASE WHEN hosts.pid = excluded.pid THEN hosts.first_beat"
        " ELSE excluded.first_beat END,"
        " last_beat = excluded.last_beat, seq = excluded.seq",
        (e.host, e.pid, e.capacity, e.in_flight, e.load, instances, e.timestamp, e.timestamp, seq),
    )


_HANDLERS = {
    "epic_created": _epic_created,
    "cell_created": _cell_created,
    "cell_status_changed": _cell_status_changed,
    "worker_spawned": _worker_event,
    "worker_progress": _worker_event,
    "worker_completed": _worker_event,
    "worker_failed": _worker_event,
    "worker_blocked": _worker_event,
    "worker_retried": _worker_event,
    "worker_queued": _worker_event,
    "worker_needs_review": _worker_event,
    "worker_session_created": _worker_event,
    "worker_claimed": _worker_event,
    "host_beat": _host_beat,
    "session_status": _session_event,
    "session_error": _session_event,
    "file_reserved": _file_reserved,
    "file_released": _file_released,
    "file_renewed": _file_renewed,
    "message_sent": _message_sent,
    "message_read": _message_read,
    "message_acked": _message_acked,
    "session_routed": _session_routed,
    "slot_opened": _slot_opened,
    "slot_taken": _slot_taken,
    "slot_released": _slot_released,
    "slot_dirty": _slot_dirty,
    "slot_removed": _slot_removed,
}
