"""The state file (0600, atomic), the control socket protocol and the binary lookup."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from swarm_pool.config import Config, load_config
from swarm_pool.errors import (
    BinaryNotFoundError,
    ConfigError,
    IllegalInstanceTransitionError,
    OpenCodeVersionError,
    PoolError,
    PoolNotRunningError,
    UnknownInstanceError,
)
from swarm_pool.opencode.binary import (
    PINNED,
    PROJECT_INSTALLS,
    OpenCodeLine,
    binary_info,
    check_binary,
    find_opencode,
    line_of,
    source_root,
)
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
    pinned = fake_binary(root / PROJECT_INSTALLS[OpenCodeLine.V1])
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


@pytest.mark.parametrize(
    ("output", "version", "line"),
    [
        ("1.18.33\n", "1.18.33", OpenCodeLine.V1),
        ("opencode v2.1.2\n", "2.1.2", OpenCodeLine.V2),
        ("some banner\nopencode v2.3.0-beta.1\n", "2.3.0", OpenCodeLine.V2),
        ("1.17.9\n", "1.17.9", None),
        ("3.0.0\n", "3.0.0", None),
        ("<html>web ui</html>\n", "<html>web ui</html>", None),
        ("", "", None),
    ],
)
def test_a_binary_line_comes_from_its_version_output(
    output: str, version: str, line: OpenCodeLine | None
) -> None:
    assert line_of(output) == (version, line)


def test_binary_info_refuses_neither_line_and_a_failing_binary(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.write_text("#!/bin/sh\necho 1.2.3\n")
    old.chmod(0o755)
    with pytest.raises(OpenCodeVersionError, match=r"is opencode '1\.2\.3'; swarm-pool runs"):
        binary_info(old)
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 1.18.33\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(OpenCodeVersionError, match=r"--version exited with status 3"):
        binary_info(broken)
    with pytest.raises(OpenCodeVersionError, match="--version failed"):
        binary_info(tmp_path / "absent")


def test_the_pinned_installs_of_both_lines_say_their_line() -> None:
    # The real binaries scripts/setup installed: their own --version decides the line.
    for line in OpenCodeLine:
        config = Config.model_validate({"opencode": {"version": line.value}})
        info = check_binary(config)
        assert info.line is line
        assert info.version == PINNED[line]
        assert info.path == (source_root() / PROJECT_INSTALLS[line])


def test_version_picks_the_pinned_install_of_its_line(tmp_path: Path) -> None:
    root = tmp_path / "src"
    v1 = fake_binary(root / PROJECT_INSTALLS[OpenCodeLine.V1])
    v2 = fake_binary(root / PROJECT_INSTALLS[OpenCodeLine.V2])
    v2_config = Config.model_validate({"opencode": {"version": "2"}})
    empty = str(tmp_path)
    assert find_opencode(Config(), environ={}, root=root, search_path=empty) == v1
    assert find_opencode(v2_config, environ={}, root=root, search_path=empty) == v2
    v2.unlink()
    with pytest.raises(BinaryNotFoundError, match=r"@opencode/cli@2\.1\.2"):
        find_opencode(v2_config, environ={}, root=root, search_path=empty)


def test_a_version_of_no_line_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="version"):
        load_config(environ={"SWARM_POOL_OPENCODE__VERSION": '"3"'})


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
