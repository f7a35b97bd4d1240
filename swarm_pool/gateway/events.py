"""The event merge: one upstream ``/global/event`` stream per ready instance, fanned out
to every client of the gateway's ``/event`` and ``/global/event``.

Room: gateway.

It owns the upstream SSE readers (one task per instance: connect, reconcile the
instance's session list into the session map, read, reconnect with capped backoff while
the instance restarts), what the gateway learns from the events (sessions created on an
instance directly or by swarm-pool's workers, busy/idle, permission and question
requests), and the subscribers. OpenCode's ``/event`` is its bus for one directory (the
request's ``directory``, else the server's cwd) and ``/global/event`` is every
directory's event wrapped as ``{"directory", "payload"}``; the gateway reads the global
form from each instance and gives an ``/event`` subscriber the ``payload`` of events
whose ``directory`` is its own (bus events only: the global bus's ``sync`` payloads
never reach an instance's ``/event``), and a ``/global/event`` subscriber the upstream text as
it came. The instances' own ``server.connected``/``server.heartbeat`` are dropped: each
merged stream sends its own. A subscriber that cannot keep up is closed (its client
reconnects) rather than buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from swarm_pool.gateway.placement import Placement
from swarm_pool.gateway.status import StatusBoard
from swarm_pool.gateway.upstreams import PoolView, Upstream

log = logging.getLogger("swarm_pool.gateway")

QUEUE_MAX = 4096
_OWN_EVENTS = frozenset({"server.connected", "server.heartbeat"})
# Sync-log payloads travel on the global bus only; an instance's /event never shows them.
GLOBAL_ONLY = frozenset({"sync"})
LearnFn = Callable[[str, str, str], None]  # session_id, instance, directory


@dataclass
class BusEvent:
    """One upstream event: the text as received and its parsed envelope."""

    instance: str
    directory: str
    type: str
    text: str
    envelope: dict[str, Any]
    _payload_text: str | None = field(default=None, repr=False)

    def payload_text(self) -> str:
        if self._payload_text is None:
            self._payload_text = json.dumps(
                self.envelope.get("payload"), separators=(",", ":"), ensure_ascii=False
            )
        return self._payload_text


class Subscriber:
    """One client stream: ``directory`` None for /global/event."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_MAX)

    def offer(self, event: BusEvent) -> None:
        if self.directory is None:
            text = event.text
        elif event.directory == self.directory and event.type not in GLOBAL_ONLY:
            text = event.payload_text()
        else:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            log.warning("closing a slow event subscriber (%d events queued)", QUEUE_MAX)
            self.close()

    def close(self) -> None:
        # Make room for the end marker even when full.
        while self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class EventHub:
    def __init__(
        self,
        view: PoolView,
        placement: Placement,
        learn: LearnFn,
        *,
        reconnect_max_s: float = 2.0,
    ) -> None:
        self.view = view
        self.placement = placement
        self._learn = learn
        self.reconnect_max_s = reconnect_max_s
        self.subscribers: set[Subscriber] = set()
        self.statuses = StatusBoard()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.connected: set[str] = set()

    def subscribe(self, directory: str | None) -> Subscriber:
        sub = Subscriber(directory)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def sync(self) -> None:
        """One reader per instance of the pool (started, or ended for removed ones)."""
        for name in list(self._tasks):
            if name not in self.view.instances:
                self._tasks.pop(name).cancel()
                self.connected.discard(name)
                # Not forgotten: its epoch keeps counting, so a snapshot still in
                # flight cannot land on a new instance of the same name.
                self.statuses.lost(name)
        for name in self.view.instances:
            task = self._tasks.get(name)
            if task is None or task.done():
                self._tasks[name] = asyncio.create_task(self._read(name), name=f"events-{name}")

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for sub in list(self.subscribers):
            sub.close()

    # --- upstream --------------------------------------------------------------------

    async def _read(self, name: str) -> None:
        delay = 0.1
        while True:
            up = self.view.instances.get(name)
            if up is None:
                return
            if not up.ready:
                self.connected.discard(name)
                await asyncio.sleep(0.1)
                continue
            try:
                await self._stream(up)
                delay = 0.1
            except (httpx.HTTPError, SSEError, ValueError) as e:
                log.info("%s: event stream lost (%s); reconnecting", name, e)
            finally:
                self.connected.discard(name)
                self.statuses.lost(name)
                self.placement.forget_instance_busy(name)
            await asyncio.sleep(delay)
            delay = min(self.reconnect_max_s, delay * 2)

    async def _stream(self, up: Upstream) -> None:
        headers = {"authorization": up.auth}
        async with aconnect_sse(
            self.view.client, "GET", f"{up.url}/global/event", headers=headers
        ) as source:
            source.response.raise_for_status()
            self.connected.add(up.name)
            self.statuses.connected(up.name)
            log.info("%s: event stream connected", up.name)
            # Subscribe first, then list: a session created in between shows in both.
            await self._reconcile(up)
            async for sse in source.aiter_sse():
                if sse.data:
                    self._dispatch(up.name, sse.data)

    async def _reconcile(self, up: Upstream) -> None:
        """Learn the sessions an instance already holds (created while no gateway ran)."""
        resp = await self.view.client.get(
            f"{up.url}/experimental/session", headers={"authorization": up.auth}
        )
        resp.raise_for_status()
        sessions = resp.json()
        if not isinstance(sessions, list):
            return
        for s in sessions:
            if isinstance(s, dict) and isinstance(s.get("id"), str):
                self._note_session(up.name, s["id"], str(s.get("directory") or ""))

    def _note_session(self, instance: str, session_id: str, directory: str) -> None:
        if self.placement.learn(session_id, instance, directory):
            self._learn(session_id, instance, directory)

    def _dispatch(self, instance: str, text: str) -> None:
        try:
            envelope = json.loads(text)
        except ValueError:
            return
        if not isinstance(envelope, dict):
            return
        payload = envelope.get("payload")
        if not isinstance(payload, dict):
            return
        etype = str(payload.get("type", ""))
        if etype in _OWN_EVENTS:
            return
        directory = str(envelope.get("directory") or "")
        props = payload.get("properties")
        if isinstance(props, dict):
            self._observe(instance, etype, props, directory)
        event = BusEvent(instance, directory, etype, text, envelope)
        for sub in list(self.subscribers):
            sub.offer(event)

    def _observe(self, instance: str, etype: str, props: dict[str, Any], directory: str) -> None:
        info = props.get("info")
        if etype.startswith("session.") and isinstance(info, dict):
            sid = info.get("id")
            if isinstance(sid, str):
                self._note_session(instance, sid, str(info.get("directory") or directory))
        sid = props.get("sessionID")
        if isinstance(sid, str) and self.placement.owner.get(sid) != instance:
            self._note_session(instance, sid, "")
        if etype == "session.status" and isinstance(sid, str):
            status = props.get("status")
            kind = status.get("type") if isinstance(status, dict) else None
            if isinstance(kind, str):
                self.placement.set_status(instance, sid, kind)
                self.statuses.record(instance, directory, sid, status)
        elif etype == "session.idle" and isinstance(sid, str):
            self.placement.set_status(instance, sid, "idle")
            self.statuses.record(instance, directory, sid, {"type": "idle"})
        elif etype in ("permission.asked", "question.asked"):
            rid = props.get("id")
            if isinstance(rid, str):
                self.placement.requests[rid] = instance
