"""Least privilege end to end: real pools (opencode, the scripted model), real git, /proc.

One pool (2 instances) runs behind a dead HTTP(S) proxy for the first tests: file modes,
one password per instance, 401 without auth, loopback only, the demo plan, then a worker
whose shell detaches sleepers: no instance descendant holds a password, and after
``stop`` nothing is left; then the same after the supervisor is ``kill -9``ed. A second
pool runs the bash tool in the bubblewrap sandbox (no network): a scripted worker's
attempts to read ``.swarm/pool.json``, write into another worktree and write outside the
project are refused, while its ``git commit`` works, and the demo plan still merges.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from swarm_pool.config import load_config
from swarm_pool.git import Repo
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.orphans import POOL_TAG_ENV, tagged
from swarm_pool.pool.state import PoolState, read_state
from swarm_pool.store import open_project_store
from swarm_pool.store.events import BeadSpec
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker import spawn_async
from tests.pool_cli import cli, pool_processes
from tests.support import git, init_repo, wait_for

# A demo plan on a shared, loaded machine can outlast the default 180 s per test.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
DEMO_PLAN = ROOT / "conf" / "demo-plan.toml"
DEAD_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens there
PROXY_ENV = {
    name: DEAD_PROXY
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")
}
POOL_TOML = """
[pool]
size = 2
start_timeout_s = 120.0

[supervisor]
check_interval_s = 0.5
# The machine is shared with other pools: a slow answer is load, not a dead instance.
health_timeout_s = 10.0
health_failures = 6

