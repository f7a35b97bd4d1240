"""Gateway parts without OpenCode: routing table, placement, merges, event filtering,
the session map in the store, and auth/health of the app over a state file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from swarm_pool.config import Config
from swarm_pool.errors import InstanceUnavailableError
from swarm_pool.gateway.app import Gateway, build_app
from swarm_pool.gateway.events import BusEvent, Subscriber
from swarm_pool.gateway.merge import merge, merge_health
from swarm_pool.gateway.placement import Placement, resolve_directory
from swarm_pool.gateway.table import RouteKind, RoutingTable
from swarm_pool.gateway.upstreams import Upstream, basic_auth
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import ChildRecord, PoolState, write_state
from swarm_pool.store import open_project_store

ROOT = Path(__file__).resolve().parent.parent
SPEC = Path("/work/shared/reference/opencode-1.18.33-openapi.json")


# --- routing table ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def table() -> RoutingTable:
    return RoutingTable.load()


@pytest.mark.parametrize(
    ("method", "path", "kind", "operation"),
    [
        ("POST", "/session", RouteKind.CREATE_SESSION, "session.create"),
        ("GET", "/session", RouteKind.MERGED_LIST, "session.list"),
        ("GET", "/session/status", RouteKind.SESSION_STATUS, "session.status"),
        ("GET", "/session/ses_1", RouteKind.SESSION, "session.get"),
        ("POST", "/session/ses_1/prompt_async", RouteKind.SESSION, "session.prompt_async"),
        ("POST", "/session/ses_1/permissions/per_1", RouteKind.SESSION, "permission.respond"),
        ("POST", "/api/session/ses_1/prompt", RouteKind.SESSION, "v2.session.prompt"),
        ("POST", "/permission/per_1/reply", RouteKind.REQUEST_REPLY, "permission.reply"),
        ("POST", "/question/que_1/reject", RouteKind.REQUEST_REPLY, "question.reject"),
        ("GET", "/event", RouteKind.EVENTS, "event.subscribe"),
        ("GET", "/global/event", RouteKind.GLOBAL_EVENTS, "global.event"),
        ("GET", "/global/health", RouteKind.HEALTH, "global.health"),
        ("GET", "/file/content", RouteKind.DIRECTORY, "file.read"),
        ("GET", "/config", RouteKind.DIRECTORY, "config.get"),
        ("PUT", "/auth/anthropic", RouteKind.ANY, "auth.set"),
        ("GET", "/api/fs/read/a/b.txt", RouteKind.ANY, "v2.fs.read"),
    ],
)
def test_routes_are_classified_from_the_description(
    table: RoutingTable, method: str, path: str, kind: RouteKind, operation: str
) -> None:
    m = table.match(method, path)
    assert m.route is not None and m.route.operation == operation
    assert m.kind is kind


def test_every_described_route_matches_itself_and_unknown_paths_go_anywhere(
    table: RoutingTable,
) -> None:
    assert len(table.routes) > 150
    for route in table.routes:
        concrete = route.path.replace("*", "x/y")
        for param in route.params:
            concrete = concrete.replace("{" + param + "}", f"v_{param}")
        m = table.match(route.method, concrete)
        assert m.route is not None and m.route.path == route.path, route
    assert table.match("GET", "/not/an/opencode/route").route is None
    assert table.match("GET", "/session/ses_1").path_params == {"sessionID": "ses_1"}


@pytest.mark.skipif(not SPEC.exists(), reason="the OpenAPI reference is not on this machine")
def test_shipped_routes_are_the_reference_description() -> None:
    spec = json.loads(SPEC.read_text())
    described = {
        (m.upper(), p) for p, ops in spec["paths"].items() for m in ops if m != "parameters"
    }
    shipped = {(r.method, r.path) for r in RoutingTable.load().routes}
    assert shipped == described


# --- placement -------------------------------------------------------------------------


def _ups(*states: str, draining: tuple[str, ...] = ()) -> list[Upstream]:
    return [
        Upstream(f"oc-{i}", f"http://127.0.0.1:{47000 + i}", s, f"oc-{i}" in draining)
        for i, s in enumerate(states, 1)
    ]


def test_new_directories_spread_and_a_directory_stays_on_its_home() -> None:
    p = Placement(max_sessions=4)
    ups = _ups("ready", "ready")
    first = p.place_new("/a", ups)
    p.learn("s1", first.name, "/a")
    second = p.place_new("/b", ups)
    p.learn("s2", second.name, "/b")
    assert {first.name, second.name} == {"oc-1", "oc-2"}
    assert p.place_new("/a", ups).name == first.name
    assert p.place_new("/b", ups).name == second.name


def test_a_home_that_is_not_ready_or_draining_is_replaced() -> None:
    p = Placement(max_sessions=4)
    p.learn("s1", "oc-1", "/a")
    assert p.place_new("/a", _ups("backoff", "ready")).name == "oc-2"
    assert p.place_new("/a", _ups("ready", "ready", draining=("oc-1",))).name == "oc-2"
    with pytest.raises(InstanceUnavailableError):
        p.place_new("/a", _ups("starting", "fatal"))


def test_least_busy_first_and_a_full_pool_still_places() -> None:
    p = Placement(max_sessions=1)
    for sid in ("x", "y"):
        p.set_status("oc-1", sid, "busy")
    p.set_status("oc-2", "z", "busy")
    assert p.place_new("/new", _ups("ready", "ready")).name == "oc-2"
    p.set_status("oc-2", "z", "idle")
    assert p.busy_counts() == {"oc-1": 2, "oc-2": 0}


def test_learn_reports_only_changes() -> None:
    p = Placement(max_sessions=4)
    assert p.learn("s", "oc-1", "/a")
    assert not p.learn("s", "oc-1", "/a")
    assert not p.learn("s", "oc-1")
    assert p.learn("s", "oc-2")
    assert resolve_directory(None, "/root") == "/root"
    assert resolve_directory("/x/../y/", "/root") == "/y"
    assert resolve_directory("%2Ftmp%2Fd%201", "/root") == "/tmp/d 1"  # as the SDK sends it


# --- merges ----------------------------------------------------------------------------


def test_session_lists_merge_newest_first_deduplicated_and_limited() -> None:
    a = [{"id": "s1", "time": {"updated": 5}}, {"id": "s2", "time": {"updated": 1}}]
    b = [{"id": "s3", "time": {"updated": 9}}, {"id": "s1", "time": {"updated": 5}}]
    merged = merge("session.list", [a, b], None)
    assert [s["id"] for s in merged] == ["s3", "s1", "s2"]
    assert [s["id"] for s in merge("session.list", [a, b], 2)] == ["s3", "s1"]
    status = merge("session.status", [{"s1": {"type": "busy"}}, {"s3": {"type": "retry"}}], None)
    assert status == {"s1": {"type": "busy"}, "s3": {"type": "retry"}}
    assert merge_health([{"healthy": True, "version": "1.18.33"}, None]) == {
        "healthy": True,
        "version": "1.18.33",
    }
    assert merge_health([]) is None


# --- event filtering -------------------------------------------------------------------


def _event(directory: str, etype: str) -> BusEvent:
    envelope = {"directory": directory, "payload": {"type": etype, "properties": {"n": 1}}}
    return BusEvent("oc-1", directory, etype, json.dumps(envelope), envelope)


def test_subscribers_see_their_directory_as_opencode_filters_it() -> None:
    async def run() -> tuple[list[str | None], list[str | None]]:
        one, everything = Subscriber("/a"), Subscriber(None)
        for ev in (_event("/a", "session.idle"), _event("/b", "session.idle")):
            one.offer(ev)
            everything.offer(ev)
        one.offer(_event("/a", "sync"))
        a = [one.queue.get_nowait() for _ in range(one.queue.qsize())]
        g = [everything.queue.get_nowait() for _ in range(everything.queue.qsize())]
        return a, g

    a, g = asyncio.run(run())
    assert a == ['{"type":"session.idle","properties":{"n":1}}']
    assert [json.loads(t or "")["directory"] for t in g] == ["/a", "/b"]


# --- the session map in the store ------------------------------------------------------


def test_session_map_records_changes_once_and_survives_rebuild(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path)
    with open_project_store(paths) as store:
        assert store.sessions.route("ses_1", "oc-1", directory="/a", origin="gateway")
        assert not store.sessions.route("ses_1", "oc-1", directory="/a")
        assert not store.sessions.route("ses_1", "oc-1")
        assert store.sessions.route("ses_1", "oc-2")
        place = store.sessions.get("ses_1")
        assert place is not None and (place.instance, place.directory) == ("oc-2", "/a")
        before = store.projections_snapshot()["session_instances"]
        store.rebuild()
        assert store.projections_snapshot()["session_instances"] == before
        assert len(store.read(types=["session_routed"])) == 2


# --- the app over a state file, no instance ready --------------------------------------


def test_auth_and_health_without_ready_instances(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path).ensure()
    state = PoolState(
        project_root=str(tmp_path),
        gateway_password="gw-secret",
        instances=[ChildRecord(name="oc-1", port=47001, state="backoff")],
    )
    write_state(paths.state_file, state)
    gateway = Gateway(paths, Config())
    with TestClient(build_app(gateway)) as client:
        assert client.get("/global/health").status_code == 401
        bad = {"authorization": basic_auth("instances-secret")}
        assert client.get("/global/health", headers=bad).status_code == 401
        good = {"authorization": basic_auth("gw-secret")}
        resp = client.get("/global/health", headers=good)
        assert resp.status_code == 503
        assert resp.headers["retry-after"] == "2"
        gateway.placement.learn("ses_1", "oc-1", "/a")
        resp = client.get("/session/ses_1/message", headers=good)
        assert resp.status_code == 503 and "restarting" in resp.json()["data"]["message"]
