"""Mail between agents and the coordinator: send, inbox, read, ack.

Room: store.

Owns the message API over the messages projection. A message has one sender and one or
more recipients; read and ack state is kept per recipient, so ``read_at``/``acked_at``
in a view are those of the agent asking. Reading or acking twice records nothing new.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack, get_args

from swarm_pool.errors import MailError, NotFoundError
from swarm_pool.store.db import Row
from swarm_pool.store.events import EPIC_ID_RE, MessageAcked, MessageRead, MessageSent
from swarm_pool.store.recorder import Recorder
from swarm_pool.store.rows import RowView, json_list
from swarm_pool.store.schema import dump_json
from swarm_pool.store.tx import Reader

IMPORTANCE: tuple[str, ...] = get_args(MessageSent.model_fields["importance"].annotation)

_SELECT = (
    "SELECT m.*, r.read_at AS read_at, r.acked_at AS acked_at FROM messages m"
    " JOIN message_recipients r ON r.message_id = m.id"
)


@dataclass(frozen=True)
class MessageView(RowView):
    id: str
    sender: str
    to: list[str]
    subject: str
    body: str
    importance: str
    thread_id: str | None
    ack_required: bool
    bead_id: str | None
    epic_id: str | None
    created_at: int
    read_at: int | None
    acked_at: int | None

    DECODE = {"to": json_list, "ack_required": bool}
    COLUMNS = {"to": "recipients"}
    OPTIONAL = frozenset({"read_at", "acked_at"})


def _check_agent(agent: str, what: str = "agent") -> str:
    if not isinstance(agent, str) or not agent.strip():
        raise MailError(f"mail needs a non-empty {what} name")
    return agent.strip()


class SendOptions(TypedDict, total=False):
    """What a message may carry beside sender, recipients, subject and body."""

    importance: str
    thread_id: str | None
    ack_required: bool
    bead_id: str | None
    epic_id: str | None


class Mail:
    def __init__(self, recorder: Recorder) -> None:
        self._rec = recorder

    def send(
        self,
        sender: str,
        to: Sequence[str],
        subject: str,
        body: str = "",
        **options: Unpack[SendOptions],
    ) -> MessageView:
        """Send a message (``options``: importance, thread, ack wanted, bead and epic);
        MailError for a bad sender, recipient, subject, importance or epic id."""
        sender = _check_agent(sender, "sender")
        if isinstance(to, str):
            to = [to]
        recipients = list(dict.fromkeys(_check_agent(a, "recipient") for a in to))
        if not recipients:
            raise MailError("a message needs at least one recipient")
        if not isinstance(subject, str) or not subject.strip():
            raise MailError("a message needs a subject")
        importance = options.get("importance", "normal")
        if importance not in IMPORTANCE:
            raise MailError(f"bad importance {importance!r}: one of {', '.join(IMPORTANCE)}")
        epic_id = options.get("epic_id")
        if epic_id is not None and not EPIC_ID_RE.match(epic_id):
            raise MailError(f"bad epic id {epic_id!r}: epic ids look like bd-<hash>")
        event = MessageSent(
            message_id=f"msg-{uuid.uuid4().hex[:16]}",
            sender=sender,
            to=recipients,
            subject=subject,
            body=body,
            **options,
        )
        with self._rec.writing() as w:
            w.append(event)
        # The view of what was just sent: no read or ack yet (OPTIONAL columns absent).
        row = {
            **event.model_dump(),
            "id": event.message_id,
            "recipients": dump_json(event.to),
            "created_at": event.timestamp,
        }
        return MessageView.from_row(row)

    def inbox(self, agent: str, *, unread_only: bool = False, limit: int = 50) -> list[MessageView]:
        """The agent's messages, newest first."""
        agent = _check_agent(agent)
        if limit < 0:
            raise MailError(f"limit must be >= 0, got {limit}")
        sql = _SELECT + " WHERE r.agent = ?"
        if unread_only:
            sql += " AND r.read_at IS NULL"
        sql += " ORDER BY r.seq DESC LIMIT ?"
        with self._rec.reading() as r:
            rows = r.query(sql, (agent, limit))
        return [MessageView.from_row(row) for row in rows]

    def thread(self, thread_id: str) -> list[MessageView]:
        """Every message of a thread, oldest first (read state not per agent)."""
        with self._rec.reading() as r:
            rows = r.query(
                "SELECT * FROM messages WHERE thread_id = ? OR id = ? ORDER BY seq",
                (thread_id, thread_id),
            )
        return [MessageView.from_row({**row, "read_at": None, "acked_at": None}) for row in rows]

    def read(self, agent: str, message_id: str) -> MessageView:
        """The message, marked read for this agent."""
        return self._mark(agent, message_id, "read_at", MessageRead)

    def ack(self, agent: str, message_id: str) -> MessageView:
        """Acknowledge (and so also read) the message for this agent."""
        return self._mark(agent, message_id, "acked_at", MessageAcked)

    def _mark(
        self,
        agent: str,
        message_id: str,
        column: str,
        make: type[MessageRead] | type[MessageAcked],
    ) -> MessageView:
        """Record ``make`` for this agent unless its ``column`` is set already (reading
        or acking twice records nothing new)."""
        agent = _check_agent(agent)
        with self._rec.writing() as w:
            row = _get(w, agent, message_id)
            if row[column] is None:
                w.append(make(message_id=message_id, agent=agent))
                row = _get(w, agent, message_id)
        return MessageView.from_row(row)


def _get(r: Reader, agent: str, message_id: str) -> Row:
    row = r.query_one(_SELECT + " WHERE m.id = ? AND r.agent = ?", (message_id, agent))
    if row is not None:
        return row
    if r.query_one("SELECT 1 AS x FROM messages WHERE id = ?", (message_id,)) is None:
        raise NotFoundError(f"message {message_id} does not exist")
    raise MailError(f"message {message_id} is not addressed to {agent}")
