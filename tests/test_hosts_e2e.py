"""Two hosts on one PostgreSQL store, end to end: real opencode, real PostgreSQL, real
git, real /proc, the scripted model.

Two clones of one bare remote each run a one-instance pool (``start --store ... --host
a|b``; host a gets the store's password by ``$PGPASSWORD``, host b in the URL). First a
scripted worker writes its bash tool's ``env`` into its worktree: it reached the store
through its MCP server (the passfile works), and the password is in no environment (the
daemons', the instance's, its MCP server's, the bash tool's). Then an 8-task plan run
from host a spreads over both hosts and ends merged in the remote's main. Last, host b's
supervisor is killed with SIGKILL while its workers run: after ``hosts_stale_s`` host a
fails and retries them, and the run still merges everything.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from swarm_pool.config import STORE_URL_ENV, load_config
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.orphans import tagged
from swarm_pool.pool.state import read_state
from swarm_pool.store import open_project_store
from swarm_pool.store.events import BeadSpec
from swarm_pool.store.hosts import hosts_overview
from swarm_pool.store.pgpass import split_password
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker import spawn_async
from tests.hosts_fixture import make_clones, plan_toml, remote_files
from tests.pg_server import ScratchPostgres
from tests.pool_cli import cli
from tests.support import git, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(700)]


def _env_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


# --- two hosts: two clones of one bare remote, one PostgreSQL store ---------------------

TWO_HOSTS_TOML = """
[pool]
size = 1
start_timeout_s = 120.0
max_sessions_per_instance = 2
hosts_beat_s = 1.0
# Short, for the kill -9 test; generous enough that a loaded machine's slow tick is not
# taken for a dead host.
hosts_stale_s = 12.0

[supervisor]
check_interval_s = 0.5
health_timeout_s = 10.0
health_failures = 6

[model]
# Each tool step takes this long: workers stay in flight long enough to be caught.
default_delay_s = 0.5

