"""The recorder protocol: what the store needs from a database backend, and
the values that cross it.

Room: store.

Owns ``Recorder`` (append, transactions, reads, waiting for a change, rebuild and
check), ``EventFilter`` (the one description of which events a read wants, and its SQL)
and ``StoredEvent`` (an event as recorded, with its seq). The backends are siblings
below the facades and beside this protocol: ``sqlite.py`` and ``postgres.py``, which
share their append path, replay and summary through ``recording.py``. They import this
module; it imports neither.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

from swarm_pool.errors import EventValidationError, StoreError
from swarm_pool.store.dialect import Backend
from swarm_pool.store.events import EVENT_TYPES, Event
from swarm_pool.store.tx import Reader, Writer


@dataclass(frozen=True)
class StoredEvent:
    """An event as recorded: its sequence number plus the typed event."""

    seq: int
    type: str
    timestamp: int
    event: Event

    def to_dict(self) -> dict[str, Any]:
        data = self.event.model_dump(mode="json")
        return {"seq": self.seq, **data}


@dataclass(frozen=True)
class EventFilter:
    """Which events a read wants: every filter given must match (``bead_id`` also
    matches cell events of that id), by seq, newest first if ``descending``.
    ``types`` may be one type's name."""

    types: Iterable[str] | None = None
    epic_id: str | None = None
    bead_id: str | None = None
    session_id: str | None = None
    after_seq: int = 0
    limit: int | None = None
    descending: bool = False

    def __post_init__(self) -> None:
        # Kept as a sorted tuple: a generator would be used up by the first query, and a
        # list would make the value unhashable. A bare string is one type, not an
        # iterable of one-letter types. An unknown type is refused here, once.
        if self.types is None:
            return
        wanted = (self.types,) if isinstance(self.types, str) else self.types
        types = tuple(sorted(set(wanted)))
        unknown = [t for t in types if t not in EVENT_TYPES]
        if unknown:
            raise EventValidationError(f"unknown event type {unknown[0]!r}")
        object.__setattr__(self, "types", types)

    def sql(self) -> tuple[str, list[Any]] | None:
        """The query (and its parameters) over the events table, in the shared dialect;
        None if nothing can match."""
        where = ["seq > ?"]
        params: list[Any] = [self.after_seq]
        if self.types is not None:
            wanted = list(self.types)
            if not wanted:
                return None
            where.append(f"type IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        for column in ("epic_id", "bead_id", "session_id"):
            value = getattr(self, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT seq, type, timestamp, data FROM events WHERE {' AND '.join(where)}"
        sql += " ORDER BY seq DESC" if self.descending else " ORDER BY seq"
        if self.limit is not None:
            if self.limit < 0:
                raise StoreError(f"limit must be >= 0, got {self.limit}")
            sql += " LIMIT ?"
            params.append(self.limit)
        return sql, params


class ReadFilters(TypedDict, total=False):
    """``Store.read``'s keywords, typed: the fields of an ``EventFilter``."""

    types: Iterable[str] | None
    epic_id: str | None
    bead_id: str | None
    session_id: str | None
    after_seq: int
    limit: int | None
    descending: bool


class Recorder(Protocol):
    """What the store needs from a database backend."""

    backend: Backend

    def append_one(self, event: Event) -> int:
        """Record one event (and its projection changes) in a transaction of its own."""
        ...

    def writing(self) -> AbstractContextManager[Writer]:
        """One atomic write transaction, serialized with every other writer."""
        ...

    def reading(self) -> AbstractContextManager[Reader]:
        """A consistent read snapshot."""
        ...

    def events(self, where: EventFilter) -> list[StoredEvent]: ...

    def last_seq(self) -> int: ...

    def wait_for_change(self, after_seq: int, timeout: float) -> int:
        """Return as soon as ``last_seq() > after_seq``, or at the timeout; returns the
        current ``last_seq`` either way."""
        ...

    @property
    def location(self) -> str:
        """Where the store lives, for messages (a path, or a URL without password)."""
        ...

    def rebuild(self) -> None: ...

    def check(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
