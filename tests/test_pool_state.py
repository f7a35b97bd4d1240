"""The state file (0600, atomic), the control socket protocol and the binary lookup."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from swarm_pool.config import Config
from swarm_pool.errors import (
    BinaryNotFoundError,
    IllegalInstanceTransitionError,
    PoolError,
    PoolNotRunningError,
    UnknownInstanceError,
)
from swarm_pool.opencode.binary import PROJECT_INSTALL, find_opencode
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool import control
from swarm_pool.pool.state import (
    GONE,
    SERVING,
    TRANSITIONS,
    ChildRecord,
    InstanceState,
    PoolState,
    check_transition,
    read_state,
    write_state,
)


def sample_state(root: Path) -> PoolState:
    return PoolState(
        project_root=str(root),
        tag="t4g",
        instances=[
            ChildRecord(
                name="oc-1", port=47123, pid=1, create_time=1.0, state="ready", password="s3cret"
            )
        ],
    )


def test_state_file_is_0600_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    old = os.umask(0)  # even a permissive umask must not widen it
    try:
        write_state(path, sample_state(tmp_path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state = read_state(path)
    assert state is not None
    rec = state.child("oc-1")
    assert rec is not None and rec.url == "http://127.0.0.1:47123"
    assert rec.password == "s3cret" and state.tag == "t4g"
    assert not list(tmp_path.glob(".*.tmp"))


def test_state_write_is_atomic_for_concurrent_readers(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    write_state(path, sample_state(tmp_path))
    errors: list[Exception] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                assert read_state(path) is not None
            except Exception as e:
                errors.append(e)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            state = sample_state(tmp_path)
            state.size = i
            write_state(path, state)
    finally:
        done.set()
        thread.join()
    assert errors == []


def test_missing_and_corrupt_state(tmp_path: Path) -> None:
    assert read_state(tmp_path / "nope.json") is None
    bad = tmp_path / "pool.json"
    bad.write_text("{")
    with pytest.raises(PoolError, match="corrupt"):
        read_state(bad)


def test_model_child_url_has_v1() -> None:
    rec = ChildRecord(name="model", kind="model", port=47001)
    assert rec.url == "http://127.0.0.1:47001/v1"


# --- control socket -------------------------------------------------------------------


def test_control_round_trip_and_errors(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: dict[str, Any]) -> Any:
        seen.append(request)
        if request["cmd"] == "restart":
            raise UnknownInstanceError("no instance named 'x'")
        return {"echo": request.get("size")}

    sock = tmp_path / "s.sock"
    server = control.ControlServer(sock, handler)
    server.start()
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert control.call(sock, "scale", size=3) == {"echo": 3}
        with pytest.raises(UnknownInstanceError, match="no instance named 'x'"):
            control.call(sock, "restart", name="x")
        with pytest.raises(PoolError, match="unknown control command"):
            control.call(sock, "format-disk")
    finally:
        server.close()
    assert not sock.exists()
    assert [r["cmd"] for r in seen] == ["scale", "restart"]
    with pytest.raises(PoolNotRunningError):
        control.call(sock, "status", timeout=1)


def test_long_project_paths_get_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    path = control.socket_path_for(ProjectPaths(deep))
    assert len(os.fsencode(path)) <= 100
    assert control.socket_path_for(ProjectPaths(tmp_path)) == tmp_path / ".swarm/supervisor.sock"


# --- binary ---------------------------------------------------------------------------


def fake_binary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 1.18.33\n")
    path.chmod(0o755)
    return path


def test_binary_lookup_order(tmp_path: Path) -> None:
    cfg_bin = fake_binary(tmp_path / "cfg" / "opencode")
    env_bin = fake_binary(tmp_path / "env" / "opencode")
    root = tmp_path / "src"
    pinned = fake_binary(root / PROJECT_INSTALL)
    on_path = fake_binary(tmp_path / "bin" / "opencode")
    config = Config.model_validate({"opencode": {"binary": str(cfg_bin)}})
    env = {"SWARM_POOL_OPENCODE": str(env_bin)}
    search = str(on_path.parent)
    assert find_opencode(config, environ=env, root=root, search_path=search) == cfg_bin
    assert find_opencode(Config(), environ=env, root=root, search_path=search) == env_bin
    assert find_opencode(Config(), environ={}, root=root, search_path=search) == pinned
    pinned.unlink()
    assert find_opencode(Config(), environ={}, root=root, search_path=search) == on_path


def test_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFoundError, match=r"scripts/setup.*opencode-ai@1\.18\.33"):
        find_opencode(Config(), environ={}, root=tmp_path, search_path=str(tmp_path))
    config = Config.model_validate({"opencode": {"binary": str(tmp_path / "nope")}})
    with pytest.raises(BinaryNotFoundError, match=r"opencode\.binary.*nope"):
        find_opencode(config, environ={}, root=tmp_path, search_path=str(tmp_path))


def test_instance_states_serialize_as_before_and_follow_one_table(tmp_path: Path) -> None:
    rec = ChildRecord(name="oc-1", state="unhealthy")
    assert rec.state is InstanceState.UNHEALTHY
    assert rec.model_dump(mode="json")["state"] == "unhealthy"
    assert PoolState(project_root=str(tmp_path)).model_dump(mode="json")["phase"] == "starting"
    assert {s.value for s in InstanceState} == {
        "starting",
        "ready",
        "unhealthy",
        "backoff",
        "fatal",
        "stopped",
    }
    assert {"ready", "unhealthy"} == SERVING and set(InstanceState) - SERVING == GONE
    assert set(TRANSITIONS) == set(InstanceState)
    check_transition(InstanceState.UNHEALTHY, InstanceState.READY)
    check_transition(InstanceState.STOPPED, InstanceState.STOPPED)  # staying is no move
    for old, new in [
        (InstanceState.BACKOFF, InstanceState.READY),
        (InstanceState.STARTING, InstanceState.UNHEALTHY),
        (InstanceState.STOPPED, InstanceState.STARTING),
    ]:
        with pytest.raises(IllegalInstanceTransitionError):
            check_transition(old, new)
