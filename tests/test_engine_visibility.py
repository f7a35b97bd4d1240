"""The worker engine is visible: a daemon whose engine cannot start fails its start with
the reason (real CLI, real daemon), and ``spawn`` refuses to queue work that no engine
would run, naming why, from the engine's heartbeat."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from swarm_pool.config import Config
from swarm_pool.errors import EngineNotRunningError
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import PoolState, SupervisorRecord, write_state
from swarm_pool.store import open_project_store
from swarm_pool.store.events import BeadSpec, now_ms
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.engine_state import EngineBeat, write_beat
from swarm_pool.swarm.worker import spawn_async
from tests.pool_cli import NO_MODEL_ENV, cli, make_project, pool_processes
from tests.support import init_repo


@pytest.mark.e2e
def test_start_fails_with_the_reason_when_the_engine_cannot_start(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj")
    env = {**NO_MODEL_ENV, "SWARM_POOL_FAULTS": "engine.open=raise"}
    out = cli("start", project=root, env=env, timeout=120)
    assert out.returncode != 0
    assert "worker engine cannot start" in out.stderr
    assert pool_processes(root) == []  # it failed before starting any instance


def test_spawn_refuses_when_the_pool_runs_without_a_live_engine(tmp_path: Path) -> None:
    root = init_repo(tmp_path / "proj", {"README.md": "x\n"})
    paths = ProjectPaths(root).ensure()
    me = psutil.Process()
    # A running pool as its state file tells it (this process stands for the supervisor).
    write_state(
        paths.state_file,
        PoolState(
            project_root=str(root),
            phase="running",
            supervisor=SupervisorRecord(pid=me.pid, create_time=me.create_time()),
        ),
    )
    config = Config()
    with open_project_store(paths, config) as store:
        ctx = SwarmContext(paths=paths, config=config, store=store)
        bead = store.hive.create_epic("e", [BeadSpec(title="a")]).cells[0].id
        with pytest.raises(EngineNotRunningError, match="no heartbeat"):
            spawn_async(ctx, bead)
        beat = EngineBeat(
            pid=me.pid,
            create_time=me.create_time(),
            last_tick_ms=now_ms(),
            queue=0,
            ticks=1,
            errors=0,
            acting=False,
            error="cannot open the store: disk full",
        )
        write_beat(paths, beat)
        with pytest.raises(EngineNotRunningError, match="disk full"):
            spawn_async(ctx, bead)
        write_beat(
            paths, EngineBeat(**{**beat.__dict__, "last_tick_ms": now_ms() - 120_000, "error": ""})
        )
        with pytest.raises(EngineNotRunningError, match="last tick"):
            spawn_async(ctx, bead)
        assert store.workers.get(bead) is None  # nothing queued
