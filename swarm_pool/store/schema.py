"""The store's tables: the DDL of the events table and of every projection,
as numbered migrations (one list for both backends, each statement translated to the
backend's dialect by ``dialect.py``, with PostgreSQL's own spelling where the dialects
differ beyond translation), the derived-state tables in the order ``rebuild`` clears
and dumps them, and the JSON encoding of projection columns.

Room: store.
"""

from __future__ import annotations

import json
from typing import Any

from swarm_pool.store.db import Migration

EVENTS_SCHEMA = (
    """CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        type TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        epic_id TEXT,
        bead_id TEXT,
        session_id TEXT,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX events_type ON events (type, seq)",
    "CREATE INDEX events_epic ON events (epic_id, seq) WHERE epic_id IS NOT NULL",
    "CREATE INDEX events_bead ON events (bead_id, seq) WHERE bead_id IS NOT NULL",
    "CREATE INDEX events_session ON events (session_id, seq) WHERE session_id IS NOT NULL",
    """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
       BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
    """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
       BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
)

# PostgreSQL's own spelling of migration 1: seq is given by the writer (max + 1 under
# the store's write lock, so a rolled-back append leaves no hole), and the append-only
# rule is a trigger function.
EVENTS_SCHEMA_POSTGRES = (
    """CREATE TABLE events (
        seq BIGINT PRIMARY KEY,
        type TEXT COLLATE "C" NOT NULL,
        timestamp BIGINT NOT NULL,
        epic_id TEXT COLLATE "C",
        bead_id TEXT COLLATE "C",
        session_id TEXT COLLATE "C",
        data TEXT NOT NULL
    )""",
    *EVENTS_SCHEMA[1:5],
    """CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'events are append-only'; END $$""",
    """CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
       FOR EACH ROW EXECUTE FUNCTION events_append_only()""",
    """CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
       FOR EACH STATEMENT EXECUTE FUNCTION events_append_only()""",
    # One event that touches no projection, in one round trip: lock, insert, notify, and
    # (called in autocommit) commit, with the lock held only inside the server. Each
    # statement of a volatile function takes a fresh snapshot, so max(seq) is read
    # after the lock is granted.
    """CREATE FUNCTION swarm_pool_append(lock_class integer, lock_key integer, channel text,
           etype text, ts bigint, epic text, bead text, sess text, body text)
       RETURNS bigint LANGUAGE plpgsql AS $$
       DECLARE s bigint;
       BEGIN
           PERFORM pg_advisory_xact_lock(lock_class, lock_key);
           INSERT INTO events (seq, type, timestamp, epic_id, bead_id, session_id, data)
               VALUES ((SELECT coalesce(max(seq), 0) + 1 FROM events),
                       etype, ts, epic, bead, sess, body)
               RETURNING seq INTO s;
           PERFORM pg_notify(channel, s::text);
           RETURN s;
       END $$""",
)

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


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events", EVENTS_SCHEMA, postgres=EVENTS_SCHEMA_POSTGRES),
    Migration(2, "projections", SCHEMA),
    Migration(3, "reservation_prefix", RESERVATION_PREFIX),
    Migration(4, "worker_lifecycle", WORKER_LIFECYCLE),
    Migration(5, "worker_blocked_time", WORKER_BLOCKED_TIME),
    Migration(6, "session_instances", SESSION_INSTANCES),
    Migration(7, "worktree_slots", SLOTS),
    Migration(8, "hosts", HOSTS),
)


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


def dump_json(value: Any) -> str:
    """JSON text for projection columns (sorted keys, so rebuilds compare equal)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_json(text: str | None, default: Any = None) -> Any:
    return default if text is None else json.loads(text)
