"""The shared MCP server for real, without OpenCode: ``python -m swarm_pool.mcp.http`` as a
real process on loopback, a real SQLite store and real git worktrees. Workers reach it
the way OpenCode's instances do, through the stdlib relay started by the official MCP
stdio client in the worktree (``python -I -S relay.py URL``); the coordinator speaks
streamable HTTP to it with the official client. Checks: what each token is offered and
refused, a reused directory resolving its current worker, a call that resumes across a
``kill -9`` of the server, and the relay's footprint.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import psutil
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from swarm_pool import tokens
from swarm_pool.opencode.config import RELAY_PATH
from swarm_pool.protocol import COORDINATOR_TOOLS, WORKER_TOOLS
from swarm_pool.store.events import (
    WorkerFailed,
    WorkerQueued,
    WorkerSessionCreated,
    WorkerSpawned,
)
from swarm_pool.tokens import Role
from tests.support import wait_for
from tests.test_mcp_server import Project, call, make_project, run_async, server_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_worker(project: Project, bead: str, worktree: Path, session: str = "s1") -> None:
    """The rows the engine writes for a dispatched worker in ``worktree``."""
    with project.store() as store:
        epic = project.epic_id
        wt = str(worktree)
        store.append(WorkerQueued(bead_id=bead, epic_id=epic, worktree=wt))
        store.append(
            WorkerSessionCreated(
                bead_id=bead, epic_id=epic, session_id=session, instance="oc-1", worktree=wt
            )
        )
        store.append(
            WorkerSpawned(
                bead_id=bead, epic_id=epic, session_id=session, instance="oc-1", worktree=wt
            )
        )


@dataclass
class Shared:
    project: Project
    secret: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def args(self) -> list[str]:
        return ["--project", str(self.project.root), "--port", str(self.port)]

    def start(self) -> None:
        env = server_env(self.project.root, SWARM_POOL_MCP_SECRET=self.secret)
        env["PATH"] = os.environ.get("PATH", "")
        log = (self.project.root.parent / "mcp-http.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "swarm_pool.mcp.http", *self.args()],
            env=env,
            stdout=log,
            stderr=log,
        )
        log.close()

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Shared]:
    project = make_project(tmp_path / "proj")
    server = Shared(project, tokens.new_secret(), _free_port())
    for bead in project.beads[:2]:
        wt = project.worktree(bead)
        _run_worker(project, bead, wt, session=f"s-{bead}")
        tokens.write_worker_token(server.secret, wt)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@asynccontextmanager
async def relay_session(shared: Shared, cwd: Path) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-I", "-S", str(RELAY_PATH), shared.url],
        cwd=cwd,
        env=server_env(shared.project.root),
    )
    with (cwd.parent / f".relay-{cwd.name}.log").open("a") as log:
        async with stdio_client(params, errlog=log) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            yield session


@asynccontextmanager
async def coordinator_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"}
    # A tool call's answer comes when the tool returns: swarm_await_workers may block for
    # its whole timeout_s (300 s in the e2e test), so reads may take that long.
    timeout = httpx2.Timeout(30, read=330)
    async with (
        httpx2.AsyncClient(headers=headers, trust_env=False, timeout=timeout) as http,
        streamable_http_client(url, http_client=http) as (r, w),
        ClientSession(r, w) as session,
    ):
        await session.initialize()
        yield session


def test_worker_token_gets_worker_tools_on_its_own_bead_only(shared: Shared) -> None:
    project = shared.project
    mine, other, _ = project.beads
    wt, other_wt = project.worktree(mine), project.worktree(other)

    async def main() -> None:
        async with relay_session(shared, wt) as s, relay_session(shared, other_wt) as o:
            names = {t.name for t in (await s.list_tools()).tools}
            assert names == set(WORKER_TOOLS)

            err, data = await call(s, "swarmmail_init", {})
            assert not err, data
            assert (data["agent_name"], data["bead_id"]) == (f"worker-{mine}", mine)
            # The name and the bead come from the token, never from the prompt.
            err, text = await call(s, "swarmmail_init", {"agent_name": f"worker-{other}"})
            assert err and "cannot register as" in text, text
            err, text = await call(s, "swarmmail_init", {"bead_id": other})
            assert err and other in text, text

            # Another bead's progress and completion are refused, and nothing is written.
            seq = project.last_seq()
            err, text = await call(s, "swarm_progress", {"bead_id": other, "progress_percent": 50})
            assert err and f"not for bead {other}" in text, text
            args = {"bead_id": other, "summary": "x", "files_touched": []}
            err, text = await call(s, "swarm_complete", args)
            assert err and f"not for bead {other}" in text, text
            assert project.last_seq() == seq

            # Another worker's reservation: neither releasable by id nor by path.
            err, data = await call(o, "swarmmail_reserve", {"paths": ["src/b/x.py"]})
            assert not err and data["granted"], data
            theirs = data["reservations"][0]["id"]
            err, text = await call(s, "swarmmail_release", {"reservation_ids": [theirs]})
            assert err and "not held by" in text, text
            err, text = await call(s, "swarmmail_release", {"paths": ["src/b/x.py"]})
            assert err and "not reserved by" in text, text
            with project.store() as store:
                assert [r.id for r in store.reservations.active(f"worker-{other}")] == [theirs]

            # Coordinator tools are not offered, and calling one is a clear error.
            for tool in ("swarm_spawn_async", "swarm_worktree_merge", "hive_create_epic"):
                err, text = await call(s, tool, {"bead_id": other})
                assert err and f"{tool} is a coordinator tool" in text, text

            err, data = await call(s, "swarm_progress", {"bead_id": mine, "progress_percent": 10})
            assert not err and data["recorded"], data

    run_async(main)


def test_coordinator_token_and_refused_tokens(shared: Shared) -> None:
    project = shared.project

    # No token, a forged one, or one signed with another secret never reach the tools.
    forged = tokens.mint("another-pool", Role.COORDINATOR)
    worker_of_dir = tokens.mint(shared.secret, Role.WORKER, project.root / "elsewhere")
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"Accept": "application/json, text/event-stream"}
    for auth in ("", "Bearer nonsense", f"Bearer {forged}"):
        headers = {**accept, **({"Authorization": auth} if auth else {})}
        resp = httpx.post(shared.url, json=body, headers=headers, trust_env=False)
        assert resp.status_code == 401, (auth, resp.text)
        assert "token" in resp.json()["error"]

    async def main() -> None:
        token = tokens.mint(shared.secret, Role.COORDINATOR)
        async with coordinator_session(shared.url, token) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert set(COORDINATOR_TOOLS) <= names and set(WORKER_TOOLS) <= names
            err, data = await call(c, "hive_query", {"epic_id": project.epic_id})
            assert not err and len(data["subtasks"]) == 3, data
        # A valid worker token for a directory no worker uses: its calls say so.
        async with coordinator_session(shared.url, worker_of_dir) as w:
            err, text = await call(w, "swarmmail_inbox", {})
            assert err and "no worker of this pool works in" in text, text

    run_async(main)


def test_a_reused_directory_serves_its_current_worker(shared: Shared) -> None:
    """A slot keeps its directory (and token) while it holds bead after bead."""
    project = shared.project
    first, _, later = project.beads
    slot = project.worktree(first)
    with project.store() as store:
        worker = store.workers.get(first)
        assert worker is not None
        store.append(
            WorkerFailed(
                bead_id=first, epic_id=project.epic_id, session_id=worker.session_id, error="x"
            )
        )
    _run_worker(project, later, slot, session="s-later")

    async def main() -> None:
        async with relay_session(shared, slot) as s:
            err, data = await call(s, "swarmmail_init", {})
            assert not err and data["bead_id"] == later, data
            err, text = await call(s, "swarm_progress", {"bead_id": first, "progress_percent": 5})
            assert err and f"not for bead {first}" in text, text

    run_async(main)


def test_a_call_resumes_across_a_kill_9_of_the_server(shared: Shared) -> None:
    wt = shared.project.worktree(shared.project.beads[0])

    async def main() -> None:
        async with relay_session(shared, wt) as s:
            err, _ = await call(s, "swarmmail_inbox", {})
            assert not err
            shared.kill()
            result: dict[str, Any] = {}

            async def during_restart() -> None:
                result["call"] = await call(s, "swarmmail_init", {})

            async with anyio.create_task_group() as tg:
                tg.start_soon(during_restart)
                # The call is in the relay's retry loop before the server comes back.
                await anyio.sleep(0.3)
                assert "call" not in result
                await anyio.to_thread.run_sync(shared.start)
            err, data = result["call"]
            assert not err and data["bead_id"] == shared.project.beads[0], data

    run_async(main)


def test_the_relay_stays_within_its_budget(shared: Shared) -> None:
    """Route (b)'s limits per directory: <= 15 MB RSS, <= 0.05 CPU-s to start and serve
    the handshake plus a tool listing."""
    wt = shared.project.worktree(shared.project.beads[0])

    async def main() -> None:
        async with relay_session(shared, wt) as s:
            await s.list_tools()
            me = psutil.Process()
            relays = [
                p for p in me.children(recursive=True) if str(RELAY_PATH) in " ".join(p.cmdline())
            ]
            assert len(relays) == 1
            cpu = relays[0].cpu_times()
            assert relays[0].memory_info().rss <= 15 * 2**20
            assert cpu.user + cpu.system <= 0.05

    run_async(main)
