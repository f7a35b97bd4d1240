"""The pulse: every message of an instance's event stream is a sign of life, and its
session statuses count the busy sessions; a broken stream is reopened."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from swarm_pool.errors import OpenCodeError
from swarm_pool.pool import pulse as pulse_mod
from swarm_pool.pool.pulse import Pulse, Pulses
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


class Recorder:
    """A subscriber that writes down what it hears."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    def opened(self) -> None:
        self.heard.append("opened")

    def message(self, data: str) -> None:
        self.heard.append(data)

    def closed(self) -> None:
        self.heard.append("closed")


class Broken(Recorder):
    def message(self, data: str) -> None:
        raise RuntimeError("a subscriber's bug")


def test_one_stream_fans_out_to_every_subscriber_even_one_that_joins_late() -> None:
    release = threading.Event()
    second = threading.Event()

    def stream() -> Iterator[str]:
        yield HEARTBEAT
        second.wait(5)
        yield status("a", "busy")
        release.wait(5)

    early, late = Recorder(), Recorder()
    p = Pulse("oc-1", stream)
    p.subscribe(Broken())  # its failure reaches nobody else
    p.subscribe(early)
    p.start()
    try:
        wait_for(lambda: early.heard == ["opened", HEARTBEAT], 5)
        p.subscribe(late)  # the stream is up: told so at once
        assert late.heard == ["opened"]
        second.set()
        wait_for(lambda: late.heard == ["opened", status("a", "busy")], 5)
        assert early.heard == ["opened", HEARTBEAT, status("a", "busy")]
        assert p.busy == 1 and p.opens == 1
    finally:
        p.stop()
        release.set()
    assert early.heard[-1] == "closed" and late.heard[-1] == "closed"


def test_a_name_subscriber_follows_the_pulse_that_replaces_another() -> None:
    release = threading.Event()

    def stream() -> Iterator[str]:
        yield HEARTBEAT
        release.wait(5)

    pulses = Pulses()
    listener = Recorder()
    pulses.subscribe("oc-1", listener)  # before any pulse: nothing heard yet
    first = Pulse("oc-1", stream)
    pulses.publish(first)
    first.start()
    try:
        wait_for(lambda: listener.heard == ["opened", HEARTBEAT], 5)
        first.stop()
        pulses.withdraw(first)
        assert listener.heard[-1] == "closed" and pulses.get("oc-1") is None
        second = Pulse("oc-1", stream)
        pulses.publish(second)
        second.start()
        wait_for(lambda: listener.heard.count("opened") == 2, 5)
        pulses.unsubscribe("oc-1", listener)
        assert listener.heard[-1] == "closed"
        second.stop()
    finally:
        release.set()


def test_subscribing_twice_by_name_is_once_so_one_unsubscribe_ends_it() -> None:
    pulses = Pulses()
    listener = Recorder()
    pulses.subscribe("oc-1", listener)
    pulses.subscribe("oc-1", listener)
    pulses.unsubscribe("oc-1", listener)
    # Published after the unsubscribe: the listener must not be subscribed again.
    pulse = Pulse("oc-1", lambda: iter([HEARTBEAT]))
    pulses.publish(pulse)
    assert listener not in pulse._subscribers
