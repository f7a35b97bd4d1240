"""The gateway's WebSocket door without OpenCode: only OpenCode's PTY connections pass,
and only with the gateway's password or a ``ticket`` (the real proxying, frames and the
ticket check by the instance, is in test_gateway_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from swarm_pool.config import Config
from swarm_pool.gateway.app import Gateway, build_app
from swarm_pool.gateway.upstreams import basic_auth
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import ChildRecord, PoolState, write_state


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    paths = ProjectPaths(tmp_path).ensure()
    state = PoolState(
        project_root=str(tmp_path),
        gateway_password="gw",
        # Nothing listens there: a connection that gets past the door fails upstream.
        instances=[ChildRecord(name="oc-1", port=1, state="ready", password="p")],
    )
    write_state(paths.state_file, state)
    gateway = Gateway(paths, Config())
    assert gateway.view.refresh()
    return TestClient(build_app(gateway))  # no lifespan: no event readers


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/pty/pty_1/connect", {}),  # no password, no ticket
        ("/pty/pty_1/connect", {"authorization": basic_auth("p")}),  # an instance's
        ("/event", {"authorization": basic_auth("gw")}),  # not a WebSocket route
        ("/no/such/route", {"authorization": basic_auth("gw")}),
    ],
)
def test_refused_before_any_upstream(
    client: TestClient, path: str, headers: dict[str, str]
) -> None:
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect(path, headers=headers),
    ):
        pass
    assert refused.value.code == 1008


@pytest.mark.parametrize(
    ("query", "headers"),
    [("", {"authorization": basic_auth("gw")}), ("?ticket=t", {})],
)
def test_let_through_to_an_instance_that_is_not_there(
    client: TestClient, query: str, headers: dict[str, str]
) -> None:
    # Past the door, the dead upstream closes it with 1011, not the door's 1008.
    url = f"/pty/pty_1/connect{query}"
    with (
        pytest.raises(WebSocketDisconnect) as failed,
        client.websocket_connect(url, headers=headers),
    ):
        pass
    assert failed.value.code == 1011
