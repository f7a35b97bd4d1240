"""Workers end to end: a real pool (2 opencode instances + the scripted model), real git.

One pool serves the whole module (started and stopped through the CLI); each test makes
its own epic. The engine runs inside the pool's supervisor daemon, as in production.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from swarm_pool.config import load_config
from swarm_pool.paths import ProjectPaths
from swarm_pool.protocol import Contract, render_contract
from swarm_pool.store import open_project_store
from swarm_pool.store.events import BeadSpec
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.engine.watch import session_finished
from swarm_pool.swarm.pool_view import dedicated_name
from swarm_pool.swarm.status import await_workers, poll
from swarm_pool.swarm.worker import SpawnRequest, spawn_async
from swarm_pool.swarm.worker.review import merge, review
from tests.pool_cli import cli, running_pool
from tests.support import git, init_repo, wait_for

pytestmark = pytest.mark.e2e

POOL_TOML = """
[pool]
size = 2
max_sessions_per_instance = 4
# The kill tests restart oc-1; the router's preference for steady instances would keep
# later tests' work off it for a while, and they check where work runs.
avoid_restarted_s = 0
avoid_flapping_restarts = 0

[supervisor]
check_interval_s = 0.5

[workers]
max_retries = 1
timeout_s = 240.0

[opencode.permission]
edit = "allow"
bash = "allow"
webfetch = "ask"
external_directory = "deny"
doom_loop = "deny"
"""


@dataclass
class Pool:
    root: Path
    paths: ProjectPaths

    def ctx(self) -> SwarmContext:
        config = load_config(None, project_root=self.root)
        store = open_project_store(self.paths, config)
        return SwarmContext(paths=self.paths, config=config, store=store)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    root = init_repo(
        (tmp_path_factory.mktemp("workers-e2e") / "proj").resolve(), {"README.md": "project\n"}
    )
    with running_pool(root, POOL_TOML) as paths:
        yield Pool(root, paths)


@pytest.fixture
def ctx(pool: Pool) -> Iterator[SwarmContext]:
    c = pool.ctx()
    yield c
    c.store.close()


def init() -> dict[str, Any]:
    return {"tool": "swarmmail_init", "args": {"bead_id": "{bead_id}"}}


def reserve(delay_s: float = 0.0) -> dict[str, Any]:
    return {"tool": "swarmmail_reserve", "args": {"paths": "{files}"}, "delay_s": delay_s}


def write_files() -> dict[str, Any]:
    content = "# {file}\n# by {bead_id}, attempt {attempt}\n"
    return {"tool": "write", "each_file": True, "args": {"filePath": "{path}", "content": content}}


def complete() -> dict[str, Any]:
    args = {"bead_id": "{bead_id}", "summary": "done", "files_touched": "{literal_files}"}
    return {"tool": "swarm_complete", "args": args}


def slow(delay_s: float) -> list[dict[str, Any]]:
    return [init(), reserve(delay_s), write_files(), complete()]


def events(ctx: SwarmContext, bead: str, kind: str) -> list[Any]:
    return ctx.store.read(types=[kind], bead_id=bead)


def test_plan_of_four_tasks_runs_to_merge(pool: Pool, tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(
        """
[epic]
title = "four tasks"
shared_context = "Write the files you own."

[[tasks]]
id = "a"
title = "A"
files = ["pkg/a.py"]

[[tasks]]
id = "b"
title = "B"
files = ["pkg/b.py"]

[[tasks]]
id = "c"
title = "C needs A and B"
files = ["pkg/c.py"]
read_only = ["pkg/a.py", "pkg/b.py"]
depends_on = ["a", "b"]

