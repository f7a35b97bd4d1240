"""The pool end to end: real ``opencode serve`` instances, the real CLI, real signals.

One pool of two instances (plus the scripted model child, with a delay so a prompt keeps
a session busy) is shared by the tests of this module, in order: start and status, auth,
the trimmed models catalog, busy sessions, a kill -9 of an instance, a SIGKILL of the
supervisor and re-adoption, and a final stop that must leave no process (instances,
their MCP servers, the model) and no lease behind.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from swarm_pool.opencode.client import OpenCodeClient
from swarm_pool.pool.ports import PortLeases, port_is_free
from swarm_pool.pool.state import read_state
from tests.pool_cli import cli, cli_json, make_project, pool_processes
from tests.support import wait_for

pytestmark = pytest.mark.e2e
ENV = {"SWARM_POOL_MODEL__DEFAULT_DELAY_S": "2"}


def opencode_instances(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in status["instances"] if i["kind"] == "opencode"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    project = make_project(tmp_path_factory.mktemp("pool-e2e") / "proj")
    out = cli(
        "start", "-n", "2", "--json", project=project, env=ENV, session_scoped=True, timeout=180
    )
    log = project / ".swarm" / "supervisor.log"
    assert out.returncode == 0, f"{out.stderr}\n{log.read_text() if log.exists() else ''}"
    yield project
    cli("stop", project=project, session_scoped=True)


def test_start_two_then_status_shows_both_ready(pool: Path) -> None:
    status = cli_json("status", project=pool)
    assert status["supervisor"]["running"] is True
    assert isinstance(status["supervisor"]["pid"], int)
    insts = opencode_instances(status)
    assert [i["name"] for i in insts] == ["oc-1", "oc-2"]
    for inst in insts:
        assert inst["state"] == "ready"
        assert inst["url"] == f"http://127.0.0.1:{inst['port']}"
        assert psutil.pid_exists(inst["pid"])
        assert inst["rss_mb"] > 50
        assert inst["busy_sessions"] == 0
        assert inst["restarts"] == 0
        assert inst["uptime_s"] >= 0
        # The supervisor heard from it within its last few checks (answers, stream events).
        assert 0 <= inst["last_sign_s"] < 30
        assert "cpu_percent" in inst
    assert insts[0]["port"] != insts[1]["port"]
    state_file = pool / ".swarm" / "pool.json"
    assert (state_file.stat().st_mode & 0o777) == 0o600
    assert (pool / ".swarm" / ".gitignore").read_text().strip() == "*"
    # Each instance has its own database and log.
    for inst in insts:
        inst_dir = pool / ".swarm" / "instances" / inst["name"]
        assert (inst_dir / "opencode.db").exists()
        assert "listening" in (inst_dir / "opencode.log").read_text()


def test_second_start_is_refused(pool: Path) -> None:
    out = cli("start", "-n", "2", project=pool)
    assert out.returncode != 0
    assert "already running" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_unauthenticated_request_gets_401(pool: Path) -> None:
    info = json.loads(cli("attach", "oc-1", "--print", project=pool).stdout)
    assert set(info) == {"url", "username", "password"}
    assert info["username"] == "opencode"
    url = info["url"] + "/global/health"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, auth=("opencode", "wrong"), timeout=10).status_code == 401
    ok = httpx.get(url, auth=(info["username"], info["password"]), timeout=10)
    assert ok.status_code == 200 and ok.json()["healthy"] is True


def test_model_child_is_supervised_and_shown(pool: Path) -> None:
    status = cli_json("status", project=pool)
    model = [i for i in status["instances"] if i["kind"] == "model"]
    assert len(model) == 1 and model[0]["name"] == "model"
    assert model[0]["state"] == "ready"
    assert model[0]["url"].endswith("/v1")
    assert httpx.get(model[0]["url"] + "/models", timeout=10).status_code == 200


def test_instances_load_only_the_providers_the_config_uses(pool: Path) -> None:
    # models_catalog = "trimmed": the scripted provider is defined by the instance config,
    # so the instances get an empty catalog instead of models.dev's whole one, which
    # OpenCode would rebuild for every session directory.
    catalog = pool / ".swarm" / "instances" / "models.json"
    assert json.loads(catalog.read_text()) == {}
    assert (catalog.stat().st_mode & 0o777) == 0o600
    info = json.loads(cli("attach", "oc-1", "--print", project=pool).stdout)
    workdir = pool / "work-providers"
    workdir.mkdir()
    resp = httpx.get(
        info["url"] + "/provider",
        params={"directory": str(workdir)},
        auth=(info["username"], info["password"]),
        timeout=30,
    )
    assert resp.status_code == 200
    assert [p["id"] for p in resp.json()["all"]] == ["swarmpool"]


def test_busy_sessions_across_directories(pool: Path) -> None:
    info = json.loads(cli("attach", "oc-2", "--print", project=pool).stdout)
    workdir = pool / "work-a"
    workdir.mkdir()
    with OpenCodeClient(info["url"], info["password"], timeout=30) as client:
        session = client.create_session(str(workdir))
        client.prompt_async(session["id"], "hello", directory=str(workdir))

        def busy() -> bool:
            insts = {i["name"]: i for i in cli_json("status", project=pool)["instances"]}
            return insts["oc-2"]["busy_sessions"] == 1 and insts["oc-1"]["busy_sessions"] == 0

        wait_for(busy, 30, interval=0.2)
        client.abort(session["id"], directory=str(workdir))
        wait_for(lambda: not client.session_status(str(workdir)), 30)


def test_kill9_instance_comes_back_on_its_port(pool: Path) -> None:
    before = {i["name"]: i for i in opencode_instances(cli_json("status", project=pool))}
    victim = before["oc-1"]
    os.kill(victim["pid"], signal.SIGKILL)

    def back() -> bool:
        # The state file is what status reads; polling it is cheaper than the CLI.
        state = read_state(pool / ".swarm" / "pool.json")
        rec = state.child("oc-1") if state else None
        return rec is not None and rec.state == "ready" and rec.pid != victim["pid"]

    wait_for(back, 60, interval=0.1)
    out = cli("status", "--json", project=pool)
    assert out.returncode == 0, out.stdout
    inst = {i["name"]: i for i in json.loads(out.stdout)["instances"]}["oc-1"]
    assert inst["port"] == victim["port"]
    assert inst["restarts"] == victim["restarts"] + 1
    assert inst["last_exit"]["signal"] == signal.SIGKILL
    info = json.loads(cli("attach", "oc-1", "--print", project=pool).stdout)
    resp = httpx.get(info["url"] + "/global/health", auth=("opencode", info["password"]))
    assert resp.status_code == 200


def test_supervisor_sigkill_then_start_adopts_instances(pool: Path) -> None:
    before = cli_json("status", project=pool)
    sup_pid = before["supervisor"]["pid"]
    pids = {i["name"]: i["pid"] for i in opencode_instances(before)}
    os.kill(sup_pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(sup_pid) or psutil.Process(sup_pid).status() == "zombie")
    # Without a supervisor the instances keep serving, and status says the pool is down.
    down = cli("status", "--json", project=pool)
    assert down.returncode == 1
    assert json.loads(down.stdout)["supervisor"]["running"] is False
    assert all(psutil.pid_exists(pid) for pid in pids.values())

    out = cli("start", "-n", "2", "--json", project=pool, env=ENV, session_scoped=True, timeout=180)
    assert out.returncode == 0, out.stderr
    after = json.loads(out.stdout)
    assert after["supervisor"]["pid"] != sup_pid
    assert {i["name"]: i["pid"] for i in opencode_instances(after)} == pids
    assert all(i["state"] == "ready" for i in opencode_instances(after))
    assert "adopted pid" in (pool / ".swarm" / "supervisor.log").read_text()


def test_stop_without_supervisor_leaves_no_process_and_releases_ports(pool: Path) -> None:
    status = cli_json("status", project=pool)
    ports = [i["port"] for i in status["instances"]]
    pids = [i["pid"] for i in status["instances"]] + [status["supervisor"]["pid"]]
    assert pool_processes(pool)
    # The hardest case: nobody is supervising, stop works from the state file alone.
    os.kill(status["supervisor"]["pid"], signal.SIGKILL)
    wait_for(lambda: cli("status", project=pool).returncode == 1, 30)
    out = cli("stop", project=pool, session_scoped=True)
    assert out.returncode == 0, out.stderr
    assert pool_processes(pool) == []
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert all(port_is_free(p) for p in ports)
    leases = PortLeases(47100, 47999).snapshot()
    assert not set(ports) & set(leases)
    state = read_state(pool / ".swarm" / "pool.json")
    assert state is not None and all(r.state == "stopped" for r in state.instances)
    after = cli("status", "--json", project=pool)
    assert after.returncode == 1
    # Stopping again is harmless.
    assert cli("stop", project=pool).returncode == 0
