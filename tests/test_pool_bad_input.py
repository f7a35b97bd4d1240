"""Bad input gets one clear stderr line, a non-zero exit, and nothing half-started.

Also: two pools started at the same moment get disjoint ports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from swarm_pool.config import Config
from swarm_pool.opencode.binary import find_opencode
from swarm_pool.pool.ports import port_is_free
from tests.pool_cli import NO_MODEL_ENV, cli, make_project, pool_processes
from tests.support import wait_for

STEAL = Path(__file__).with_name("pool_steal.py")


def assert_clean_failure(
    out: subprocess.CompletedProcess[str], project: Path, text: str, foreign: int | None = None
) -> None:
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("swarm-pool: error: ")
    assert text in lines[0], lines[0]
    assert [p for p in pool_processes(project) if p.pid != foreign] == []
    status = cli("status", "--json", project=project)
    assert status.returncode != 0


def test_a_binary_of_neither_opencode_line_is_refused_at_start(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    fake = tmp_path / "opencode"
    fake.write_text("#!/bin/sh\necho 0.9.4\n")
    fake.chmod(0o755)
    env = {**NO_MODEL_ENV, "SWARM_POOL_OPENCODE__BINARY": str(fake)}
    out = cli("start", "-n", "1", project=project, env=env)
    assert_clean_failure(out, project, f"{fake} is opencode '0.9.4'; swarm-pool runs OpenCode 1.18")


def test_a_binary_of_the_other_line_is_refused_at_start(tmp_path: Path) -> None:
    # The real 2.x binary, while the config asks for 1.18: one line naming both.
    project = make_project(tmp_path / "p")
    v2 = find_opencode(Config.model_validate({"opencode": {"version": "2"}}))
    env = {**NO_MODEL_ENV, "SWARM_POOL_OPENCODE__BINARY": str(v2)}
    out = cli("start", "-n", "1", project=project, env=env)
    assert_clean_failure(out, project, "is opencode 2.1.2 (line 2), but opencode.version is '1.18'")


def free_port() -> int:
    for port in range(49500, 49600):
        if port_is_free(port):
            return port
    raise AssertionError("no free port")


def test_missing_binary(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    env = {**NO_MODEL_ENV, "SWARM_POOL_OPENCODE__BINARY": "/no/oc"}
    out = cli("start", "-n", "1", project=project, env=env)
    assert_clean_failure(out, project, "opencode binary from config opencode.binary not found")
    assert "scripts/setup" in out.stderr
    assert not (project / ".swarm" / "pool.json").exists()


def test_unknown_config_key(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    out = cli("start", project=project, env={"SWARM_POOL_POOL__SIZ": "3"})
    assert_clean_failure(out, project, "unknown config key 'pool.siz'")
    conf = tmp_path / "bad.toml"
    conf.write_text("[supervisor]\ncheck_every = 2\n")
    out = cli("start", "--config", str(conf), project=project)
    assert_clean_failure(out, project, "unknown config key 'supervisor.check_every'")


def test_unwritable_project_dir(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        project = Path("/sys")  # root ignores mode bits; sysfs refuses mkdir even to root
    else:
        project = tmp_path / "ro"
        project.mkdir()
        project.chmod(0o555)
    try:
        (project / ".swarm").mkdir()
    except OSError:
        pass
    else:
        pytest.skip(f"{project} is writable here")
    out = cli("start", "-n", "1", project=project, env=NO_MODEL_ENV)
    assert out.returncode != 0
    assert (
        out.stderr.strip().splitlines() == [out.stderr.strip()]
        and "project dir is not writable" in out.stderr
    )


def test_exhausted_port_range(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    port = free_port()
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", port))
        foreign.listen()
        env = {
            **NO_MODEL_ENV,
            "SWARM_POOL_POOL__PORT_MIN": str(port),
            "SWARM_POOL_POOL__PORT_MAX": str(port),
        }
        out = cli("start", "-n", "1", project=project, env=env)
    assert_clean_failure(out, project, f"no free port in {port}-{port}")


def test_port_taken_between_allocation_and_bind(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    portfile = tmp_path / "port"
    env = {
        **NO_MODEL_ENV,
        "SWARM_POOL_OPENCODE__BINARY": str(STEAL),
        "STEAL_REAL_BINARY": str(find_opencode()),
        "STEAL_PORTFILE": str(portfile),
    }
    result: list[subprocess.CompletedProcess[str]] = []
    starter = threading.Thread(
        target=lambda: result.append(cli("start", "-n", "1", project=project, env=env))
    )
    starter.start()
    thief: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: portfile.exists() and portfile.read_text().strip(), timeout=60)
        port = int(portfile.read_text())
        listen = (
            "import socket, time; s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(300)"
        )
        thief = subprocess.Popen([sys.executable, "-c", listen], start_new_session=True)
        starter.join(timeout=180)
        out = result[0]
        text = "was taken by another process between allocation"
        assert_clean_failure(out, project, text, foreign=thief.pid)
        assert int(out.stderr.split("port ")[1].split()[0]) == port
        # The thief is foreign: it must have been left alone, still holding the port.
        assert thief.poll() is None and not port_is_free(port)
    finally:
        if thief is not None:
            thief.kill()
            thief.wait(timeout=10)
        starter.join(timeout=180)
    state = json.loads((project / ".swarm" / "pool.json").read_text())
    assert state["error"]["type"] == "PortInUseError"


@pytest.mark.e2e
def test_two_pools_started_at_once_get_disjoint_ports(tmp_path: Path) -> None:
    projects = [make_project(tmp_path / f"p{i}") for i in range(2)]
    env = {**os.environ, **NO_MODEL_ENV}
    argv = [sys.executable, "-m", "swarm_pool", "start", "-n", "1", "--json", "--project"]
    procs = [
        subprocess.Popen(
            [*argv, str(p)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in projects
    ]
    try:
        outs = [p.communicate(timeout=180) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        children = [json.loads(stdout)["instances"] for stdout, _err in outs]
        for kids in children:  # one opencode each, beside the pool's own servers (mcp)
            assert [k["name"] for k in kids if k["name"].startswith("oc-")] == ["oc-1"], kids
        ports = [{k["port"] for k in kids} for kids in children]
        assert not ports[0] & ports[1], children
    finally:
        for p in projects:
            cli("stop", project=p)
    for p in projects:
        wait_for(lambda p=p: pool_processes(p) == [], 10)  # type: ignore[misc]