[workers]
timeout_s = 540.0  # a worker at load 30 can need more than 4 minutes
"""


def init() -> dict[str, Any]:
    return {"tool": "swarmmail_init", "args": {"bead_id": "{bead_id}"}}


def bash(command: str, timeout_ms: int = 120_000) -> dict[str, Any]:
    return {"tool": "bash", "args": {"command": command, "timeout": timeout_ms}}


def make_project(base: Path, pool_toml: str) -> tuple[Path, ProjectPaths]:
    root = init_repo((base / "proj").resolve(), {"README.md": "project\n"})
    paths = ProjectPaths(root).ensure()
    (paths.swarm_dir / "pool.toml").write_text(pool_toml)
    return root, paths


def start(root: Path, paths: ProjectPaths) -> PoolState:
    out = cli("start", "--json", project=root, env=PROXY_ENV, session_scoped=True, timeout=240)
    log = paths.supervisor_log
    assert out.returncode == 0, f"{out.stderr}\n{log.read_text() if log.exists() else ''}"
    state = read_state(paths.state_file)
    assert state is not None
    return state


def context(root: Path, paths: ProjectPaths) -> SwarmContext:
    config = load_config(None, project_root=root)
    return SwarmContext(paths=paths, config=config, store=open_project_store(paths, config))


def spawn_one(ctx: SwarmContext, title: str, files: list[str], script: list[dict[str, Any]]) -> str:
    epic = ctx.store.hive.create_epic(title, [BeadSpec(title=title, files=files, script=script)])
    bead = epic.cells[0].id
    spawn_async(ctx, bead)
    return bead


def pool_tagged(paths: ProjectPaths) -> list[psutil.Process]:
    state = read_state(paths.state_file)
    assert state is not None and state.tag
    return tagged(state.tag)


def sleepers(root: Path, marker: str) -> list[psutil.Process]:
    found = []
    for proc in pool_processes(root):
        try:
            if proc.cmdline()[:2] == ["sleep", marker]:
                found.append(proc)
        except psutil.Error:
            continue
    return found


# A worker whose shell leaves behind one `setsid` sleeper and one double-forked sleeper
# (both outlive the command, so they are re-parented away from the instance's tree).
DETACH = (
    "env > {worktree}/agent-env.txt; "
    "setsid sleep 1000 >/dev/null 2>&1 </dev/null & "
    "(sleep 1001 >/dev/null 2>&1 </dev/null &); "
    "echo detached"
)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, ProjectPaths]]:
    root, paths = make_project(tmp_path_factory.mktemp("security-e2e"), POOL_TOML)
    start(root, paths)
    try:
        yield root, paths
    finally:
        cli("stop", project=root, session_scoped=True, timeout=120)


def test_state_is_private_each_instance_has_its_own_password_on_loopback(
    proxied: tuple[Path, ProjectPaths],
) -> None:
    root, paths = proxied
    assert stat.S_IMODE(paths.swarm_dir.stat().st_mode) == 0o700
    for name in ("swarm.db", "swarm.db.lock", "pool.json", "supervisor.sock", "supervisor.log"):
        assert stat.S_IMODE((paths.swarm_dir / name).stat().st_mode) == 0o600, name
    for name in ("swarm.db-wal", "swarm.db-shm", "supervisor.lock", "git.lock"):
        path = paths.swarm_dir / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    state = read_state(paths.state_file)
    assert state is not None
    instances = state.opencode()
    passwords = [rec.password for rec in instances]
    assert len(instances) == 2 and all(len(p) >= 24 for p in passwords)
    assert len(set(passwords)) == len(passwords)
    for rec in instances:
        assert rec.url is not None
        url = rec.url + "/global/health"
        assert httpx.get(url, timeout=10, trust_env=False).status_code == 401
        other = next(p for p in passwords if p != rec.password)
        bad = httpx.get(url, auth=("opencode", other), timeout=10, trust_env=False)
        assert bad.status_code == 401  # another instance's password opens nothing here
        ok = httpx.get(url, auth=("opencode", rec.password), timeout=10, trust_env=False)
        assert ok.status_code == 200
    # Every socket any process of the pool listens on is bound to loopback.
    procs = pool_tagged(paths)
    assert {p.pid for p in procs} >= {rec.pid for rec in instances}
    for proc in procs:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                assert conn.laddr.ip == "127.0.0.1", (proc.pid, proc.name(), conn)
    # `status` never prints a password, and says the sandbox is off.
    out = cli("status", "--json", project=root, env=PROXY_ENV)
    assert out.returncode == 0, out.stderr
    assert not any(p in out.stdout for p in passwords)
    assert json.loads(out.stdout)["supervisor"]["sandbox"] == "off"


def test_demo_plan_runs_behind_a_dead_proxy(proxied: tuple[Path, ProjectPaths]) -> None:
    root, _paths = proxied
    out = cli("run", str(DEMO_PLAN), "--json", project=root, env=PROXY_ENV, timeout=600)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    summary = json.loads(out.stdout)
    assert summary["ok"] and summary["merged"] == summary["total"] == 4
    assert not summary["pool_started"] and summary["sandbox"] == "off"
    assert git(root, "cat-file", "-t", "main:wordcount/core.py") == "blob"


def _no_password_below_instances(ctx: SwarmContext, bead: str) -> list[psutil.Process]:
    """Checks that no instance descendant, and neither detached sleeper, holds a password;
    returns the sleepers once both were re-parented to the supervisor."""
    paths = ctx.paths
    state = read_state(paths.state_file)
    assert state is not None
    # The instances' passwords, and the shared MCP server's token secret.
    secrets = [rec.password for rec in state.opencode()] + [state.mcp_secret]
    assert state.mcp_secret
    root = paths.root
    assert state.supervisor is not None
    sup = state.supervisor.pid

    def detached() -> bool:
        procs = sleepers(root, "1000") + sleepers(root, "1001")
        return len(procs) == 2 and {p.ppid() for p in procs} == {sup}

    try:
        # The supervisor is their subreaper: both are re-parented to it, not to init.
        # (Generous: at load 30 a new worktree's first session takes minutes.)
        wait_for(detached, timeout=400)
    except AssertionError as e:
        raise AssertionError(f"{e}; the worker's tools: {tool_outputs(ctx, bead)}") from e
    below: dict[int, psutil.Process] = {}
    for rec in state.opencode():
        assert rec.pid is not None
        for proc in psutil.Process(rec.pid).children(recursive=True):
            below[proc.pid] = proc
    for proc in sleepers(root, "1000") + sleepers(root, "1001"):
        below[proc.pid] = proc
    kinds = set()
    for proc in below.values():
        try:
            raw = Path(f"/proc/{proc.pid}/environ").read_bytes()
            cmd = " ".join(proc.cmdline())
        except (OSError, psutil.Error):
            continue  # gone meanwhile
        assert not any(s.encode() in raw for s in secrets), cmd
        assert b"OPENCODE_SERVER_PASSWORD=" not in raw, cmd
        per_directory_mcp = "swarm_pool.mcp_server" in cmd or "mcp/relay.py" in cmd
        kinds.add("mcp" if per_directory_mcp else cmd.split()[0])
    # What was read: the worktree's MCP process (the relay to the shared server, or a
    # whole server with mcp = "local") and the bash tool's commands.
    assert "mcp" in kinds and "sleep" in kinds, kinds
    return sleepers(root, "1000") + sleepers(root, "1001")


def test_agents_hold_no_password_and_stop_leaves_no_orphan(
    proxied: tuple[Path, ProjectPaths],
) -> None:
    root, paths = proxied
    ctx = context(root, paths)
    try:
        bead = spawn_one(ctx, "detach", ["env.txt"], [init(), bash(DETACH)])
        detached = _no_password_below_instances(ctx, bead)
        assert len(detached) == 2
        worker = ctx.store.workers.get(bead)
        assert worker is not None and worker.worktree
        # What `env` printed in the agent's own shell.
        env_seen = Path(worker.worktree, "agent-env.txt").read_text().splitlines()
        assert not [line for line in env_seen if line.startswith("OPENCODE_SERVER_PASSWORD=")]
        assert any(line.startswith(POOL_TAG_ENV + "=") for line in env_seen)
        state = read_state(paths.state_file)
        assert state is not None
        assert not any(rec.password in line for rec in state.opencode() for line in env_seen)
    finally:
        ctx.store.close()
    state = read_state(paths.state_file)
    assert state is not None
    out = cli("stop", "--json", project=root, env=PROXY_ENV, session_scoped=True)
    assert out.returncode == 0, out.stderr
    # The live supervisor took them down itself: the tag sweep found nothing left.
    assert json.loads(out.stdout)["swept"] == [], out.stdout
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in detached)
    assert pool_processes(root) == [] and tagged(state.tag) == []


def test_no_orphan_after_stop_with_the_supervisor_killed(
    proxied: tuple[Path, ProjectPaths],
) -> None:
    root, paths = proxied
    cli("stop", project=root, session_scoped=True, timeout=120)  # whatever came before
    state = start(root, paths)
    ctx = context(root, paths)
    try:
        bead = spawn_one(ctx, "detach again", ["env.txt"], [init(), bash(DETACH)])
        detached = _no_password_below_instances(ctx, bead)
    finally:
        ctx.store.close()
    assert state.supervisor is not None
    os.kill(state.supervisor.pid, signal.SIGKILL)
    wait_for(lambda: not state.supervisor.ref.alive(), timeout=30)  # type: ignore[union-attr]
    assert all(p.is_running() for p in detached)  # orphans of a dead subreaper
    out = cli("stop", "--json", project=root, env=PROXY_ENV, session_scoped=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["swept"], out.stdout
    assert pool_processes(root) == [] and tagged(state.tag) == []


# --- the sandbox ------------------------------------------------------------------------

SANDBOX_TOML = """
[pool]
size = 1
start_timeout_s = 120.0

