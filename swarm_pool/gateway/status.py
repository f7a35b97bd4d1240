"""The pool's session statuses, kept from the instances' event streams.

Room: gateway.

It owns what answers ``GET /session/status`` without asking any instance: per instance
and per directory (OpenCode keeps the map per directory: an idle session is absent, a
busy or retrying one maps to its status object), fed by the ``session.status`` and
``session.idle`` events of that instance's ``/global/event`` stream. An event only
counts while the stream is connected: each (re)connect starts a new epoch and empties
the instance's maps, since events may have been missed while it was down. A directory
of a connected instance is *synced* once a snapshot (one ``GET /session/status`` of that
directory, fetched by the caller after the stream connected) has been applied; from then
on the map is current up to the events not read yet. A snapshot never overrides a
session an event of the same epoch already set, because that event is newer or equal;
an event read after the snapshot overrides it, because events of one stream come in
order and every status change sends one. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Instance:
    epoch: int = 0
    live: bool = False
    maps: dict[str, dict[str, Any]] = field(default_factory=dict)  # directory -> map
    synced: set[str] = field(default_factory=set)  # directories with a snapshot applied
    touched: set[tuple[str, str]] = field(default_factory=set)  # (directory, session)


class StatusBoard:
    def __init__(self) -> None:
        self._instances: dict[str, _Instance] = {}

    def _of(self, instance: str) -> _Instance:
        found = self._instances.get(instance)
        if found is None:
            found = self._instances[instance] = _Instance()
        return found

    # --- fed by the event reader -----------------------------------------------------

    def connected(self, instance: str) -> None:
        """The instance's event stream is open: a new epoch, nothing known yet."""
        old = self._of(instance)
        self._instances[instance] = _Instance(epoch=old.epoch + 1, live=True)

    def lost(self, instance: str) -> None:
        """The stream ended: nothing the maps say can be trusted until it is back."""
        old = self._of(instance)
        self._instances[instance] = _Instance(epoch=old.epoch + 1, live=False)

    def record(self, instance: str, directory: str, session_id: str, status: Any) -> None:
        """One ``session.status`` (or ``session.idle``: status ``{"type": "idle"}``)."""
        inst = self._of(instance)
        if not inst.live:
            return
        states = inst.maps.setdefault(directory, {})
        if isinstance(status, dict) and status.get("type") != "idle":
            states[session_id] = status
        else:
            states.pop(session_id, None)
        inst.touched.add((directory, session_id))

    # --- read by the request handler -------------------------------------------------

    def live(self, instance: str) -> bool:
        return self._of(instance).live

    def epoch(self, instance: str) -> int:
        return self._of(instance).epoch

    def synced(self, instance: str, directory: str) -> bool:
        inst = self._of(instance)
        return inst.live and directory in inst.synced

    def seen(self, instance: str, directory: str) -> bool:
        """Whether the instance sent a status event for ``directory`` in this epoch."""
        return directory in self._of(instance).maps

    def apply_snapshot(
        self, instance: str, directory: str, epoch: int, snapshot: dict[str, Any]
    ) -> bool:
        """Fill ``directory`` from a fetched status map; False (ignored) when the stream
        reconnected since the fetch began, because then the snapshot may predate events
        that the new epoch no longer holds."""
        inst = self._of(instance)
        if not inst.live or inst.epoch != epoch:
            return False
        states = inst.maps.setdefault(directory, {})
        for session_id, status in snapshot.items():
            fresh = (directory, session_id) not in inst.touched
            if fresh and isinstance(status, dict) and status.get("type") != "idle":
                states[session_id] = status
        inst.synced.add(directory)
        return True

    def statuses(self, instance: str, directory: str) -> dict[str, Any]:
        return self._of(instance).maps.get(directory, {})
