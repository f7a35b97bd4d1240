"""The pulse: every message of an instance's event stream is a sign of life, and its
session statuses count the busy sessions; a broken stream is reopened."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from swarm_pool.errors import OpenCodeError
from swarm_pool.pool import pulse as pulse_mod
from swarm_pool.pool.pulse import Pulse
from tests.support import wait_for


def status(session: str, kind: str) -> str:
    props = {"sessionID": session, "status": {"type": kind}}
    return json.dumps(
        {"directory": "/w", "payload": {"type": "session.status", "properties": props}}
    )


def idle(session: str) -> str:
    return json.dumps({"type": "session.idle", "properties": {"sessionID": session}})


HEARTBEAT = json.dumps({"payload": {"type": "server.heartbeat", "properties": {}}})


def test_messages_are_life_and_statuses_count_busy_sessions() -> None:
    messages = [HEARTBEAT, status("a", "busy"), status("b", "busy"), status("c", "retry")]
    messages += [status("a", "idle"), idle("c"), "not json", status("b", "busy")]
    release = threading.Event()

    def stream() -> Iterator[str]:
        yield from messages
        release.wait(5)

    lives: list[int] = []
    p = Pulse("oc-1", stream, lambda: lives.append(1))
    assert p.busy is None  # nothing heard yet: unknown, not idle
    p.start()
    try:
        wait_for(lambda: len(lives) == len(messages), 5)
        assert p.busy == 1  # only b is still busy
    finally:
        p.stop()
        release.set()


def test_after_a_break_the_stream_is_life_but_the_count_is_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pulse_mod, "REOPEN_S", 0.01)
    opened: list[int] = []
    release = threading.Event()

    def stream() -> Iterator[str]:
        opened.append(1)
        if len(opened) == 1:
            yield status("a", "busy")
            raise OpenCodeError("stream broke")  # reopened after a pause
        yield HEARTBEAT
        yield status("b", "busy")
        release.wait(5)

    lives: list[int] = []
    p = Pulse("oc-1", stream, lambda: lives.append(1)).start()
    try:
        wait_for(lambda: len(opened) == 2 and len(lives) == 3, 5)
        # "a" may have gone idle during the gap: the count cannot be trusted any more.
        assert p.busy is None
    finally:
        p.stop()
        release.set()


def test_stop_ends_the_reader_without_counting_more_life() -> None:
    gate = threading.Event()
    lives: list[int] = []

    def stream() -> Iterator[str]:
        gate.wait(5)
        yield HEARTBEAT

    p = Pulse("oc-1", stream, lambda: lives.append(1)).start()
    p.stop()
    gate.set()
    wait_for(lambda: not p._thread.is_alive(), 5)
    assert lives == []
