"""The pool's one shared MCP server end to end: a real pool (2 opencode instances, the
scripted model, the ``mcp`` child), real git, the CLI.

- A 3-task plan merges through the shared server while its ``mcp`` child is killed with
  SIGKILL mid-run: the supervisor restarts it and the workers' later calls resume
  through their relays. Every tool call was served by the shared server's process, and
  afterwards the instances' descendants hold no MCP server, only relays within route
  (b)'s limits.
- The coordinator's token (``.swarm/mcp-coordinator-token``), over streamable HTTP with
  the official client, runs spawn, await, review and merge.

The project tracks its own ``opencode.json`` and ``.opencode/``: nothing of ours goes
into a work tree, so nothing clashes with them and the base stays clean.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from swarm_pool.opencode.config import RELAY_PATH
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import PoolState, read_state
from swarm_pool.store import open_project_store
from swarm_pool.store.events import AgentRegistered
from tests.pool_cli import running_pool
from tests.support import git, init_repo, wait_for
from tests.test_mcp_server import call, run_async
from tests.test_mcp_shared import coordinator_session

pytestmark = pytest.mark.e2e

POOL_TOML = """
[pool]
size = 2
max_sessions_per_instance = 4

[supervisor]
check_interval_s = 0.5

[workers]
timeout_s = 240.0
"""

PLAN = """
[epic]
title = "shared mcp"
shared_context = "Write the files you own."
{tasks}
"""

TASK = """
[[tasks]]
id = "{id}"
title = "task {id}"
files = ["lean/{id}.txt"]

[[tasks.script]]
tool = "swarmmail_init"
args = {{}}

[[tasks.script]]
tool = "swarmmail_reserve"
args = {{paths = "{{files}}"}}
delay_s = {delay}

[[tasks.script]]
tool = "swarm_progress"
args = {{bead_id = "{{bead_id}}", progress_percent = 50}}

[[tasks.script]]
tool = "write"
each_file = true
args = {{filePath = "{{path}}", content = "{id}\\n"}}

[[tasks.script]]
tool = "swarm_complete"
args = {{bead_id = "{{bead_id}}", summary = "done", files_touched = "{{literal_files}}"}}
"""


_RUN_ARGS = ("--json", "--timeout", "400", "--project")


def _state(root: Path) -> PoolState:
    state = read_state(ProjectPaths(root).state_file)
    assert state is not None
    return state


def _mcp(root: Path) -> Any:
    rec = _state(root).child("mcp")
    assert rec is not None
    return rec


@dataclass
class _Seen:
    """MCP processes found under the pool's instances."""

    servers: list[str] = field(default_factory=list)
    relay_rss: list[int] = field(default_factory=list)

    def add(self, other: _Seen) -> None:
        self.servers += other.servers
        self.relay_rss += other.relay_rss


def _scan(root: Path) -> _Seen:
    found = _Seen()
    for rec in _state(root).opencode():
        if rec.pid is None:
            continue
        try:
            procs = psutil.Process(rec.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                cmd = " ".join(proc.cmdline())
                if "swarm_pool.mcp_server" in cmd:
                    found.servers.append(cmd)
                elif str(RELAY_PATH) in cmd:
                    found.relay_rss.append(proc.memory_info().rss)
            except psutil.NoSuchProcess:
                continue
    return found


@pytest.fixture(scope="module")
def pool_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = init_repo(
        (tmp_path_factory.mktemp("mcp-shared-e2e") / "proj").resolve(),
        {
            "README.md": "project\n",
            # The user's own OpenCode config, tracked: route (b) writes nothing beside it.
            "opencode.json": '{"$schema": "https://opencode.ai/config.json"}\n',
            ".opencode/README.md": "the user's own folder\n",
        },
    )
    with running_pool(root, POOL_TOML):
        yield root


def test_plan_merges_through_the_shared_server_across_a_kill_9(
    pool_root: Path, tmp_path: Path
) -> None:
    paths = ProjectPaths(pool_root)
    first = _mcp(pool_root)
    assert first.state == "ready" and first.pid is not None
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN.format(tasks="".join(TASK.format(id=i, delay=4) for i in "abc")))
    run = subprocess.Popen(
        [sys.executable, "-m", "swarm_pool", "run", str(plan), *_RUN_ARGS, str(pool_root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        store = open_project_store(paths)

        def registered() -> list[Any]:
            return store.read(types=["agent_registered"])

        # Mid-run: a worker has made its first call; its next ones come after the kill.
        wait_for(registered, timeout=240, interval=0.2)
        os.kill(first.pid, signal.SIGKILL)
        seen = _Seen()
        while run.poll() is None:
            seen.add(_scan(pool_root))
            time.sleep(0.2)
        out, err = run.communicate(timeout=420)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, f"{out}\n{err}"
    summary = json.loads(out)
    assert summary["ok"] and summary["merged"] == 3, summary
    for i in "abc":
        assert (pool_root / "lean" / f"{i}.txt").read_text() == f"{i}\n"
    assert git(pool_root, "status", "--porcelain") == ""

    # Restarted as a pool child, and every call was served by the shared server.
    now = _mcp(pool_root)
    assert now.restarts >= 1 and now.pid != first.pid and now.state == "ready"
    pids = {
        e.event.pid
        for e in store.read(types=["agent_registered"])
        if isinstance(e.event, AgentRegistered)
    }
    assert pids <= {first.pid, now.pid}, pids
    progressed = store.read(types=["worker_progress"])
    assert len({e.event.bead_id for e in progressed}) == 3  # type: ignore[union-attr]
    store.close()

    # No per-directory MCP server among the instances' descendants, during the run or
    # after it; the relays seen during the run stayed within route (b)'s limits.
    assert seen.servers == []
    assert seen.relay_rss and max(seen.relay_rss) <= 15 * 2**20, seen.relay_rss
    assert _scan(pool_root).servers == []


def test_coordinator_token_spawns_awaits_and_merges(pool_root: Path) -> None:
    paths = ProjectPaths(pool_root)
    token = (paths.swarm_dir / "mcp-coordinator-token").read_text()
    assert os.stat(paths.swarm_dir / "mcp-coordinator-token").st_mode & 0o077 == 0

    url = _mcp(pool_root).url
    steps = [
        {"tool": "swarmmail_init", "args": {}},
        {"tool": "write", "each_file": True, "args": {"filePath": "{path}", "content": "c\n"}},
        {
            "tool": "swarm_complete",
            "args": {"bead_id": "{bead_id}", "summary": "ok", "files_touched": "{literal_files}"},
        },
    ]

    async def main() -> None:
        async with coordinator_session(url, token) as c:
            subtasks = [
                {"title": f"coord {i}", "files": [f"coord/{i}.txt"], "script": steps}
                for i in range(2)
            ]
            err, epic = await call(c, "hive_create_epic", {"title": "c", "subtasks": subtasks})
            assert not err, epic
            beads = [s["bead_id"] for s in epic["subtasks"]]
            for bead in beads:
                err, data = await call(c, "swarm_spawn_async", {"bead_id": bead})
                assert not err, data
            args = {"epic_id": epic["epic_id"], "timeout_s": 300}
            err, data = await call(c, "swarm_await_workers", args)
            assert not err and data["counts"]["completed"] == 2, data
            for bead in beads:
                err, data = await call(c, "swarm_review", {"bead_id": bead})
                assert not err, data
                err, data = await call(c, "swarm_worktree_merge", {"bead_id": bead})
                assert not err, data
        for i in range(2):
            assert (pool_root / "coord" / f"{i}.txt").read_text() == "c\n"

    run_async(main)
