"""The event-fed ``GET /session/status`` without OpenCode: the status board's epochs and
snapshots, and the gateway answering from it (upstreams are an ``httpx.MockTransport``
that counts what it is asked; the real thing is in test_gateway_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from starlette.testclient import TestClient

from swarm_pool.config import Config
from swarm_pool.gateway.app import Gateway, build_app
from swarm_pool.gateway.status import StatusBoard
from swarm_pool.gateway.upstreams import basic_auth
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import ChildRecord, PoolState, write_state

BUSY = {"type": "busy"}
RETRY = {"type": "retry", "attempt": 1, "message": "overloaded", "next": 1}


def test_events_count_only_while_connected_and_idle_removes() -> None:
    board = StatusBoard()
    board.record("oc-1", "/d", "s1", BUSY)  # no stream yet: unknown, not trusted
    assert board.statuses("oc-1", "/d") == {} and not board.live("oc-1")
    board.connected("oc-1")
    board.record("oc-1", "/d", "s1", BUSY)
    board.record("oc-1", "/d", "s2", RETRY)
    board.record("oc-1", "/e", "s3", BUSY)
    assert board.statuses("oc-1", "/d") == {"s1": BUSY, "s2": RETRY}
    board.record("oc-1", "/d", "s1", {"type": "idle"})
    assert board.statuses("oc-1", "/d") == {"s2": RETRY}
    assert board.seen("oc-1", "/e") and not board.seen("oc-1", "/f")
    assert not board.synced("oc-1", "/d")  # events alone do not cover what came before
    board.lost("oc-1")
    assert not board.live("oc-1") and board.statuses("oc-1", "/d") == {}


def test_a_snapshot_fills_only_what_no_event_has_set_since_the_connect() -> None:
    board = StatusBoard()
    board.connected("oc-1")
    epoch = board.epoch("oc-1")
    # Read while the snapshot was in flight: these are newer than (or as new as) it.
    board.record("oc-1", "/d", "went-idle", {"type": "idle"})
    board.record("oc-1", "/d", "went-busy", BUSY)
    snapshot = {"went-idle": BUSY, "old-busy": RETRY, "went-busy": RETRY, "odd": {"type": "idle"}}
    assert board.apply_snapshot("oc-1", "/d", epoch, snapshot)
    assert board.synced("oc-1", "/d")
    assert board.statuses("oc-1", "/d") == {"old-busy": RETRY, "went-busy": BUSY}
    # Events read after the snapshot override it.
    board.record("oc-1", "/d", "old-busy", {"type": "idle"})
    assert board.statuses("oc-1", "/d") == {"went-busy": BUSY}


def test_a_snapshot_begun_before_a_reconnect_is_dropped() -> None:
    board = StatusBoard()
    board.connected("oc-1")
    epoch = board.epoch("oc-1")
    board.lost("oc-1")
    board.connected("oc-1")
    assert not board.apply_snapshot("oc-1", "/d", epoch, {"s1": BUSY})
    assert not board.synced("oc-1", "/d") and board.statuses("oc-1", "/d") == {}


class Upstreams:
    """Two stand-in instances answering ``GET /session/status`` from ``answers``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.asked: list[tuple[str, str]] = []  # (port, directory)
        self.answers: dict[str, dict[str, Any]] = {"47001": {}, "47002": {}}
        self.during_fetch: list[tuple[str, str, str, Any]] = []  # events to deliver

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/session/status"
        port = str(request.url.port)
        self.asked.append((port, request.url.params["directory"]))
        # A fault hook for the race: events read while this snapshot is in flight.
        for instance, directory, sid, status in self.during_fetch:
            self.gateway.hub.statuses.record(instance, directory, sid, status)
        self.during_fetch.clear()
        return httpx.Response(200, json=self.answers[port])


def _gateway(tmp_path: Path) -> tuple[Gateway, Upstreams, dict[str, str]]:
    paths = ProjectPaths(tmp_path).ensure()
    instances = [
        ChildRecord(name=f"oc-{i}", port=47000 + i, state="ready", password=f"p{i}") for i in (1, 2)
    ]
    write_state(
        paths.state_file,
        PoolState(project_root=str(tmp_path), gateway_password="gw", instances=instances),
    )
    gateway = Gateway(paths, Config())
    assert gateway.view.refresh() and len(gateway.view.ready()) == 2
    ups = Upstreams(gateway)
    gateway.view.client = httpx.AsyncClient(transport=httpx.MockTransport(ups.handle))
    return gateway, ups, {"authorization": basic_auth("gw")}


def test_status_is_fetched_once_per_directory_then_served_from_events(tmp_path: Path) -> None:
    gateway, ups, auth = _gateway(tmp_path)
    board = gateway.hub.statuses
    board.connected("oc-1")
    board.connected("oc-2")
    gateway.placement.learn("s1", "oc-1", "/d")
    gateway.placement.learn("s9", "oc-2", "/other")
    ups.answers["47001"] = {"s1": BUSY}
    # s2 turns busy while the snapshot is in flight, and the snapshot does not show it.
    ups.during_fetch.append(("oc-1", "/d", "s2", BUSY))
    client = TestClient(build_app(gateway))  # no lifespan: no event readers, no poller

    def status() -> Any:
        resp = client.get("/session/status", params={"directory": "/d"}, headers=auth)
        assert resp.status_code == 200
        return resp.json()

    assert status() == {"s1": BUSY, "s2": BUSY}
    # oc-2 holds no session of /d: not asked (and not made to set /d up).
    assert ups.asked == [("47001", "/d")]
    ups.answers["47001"] = {"stale": BUSY}  # asking again would show this
    assert status() == {"s1": BUSY, "s2": BUSY}
    board.record("oc-1", "/d", "s1", {"type": "idle"})
    board.record("oc-2", "/d", "s3", RETRY)  # a status event makes oc-2 hold /d
    ups.answers["47002"] = {"s3": BUSY}
    assert status() == {"s2": BUSY, "s3": RETRY}  # s3: the event is newer than oc-2's map
    assert ups.asked == [("47001", "/d"), ("47002", "/d")]
    assert status() == {"s2": BUSY, "s3": RETRY}
    assert len(ups.asked) == 2


def test_an_instance_whose_stream_is_down_is_asked_every_time(tmp_path: Path) -> None:
    gateway, ups, auth = _gateway(tmp_path)
    gateway.placement.learn("s1", "oc-1", "/d")
    ups.answers["47001"] = {"s1": BUSY}
    client = TestClient(build_app(gateway))
    for _ in range(2):
        resp = client.get("/session/status", headers={**auth, "x-opencode-directory": "/d"})
        assert resp.json() == {"s1": BUSY}
    assert ups.asked == [("47001", "/d")] * 2
    assert json.loads(client.get("/session/status", headers=auth).text) == {}  # cwd: no sessions