[supervisor]
check_interval_s = 0.5
# The machine is shared with other pools: a slow answer is load, not a dead instance.
health_timeout_s = 10.0
health_failures = 6

[workers]
timeout_s = 240.0
sandbox = "bwrap"
sandbox_network = false
"""


def tool_outputs(ctx: SwarmContext, bead: str) -> list[tuple[str, str]]:
    worker = ctx.store.workers.get(bead)
    if worker is None or not worker.instance or not worker.session_id:
        return []  # not dispatched yet
    client = ctx.client(ctx.instance(worker.instance))
    try:
        messages = client.messages(worker.session_id, directory=worker.worktree)
    finally:
        client.close()
    out = []
    for message in messages:
        for part in message.get("parts", []):
            st = part.get("state") or {}
            if part.get("type") == "tool" and st.get("status") in ("completed", "error"):
                out.append((part.get("tool", ""), str(st.get("output") or st.get("error") or "")))
    return out


@pytest.fixture(scope="module")
def boxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, ProjectPaths]]:
    root, paths = make_project(tmp_path_factory.mktemp("sandbox-e2e"), SANDBOX_TOML)
    start(root, paths)
    try:
        yield root, paths
    finally:
        cli("stop", project=root, session_scoped=True, timeout=120)


def test_sandboxed_worker_is_refused_outside_its_worktree_but_commits(
    boxed: tuple[Path, ProjectPaths],
) -> None:
    root, paths = boxed
    state = read_state(paths.state_file)
    assert state is not None and state.sandbox == "bwrap (no network)"
    port = state.opencode()[0].port
    other = Repo.for_project(paths).worktrees.create("bd-other.1")  # another worker's checkout
    home_probe = Path.home() / f".swarm-pool-probe-{uuid.uuid4().hex}"
    # OpenCode's bash tool refuses a command that names a path outside the worktree
    # (external_directory: deny); paths reached through a variable get past that check,
    # so the sandbox is what must stop them.
    reach = f"S='{paths.swarm_dir}'; O='{other.path}'; H='{home_probe}'; R='{root}'; "
    script = [
        init(),
        bash(reach + 'cat "$S/pool.json"; echo exit=$?'),
        bash(reach + 'echo evil > "$O/evil.txt"; echo exit=$?'),
        bash(reach + 'echo out > "$H"; echo exit=$?'),
        bash(reach + 'echo out > "$R/escaped.txt"; echo exit=$?'),
        bash(reach + 'ls "$S"; echo exit=$?'),
        bash(
            "python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
            f'{port}), 3)" 2>&1 | tail -1; echo exit=$?'
        ),
        bash(
            "echo mine > mine.txt && git add mine.txt && git commit -qm 'boxed commit' "
            "&& git log -1 --format=%s; echo exit=$?"
        ),
        {"text": "probed"},
    ]
    ctx = context(root, paths)
    try:
        bead = spawn_one(ctx, "probe", ["mine.txt"], script)
        wait_for(lambda: len([t for t, _ in tool_outputs(ctx, bead) if t == "bash"]) >= 7, 400)
        outputs = [out for tool, out in tool_outputs(ctx, bead) if tool == "bash"]
        worker = ctx.store.workers.get(bead)
        assert worker is not None and worker.worktree
    finally:
        ctx.store.close()
        home_probe.unlink(missing_ok=True)
    cat, other_wt, home, project, listing, network, commit = outputs[:7]
    assert "No such file or directory" in cat and "exit=1" in cat and "password" not in cat
    assert "No such file or directory" in other_wt and "exit=1" in other_wt
    assert "Read-only file system" in home and "exit=1" in home
    assert "Read-only file system" in project and "exit=1" in project
    # Only the way to its own checkout ("slots" for a warm slot, the default).
    way = Path(worker.worktree).relative_to(paths.swarm_dir.resolve()).parts[0]
    assert listing.strip() == f"{way}\nexit=0", listing
    # Its own network namespace: loopback there has nothing listening, the host's is gone.
    assert "Connection refused" in network or "unreachable" in network, network
    assert "boxed commit" in commit and "exit=0" in commit, commit
    # And on the real disk: nothing escaped, and the commit is on the worker's branch.
    assert not (other.path / "evil.txt").exists() and not home_probe.exists()
    assert not (root / "escaped.txt").exists()
    assert git(root, "log", "-1", "--format=%s", f"swarm/{bead}") == "boxed commit"
    assert git(Path(worker.worktree), "status", "--porcelain") == ""


def test_demo_plan_merges_in_the_sandbox(boxed: tuple[Path, ProjectPaths]) -> None:
    root, _paths = boxed
    out = cli("run", str(DEMO_PLAN), "--json", project=root, timeout=600)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    summary = json.loads(out.stdout)
    assert summary["ok"] and summary["merged"] == 4
    assert summary["sandbox"] == "bwrap (no network)"
    status = cli("status", project=root)
    assert "sandbox: bwrap (no network)" in status.stdout
