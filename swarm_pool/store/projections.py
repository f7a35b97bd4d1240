"""The projections: epics/cells, reservations, messages, session routes,
worktree slots and hosts kept from events, and the dispatch of every event to its
handler (the workers' own rows are ``worker_projection.py``'s).

Room: store.

Owns ``apply(writer, seq, event)``, which the recorder calls inside the append's own
transaction, so a reader never sees an event without its effect (or the reverse), and
``clear``/``dump`` over the derived tables (``schema.TABLES``) for rebuild. Every value
written here comes from the events alone (timestamps included, never the clock), which
is what lets ``rebuild`` replay the log into empty tables and get exactly the same rows.
``apply`` also enforces the hive's invariants (unique ids, cells of a known epic, status
changes of a known cell): a bad event raises and its whole transaction is rolled back.
"""

from __future__ import annotations

from typing import Any

from swarm_pool.errors import HiveError, MailError, NotFoundError, SlotConflictError
from swarm_pool.store import events as ev
from swarm_pool.store.globs import has_magic
from swarm_pool.store.lifecycle import WORKER_EVENTS
from swarm_pool.store.schema import TABLES, dump_json
from swarm_pool.store.tx import Reader, Writer
from swarm_pool.store.worker_projection import session_event, worker_event


def pattern_prefix(pattern: str) -> str:
    """The literal leading segments of a normalized pattern ("" if it starts with glob
    syntax)."""
    head: list[str] = []
    for seg in pattern.split("/"):
        if has_magic(seg):
            break
        head.append(seg)
    return "/".join(head)


# Worker events plus the session events that annotate a worker's row.
WORKER_EVENT_TYPES = WORKER_EVENTS | {"session_status", "session_error"}


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
    "worker_spawned": worker_event,
    "worker_progress": worker_event,
    "worker_completed": worker_event,
    "worker_failed": worker_event,
    "worker_blocked": worker_event,
    "worker_retried": worker_event,
    "worker_queued": worker_event,
    "worker_needs_review": worker_event,
    "worker_session_created": worker_event,
    "worker_claimed": worker_event,
    "host_beat": _host_beat,
    "session_status": session_event,
    "session_error": session_event,
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