[[tasks]]
id = "d"
title = "D alone"
files = ["docs/d.md"]
"""
    )
    out = cli("run", str(plan), "--json", "--timeout", "400", project=pool.root, timeout=420)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    summary = json.loads(out.stdout)
    assert summary["ok"] and summary["merged"] == 4 and not summary["pool_started"]
    for path in ("pkg/a.py", "pkg/b.py", "pkg/c.py", "docs/d.md"):
        assert git(pool.root, "cat-file", "-t", f"main:{path}") == "blob", path
        assert (pool.root / path).is_file()  # the checked-out base follows the merges
    beads = {t["title"][:1]: t["bead_id"] for t in summary["tasks"]}
    with pool.ctx().store as store:

        def first(bead: str, kind: str) -> int:
            return store.read(types=[kind], bead_id=bead)[0].timestamp

        c_spawned = first(beads["C"], "worker_spawned")
        for dep in ("A", "B"):
            assert first(beads[dep], "worker_completed") < c_spawned
            assert first(beads[dep], "worktree_merged") < c_spawned
        # A, B and D ran side by side: each started before any of them completed
        starts = [first(beads[k], "worker_spawned") for k in "ABD"]
        ends = [first(beads[k], "worker_completed") for k in "ABD"]
        assert max(starts) < min(ends)
        instances = {store.workers.get(beads[k]).instance for k in "ABD"}  # type: ignore[union-attr]
        assert instances == {"oc-1", "oc-2"}


def test_parallel_workers_really_run_in_parallel(ctx: SwarmContext) -> None:
    # Each worker's second turn is held at a barrier of three by the scripted model: it is
    # answered only once all three workers' sessions wait there at the same moment, so the
    # run can finish only if the three really run side by side (one after the other, the
    # first would wait alone until the barrier gives up and its session errs). Timing
    # plays no part, so a loaded machine cannot make this pass or fail.
    barrier = {"barrier": "parallel-trio", "barrier_count": 3, "barrier_timeout_s": 150}
    steps = [init(), {**reserve(), **barrier}, write_files(), complete()]
    epic = ctx.store.hive.create_epic(
        "parallel",
        [BeadSpec(title=f"p{i}", files=[f"par/{i}.txt"], script=steps) for i in range(3)],
    )
    for cell in epic.cells:
        assert spawn_async(ctx, cell.id).status == "pending"  # the daemon dispatches it
    result = await_workers(ctx, epic.id, 240)
    assert result.counts["completed"] == 3, result.to_dict()
    assert all(ctx.store.workers.get(c.id).attempt == 1 for c in epic.cells)  # type: ignore[union-attr]


def test_kill_9_instance_retries_the_worker_elsewhere(ctx: SwarmContext) -> None:
    epic = ctx.store.hive.create_epic(
        "kill", [BeadSpec(title="survivor", files=["kill/k.txt"], script=slow(4))]
    )
    bead = epic.cells[0].id
    spawn_async(ctx, bead)
    # Kill its instance while the worker is mid-task: its MCP server is up, its 4 s
    # wait runs.
    wait_for(lambda: events(ctx, bead, "agent_registered"), 120)
    first = ctx.store.workers.get(bead)
    assert first is not None and first.status == "running"
    victim = ctx.instance(first.instance)
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    result = await_workers(ctx, epic.id, 240)
    w = ctx.store.workers.get(bead)
    assert w is not None and w.status == "completed", result.to_dict()
    assert w.attempt == 2 and w.instance != victim.name
    failed = events(ctx, bead, "worker_failed")
    assert [getattr(f.event, "reason", "") for f in failed] == ["instance_exited"]
    assert events(ctx, bead, "worker_retried")
    kill_ms = failed[0].timestamp - events(ctx, bead, "agent_registered")[0].timestamp
    assert kill_ms < 15_000  # noticed within seconds
    assert "attempt 2" in Path(w.worktree, "kill/k.txt").read_text()
    # the supervisor brought the killed instance back on a new pid
    back = wait_for(
        lambda: next(
            (
                s
                for s in ctx.instances()
                if s.name == victim.name and s.state == "ready" and s.pid != victim.pid
            ),
            None,
        ),
        120,
    )
    assert back.pid != victim.pid


def test_merge_conflict_keeps_the_base_and_reports(ctx: SwarmContext, pool: Pool) -> None:
    epic = ctx.store.hive.create_epic(
        "conflict",
        [
            BeadSpec(title="one", files=["clash.txt"]),
            BeadSpec(title="two", files=["clash.txt"]),
        ],
    )
    one, two = (c.id for c in epic.cells)
    # one after the other, so the reservations never collide; both branch from main
    spawn_async(ctx, one)
    assert await_workers(ctx, epic.id, 180).counts["completed"] == 1
    spawn_async(ctx, two)
    assert await_workers(ctx, epic.id, 180).counts["completed"] == 2
    assert review(ctx, one).approved and review(ctx, two).approved
    merge(ctx, one)
    head = git(pool.root, "rev-parse", "main")
    content = (pool.root / "clash.txt").read_text()
    out = cli("merge", two, "--json", project=pool.root)
    assert out.returncode == 1 and "conflict" in out.stderr
    assert git(pool.root, "rev-parse", "main") == head
    assert (pool.root / "clash.txt").read_text() == content
    assert git(pool.root, "status", "--porcelain") == ""
    conflicts = events(ctx, two, "merge_conflict")
    assert conflicts and getattr(conflicts[-1].event, "files", []) == ["clash.txt"]


def test_permission_request_blocks_and_answer_unblocks(ctx: SwarmContext, pool: Pool) -> None:
    fetch = {"tool": "webfetch", "args": {"url": "http://127.0.0.1:9/x", "format": "text"}}
    epic = ctx.store.hive.create_epic(
        "asks",
        [
            BeadSpec(
                title="asker",
                files=["ask/a.txt"],
                script=[init(), fetch, write_files(), complete()],
            )
        ],
    )
    bead = epic.cells[0].id
    spawn_async(ctx, bead)

    def blocked() -> dict[str, Any] | None:
        out = cli("poll", epic.id, "--json", project=pool.root)
        assert out.returncode == 0, out.stderr
        groups = json.loads(out.stdout)["groups"]
        return groups["blocked"][0] if groups["blocked"] else None

    info = wait_for(blocked, 120, interval=0.5)
    assert info["bead_id"] == bead and "webfetch" in info["blocked_reason"]
    out = cli("answer", bead, "--reply", "once", "--json", project=pool.root)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["kind"] == "permission"
    result = await_workers(ctx, epic.id, 180)
    assert result.counts["completed"] == 1, result.to_dict()


def test_hanging_model_times_out_and_fails(ctx: SwarmContext) -> None:
    epic = ctx.store.hive.create_epic(
        "hangs", [BeadSpec(title="hang", files=["hang.txt"], script=[init(), {"hang": True}])]
    )
    bead = epic.cells[0].id
    spawn_async(ctx, SpawnRequest(bead, timeout_s=6))
    result = await_workers(ctx, epic.id, 120)
    w = ctx.store.workers.get(bead)
    assert w is not None and w.status == "failed", result.to_dict()
    failed = events(ctx, bead, "worker_failed")
    assert [getattr(f.event, "reason", "") for f in failed] == ["timeout"]
    assert not events(ctx, bead, "worker_retried")  # a hung model would hang again
    # the session was aborted on its instance
    client = ctx.client(ctx.instance(w.instance))
    try:
        wait_for(lambda: w.session_id not in client.session_status(), 30)
    finally:
        client.close()
    assert [x.bead_id for x in poll(ctx, epic.id).groups["failed"]] == [bead]


def test_dedicated_routing_gets_a_fresh_instance_that_stops_after_merge(
    ctx: SwarmContext, pool: Pool
) -> None:
    epic = ctx.store.hive.create_epic(
        "dedicated", [BeadSpec(title="isolated", files=["alone/a.txt"])]
    )
    bead = epic.cells[0].id
    name = dedicated_name(bead)
    assert spawn_async(ctx, SpawnRequest(bead, routing="dedicated")).routing == "dedicated"
    result = await_workers(ctx, epic.id, 240)
    w = ctx.store.workers.get(bead)
    assert w is not None and w.status == "completed", result.to_dict()
    assert w.instance == name
    assert {s.name for s in ctx.instances()} == {"oc-1", "oc-2", name}
    assert review(ctx, bead).approved  # a merge needs an approving review
    assert merge(ctx, bead).session_released
    wait_for(lambda: {s.name for s in ctx.instances()} == {"oc-1", "oc-2"}, 60)
    assert (pool.root / "alone" / "a.txt").is_file()


def test_coordinator_session_runs_the_flow_over_mcp(ctx: SwarmContext, pool: Pool) -> None:
    """The ADR's coordinator workflow for real: an agent in an OpenCode session spawns
    three workers through swarm_spawn_async, waits with swarm_await_workers, merges."""
    epic = ctx.store.hive.create_epic(
        "coordinated", [BeadSpec(title=f"c{i}", files=[f"coord/{i}.txt"]) for i in range(3)]
    )
    beads = [c.id for c in epic.cells]
    steps: list[dict[str, Any]] = [
        {"tool": "swarm_spawn_async", "args": {"bead_id": b, "shared_context": "coordinated"}}
        for b in beads
    ]
    steps.append({"tool": "swarm_await_workers", "args": {"epic_id": epic.id, "timeout_s": 300}})
    # A merge needs an approving review of the branch's head, so review each first.
    steps += [{"tool": "swarm_review", "args": {"bead_id": b}} for b in beads]
    steps += [{"tool": "swarm_worktree_merge", "args": {"bead_id": b}} for b in beads]
    # The scripted model plays the coordinator from the contract block in its prompt.
    contract = Contract(bead_id=epic.id, epic_id=epic.id, title="coordinate", script=steps)
    prompt = "You are the coordinator of this epic.\n\n" + render_contract(contract)
    home = ctx.instance("oc-2")
    client = ctx.client(home)
    try:
        session = client.create_session(str(pool.root), title="coordinator")
        sid = session["id"]
        started = time.time() * 1000
        client.prompt_async(sid, prompt, directory=str(pool.root))
        wait_for(lambda: session_finished(client, sid, str(pool.root)), 300, interval=0.5)
        tools = [
            part.get("tool")
            for m in client.messages(sid, directory=str(pool.root))
            for part in m.get("parts", [])
            if part.get("type") == "tool"
        ]
    finally:
        client.close()
    assert tools == (
        ["swarm_swarm_spawn_async"] * 3
        + ["swarm_swarm_await_workers"]
        + ["swarm_swarm_review"] * 3
        + ["swarm_swarm_worktree_merge"] * 3
    )
    merged = {s.event.bead_id for s in ctx.store.read(types=["worktree_merged"], epic_id=epic.id)}  # type: ignore[union-attr]
    assert merged == set(beads)
    for i in range(3):
        assert (pool.root / "coord" / f"{i}.txt").is_file()
    workers = [ctx.store.workers.get(b) for b in beads]
    assert all(w is not None and w.status == "completed" for w in workers)
    # they ran while the coordinator's own session sat in swarm_await_workers, and not
    # only on the coordinator's instance
    assert {w.instance for w in workers if w} - {home.name}
    spawned = [events(ctx, b, "worker_spawned")[0].timestamp for b in beads]
    assert min(spawned) > started


def test_idle_without_swarm_complete_needs_review(ctx: SwarmContext, pool: Pool) -> None:
    epic = ctx.store.hive.create_epic(
        "quiet",
        [
            BeadSpec(
                title="forgets to complete",
                files=["quiet/q.txt"],
                script=[init(), write_files(), {"text": "All done, I think."}],
            )
        ],
    )
    bead = epic.cells[0].id
    spawn_async(ctx, bead)
    result = await_workers(ctx, epic.id, 180)
    assert [w.bead_id for w in result.groups["completed_needs_review"]] == [bead], result.to_dict()
    assert not events(ctx, bead, "worker_completed")
    verdict = review(ctx, bead)
    assert verdict.approved and verdict.files_touched == ["quiet/q.txt"]
    merge(ctx, bead)
    assert (pool.root / "quiet" / "q.txt").is_file()
    assert ctx.store.hive.get_cell(bead).status == "closed"


def test_session_error_fails_and_retries_then_gives_up(ctx: SwarmContext) -> None:
    epic = ctx.store.hive.create_epic(
        "broken model",
        [BeadSpec(title="model says 400", files=["err.txt"], script=[{"http_error": 400}])],
    )
    bead = epic.cells[0].id
    spawn_async(ctx, bead)
    result = await_workers(ctx, epic.id, 180)
    w = ctx.store.workers.get(bead)
    assert w is not None and w.status == "failed", result.to_dict()
    assert w.attempt == 2  # retried once (max_retries = 1), then given up
    reasons = [getattr(f.event, "reason", "") for f in events(ctx, bead, "worker_failed")]
    assert reasons == ["session_error", "session_error"]
    assert events(ctx, bead, "session_error")
    assert ctx.store.hive.get_cell(bead).status == "blocked"
