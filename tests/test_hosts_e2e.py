"""Pools on a PostgreSQL store, end to end: real opencode, real PostgreSQL, real /proc.

A one-instance pool started with ``--store postgresql://postgres:PASSWORD@...`` runs a
scripted worker whose bash tool writes its own ``env`` into the worktree. The worker
reaches the store through its MCP server (so the passfile works), and the password is
in no environment: not the daemon's, not the instance's, not the MCP server's, not the
bash tool's.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from swarm_pool.config import STORE_URL_ENV, load_config
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import read_state
from swarm_pool.store import open_project_store
from swarm_pool.store.events import SubtaskSpec
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.workers import spawn_async
from tests.pg_server import ScratchPostgres
from tests.pool_cli import cli
from tests.support import init_repo, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

POOL_TOML = """
[pool]
size = 1
start_timeout_s = 120.0

[supervisor]
check_interval_s = 0.5
health_timeout_s = 10.0
health_failures = 6

[workers]
timeout_s = 300.0
"""


@pytest.fixture
def pg_pool(tmp_path: Path, pg_server: ScratchPostgres) -> Iterator[tuple[Path, ProjectPaths, str]]:
    schema = pg_server.new_schema()
    url = pg_server.url(schema=schema)
    root = init_repo((tmp_path / "proj").resolve(), {"README.md": "project\n"})
    paths = ProjectPaths(root).ensure()
    (paths.swarm_dir / "pool.toml").write_text(POOL_TOML)
    # The password must not travel by $PGPASSWORD either.
    env = {"PGPASSWORD": pg_server.password}
    out = cli("start", "--json", "--store", url, project=root, env=env, timeout=300)
    log = paths.supervisor_log
    assert out.returncode == 0, f"{out.stderr}\n{log.read_text() if log.exists() else ''}"
    try:
        yield root, paths, url
    finally:
        cli("stop", "--store", url, project=root, timeout=120)
        pg_server.drop_schema(schema)


def _env_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def test_store_password_reaches_no_instance_or_agent_env(
    pg_pool: tuple[Path, ProjectPaths, str], pg_server: ScratchPostgres
) -> None:
    root, paths, url = pg_pool
    secret = pg_server.password.encode()
    passfile = paths.swarm_dir / "pgpass"
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    state = read_state(paths.state_file)
    assert state is not None and state.supervisor is not None
    daemon_env = _env_of(state.supervisor.pid)
    assert secret not in daemon_env
    assert f"PGPASSFILE={passfile}".encode() in daemon_env
    config = load_config(None, project_root=root, environ={**os.environ, STORE_URL_ENV: url})
    ctx = SwarmContext(paths=paths, config=config, store=open_project_store(paths, config))
    try:
        script: list[dict[str, Any]] = [
            {"tool": "swarmmail_init", "args": {"bead_id": "{bead_id}"}},
            {"tool": "bash", "args": {"command": "env > {worktree}/agent-env.txt; echo ok"}},
        ]
        epic = ctx.store.hive.create_epic(
            "env", [SubtaskSpec(title="env", files=["agent-env.txt"], script=script)]
        )
        bead = epic.cells[0].id
        spawn_async(ctx, bead)
        # swarmmail_init went through the MCP server, which opened the store with the
        # passfile: it is recorded.
        wait_for(lambda: ctx.store.read(types=["agent_registered"], bead_id=bead), timeout=300)
        worker = ctx.store.workers.get(bead)
        assert worker is not None and worker.worktree
        seen = Path(worker.worktree, "agent-env.txt")
        wait_for(lambda: seen.exists() and "PGPASSFILE=" in seen.read_text(), timeout=300)
        assert pg_server.password not in seen.read_text()
        assert not [
            line for line in seen.read_text().splitlines() if line.startswith("PGPASSWORD=")
        ]
        checked = set()
        for rec in state.opencode():
            assert rec.pid is not None
            inst = psutil.Process(rec.pid)
            for proc in [inst, *inst.children(recursive=True)]:
                try:
                    raw = _env_of(proc.pid)
                    cmd = " ".join(proc.cmdline())
                except (OSError, psutil.Error):
                    continue
                assert secret not in raw, cmd
                assert b"PGPASSWORD=" not in raw, cmd
                checked.add("mcp" if "swarm_pool.mcp_server" in cmd else "opencode")
        assert checked == {"mcp", "opencode"}, checked
    finally:
        ctx.store.close()