[workers]
timeout_s = 300.0
"""


@pytest.fixture(scope="module")
def two_hosts(
    tmp_path_factory: pytest.TempPathFactory, pg_server: ScratchPostgres
) -> Iterator[tuple[Path, dict[str, Path], str]]:
    schema = pg_server.new_schema()
    url = pg_server.url(schema=schema)
    remote, clones = make_clones(tmp_path_factory.mktemp("hosts"), ["a", "b"], TWO_HOSTS_TOML)
    started: list[Path] = []
    try:
        for host, clone in clones.items():
            # Host a gets the password by $PGPASSWORD, host b in the URL: neither may
            # reach an instance's environment.
            env = {"PGPASSWORD": pg_server.password} if host == "a" else {}
            store = split_password(url)[0] if host == "a" else url
            out = cli(
                "start", "--json", "--store", store, "--host", host,
                project=clone, env=env, session_scoped=True, timeout=300,
            )  # fmt: skip
            log = clone / ".swarm" / "supervisor.log"
            assert out.returncode == 0, f"{out.stderr}\n{log.read_text() if log.exists() else ''}"
            started.append(clone)
        yield remote, clones, url
    finally:
        for clone in started:
            cli("stop", "--store", url, project=clone, session_scoped=True, timeout=120)
        pg_server.drop_schema(schema)


def test_store_password_reaches_no_instance_or_agent_env(
    two_hosts: tuple[Path, dict[str, Path], str], pg_server: ScratchPostgres
) -> None:
    _remote, clones, url = two_hosts
    secret = pg_server.password.encode()
    pids: dict[str, list[int]] = {}
    for host, clone in clones.items():
        paths = ProjectPaths(clone)
        passfile = paths.swarm_dir / "pgpass"
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        state = read_state(paths.state_file)
        assert state is not None and state.supervisor is not None
        daemon_env = _env_of(state.supervisor.pid)
        assert secret not in daemon_env, host
        assert f"PGPASSFILE={passfile}".encode() in daemon_env
        pids[host] = [rec.pid for rec in state.opencode() if rec.pid is not None]
    config = load_config(None, project_root=clones["a"], environ={**os.environ, STORE_URL_ENV: url})
    paths = ProjectPaths(clones["a"])
    ctx = SwarmContext(paths=paths, config=config, store=open_project_store(paths, config))
    try:
        script: list[dict[str, Any]] = [
            {"tool": "swarmmail_init", "args": {"bead_id": "{bead_id}"}},
            {"tool": "bash", "args": {"command": "env > {worktree}/agent-env.txt; echo ok"}},
        ]
        epic = ctx.store.hive.create_epic(
            "env", [BeadSpec(title="env", files=["agent-env.txt"], script=script)]
        )
        bead = epic.cells[0].id
        spawn_async(ctx, bead)
        # swarmmail_init went through the MCP server, which opened the store with the
        # passfile: it is recorded.
        wait_for(lambda: ctx.store.read(types=["agent_registered"], bead_id=bead), timeout=300)
        worker = ctx.store.workers.get(bead)
        assert worker is not None and worker.worktree and worker.host in clones
        seen = Path(worker.worktree, "agent-env.txt")
        wait_for(lambda: seen.exists() and "PGPASSFILE=" in seen.read_text(), timeout=300)
        assert pg_server.password not in seen.read_text()
        assert not [
            line for line in seen.read_text().splitlines() if line.startswith("PGPASSWORD=")
        ]
        # Every process of the worker's pool: daemon, instance, the shared MCP server or
        # the worktree's relay, the bash tool's commands.
        state = read_state(ProjectPaths(clones[worker.host]).state_file)
        assert state is not None and state.tag
        checked = set()
        for proc in tagged(state.tag):
            try:
                raw = _env_of(proc.pid)
                cmd = " ".join(proc.cmdline())
            except (OSError, psutil.Error):
                continue
            assert secret not in raw, cmd
            assert b"PGPASSWORD=" not in raw, cmd
            if "swarm_pool.mcp_server" in cmd or "mcp/relay.py" in cmd:
                checked.add("mcp")
            elif proc.pid in pids[worker.host]:
                checked.add("opencode")
        assert checked == {"mcp", "opencode"}, checked
    finally:
        ctx.store.close()


def _store_of(clone: Path, url: str) -> Any:
    from swarm_pool.store.core import open_url

    return open_url(url, project_root=clone)


def _run_plan(clone: Path, url: str, plan: Path) -> Any:
    out = cli("run", str(plan), "--json", "--timeout", "500", "--store", url, project=clone,
              session_scoped=True, timeout=560)  # fmt: skip
    log = clone / ".swarm" / "supervisor.log"
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{log.read_text()[-4000:]}"
    return json.loads(out.stdout)


def test_two_hosts_share_an_8_task_plan_and_merge_into_the_remote(
    two_hosts: tuple[Path, dict[str, Path], str], tmp_path: Path
) -> None:
    remote, clones, url = two_hosts
    plan = tmp_path / "plan.toml"
    plan.write_text(plan_toml(8))
    summary = _run_plan(clones["a"], url, plan)
    assert summary["merged"] == summary["total"] == 8, summary
    with _store_of(clones["a"], url) as store:
        epic = summary["epic_id"]
        claims = [s.event for s in store.read(types=["worker_claimed"], epic_id=epic)]
        by_host = {c.host for c in claims}
        assert by_host == {"a", "b"}, [(c.bead_id, c.host) for c in claims]
        # Each host pushed the branches it ran; the coordinator (a) merged them all.
        pushes = [s.event for s in store.read(types=["branch_pushed"], epic_id=epic)]
        assert {p.host for p in pushes} == {"a", "b"}
        hosts = {h.name: h for h in store.hosts.list()}
        assert set(hosts) == {"a", "b"} and all(h.capacity == 2 for h in hosts.values())
    # `status` on either host lists both, alive, with their instances.
    out = cli("status", "--json", "--store", url, project=clones["b"], session_scoped=True)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["host"] == "b"
    shown = {h["name"]: h for h in status["hosts"]}
    assert set(shown) == {"a", "b"} and not any(h["stale"] for h in shown.values())
    assert [i["name"] for i in shown["a"]["instances"]] == ["oc-1"]
    files = remote_files(remote)
    assert [f"hosts/t{n}.txt" for n in range(1, 9)] == [f for f in files if f.startswith("hosts/")]
    # The remote's main is the coordinator's main: nothing merged stayed local.
    assert git(clones["a"], "rev-parse", "main") == subprocess.run(
        ["git", "--git-dir", str(remote), "rev-parse", "main"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def test_kill_9_of_a_hosts_supervisor_moves_its_workers_to_the_other_host(
    two_hosts: tuple[Path, dict[str, Path], str], tmp_path: Path
) -> None:
    remote, clones, url = two_hosts
    plan = tmp_path / "plan.toml"
    # Work on host b lasts long enough to be caught in flight (the pool's children
    # outlive a killed supervisor, so its agents would otherwise finish it anyway).
    plan.write_text(
        plan_toml(4, title="kill b", first_bash='case "$PWD" in */b/.swarm/*) sleep 120;; esac')
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "swarm_pool", "run", str(plan), "--json", "--timeout", "500",
         "--store", url, "--project", str(clones["a"])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with _store_of(clones["a"], url) as store:

            def b_running() -> list[Any]:
                return [w for w in store.workers.list() if w.host == "b" and w.status == "running"]

            held = wait_for(b_running, timeout=300)
            state = read_state(clones["b"] / ".swarm" / "pool.json")
            assert state is not None and state.supervisor is not None
            os.kill(state.supervisor.pid, signal.SIGKILL)
            stdout, stderr = run.communicate(timeout=560)
            assert run.returncode == 0, f"{stdout}\n{stderr}"
            summary = json.loads(stdout)
            assert summary["merged"] == summary["total"] == 4, summary
            epic = summary["epic_id"]
            for w in held:
                failed = [
                    s.event
                    for s in store.read(types=["worker_failed"], bead_id=w.bead_id)
                    if getattr(s.event, "reason", "") == "host_stale"
                ]
                assert len(failed) == 1 and failed[0].cause == "infra", failed
                claims = [s.event for s in store.read(types=["worker_claimed"], bead_id=w.bead_id)]
                assert [(c.host, c.attempt) for c in claims][-1] == ("a", w.attempt + 1)
            hosts = {h["name"]: h for h in hosts_overview(store, 12.0)}
            assert hosts["b"]["stale"] and not hosts["a"]["stale"]
            assert {s.event.host for s in store.read(types=["branch_pushed"], epic_id=epic)} >= {
                "a"
            }
        files = remote_files(remote)
        assert {f"hosts/t{n}.txt" for n in range(1, 5)} <= set(files)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
