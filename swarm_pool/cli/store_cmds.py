"""Store commands: ``log``, ``reservations``, ``db check`` and ``db rebuild``.

Room: cli.

They open the project's store, call the core in ``swarm_pool.store`` and print lines,
tables or JSON (``--json``: one JSON object per line for ``log``, one document
otherwise). They never create a store: a project without ``.swarm/swarm.db`` is an
error that says so.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

import click

from swarm_pool.cli.common import AppContext, echo_json, existing_store, project_options
from swarm_pool.cli.group import main
from swarm_pool.errors import StoreCorruptError, StoreError
from swarm_pool.store import StoredEvent
from swarm_pool.store.events import EVENT_TYPES

# `log --follow` without --limit/--since-seq first prints this many of the latest events.
FOLLOW_BACKLOG = 20
FOLLOW_WAIT_S = 1.0
# Fields shown after the type in the human log line, in this order when present.
_LOG_FIELDS = (
    "epic_id",
    "cell_id",
    "bead_id",
    "session_id",
    "instance",
    "holder",
    "pattern",
    "requested",
    "status",
    "progress_percent",
    "title",
    "message_id",
    "agent",
    "sender",
    "to",
    "subject",
    "message",
    "summary",
    "reason",
    "error",
)


def _clock(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def format_event(stored: StoredEvent) -> str:
    data = stored.event.model_dump(mode="json")
    parts = []
    for key in _LOG_FIELDS:
        value = data.get(key)
        if value in (None, "", []):
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        text = str(value).replace("\n", " ")
        parts.append(f"{key}={text[:80]}")
    return f"{stored.seq:>6}  {_clock(stored.timestamp)}  {stored.type:<20}  {' '.join(parts)}"


@main.command("log")
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice(sorted(EVENT_TYPES)),
    metavar="TYPE",
    help="Only events of this type (repeatable).",
)
@click.option("--epic", "epic_id", default=None, help="Only events of this epic.")
@click.option("--bead", "bead_id", default=None, help="Only events of this bead (cell).")
@click.option("--session", "session_id", default=None, help="Only events of this session.")
@click.option("--since-seq", type=click.IntRange(min=0), default=0, help="Only seq > N.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=None,
    help="At most N events: the latest N (the first N after --since-seq if given).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Then print new events as they are appended, until Ctrl-C "
    f"(without --limit/--since-seq, starts with the last {FOLLOW_BACKLOG}).",
)
@project_options
def log_cmd(
    app: AppContext,
    types: tuple[str, ...],
    epic_id: str | None,
    bead_id: str | None,
    session_id: str | None,
    since_seq: int,
    limit: int | None,
    as_json: bool,
    follow: bool,
) -> None:
    """Print the event log, oldest first."""
    if follow and limit is None and since_seq == 0:
        limit = FOLLOW_BACKLOG
    filters: dict[str, Any] = {
        "types": types or None,
        "epic_id": epic_id,
        "bead_id": bead_id,
        "session_id": session_id,
    }
    with existing_store(app) as store:
        # Taken before the read: whatever is appended meanwhile is either in the read
        # or after this cursor, never lost (and never printed twice: the cursor only
        # moves past printed seqs).
        cursor = store.last_seq()
        # With only --limit, the useful N are the latest ones; with --since-seq, the
        # next N (so a reader can page forward).
        latest = limit is not None and since_seq == 0
        events = store.read(**filters, after_seq=since_seq, limit=limit, descending=latest)
        if latest:
            events.reverse()
        _print_events(events, as_json)
        if not follow:
            return
        if events and not latest and limit is not None and len(events) == limit:
            cursor = events[-1].seq  # paging forward: go on right after this page
        elif events:
            cursor = max(cursor, events[-1].seq)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                seen = store.wait_for_change(cursor, FOLLOW_WAIT_S)
                if seen == cursor:
                    continue
                new = store.read(**filters, after_seq=cursor)
                _print_events(new, as_json)
                cursor = max(seen, new[-1].seq if new else 0)


def _print_events(events: Sequence[StoredEvent], as_json: bool) -> None:
    for stored in events:
        if as_json:
            click.echo(json.dumps(stored.to_dict(), separators=(",", ":")))
        else:
            click.echo(format_event(stored))


@main.command("reservations")
@click.option("--holder", default=None, help="Only this holder's reservations.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@project_options
def reservations_cmd(app: AppContext, holder: str | None, as_json: bool) -> None:
    """List the active (unexpired) file reservations."""
    with existing_store(app) as store:
        active = store.reservations.active(holder)
    if as_json:
        echo_json([r.to_dict() for r in active])
        return
    if not active:
        click.echo("no active reservations")
        return
    now = int(time.time() * 1000)
    rows = [
        (
            r.id,
            r.holder,
            r.pattern,
            "exclusive" if r.exclusive else "shared",
            f"{max(0, r.expires_at - now) // 1000}s",
            r.bead_id or "-",
            r.reason,
        )
        for r in active
    ]
    header = ("ID", "HOLDER", "PATTERN", "MODE", "EXPIRES IN", "BEAD", "REASON")
    _print_table(header, rows)


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@main.group("db")
def db_group() -> None:
    """Maintain the project's event store."""


@db_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@project_options
def db_check(app: AppContext, as_json: bool) -> None:
    """Check the store (SQLite's integrity check; PostgreSQL's append-only triggers), that
    seq has no gap, and count the events by type (exit 1 if damaged)."""
    try:
        with existing_store(app) as store:
            report: dict[str, Any] = store.check()
    except StoreCorruptError as e:
        cause = e.__cause__
        detail = str(cause) if cause is not None else "damaged"
        if as_json:
            echo_json({"path": str(app.paths.db), "integrity": detail, "events": None})
        else:
            click.echo(f"store:      {app.paths.db}")
            click.echo(f"integrity:  {detail}")
        raise StoreError(f"store {app.paths.db} is damaged: {detail}") from e
    ok = report["integrity"] == "ok" and report["seq_gap_free"]
    if as_json:
        echo_json(report)
    else:
        click.echo(f"store:      {report['path']} ({report['backend']})")
        click.echo(f"integrity:  {report['integrity']}")
        click.echo(f"events:     {report['events']} (last seq {report['last_seq']})")
        click.echo(f"gap-free:   {'yes' if report['seq_gap_free'] else 'NO'}")
        for etype, count in report["by_type"].items():
            click.echo(f"  {etype:<22} {count}")
    if not ok:
        raise StoreError(f"store {report['path']} failed its check: {report['integrity']}")


@db_group.command("rebuild")
@project_options
def db_rebuild(app: AppContext) -> None:
    """Replay every event into fresh projections (workers, cells, reservations, mail)."""
    with existing_store(app) as store:
        started = time.monotonic()
        store.rebuild()
        seq = store.last_seq()
    click.echo(f"rebuilt projections from {seq} events in {time.monotonic() - started:.2f}s")
